"""WAL checkpoints happen in a thread while the daemon runs, never inside a commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import trio

from tests.support import open_system
from tracker.db.checkpointer import Checkpointer, CheckpointerStatistics


async def test_the_daemon_checkpoints_in_a_thread_and_not_in_its_commits(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            conn = d.ctx.store.conn
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            path = d.settings.database.path
            size_before = path.stat().st_size
            for session in range(1, 201):
                response = await d.post({"event": "incoming_call", "call_session_id": session,
                                         "contact_phone_number": "79991234567",
                                         "pad": "x" * 500})
                assert response.status_code == 200
            # the new pages reach the database file while the daemon runs: the thread copied them
            while path.stat().st_size <= size_before:
                await trio.sleep(0.05)
            with sqlite3.connect(path) as other:
                assert other.execute("SELECT count(*) FROM calls").fetchone()[0] == 200


async def _run_until(checkpointer: Checkpointer,
                     done: Callable[[CheckpointerStatistics], bool]) -> CheckpointerStatistics:
    """Run ``checkpointer`` until its statistics satisfy ``done``; return them."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(checkpointer.run)
            while not done(checkpointer.statistics()):
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    return checkpointer.statistics()


async def test_the_checkpointer_counts_its_work(tmp_path):
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x TEXT)")
    writer.executemany("INSERT INTO t VALUES (?)", [("y" * 1000,) for _ in range(200)])
    stats = await _run_until(Checkpointer(path, interval_seconds=0.01),
                             lambda s: s.pages_copied >= 50)
    assert stats.failures == 0 and stats.checkpoints >= 1
    writer.close()


async def test_a_failing_checkpoint_is_counted_and_retried_not_fatal(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    stats = await _run_until(Checkpointer(path, interval_seconds=0.01),
                             lambda s: s.failures >= 3)
    assert stats.checkpoints == 0 and "not a database" in (stats.last_error or "")
