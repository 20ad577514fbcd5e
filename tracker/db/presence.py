"""Employee status sync's tables: what each side last showed (``employee_presence``) and the
journal of changes (``status_changes``)."""

from __future__ import annotations

from typing import Any

from tracker.config import Employee
from tracker.db.rows import Rows

_SIDES = ("crm", "uis")


class PresenceRows(Rows):
    """Queries of ``employee_presence`` and ``status_changes``."""

    def presence(self, uis_id: int) -> dict[str, Any] | None:
        """What each side last showed for ``uis_id`` and who made it so, if known."""
        row = self.conn.execute("SELECT * FROM employee_presence WHERE uis_id = ?",
                                (uis_id,)).fetchone()
        return dict(row) if row else None

    def remember_presence(self, employee: Employee, side: str, value: str, by: str,
                          now: float) -> None:
        """``side`` (``crm`` or ``uis``) now shows ``value``, made so by ``by``."""
        assert side in _SIDES, side
        column = "crm_status" if side == "crm" else "uis_state"
        self.conn.execute(
            f"INSERT INTO employee_presence (uis_id, crm_user_id, {column}, {side}_by,"
            f" {side}_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(uis_id) DO UPDATE SET crm_user_id ="
            f" excluded.crm_user_id, {column} = excluded.{column}, {side}_by = excluded.{side}_by,"
            f" {side}_at = excluded.{side}_at",
            (employee.uis_id, employee.crm_user_id, value, by, now),
        )

    def journal_status_change(self, direction: str, employee: Employee, crm_status: str | None,
                              uis_state: str | None, outcome: str, now: float,
                              outbox_id: int | None = None) -> None:
        self.conn.execute(
            "INSERT INTO status_changes (at, direction, uis_id, crm_user_id, crm_status,"
            " uis_state, outcome, outbox_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now, direction, employee.uis_id, employee.crm_user_id, crm_status, uis_state,
             outcome, outbox_id),
        )
