"""Keeping the database: dead letters listed, online backups, journal retention.

The command-line helpers work on the database file of a running daemon: SQLite in WAL mode lets
them read while it writes, and their writes are single short transactions. A dead letter
re-queued from the command line (``Store.retry_dead``, the one rule of every retry) is picked up
by the daemon's dispatcher within ``dispatcher.EXTERNAL_CHECK_SECONDS``; a repeated upload is a
duplicate to retailCRM (its ``externalId`` is the UIS session id).

Retention deletes, in small batches, journal rows older than ``retention.journal_days`` of calls
that are over and whose actions are all finished (rejected and ignored notifications have no call
and go by age alone), and finished (delivered or dropped) outbox rows of such calls. Call rows
stay: they are small, and they keep a late repeat of an old notification from acting again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tracker.config import RetentionSettings
from tracker.core.calls import FINAL_STATES
from tracker.db.store import Store
from tracker.errors import StoreError

log = logging.getLogger(__name__)


# -- dead letters ------------------------------------------------------------------------------


def dead_letters(store: Store) -> list[dict[str, Any]]:
    """Every dead letter, oldest first."""
    rows = store.conn.execute("SELECT * FROM outbox WHERE status = 'dead' ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def format_dead_letters(rows: list[dict[str, Any]]) -> str:
    """A plain table for the terminal, one dead letter a line."""
    if not rows:
        return "no dead letters"
    lines = [f"{'id':>7}  {'call':>12}  {'kind':<12}  {'tries':>5}  {'since':<19}  error"]
    for row in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["updated_at"] or 0))
        error = " ".join(str(row["last_error"] or "").split())
        lines.append(f"{row['id']:>7}  {row['call_id'] or '':>12}  {row['kind']:<12}  "
                     f"{row['attempts']:>5}  {since:<19}  {error[:160]}")
    return "\n".join(lines)


# -- backup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    path: Path
    bytes: int
    seconds: float


def backup(source: Path, destination: Path) -> Backup:
    """Copy the live database to ``destination`` with SQLite's online backup: a consistent
    snapshot taken while the daemon keeps writing. The copy is owner-only, checked with
    ``PRAGMA integrity_check`` and moved into place only when whole. Refuses to overwrite."""
    started = time.monotonic()
    if not source.exists():
        raise StoreError(f"{source}: no database to back up")
    if destination.exists():
        raise StoreError(f"{destination}: exists already; choose a new file")
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    try:
        # A read transaction in WAL mode blocks no writer; copying all pages in one step keeps
        # the snapshot consistent instead of restarting whenever the daemon commits.
        src = sqlite3.connect(source)
        dst = sqlite3.connect(partial)
        try:
            src.execute("PRAGMA busy_timeout=5000")
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            verdict = "; ".join(str(r[0]) for r in dst.execute("PRAGMA integrity_check"))
        finally:
            dst.close()
            src.close()
        if verdict != "ok":
            raise StoreError(f"{destination}: the copy failed its integrity check: {verdict}")
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Backup(destination, destination.stat().st_size, time.monotonic() - started)


# -- retention ---------------------------------------------------------------------------------


def prune_once(store: Store, cutoff: float, batch_rows: int) -> int:
    """Delete at most ``batch_rows`` journal rows and as many finished outbox rows older than
    ``cutoff``, of calls that are over with nothing left to deliver; returns the rows deleted."""
    final = ", ".join(f"'{state}'" for state in FINAL_STATES)
    settled = (f"c.state IN ({final}) AND NOT EXISTS (SELECT 1 FROM outbox p WHERE"
               " p.call_id = c.id AND p.status IN ('pending', 'dead'))")
    with store.transaction():
        events = store.conn.execute(
            f"""DELETE FROM events WHERE id IN (
                  SELECT e.id FROM events e LEFT JOIN calls c ON c.id = e.call_id
                  WHERE e.received_at < ? AND (e.call_id IS NULL OR ({settled}))
                  LIMIT ?)""", (cutoff, batch_rows)).rowcount
        outbox = store.conn.execute(
            f"""DELETE FROM outbox WHERE id IN (
                  SELECT o.id FROM outbox o JOIN calls c ON c.id = o.call_id
                  WHERE o.updated_at < ? AND o.status IN ('delivered', 'dropped') AND {settled}
                  LIMIT ?)""", (cutoff, batch_rows)).rowcount
    return events + outbox


def prune(store: Store, settings: RetentionSettings, now: float | None = None) -> int:
    """Run ``prune_once`` until nothing is left to delete; 0 days keeps everything."""
    if settings.journal_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - settings.journal_days * 86400
    total = 0
    while deleted := prune_once(store, cutoff, settings.batch_rows):
        total += deleted
    return total


async def run_retention(store: Store, settings: RetentionSettings, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Prune now and every ``interval_seconds``; each batch is one short transaction, and the
    loop yields between batches so notifications are not held up. Never returns."""
    task_status.started()
    if settings.journal_days <= 0:
        await trio.sleep_forever()
    while True:
        cutoff = time.time() - settings.journal_days * 86400
        total = 0
        try:
            while deleted := prune_once(store, cutoff, settings.batch_rows):
                total += deleted
                await trio.sleep(0.05)
        except sqlite3.Error as exc:  # a busy or full disk must not stop the daemon
            log.warning("journal retention failed, trying again later: %s", exc)
        if total:
            log.info("journal retention: deleted %d rows older than %g days", total,
                     settings.journal_days)
        await trio.sleep(settings.interval_seconds)
