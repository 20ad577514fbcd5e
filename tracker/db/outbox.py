"""The outbox table: the durable queue of actions, its lanes, retries and dead letters.

A pending row is its lane's head when no older row of the lane is pending; the dispatcher
(``tracker.delivery.dispatcher``) reads lane heads through the indexes of migration 6.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from tracker.db.rows import Rows

# A pending row is its lane's head when no older row of the lane is pending (the lanes index).
_IS_LANE_HEAD = ("NOT EXISTS (SELECT 1 FROM outbox p WHERE p.status = 'pending'"
                 " AND p.lane = o.lane AND p.id < o.id)")


@dataclass(frozen=True)
class Requeued:
    """What ``retry_dead`` did: the rows queued again, and why the others were not."""

    requeued: list[int]
    refused: dict[int, str]  # id -> its status ("delivered", …) or "unknown"


@dataclass(frozen=True)
class Backlog:
    """What waits in the outbox: pending rows (retrying: those that failed before), dead
    letters, and when the oldest pending row was stored."""

    pending: int
    retrying: int
    dead: int
    oldest_created_at: float | None


class OutboxRows(Rows):
    """Queries of the ``outbox`` table."""

    def enqueue(self, call_id: int | None, kind: str, priority: int, payload: dict[str, Any],
                now: float, *, lane: str | None = None) -> int:
        """Add an outbox row. Rows of one ``lane`` (default ``call:<id>``) are delivered in
        order, one at a time; other work (e.g. ``employee:<id>``) picks its own lane."""
        lane = lane if lane is not None else f"call:{call_id}"
        cursor = self.conn.execute(
            "INSERT INTO outbox (lane, call_id, kind, priority, payload, status, attempts, next_at,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (lane, call_id, kind, priority, json.dumps(payload), now, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def due_heads(self, now: float, exclude_lanes: set[str], limit: int, *,
                  only_lanes: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The first pending row of each lane whose time has come, cards before uploads;
        with ``only_lanes``, of those lanes alone."""
        wanted = limit + len(exclude_lanes) if only_lanes is None else 1_000_000
        rows = self.conn.execute(
            f"""
            SELECT o.* FROM outbox o INDEXED BY idx_outbox_status_priority_id
            WHERE o.status = 'pending' AND o.next_at <= ? AND {_IS_LANE_HEAD}
            ORDER BY o.priority, o.id
            LIMIT ?
            """,
            (now, wanted),
        ).fetchall()
        return [dict(r) for r in rows if r["lane"] not in exclude_lanes
                and (only_lanes is None or r["lane"] in only_lanes)][:limit]

    def next_due_at(self) -> float | None:
        """When the earliest lane head is due (None when nothing is pending)."""
        row = self.conn.execute(
            f"""
            SELECT o.next_at FROM outbox o INDEXED BY idx_outbox_status_next_at
            WHERE o.status = 'pending' AND {_IS_LANE_HEAD}
            ORDER BY o.next_at
            LIMIT 1
            """
        ).fetchone()
        return row[0] if row else None

    def finish_outbox(self, row_id: int, status: str, now: float, **extra: Any) -> None:
        """Mark a row delivered, dead or dropped, keeping the request and answer for the
        timeline."""
        self._update_outbox(row_id, ["status = ?", "updated_at = ?", "attempts = attempts + 1"],
                            [status, now], extra)

    def set_sent_at(self, row_id: int, at: float | None) -> None:
        """Mark (or clear, with None) an outbox row's request as sent without a known outcome."""
        self.conn.execute("UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NOT ?",
                          (at, row_id, at))

    def reschedule_outbox(self, row_id: int, next_at: float, now: float, *, count_attempt: bool,
                          **extra: Any) -> None:
        sets = ["next_at = ?", "updated_at = ?"]
        if count_attempt:
            sets.append("attempts = attempts + 1")
        self._update_outbox(row_id, sets, [next_at, now], extra)

    def _update_outbox(self, row_id: int, sets: list[str], values: list[Any],
                       extra: dict[str, Any]) -> None:
        """``UPDATE`` one row: ``sets`` with their ``values``, plus whichever of the kept
        exchange fields (last error, request, response) ``extra`` carries."""
        for key in ("last_error", "request", "response"):
            if key in extra:
                sets = [*sets, f"{key} = ?"]
                values = [*values, extra[key]]
        self.conn.execute(f"UPDATE outbox SET {', '.join(sets)} WHERE id = ?", [*values, row_id])

    def outbox_for(self, call_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE call_id = ? ORDER BY id", (call_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def delivered_popups(self, call_id: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT payload FROM outbox "
            "WHERE call_id = ? AND kind = 'popup' AND status = 'delivered'",
            (call_id,),
        ).fetchall()
        return [json.loads(r[0])["employee_id"] for r in rows]

    def outbox_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        counts = {r[0]: r[1] for r in rows}
        retrying = self.conn.execute(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts > 0"
        ).fetchone()[0]
        counts["retrying"] = retrying
        return counts

    def pending_of_kinds(self, prefix: str) -> int:
        """How many pending rows there are of the kinds whose name starts with ``prefix``."""
        row = self.conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'"
                                " AND substr(kind, 1, ?) = ?", (len(prefix), prefix)).fetchone()
        return int(row[0])

    def enqueue_latest(self, kind: str, priority: int, payload: dict[str, Any], now: float, *,
                       lane: str) -> tuple[int, list[int]]:
        """Enqueue where only the newest change matters (an employee's status): older pending
        rows of ``kind`` on ``lane`` become ``superseded``. The new row keeps their retry time,
        so a backoff the upstream asked for still holds. Returns (new id, superseded ids)."""
        row_id = self.enqueue(None, kind, priority, payload, now, lane=lane)
        older = self.supersede(lane, kind, now, f"superseded by #{row_id}", before_id=row_id)
        if older:
            next_at = max([now, *older.values()])
            self.conn.execute("UPDATE outbox SET next_at = ? WHERE id = ?", (next_at, row_id))
        return row_id, list(older)

    def supersede(self, lane: str, kind: str, now: float, reason: str, *,
                  before_id: int | None = None) -> dict[int, float]:
        """Pending rows of ``kind`` on ``lane`` (older than ``before_id`` if given) become
        ``superseded`` with ``reason``: a newer change made them pointless. Returns their ids
        with the retry time each had."""
        sql = "SELECT id, next_at FROM outbox WHERE lane = ? AND kind = ? AND status = 'pending'"
        args: list[Any] = [lane, kind]
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        older = {r[0]: r[1] for r in self.conn.execute(sql, args).fetchall()}
        if older:
            marks = ", ".join("?" for _ in older)
            self.conn.execute(
                f"UPDATE outbox SET status = 'superseded', updated_at = ?, last_error = ?"
                f" WHERE id IN ({marks})", (now, reason, *older))
        return older

    def lane_busy(self, lane: str) -> bool:
        """True while ``lane`` has a row waiting for delivery (or being delivered)."""
        return self.conn.execute(
            "SELECT 1 FROM outbox WHERE lane = ? AND status = 'pending' LIMIT 1", (lane,)
        ).fetchone() is not None

    # -- dead letters -------------------------------------------------------------------------

    def retry_dead(self, row_ids: Iterable[int] | None, now: float) -> Requeued:
        """Queue dead letters again, due now: the one rule of every retry (admin API, status
        page, ``run.py outbox retry``).

        In one transaction, each of ``row_ids`` (``None``: every dead letter) that is a dead
        letter becomes pending again; any other row is left exactly as it is and reported
        with its status (``unknown`` when there is no such row). Only dead rows move, so a
        retry never repeats a delivered action. A caller that wants all or none raises inside
        its own ``transaction()`` when ``refused`` is not empty. The caller wakes the outbox
        (another process's dispatcher finds the rows within ``EXTERNAL_CHECK_SECONDS``)."""
        with self.transaction():
            if row_ids is None:
                ids = [r[0] for r in self.conn.execute(
                    "SELECT id FROM outbox WHERE status = 'dead' ORDER BY id")]
            else:
                ids = list(dict.fromkeys(row_ids))
            requeued: list[int] = []
            refused: dict[int, str] = {}
            for row_id in ids:
                cursor = self.conn.execute(
                    "UPDATE outbox SET status = 'pending', next_at = ?, updated_at = ?"
                    " WHERE id = ? AND status = 'dead'", (now, now, row_id))
                if cursor.rowcount:
                    requeued.append(row_id)
                    continue
                row = self.conn.execute("SELECT status FROM outbox WHERE id = ?",
                                        (row_id,)).fetchone()
                refused[row_id] = "unknown" if row is None else str(row[0])
        return Requeued(requeued, refused)

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest dead letters first."""
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE status = 'dead' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    # -- read-outs ----------------------------------------------------------------------------

    def backlog(self) -> Backlog:
        """The outbox gauges, from indexed queries (cheap on a big database)."""
        pending = self.conn.execute(
            "SELECT count(*), min(created_at), sum(attempts > 0) FROM outbox"
            " WHERE status = 'pending'").fetchone()
        dead = self.conn.execute("SELECT count(*) FROM outbox WHERE status = 'dead'").fetchone()
        return Backlog(pending=pending[0], retrying=pending[2] or 0, dead=dead[0],
                       oldest_created_at=pending[1])

    def last_outbox_id(self) -> int:
        """The id of the newest outbox row (0 when there is none): rows added later have
        larger ids."""
        return int(self.conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0])

    def lanes_of_calls(self, call_ids: Iterable[int], after_id: int) -> set[str]:
        """The lanes of the rows after ``after_id`` that belong to these calls."""
        rows = self.conn.execute(
            "SELECT DISTINCT lane FROM outbox WHERE id > ? AND call_id IN"
            " (SELECT value FROM json_each(?))", (after_id, json.dumps(list(call_ids))))
        return {r[0] for r in rows}

    def statuses_of_calls(self, call_ids: Iterable[int], after_id: int) -> dict[str, int]:
        """How many rows after ``after_id`` of these calls are in each status."""
        rows = self.conn.execute(
            "SELECT status, count(*) FROM outbox WHERE id > ? AND call_id IN"
            " (SELECT value FROM json_each(?)) GROUP BY status",
            (after_id, json.dumps(list(call_ids)))).fetchall()
        return {r[0]: r[1] for r in rows}
