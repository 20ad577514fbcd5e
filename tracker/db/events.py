"""The event journal: one row per notification received (or synthesised), de-duplicated."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from tracker.db.rows import Rows


class EventRows(Rows):
    """Queries of the ``events`` table."""

    def journal(self, **row: Any) -> int | None:
        """Insert an event row; ``None`` when its dedupe_key is already journaled."""
        row.setdefault("received_at", time.time())
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cursor = self.conn.execute(
            f"INSERT OR IGNORE INTO events ({columns}) VALUES ({marks})", tuple(row.values())
        )
        if cursor.rowcount == 0:
            return None
        return cursor.lastrowid

    def count_duplicate(self, dedupe_key: str) -> None:
        self.conn.execute(
            "UPDATE events SET duplicates = duplicates + 1 WHERE dedupe_key = ?", (dedupe_key,)
        )

    def set_event_states(self, event_id: int, before: str, after: str) -> None:
        self.conn.execute(
            "UPDATE events SET state_before = ?, state_after = ? WHERE id = ?",
            (before, after, event_id),
        )

    def events_for(self, call_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM events WHERE call_id = ? ORDER BY id", (call_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def count_events(self, outcome: str) -> int:
        """How many journaled notifications had this outcome (``accepted``, …)."""
        row = self.conn.execute("SELECT count(*) FROM events WHERE outcome = ?",
                                (outcome,)).fetchone()
        return int(row[0])

    def seed_events(self, rows: Iterable[tuple[float, int | None, str, str, str, str, str]]
                    ) -> None:
        """Bulk-insert journal rows (received_at, call_id, event, outcome, dedupe_key, method,
        body) in one transaction: the benchmark's large database."""
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO events (received_at, call_id, event, outcome, dedupe_key, method,"
                " body) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
