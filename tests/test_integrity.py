"""The database check: before start-up unless the daemon itself closed the file cleanly and
nobody touched it since; then in a thread while the daemon serves (tracker/db/integrity.py)."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from tests.support import damage_an_index, open_daemon, open_sims, seed_index_rows, settings_for
from tracker import service
from tracker.db import integrity
from tracker.errors import StoreError


async def _run_once(settings, sims, *, seed: bool = False) -> None:
    async with open_daemon(sims, settings) as d:
        if seed:
            seed_index_rows(d.ctx.store)
        assert (await d.post({"event": "incoming_call", "call_session_id": 1})).status_code == 200


async def _wait_verdict(check: integrity.BackgroundCheck) -> str:
    while check.verdict is None:
        await trio.sleep(0.02)
    return check.verdict


async def test_a_clean_stop_lets_the_next_start_check_in_the_background(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tracker")
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            db = settings.database.path
            await _run_once(settings, sims)
            marker = integrity.marker_path(db)
            assert marker.exists() and marker.stat().st_mode & 0o077 == 0
            async with open_daemon(sims, settings) as d:
                assert not marker.exists()  # taken at start: a crash now leaves none behind
                assert d.ctx.integrity.needed
                assert await _wait_verdict(d.ctx.integrity) == "ok"
                assert (await d.client.get(f"{d.url}/healthz")).status_code == 200
    assert "was closed cleanly: its integrity check runs in the background" in caplog.text


async def test_without_a_clean_stop_the_check_runs_before_start(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            await _run_once(settings, sims)
            integrity.marker_path(settings.database.path).unlink()  # as after a crash
            async with open_daemon(sims, settings) as d:
                assert not d.ctx.integrity.needed and d.ctx.integrity.verdict == "ok"


async def test_a_file_changed_after_the_clean_stop_is_checked_first_and_refused(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            await _run_once(settings, sims, seed=True)
            damage_an_index(settings.database.path)  # the file's mtime moves
            assert integrity.marker_path(settings.database.path).exists()
            with pytest.raises(StoreError, match="integrity check failed, refusing to start"):
                await service.serve(settings, handle_signals=False)


async def test_damage_found_in_the_background_fails_healthz_and_warns(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            db = settings.database.path
            await _run_once(settings, sims, seed=True)
            before = db.stat()
            damage_an_index(db)  # damage that leaves no trace in size, inode or mtime (bit rot)
            os.utime(db, ns=(before.st_atime_ns, before.st_mtime_ns))
            async with open_daemon(sims, settings) as d:
                verdict = await _wait_verdict(d.ctx.integrity)
                assert "missing from index" in verdict
                health = await d.client.get(f"{d.url}/healthz")
                assert health.status_code == 503
                assert any("database damaged" in p for p in health.json()["problems"])
                assert health.json()["database"]["integrity"] == "damaged"
                metrics = (await d.client.get(f"{d.url}/metrics")).text
                assert "tracker_database_integrity_ok 0.0" in metrics
                assert d.count("warnings", "kind = 'database_damaged'") == 1
                # notifications are still taken: UIS would not send them again
                ok = await d.post({"event": "incoming_call", "call_session_id": 2})
                assert ok.status_code == 200


@pytest.mark.parametrize("note", ["not json", "[1, 2]", '{"database": null, "wal": null}'])
def test_a_garbled_note_is_not_trusted_and_is_removed(tmp_path, note):
    db = tmp_path / "tracker.db"
    db.write_bytes(b"")
    integrity.marker_path(db).write_text(note, encoding="utf-8")
    assert integrity.take_clean_close_note(db) is False
    assert not integrity.marker_path(db).exists()


def test_the_note_matches_only_the_file_it_was_written_for(tmp_path):
    db = tmp_path / "tracker.db"
    db.write_bytes(b"x" * 100)
    integrity.note_clean_close(db)
    assert integrity.take_clean_close_note(db) is True
    assert integrity.take_clean_close_note(db) is False  # taken: a crash now leaves none
    integrity.note_clean_close(db)
    db.with_name(db.name + "-wal").write_bytes(b"frames")  # another program wrote meanwhile
    assert integrity.take_clean_close_note(db) is False
