"""The database's integrity check: before start-up when the file may be damaged, else in a thread.

``PRAGMA integrity_check`` reads the whole file (seconds for a million journal rows), and only it
sees an index that disagrees with its table (``quick_check`` does not). A file that tracker itself
closed cleanly and that nobody has touched since cannot have been damaged by a crash, so:

- on a clean stop the daemon writes ``<database>-clean``: size, mtime and inode of the file and
  of its write-ahead log;
- at start, when that note matches both, the check runs in a thread while the daemon already
  serves; otherwise (a crash, a power loss, a file copied in or edited, no note) it runs first
  and a damaged file is refused;
- the note is removed at start, so a crash later can never leave a note that matches.

A damaged file found by the background check cannot be refused any more: it is logged as an
error, ``/healthz`` answers 503 naming it, and the status page shows a warning, while the daemon
goes on taking notifications (stopping would lose them: UIS does not resend).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)


def marker_path(db: Path) -> Path:
    return db.with_name(db.name + "-clean")


def _fingerprint(db: Path) -> dict[str, Any]:
    """Size, mtime and inode of the database and of its write-ahead log (which outlives the
    daemon's connection when another program has the file open)."""
    found: dict[str, Any] = {}
    for name, path in (("database", db), ("wal", db.with_name(db.name + "-wal"))):
        try:
            stat = path.stat()
        except FileNotFoundError:
            found[name] = None
            continue
        found[name] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    return found


def note_clean_close(db: Path) -> None:
    """Record that the daemon closed ``db`` cleanly (call after its connections closed)."""
    if str(db) == ":memory:" or not db.exists():
        return
    marker = marker_path(db)
    temporary = marker.with_name(marker.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(_fingerprint(db), file)
        os.replace(temporary, marker)
    except OSError as exc:  # only costs the next start its speed
        log.warning("%s: could not note the clean stop (%s): the next start checks the "
                    "database before listening", marker, exc)


def take_clean_close_note(db: Path) -> bool:
    """Whether ``db`` is exactly as the daemon left it at a clean stop. Removes the note; a
    note that cannot be removed is not trusted (a crash later would leave it behind)."""
    marker = marker_path(db)
    try:
        noted = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        noted = None
    try:
        marker.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s: cannot remove (%s): checking the database before listening", marker,
                    exc)
        return False
    try:
        return bool(isinstance(noted, dict) and noted.get("database") is not None
                    and noted == _fingerprint(db))
    except OSError:
        return False


def check(db: Path) -> str:
    """``"ok"`` or SQLite's description of what is broken, from a connection of its own."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA temp_store=MEMORY")  # no temp files outside the state directory
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()


class BackgroundCheck:
    """The integrity check of a cleanly closed file, run in a thread after start-up."""

    def __init__(self, db: Path, *, needed: bool,
                 on_damage: Callable[[str], None] | None = None) -> None:
        self._db = db
        self.needed = needed
        self._on_damage = on_damage
        self.verdict: str | None = None if needed else "ok"  # None: still running

    @property
    def problem(self) -> str | None:
        """What is wrong with the database, once the check found something."""
        if self.verdict is None or self.verdict == "ok":
            return None
        return f"integrity check failed: {self.verdict[:500]}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        if not self.needed:
            return
        self.verdict = await trio.to_thread.run_sync(check, self._db, abandon_on_cancel=True)
        if self.verdict == "ok":
            log.info("%s: integrity check passed (in the background)", self._db)
            return
        log.error("%s: integrity check failed: %s. Stop the daemon, restore a backup (python "
                  "run.py backup makes them) or move the file away.", self._db, self.verdict[:500])
        if self._on_damage is not None and self.problem is not None:
            self._on_damage(self.problem)
