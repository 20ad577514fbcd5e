"""The warnings table: operator-facing problems (an unmapped employee, …), counted per subject."""

from __future__ import annotations

import time
from typing import Any

from tracker.db.rows import Rows


class WarningRows(Rows):
    """Queries of the ``warnings`` table."""

    def warn(self, kind: str, subject: str, message: str, now: float | None = None) -> None:
        """Record (or count again) an operator-facing warning, such as an unmapped employee."""
        now = time.time() if now is None else now
        self.conn.execute(
            "INSERT INTO warnings (kind, subject, message, count, first_at, last_at)"
            " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(kind, subject) DO UPDATE SET"
            " count = count + 1, last_at = excluded.last_at, message = excluded.message",
            (kind, subject, message, now, now),
        )

    def warnings(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM warnings ORDER BY last_at DESC").fetchall()
        return [dict(r) for r in rows]

    def count_warnings(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM warnings").fetchone()[0])
