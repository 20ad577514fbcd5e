"""The deals loop's SQL: cursors, orders seen, their transitions, the structure sent to UIS.

Callers group these in ``store.transaction()``: a page of retailCRM history, its transitions,
the outbox rows that upload them and the advanced cursor commit together, so a crash re-reads
the page whole or not at all, and a re-read page adds nothing (``history_id`` is unique).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tracker.core.deals import LINK_WINDOW_SECONDS, OrderFacts, Stage
from tracker.db.store import Store

DEAL_KINDS = ("deals_structure", "deals_upload")
LANE = "deals"  # one lane: structure before the deals that use it, batches in order


def get_state(store: Store, key: str) -> str | None:
    row = store.conn.execute("SELECT value FROM deal_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_state(store: Store, key: str, value: str | None, now: float | None = None) -> None:
    store.conn.execute(
        "INSERT INTO deal_state (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (key, value, time.time() if now is None else now))


def timestamp(text: str, tz: ZoneInfo) -> float | None:
    """retailCRM's ``Y-m-d H:i:s`` (account time) as a Unix time."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz).timestamp()
    except (TypeError, ValueError):
        return None


# -- orders -----------------------------------------------------------------------------------


def order(store: Store, order_id: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM deal_orders WHERE order_id = ?",
                             (order_id,)).fetchone()
    return None if row is None else dict(row)


def known_orders(store: Store, order_ids: Iterable[int]) -> set[int]:
    ids = json.dumps(sorted(set(order_ids)))
    return {r[0] for r in store.conn.execute(
        "SELECT order_id FROM deal_orders WHERE order_id IN (SELECT value FROM json_each(?))",
        (ids,))}


def save_order(store: Store, facts: OrderFacts, tz: ZoneInfo, now: float) -> None:
    """Insert or refresh an order's facts (its link, skip reason and upload time stay)."""
    store.conn.execute(
        """INSERT INTO deal_orders (order_id, number, site, status, created_at, created_ts,
               amount, manager_id, customer_id, name, phones, emails, first_seen_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(order_id) DO UPDATE SET number = excluded.number, site = excluded.site,
               status = excluded.status, created_at = excluded.created_at,
               created_ts = excluded.created_ts, amount = excluded.amount,
               manager_id = excluded.manager_id, customer_id = excluded.customer_id,
               name = excluded.name, phones = excluded.phones, emails = excluded.emails,
               updated_at = excluded.updated_at""",
        (facts.order_id, facts.number, facts.site, facts.status, facts.created_at,
         timestamp(facts.created_at, tz), facts.amount, facts.manager_id, facts.customer_id,
         facts.name, json.dumps(list(facts.phones), ensure_ascii=False),
         json.dumps(list(facts.emails), ensure_ascii=False), now, now))


def set_order_status(store: Store, order_id: int, status: str, now: float) -> None:
    store.conn.execute("UPDATE deal_orders SET status = ?, updated_at = ? WHERE order_id = ?",
                       (status, now, order_id))


def link_and_skip(store: Store, order_id: int, call_id: int | None,
                  skipped_reason: str | None) -> None:
    store.conn.execute("UPDATE deal_orders SET call_id = ?, skipped_reason = ? WHERE order_id = ?",
                       (call_id, skipped_reason, order_id))


def mark_deleted(store: Store, order_id: int, now: float) -> None:
    store.conn.execute("UPDATE deal_orders SET deleted = 1, updated_at = ? WHERE order_id = ?",
                       (now, order_id))


def mark_uploaded(store: Store, order_ids: Iterable[int], transition_ids: Iterable[int],
                  now: float) -> None:
    """The deals of these orders (these transitions) reached UIS."""
    store.conn.execute(
        "UPDATE deal_orders SET uploaded_at = ? WHERE order_id IN"
        " (SELECT value FROM json_each(?))", (now, json.dumps(sorted(set(order_ids)))))
    store.conn.execute(
        "UPDATE deal_transitions SET uploaded_at = ? WHERE id IN"
        " (SELECT value FROM json_each(?))", (now, json.dumps(sorted(set(transition_ids)))))


def call_for_order(store: Store, phones: Iterable[str], created_ts: float | None) -> int | None:
    """The call tracker knows that led to an order: the customer's last call (any of the
    order's numbers, UIS digits) before the order was created, within UIS's 30-day window.
    An order tracker created for a call is found the same way: that call came just before."""
    numbers = sorted(set(phones))
    if not numbers or created_ts is None:
        return None
    row = store.conn.execute(
        "SELECT id FROM calls WHERE contact_phone IN (SELECT value FROM json_each(?))"
        " AND started_at <= ? AND started_at >= ? ORDER BY started_at DESC LIMIT 1",
        (json.dumps(numbers), created_ts + 1.0, created_ts - LINK_WINDOW_SECONDS)).fetchone()
    return None if row is None else int(row[0])


# -- transitions ------------------------------------------------------------------------------


def add_transition(store: Store, history_id: int, order_id: int, kind: str,
                   status: str | None, at: str, stage_at: str) -> int | None:
    """Record what a history entry did; None when that entry was recorded before."""
    try:
        cursor = store.conn.execute(
            "INSERT INTO deal_transitions (history_id, order_id, kind, status, at, stage_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", (history_id, order_id, kind, status, at, stage_at))
    except sqlite3.IntegrityError:
        return None
    return cursor.lastrowid


def last_stage(store: Store, order_id: int) -> tuple[str | None, str | None]:
    """The status an order reached last, and when (from its recorded transitions)."""
    row = store.conn.execute(
        "SELECT status, stage_at FROM deal_transitions WHERE order_id = ? AND kind = 'stage'"
        " ORDER BY id DESC LIMIT 1", (order_id,)).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def transitions(store: Store, ids: Iterable[int]) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT * FROM deal_transitions WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(sorted(set(ids))),)).fetchall()
    return [dict(r) for r in rows]


def transitions_of(store: Store, order_id: int) -> list[dict[str, Any]]:
    rows = store.conn.execute("SELECT * FROM deal_transitions WHERE order_id = ? ORDER BY id",
                              (order_id,)).fetchall()
    return [dict(r) for r in rows]


# -- structure --------------------------------------------------------------------------------


def structure_digest(store: Store, kind: str, ext_id: str) -> str | None:
    row = store.conn.execute("SELECT digest FROM deal_structure WHERE kind = ? AND ext_id = ?",
                             (kind, ext_id)).fetchone()
    return None if row is None else str(row[0])


def structure_digests(store: Store, kind: str) -> dict[str, str]:
    return {r[0]: r[1] for r in store.conn.execute(
        "SELECT ext_id, digest FROM deal_structure WHERE kind = ?", (kind,))}


def set_structure(store: Store, kind: str, ext_id: str, digest: str, value: Any,
                  now: float) -> None:
    store.conn.execute(
        "INSERT INTO deal_structure (kind, ext_id, digest, value, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, ext_id) DO UPDATE SET"
        " digest = excluded.digest, value = excluded.value, updated_at = excluded.updated_at",
        (kind, ext_id, digest, json.dumps(value, ensure_ascii=False), now))


def save_stages(store: Store, stages: dict[str, Stage], now: float) -> None:
    """Replace the status -> stage mapping."""
    store.conn.execute("DELETE FROM deal_structure WHERE kind = 'status'")
    for code, stage in stages.items():
        set_structure(store, "status", code, stage.ext_id,
                      {"ext_id": stage.ext_id, "outcome": stage.outcome, "group": stage.group},
                      now)


def stages(store: Store) -> dict[str, Stage]:
    rows = store.conn.execute("SELECT ext_id, value FROM deal_structure WHERE kind = 'status'")
    out = {}
    for code, value in rows:
        data = json.loads(value)
        out[code] = Stage(data["ext_id"], data["outcome"], data["group"])
    return out


def lane_counts(store: Store) -> dict[str, int]:
    """The deals lane's outbox rows by status (the backfill's progress)."""
    rows = store.conn.execute("SELECT status, count(*) FROM outbox WHERE lane = ?"
                              " GROUP BY status", (LANE,)).fetchall()
    return {r[0]: r[1] for r in rows}
