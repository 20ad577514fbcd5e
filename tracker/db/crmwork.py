"""SQL of the CRM work: customers per number, open call-back tasks, missed calls and returns,
and each call's attribution (tables of migration 7)."""

from __future__ import annotations

import json
from typing import Any

from tracker.db.store import Store

# -- customers ---------------------------------------------------------------------------------


def customer_for(store: Store, number: str) -> dict[str, Any] | None:
    """What tracker knows of the retailCRM customer with this number, or None."""
    row = store.conn.execute("SELECT * FROM crm_customers WHERE number = ?", (number,)).fetchone()
    return dict(row) if row else None


def remember_customer(store: Store, number: str, customer_id: int, *, manager_id: int | None,
                      origin: str, call_id: int | None, at: float) -> None:
    """Keep the customer found or created for ``number`` (the first one stays)."""
    store.conn.execute(
        "INSERT INTO crm_customers (number, customer_id, manager_id, origin, call_id, at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(number) DO NOTHING",
        (number, customer_id, manager_id, origin, call_id, at))


# -- tasks -------------------------------------------------------------------------------------


def open_task(store: Store, number: str) -> dict[str, Any] | None:
    """The number's open call-back task, or None."""
    row = store.conn.execute(
        "SELECT * FROM crm_tasks WHERE number = ? AND completed_at IS NULL", (number,)).fetchone()
    return dict(row) if row else None


def task_for_call(store: Store, call_id: int) -> dict[str, Any] | None:
    """The task this missed call opened or was added to (its commentary names the call)."""
    row = store.conn.execute(
        "SELECT * FROM crm_tasks WHERE call_id = ? OR commentary LIKE ? ORDER BY id LIMIT 1",
        (call_id, f"%UIS call {call_id}%")).fetchone()
    return dict(row) if row else None


def remember_task(store: Store, number: str, task_id: int, *, call_id: int, performer_id: int,
                  commentary: str, at: float) -> None:
    store.conn.execute(
        "INSERT INTO crm_tasks (number, task_id, call_id, performer_id, misses, commentary,"
        " opened_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
        (number, task_id, call_id, performer_id, commentary, at))


def add_miss(store: Store, row_id: int, commentary: str) -> None:
    store.conn.execute("UPDATE crm_tasks SET misses = misses + 1, commentary = ? WHERE id = ?",
                       (commentary, row_id))


def complete_task(store: Store, row_id: int, *, call_id: int, at: float) -> None:
    store.conn.execute("UPDATE crm_tasks SET completed_at = ?, completed_call_id = ? WHERE id = ?"
                       " AND completed_at IS NULL", (at, call_id, row_id))


# -- missed calls and their return (written by ingest, in the notification's transaction) -----


def note_miss(store: Store, call_id: int, number: str, missed_at: float) -> None:
    store.conn.execute("INSERT OR IGNORE INTO callbacks (call_id, number, missed_at)"
                       " VALUES (?, ?, ?)", (call_id, number, missed_at))


def note_reach(store: Store, call_id: int, number: str, at: float, employee_id: int | None,
               direction: str) -> None:
    """Mark the number's unreturned misses (before ``at``) returned by this call."""
    store.conn.execute(
        "UPDATE callbacks SET returned_at = ?, returned_call_id = ?, returned_by = ?,"
        " direction = ? WHERE number = ? AND returned_at IS NULL AND missed_at <= ?",
        (at, call_id, employee_id, direction, number, at))


def first_open_miss(store: Store, number: str) -> float | None:
    """When the number's oldest miss not yet returned happened (None when there is none)."""
    row = store.conn.execute("SELECT min(missed_at) FROM callbacks WHERE number = ?"
                             " AND returned_at IS NULL", (number,)).fetchone()
    return row[0] if row else None


def miss_of(store: Store, call_id: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM callbacks WHERE call_id = ?", (call_id,)).fetchone()
    return dict(row) if row else None


# -- attribution -------------------------------------------------------------------------------


def attribution(store: Store, call_id: int) -> dict[str, Any] | None:
    """The call's stored attribution; None when it was never looked up."""
    row = store.conn.execute("SELECT attribution FROM calls WHERE id = ?", (call_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    value = json.loads(row[0])
    return value if isinstance(value, dict) else {}


def set_attribution(store: Store, call_id: int, value: dict[str, Any]) -> None:
    store.conn.execute("UPDATE calls SET attribution = ? WHERE id = ?",
                       (json.dumps(value, ensure_ascii=False), call_id))
