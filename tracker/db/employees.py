"""The employees table: the live mapping of UIS employees to retailCRM users and codes.

The configuration file seeds it at start-up (``sync_employees``); the admin API edits it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tracker.config import Employee
from tracker.db.rows import Rows

_EMPLOYEE_COLUMNS = ("crm_user_id", "code", "phone", "full_name", "tags")


class EmployeeRows(Rows):
    """Queries of the ``employees`` table."""

    def sync_employees(self, employees: Iterable[Employee], now: float | None = None) -> None:
        """Make the table hold exactly the configured employees (called at start-up).

        The file wins for ``crm_user_id``, ``code`` and ``phone`` (an edit made through the
        admin API lasts until the next start unless the file says the same); ``full_name`` and
        ``tags``, which only the admin API sets, are kept.
        """
        now = time.time() if now is None else now
        wanted = {e.uis_id: e for e in employees}
        with self.transaction():
            known = [r[0] for r in self.conn.execute("SELECT id FROM employees")]
            for uis_id in known:
                if uis_id not in wanted:
                    self.conn.execute("DELETE FROM employees WHERE id = ?", (uis_id,))
            for e in wanted.values():
                self.conn.execute(
                    "INSERT INTO employees (id, crm_user_id, code, phone, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                    " crm_user_id = excluded.crm_user_id, code = excluded.code,"
                    " phone = excluded.phone, updated_at = excluded.updated_at"
                    " WHERE crm_user_id IS NOT excluded.crm_user_id OR code IS NOT excluded.code"
                    " OR phone IS NOT excluded.phone",
                    (e.uis_id, e.crm_user_id, e.code, e.phone, now),
                )

    def employee_by_uis_id(self, uis_id: int | None) -> Employee | None:
        """The mapping for a UIS employee id, or None when it is not mapped (same contract as
        ``Settings.employee_by_uis_id``, but live: edits through the admin API apply at once)."""
        if uis_id is None:
            return None
        return self._employee("id = ?", uis_id)

    def employee_by_code(self, code: str | None) -> Employee | None:
        """The employee with this retailCRM extension code, or None."""
        return None if not code else self._employee("code = ?", code)

    def employee_by_crm_user_id(self, crm_user_id: int | None) -> Employee | None:
        """The employee mapped to this retailCRM user (the lowest UIS id if several), or None."""
        return None if crm_user_id is None else self._employee("crm_user_id = ?", crm_user_id)

    def all_employees(self) -> tuple[Employee, ...]:
        rows = self.conn.execute("SELECT id, crm_user_id, code, phone FROM employees ORDER BY id")
        return tuple(_employee_of(r) for r in rows)

    def update_employee(self, uis_id: int, changes: Mapping[str, Any], now: float) -> bool:
        """Set only the given columns (``crm_user_id``, ``code``, ``phone``, ``full_name``,
        ``tags`` as JSON text); False when there is no such employee."""
        columns = [c for c in changes if c in _EMPLOYEE_COLUMNS]
        assert len(columns) == len(changes), f"not employee columns: {set(changes) - set(columns)}"
        sets = ", ".join(f"{c} = ?" for c in columns)
        cursor = self.conn.execute(
            f"UPDATE employees SET {sets}, updated_at = ? WHERE id = ?",
            (*(changes[c] for c in columns), now, uis_id),
        )
        return cursor.rowcount == 1

    def _employee(self, where: str, value: Any) -> Employee | None:
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return None  # no such id, and SQLite could not even bind it
        row = self.conn.execute(
            f"SELECT id, crm_user_id, code, phone FROM employees WHERE {where} ORDER BY id LIMIT 1",
            (value,),
        ).fetchone()
        return None if row is None else _employee_of(row)

    def employee_exists(self, uis_id: int) -> bool:
        return self.conn.execute("SELECT 1 FROM employees WHERE id = ?",
                                 (uis_id,)).fetchone() is not None

    def employee_with_code(self, code: str, *, other_than: int) -> int | None:
        """The UIS id of another employee that has this extension code, if any."""
        row = self.conn.execute("SELECT id FROM employees WHERE code = ? AND id != ?",
                                (code, other_than)).fetchone()
        return None if row is None else int(row[0])

    def count_employees(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM employees").fetchone()[0])


def _employee_of(row: sqlite3.Row) -> Employee:
    return Employee(uis_id=row[0], crm_user_id=row[1], code=row[2], phone=row[3] or "")
