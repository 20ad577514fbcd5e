"""The calls table: the call model's fields, the cards open, and the sweeper's bookkeeping."""

from __future__ import annotations

import json
from typing import Any

from tracker.core.calls import Call
from tracker.db.rows import Rows


class CallRows(Rows):
    """Queries of the ``calls`` table."""

    def load_call(self, call_id: int) -> Call | None:
        row = self.conn.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        if row is None:
            return None
        return Call(
            id=row["id"],
            state=row["state"],
            direction=row["direction"] or "in",
            contact_phone=row["contact_phone"],
            contact_name=row["contact_name"],
            virtual_phone=row["virtual_phone"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
            talked=bool(row["talked"]),
            talk_seconds=row["talk_seconds"],
            wait_seconds=row["wait_seconds"],
            total_seconds=row["total_seconds"],
            rang=json.loads(row["rang"] or "[]"),
            carded=json.loads(row["carded"] or "[]"),
            closed=json.loads(row["closed"] or "[]"),
            talked_employee_id=row["talked_employee_id"],
            external_id=row["external_id"],
            file_link=row["file_link"],
        )

    def save_call(self, call: Call) -> None:
        """Insert or update a call's model fields (``cards_open``/``record_url`` are the
        outbox's)."""
        values = {
            "id": call.id,
            "state": call.state,
            "direction": call.direction,
            "contact_phone": call.contact_phone,
            "contact_name": call.contact_name,
            "virtual_phone": call.virtual_phone,
            "started_at": call.started_at,
            "finished_at": call.finished_at,
            "updated_at": call.updated_at,
            "talked": int(call.talked),
            "talk_seconds": call.talk_seconds,
            "wait_seconds": call.wait_seconds,
            "total_seconds": call.total_seconds,
            "rang": json.dumps(call.rang),
            "carded": json.dumps(call.carded),
            "closed": json.dumps(call.closed),
            "talked_employee_id": call.talked_employee_id,
            "external_id": call.external_id,
            "file_link": call.file_link,
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "id")
        self.conn.execute(
            f"INSERT INTO calls ({columns}) VALUES ({marks}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}",
            tuple(values.values()),
        )

    def call_row(self, call_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        return dict(row) if row else None

    def live_calls_since(self, since: float, limit: int = 200) -> list[dict[str, Any]]:
        """Calls not yet final and updated at or after ``since``, the newest first (the
        ``state, updated_at`` index keeps this a short walk however long the history)."""
        rows = self.conn.execute(
            "SELECT id, contact_phone, virtual_phone, started_at FROM calls"
            " WHERE state IN ('ringing', 'waiting_answer', 'talking') AND updated_at >= ?"
            " ORDER BY updated_at DESC LIMIT ?", (since, limit)).fetchall()
        return [dict(r) for r in rows]

    def cards_open(self, call_id: int) -> list[int]:
        row = self.conn.execute("SELECT cards_open FROM calls WHERE id = ?", (call_id,)).fetchone()
        return json.loads(row[0] or "[]") if row else []

    def set_cards_open(self, call_id: int, employee_ids: list[int]) -> None:
        self.conn.execute(
            "UPDATE calls SET cards_open = ? WHERE id = ?", (json.dumps(employee_ids), call_id)
        )

    def set_record_url(self, call_id: int, url: str | None) -> None:
        self.conn.execute("UPDATE calls SET record_url = ? WHERE id = ?", (url, call_id))

    def recent_calls(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM calls ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, count(*) FROM calls GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def count_in_states(self, states: tuple[str, ...]) -> dict[str, int]:
        """How many calls are in each of ``states`` (an indexed count; absent states are 0)."""
        if not states:
            return {}
        marks = ", ".join("?" for _ in states)
        rows = self.conn.execute(
            f"SELECT state, count(*) FROM calls WHERE state IN ({marks}) GROUP BY state",
            states).fetchall()
        counts = {r[0]: r[1] for r in rows}
        return {state: counts.get(state, 0) for state in states}

    def call_exists(self, call_id: int) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM calls WHERE id = ?", (call_id,)).fetchone() is not None

    def set_end_reason(self, call_id: int, reason: str) -> None:
        """Say why the call ended the way it did (shown on its timeline)."""
        self.conn.execute("UPDATE calls SET end_reason = ? WHERE id = ?", (reason, call_id))

    # -- the sweeper's bookkeeping ------------------------------------------------------------

    def stale_calls(self, states: tuple[str, ...], updated_before: float, now: float,
                    limit: int) -> list[dict[str, Any]]:
        """Calls in ``states`` not updated since ``updated_before`` whose next sweep is due,
        the stalest first (id, state, started_at, updated_at, sweep_attempts)."""
        marks = ", ".join("?" for _ in states)
        rows = self.conn.execute(
            f"SELECT id, state, started_at, updated_at, sweep_attempts FROM calls"
            f" WHERE state IN ({marks}) AND updated_at <= ?"
            f" AND (sweep_next_at IS NULL OR sweep_next_at <= ?)"
            f" ORDER BY updated_at, id LIMIT ?",
            (*states, updated_before, now, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def note_sweep(self, call_id: int, note: str, *, next_at: float | None,
                   attempts: int | None) -> None:
        """Keep the sweeper's note; ``next_at``/``attempts`` change only when given."""
        self.conn.execute(
            "UPDATE calls SET sweep_note = ?, sweep_next_at = coalesce(?, sweep_next_at),"
            " sweep_attempts = coalesce(?, sweep_attempts) WHERE id = ?",
            (note, next_at, attempts, call_id))

    def end_sweep(self, call_id: int, *, end_reason: str | None, note: str,
                  attempts: int | None) -> None:
        """The sweeper is done with the call: no next sweep; ``end_reason``/``attempts``
        change only when given."""
        self.conn.execute(
            "UPDATE calls SET end_reason = coalesce(?, end_reason), sweep_note = ?,"
            " sweep_next_at = NULL, sweep_attempts = coalesce(?, sweep_attempts)"
            " WHERE id = ?",
            (end_reason, note, attempts, call_id))
