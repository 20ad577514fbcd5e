"""WAL checkpoints in a worker thread, so that no commit on the event loop waits for the disk.

SQLite copies the write-ahead log back into the database file (a checkpoint) when the log passes
1,000 pages, inside whichever commit crossed the line; that commit then waits for the disk
flushes, and with it every request the daemon is serving. The daemon turns that off for its own
connection and runs a passive checkpoint every ``interval_seconds`` here instead, on a
connection of its own in a thread. Passive checkpoints never block writers; a reader that holds
old pages (the status page) only delays part of the copy to the next round.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointerStatistics:
    checkpoints: int
    pages_copied: int
    failures: int
    last_error: str | None


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` off the event loop, until cancelled."""

    def __init__(self, path: Path, *, interval_seconds: float = 0.5,
                 on_checkpoint: Callable[[bool], None] | None = None) -> None:
        self._path = path
        self._on_checkpoint = on_checkpoint  # called from the thread with success or failure
        self._interval = interval_seconds
        self._checkpoints = 0
        self._pages = 0
        self._failures = 0
        self._last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            task_status.started()
            while True:
                await trio.sleep(self._interval)
                await trio.to_thread.run_sync(self._checkpoint, conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _busy, _log_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self._failures += 1
            if self._last_error != str(exc):
                log.warning("WAL checkpoint failed (retrying): %s", exc)
            self._last_error = str(exc)
            if self._on_checkpoint is not None:
                self._on_checkpoint(False)
            return
        self._checkpoints += 1
        self._pages += max(0, copied)
        self._last_error = None
        if self._on_checkpoint is not None:
            self._on_checkpoint(True)

    def statistics(self) -> CheckpointerStatistics:
        return CheckpointerStatistics(self._checkpoints, self._pages, self._failures,
                                      self._last_error)
