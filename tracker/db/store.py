"""The SQLite store: opening and migrating the file, and transactions.

One connection, owned by the trio thread (sqlite3 connections are bound to their thread). WAL
mode; writes are short and synchronous. ``transaction()`` is the only way to write several rows
at once: it commits all or nothing.

``Store`` is the one handle the rest of tracker uses; the queries of each table are written in
that table's module and mixed in: ``calls``, ``events``, ``outbox``, ``employees``,
``warnings``, ``clicks``, ``presence`` (status sync) and ``requestlog``. Reports and
administration are functions: over a ``Store`` in ``querysql`` (the admin API's queries),
``keys`` and ``maintenance``; over a read-only connection in a thread in ``pagedata`` (the
status page).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from tracker.config import Settings
from tracker.db.calls import CallRows
from tracker.db.clicks import ClickRows
from tracker.db.employees import EmployeeRows
from tracker.db.events import EventRows
from tracker.db.migrations import MIGRATIONS
from tracker.db.outbox import OutboxRows
from tracker.db.presence import PresenceRows
from tracker.db.requestlog import RequestLogRows
from tracker.db.warnings import WarningRows
from tracker.errors import StoreError

log = logging.getLogger(__name__)


class _Transaction:
    """``Store.transaction()``: BEGIN IMMEDIATE … COMMIT, or a savepoint when nested."""

    __slots__ = ("_store", "_savepoint")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._savepoint: str | None = None

    def __enter__(self) -> None:
        store = self._store
        if store._depth:
            self._savepoint = f"nested_{store._depth}"
            store.conn.execute(f"SAVEPOINT {self._savepoint}")
        else:
            store.conn.execute("BEGIN IMMEDIATE")
        store._depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        store = self._store
        conn = store.conn
        store._depth -= 1
        if self._savepoint is not None:
            if kind is not None:
                conn.execute(f"ROLLBACK TO {self._savepoint}")
            conn.execute(f"RELEASE {self._savepoint}")
            return
        if kind is not None:
            conn.execute("ROLLBACK")
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:  # some failed commits leave the transaction open
                conn.execute("ROLLBACK")
            raise


class Store(CallRows, EventRows, OutboxRows, EmployeeRows, WarningRows, ClickRows, PresenceRows,
            RequestLogRows):
    """The database and every query the daemon runs as it works, one table's in each base
    class. Not thread-safe: use from one thread."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        if str(path) != ":memory:" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # owner-only from birth
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute("PRAGMA foreign_keys=ON")
            # Sorts and temporary indexes stay in memory: no temp files outside the state
            # directory (the systemd unit allows writes only there).
            self.conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        self.db = sqlite_utils.Database(self.conn)
        self._depth = 0

    def close(self) -> None:
        self.conn.close()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version. Refuses a newer schema."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this tracker "
                f"({len(MIGRATIONS)}); upgrade tracker"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction():
                migration(self.db)
                self.conn.execute(f"PRAGMA user_version={number}")
        return len(MIGRATIONS)

    def integrity_ok(self) -> str:
        """``"ok"`` or SQLite's description of what is broken. The full ``integrity_check``, not
        ``quick_check``: only it sees an index that disagrees with its table, the kind of damage
        that makes de-duplication and lane order silently wrong. It reads the whole file: see
        ``integrity`` for when the daemon runs it before listening."""
        try:
            rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "; ".join(str(r[0]) for r in rows)

    def transaction(self) -> _Transaction:
        """All writes inside commit together or not at all. Nested use is a savepoint of the
        outer one: an exception leaving it undoes its writes alone (the outer goes on if the
        exception is caught). A plain class, not ``@contextmanager``: it runs several times for
        every notification."""
        return _Transaction(self)

    def stop_autocheckpoint(self) -> None:
        """Commits no longer run WAL checkpoints themselves (the daemon's ``Checkpointer``
        thread does them, off the event loop)."""
        self.conn.execute("PRAGMA wal_autocheckpoint=0")

    def writable(self) -> str | None:
        """None when a write transaction can start now, else why not (for ``/healthz``)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return str(exc)
        return None


def open_store(settings: Settings, *, check: bool = True, seed_employees: bool = True,
               must_exist: bool = False) -> Store:
    """The one way to open the daemon's database (the daemon, the CLI, backfill).

    The file is made owner-only, checked in full (``check``: the daemon skips it for a file it
    closed cleanly itself; the short CLI commands skip it), migrated, and seeded with the
    ``[[employees]]`` of the configuration (``seed_employees``: the file seeds the live mapping,
    config wins). ``must_exist`` refuses a file that is not there yet (the commands that read
    what a daemon wrote). Raises ``StoreError`` with the reason; nothing stays open then.
    """
    path = settings.database.path
    if must_exist and not path.exists():
        raise StoreError(f"{path}: no database here (has the daemon run with this config?)")
    store = Store(path, synchronous=settings.database.synchronous)
    try:
        keep_private(path)
        verdict = store.integrity_ok() if check else "ok"
        if verdict != "ok":
            raise StoreError(f"{path}: integrity check failed, refusing to start: "
                             f"{verdict[:500]}. Restore a backup (python run.py backup makes "
                             "them) or move the file away to start afresh.")
        store.migrate()
        if seed_employees:
            store.sync_employees(settings.employees)
    except BaseException:
        store.close()
        raise
    return store


def keep_private(path: Path) -> None:
    """Make the database and its ``-wal``/``-shm`` files owner-only. ``Store`` creates the file
    so and SQLite gives its side files the file's mode; this tightens a file made otherwise
    (copied in, or created by hand)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(mode & 0o700)
            log.warning("%s was readable by others (mode %o): made it owner-only", file, mode)

