"""The clicks table: the click-to-call journal, which is also the double-click guard."""

from __future__ import annotations

from typing import Any

from tracker.config import Employee
from tracker.db.rows import Rows


class ClickRows(Rows):
    """Queries of the ``clicks`` table."""

    def recent_click(self, uis_id: int, contact: str, since: float,
                     outcomes: tuple[str, ...]) -> dict[str, Any] | None:
        """The first click since ``since`` of this employee to this number that ended in one
        of ``outcomes``, if any."""
        marks = ", ".join("?" for _ in outcomes)
        row = self.conn.execute(
            f"SELECT * FROM clicks WHERE uis_id = ? AND contact = ? AND at >= ?"
            f" AND outcome IN ({marks}) ORDER BY id LIMIT 1",
            (uis_id, contact, since, *outcomes),
        ).fetchone()
        return dict(row) if row else None

    def insert_click(self, employee: Employee, phone: str, contact: str,
                     virtual_phone: str | None, now: float, *,
                     duplicate_of: int | None) -> int:
        """A new click, ``pending`` until ``finish_click``; returns its id."""
        cursor = self.conn.execute(
            "INSERT INTO clicks (at, crm_user_id, code, uis_id, phone, contact, virtual_phone,"
            " outcome, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (now, employee.crm_user_id, employee.code, employee.uis_id, phone, contact,
             virtual_phone, duplicate_of),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def set_click_external_id(self, click_id: int, external_id: str) -> None:
        self.conn.execute("UPDATE clicks SET external_id = ? WHERE id = ?",
                          (external_id, click_id))

    def finish_click(self, click_id: int, outcome: str, message: str | None,
                     session_id: int | None, duration_ms: float) -> None:
        self.conn.execute(
            "UPDATE clicks SET outcome = ?, message = ?, call_session_id = ?, duration_ms = ?"
            " WHERE id = ?",
            (outcome, message, session_id, duration_ms, click_id),
        )

    def journal_refused_click(self, at: float, crm_user_id: int | None, code: str | None,
                              phone: str, outcome: str, message: str | None,
                              duration_ms: float) -> None:
        """A click refused before it was planned (unmapped, bad parameters)."""
        self.conn.execute(
            "INSERT INTO clicks (at, crm_user_id, code, phone, outcome, message, duration_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, crm_user_id, code, phone, outcome, message, duration_ms),
        )

    def click_for_session(self, session_id: int) -> dict[str, Any] | None:
        """The click that started a UIS session (by the ``external_id`` UIS echoed), if any."""
        row = self.conn.execute(
            "SELECT k.* FROM clicks k JOIN calls c ON c.external_id = k.external_id"
            " WHERE c.id = ?", (session_id,),
        ).fetchone()
        return dict(row) if row else None
