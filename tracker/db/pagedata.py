"""What the status page shows, read from SQLite: filters, overview, call timeline. No web here.

The readers run in a worker thread on their own read-only connection (WAL lets it read while
the trio thread writes), under a time limit: an operator's filter that has to scan a large
table must neither stall the webhook path nor run for ever. Every filter becomes a fixed SQL
clause with ``?`` parameters; nothing typed by a user reaches SQL text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import trio

from tracker.core import phones
from tracker.db import deals

T = TypeVar("T")

STATUS_PARTS = ("counters", "board", "outbox", "recent", "warnings", "requests", "chart")
CALL_PARTS = ("callhead", "timeline")
DIRECTIONS = ("in", "out")
BOARD_LIMIT = 50  # calls shown per state in "in progress"
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
QUERY_SECONDS = 2.0  # a page query running longer is interrupted
_READERS = trio.CapacityLimiter(2)  # page reads in flight at once, whatever the number of viewers


class QueryTooSlow(Exception):
    """A page query hit ``QUERY_SECONDS``."""


@dataclass(frozen=True)
class Filters:
    """The recent-calls filters, validated; ``problems`` says what was ignored and why."""

    state: str = ""
    direction: str = ""
    employee: int | None = None
    phone: str = ""  # digits
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    given: Mapping[str, str] = field(default_factory=dict)  # as typed, to refill the form
    problems: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.state or self.direction or self.employee is not None or self.phone
                    or self.since is not None or self.until is not None)


def parse_filters(args: Mapping[str, str], states: tuple[str, ...], tz: ZoneInfo,
                  region: str) -> Filters:
    """Read ``state``, ``direction``, ``employee``, ``phone``, ``since``, ``until``, ``limit``."""
    given = {k: str(args.get(k, "")).strip()[:100]
             for k in ("state", "direction", "employee", "phone", "since", "until", "limit")}
    problems: list[str] = []
    values: dict[str, Any] = {}
    if given["state"]:
        if given["state"] in states:
            values["state"] = given["state"]
        else:
            problems.append(f"state: unknown state {given['state']!r}")
    if given["direction"]:
        if given["direction"] in DIRECTIONS:
            values["direction"] = given["direction"]
        else:
            problems.append("direction: must be in or out")
    if given["employee"]:
        if given["employee"].isascii() and given["employee"].isdigit():
            values["employee"] = int(given["employee"])
        else:
            problems.append("employee: must be a UIS employee id (digits)")
    if given["phone"]:
        digits = "".join(ch for ch in given["phone"] if ch.isascii() and ch.isdigit())
        full = phones.to_digits(given["phone"], region) if len(digits) >= 10 else None
        if full and full.isdigit():
            digits = full  # "8 (999) 123-45-67" finds 79991234567
        if digits:
            values["phone"] = digits
        else:
            problems.append("phone: give some digits of the number")
    for name in ("since", "until"):
        if given[name]:
            moment = _moment(given[name], tz)
            if moment is None:
                problems.append(f"{name}: expected a date and time like 2024-05-17 14:00")
            else:
                values[name] = moment
    if given["limit"]:
        if given["limit"].isascii() and given["limit"].isdigit() and int(given["limit"]) > 0:
            values["limit"] = min(int(given["limit"]), MAX_LIMIT)
        else:
            problems.append(f"limit: must be a number from 1 to {MAX_LIMIT}")
    return Filters(**values, given=given, problems=tuple(problems))


def _moment(text: str, tz: ZoneInfo) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.timestamp()


def recent_calls_query(filters: Filters) -> tuple[str, list[Any]]:
    """The SQL and parameters of the recent-calls table (fixed clauses, ``?`` values)."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.state:
        clauses.append("state = ?")
        params.append(filters.state)
    if filters.direction:
        clauses.append("direction = ?")
        params.append(filters.direction)
    if filters.employee is not None:
        clauses.append("(talked_employee_id = ? OR EXISTS"
                       " (SELECT 1 FROM json_each(calls.rang) WHERE value = ?))")
        params += [filters.employee, filters.employee]
    if filters.phone:
        clauses.append("instr(contact_phone, ?) > 0")
        params.append(filters.phone)
    if filters.since is not None:
        clauses.append("started_at >= ?")
        params.append(filters.since)
    if filters.until is not None:
        clauses.append("started_at < ?")
        params.append(filters.until)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT * FROM calls{where} ORDER BY updated_at DESC LIMIT ?", [*params, filters.limit]


# -- reading ----------------------------------------------------------------------------------

async def read(path: Path, reader: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``reader`` in a worker thread on a read-only connection to the database at ``path``.

    Raises ``QueryTooSlow`` past ``QUERY_SECONDS``.
    """
    def run() -> T:
        uri = Path(path).resolve().as_uri() + "?mode=ro"  # as_uri escapes "?" and "#"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            deadline = time.monotonic() + QUERY_SECONDS
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            try:
                return reader(conn)
            except sqlite3.OperationalError as exc:
                if "interrupted" in str(exc):
                    raise QueryTooSlow(f"the query took over {QUERY_SECONDS:g}s") from None
                raise
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run, limiter=_READERS)


def _rows(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sql, params).fetchall()]


def read_overview(conn: sqlite3.Connection, *, filters: Filters, states: tuple[str, ...],
                  final_states: frozenset[str], tz: ZoneInfo, now: float,
                  with_log: bool) -> dict[str, Any]:
    """Everything on the status page that comes from the database."""
    active = [s for s in states if s not in final_states]
    midnight = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    # Each count is a range of the (state, updated_at) index: cheap however old the table is.
    counts = {s: conn.execute("SELECT count(*) FROM calls WHERE state = ?", (s,)).fetchone()[0]
              for s in active}
    today = {s: conn.execute("SELECT count(*) FROM calls WHERE state = ? AND updated_at >= ?",
                             (s, midnight.timestamp())).fetchone()[0] for s in states}
    board = {s: _rows(conn, "SELECT * FROM calls WHERE state = ? ORDER BY updated_at DESC"
                            " LIMIT ?", (s, BOARD_LIMIT)) for s in active}
    outbox = {s: conn.execute("SELECT count(*) FROM outbox WHERE status = ?", (s,)).fetchone()[0]
              for s in ("pending", "dead")}
    oldest = conn.execute("SELECT created_at FROM outbox WHERE status = 'pending' ORDER BY id"
                          " LIMIT 1").fetchone()
    data: dict[str, Any] = {
        "now": now,
        "states": states,
        "active_states": active,
        "final_states": final_states,
        "counts": counts,
        "today": today,
        "board": board,
        "notifications": _notifications_since(conn, now - 3600),
        "outbox_counts": outbox,
        "oldest_pending_at": oldest[0] if oldest else None,
        "retrying": _rows(conn, "SELECT * FROM outbox WHERE status = 'pending' AND attempts > 0"
                                " ORDER BY id LIMIT 20"),
        "retrying_total": conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'"
                                       " AND attempts > 0").fetchone()[0],
        "dead": _rows(conn, "SELECT * FROM outbox WHERE status = 'dead' ORDER BY id DESC"
                            " LIMIT 50"),
        "warnings": _rows(conn, "SELECT * FROM warnings ORDER BY last_at DESC LIMIT 100"),
        "employees": _employees(conn),
        "recent_error": None,
        "recent": [],
    }
    try:
        data["recent"] = _rows(conn, *recent_calls_query(filters))
    except sqlite3.OperationalError as exc:
        if "interrupted" not in str(exc):
            raise
        data["recent_error"] = (f"The search took over {QUERY_SECONDS:g} s and was stopped: "
                                "narrow it (a time range, a state).")
    if with_log:
        data["requests"] = _rows(conn, "SELECT * FROM api_requests ORDER BY id DESC LIMIT 20")
    return data


def _notifications_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Notifications by outcome since ``since``: a binary search over the append-only journal
    finds the first id, so this reads an hour of rows, not the whole table."""
    last = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    if last is None:
        return {}
    low, high = 1, last + 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT received_at FROM events WHERE id >= ? ORDER BY id LIMIT 1",
                           (middle,)).fetchone()
        if row is None or (row[0] or 0) >= since:
            high = middle
        else:
            low = middle + 1
    rows = conn.execute("SELECT outcome, count(*), total(duplicates) FROM events WHERE id >= ?"
                        " GROUP BY outcome", (low,)).fetchall()
    counts = {r[0]: r[1] for r in rows}
    duplicates = int(sum(r[2] for r in rows))
    if duplicates:
        counts["duplicate"] = duplicates
    return counts


def _employees(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    try:
        rows = conn.execute("SELECT id, code, crm_user_id, full_name FROM employees").fetchall()
    except sqlite3.OperationalError:  # an older schema without the live mapping
        return {}
    return {r["id"]: dict(r) for r in rows}


def read_call(conn: sqlite3.Connection, call_id: int) -> dict[str, Any] | None:
    """One call, its journal and its outbox rows, merged into one timeline in time order."""
    rows = _rows(conn, "SELECT * FROM calls WHERE id = ?", (call_id,))
    if not rows:
        return None
    events = _rows(conn, "SELECT * FROM events WHERE call_id = ? ORDER BY id", (call_id,))
    outbox = _rows(conn, "SELECT * FROM outbox WHERE call_id = ? ORDER BY id", (call_id,))
    # An action is queued in the same transaction as the notification that caused it, with the
    # same time: the notification sorts first.
    timeline = sorted(
        [{"at": e["received_at"], "kind": "notification", "row": e, "order": (0, e["id"])}
         for e in events]
        + [{"at": o["created_at"], "kind": "action", "row": o, "order": (1, o["id"])}
           for o in outbox],
        key=lambda item: (item["at"] or 0, item["order"]),
    )
    employees: dict[int, dict[str, Any]] = _employees(conn)
    for uis_id, name in _names_from(events).items():
        known = employees.setdefault(uis_id, {"id": uis_id, "code": None})
        known["full_name"] = known.get("full_name") or name
    return {"call": rows[0], "events": events, "outbox": outbox, "timeline": timeline,
            "employees": employees}


# -- formatting helpers for the templates -----------------------------------------------------

def when(timestamp: float | None, tz: ZoneInfo) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``5 h``, ``2 d`` (a duration, rounded down)."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def pretty(text: str | None) -> str:
    """JSON text indented for reading; anything else as it is."""
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


def id_list(text: str | None) -> list[int]:
    """A JSON array of employee ids as stored in ``calls`` (``rang``, ``cards_open``)."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def employee_label(employees: Mapping[int, Mapping[str, Any]], uis_id: int | None) -> str:
    """``Анна Иванова · code 101``, ``UIS 101 · code 101`` or ``UIS 13421 (not mapped)``."""
    if uis_id is None:
        return ""
    known = employees.get(uis_id)
    if known is None or known.get("code") is None:
        name = known.get("full_name") if known else None
        return f"{name or f'UIS {uis_id}'} (not mapped)"
    return f"{known.get('full_name') or f'UIS {uis_id}'} · code {known['code']}"


def _names_from(events: list[dict[str, Any]]) -> dict[int, str]:
    """Employee names as UIS sent them in this call's notifications."""
    names: dict[int, str] = {}
    for event in events:
        try:
            body = json.loads(event["body"] or "{}")
        except ValueError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("employee_full_name"), str):
            continue
        uis_id = body.get("employee_id")
        if isinstance(uis_id, str) and uis_id.isascii() and uis_id.isdigit():
            uis_id = int(uis_id)
        if isinstance(uis_id, int) and not isinstance(uis_id, bool):
            names[uis_id] = body["employee_full_name"][:200]
    return names


# -- the deals loop (issue 15; the part parts/deals.html) -------------------------------------


def read_deals(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    """What the status page shows of the deals loop (plain data; works on a read-only
    connection, and on a database the deals loop never ran on)."""

    def one(sql: str, *args: Any) -> Any:
        row = conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    try:
        state = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT key, value, updated_at FROM deal_state")}
    except sqlite3.OperationalError:  # not migrated yet
        return {"available": False}
    caught_up = state.get("caught_up_at", (None, None))[0]
    outbox = {r[0]: r[1] for r in conn.execute(
        "SELECT status, count(*) FROM outbox WHERE kind IN (?, ?) GROUP BY status",
        deals.DEAL_KINDS)}
    skipped = [dict(r) for r in conn.execute(
        "SELECT order_id, number, skipped_reason, updated_at FROM deal_orders"
        " WHERE skipped_reason IS NOT NULL ORDER BY updated_at DESC LIMIT 20")]
    return {
        "available": True,
        "cursor": state.get("since_id", (None, None))[0],
        "orders_seen": one("SELECT count(*) FROM deal_orders") or 0,
        "deals_uploaded": one("SELECT count(*) FROM deal_orders WHERE uploaded_at IS NOT NULL")
        or 0,
        "transitions_uploaded": one(
            "SELECT count(*) FROM deal_transitions WHERE uploaded_at IS NOT NULL") or 0,
        "linked": one("SELECT count(*) FROM deal_orders WHERE call_id IS NOT NULL") or 0,
        "skipped_total": one("SELECT count(*) FROM deal_orders WHERE skipped_reason IS NOT NULL")
        or 0,
        "skipped": skipped,
        "lag_seconds": None if caught_up is None else max(0.0, now - float(caught_up)),
        "last_error": state.get("last_error", (None, None))[0],
        "last_error_at": state.get("last_error", (None, None))[1],
        "pending": outbox.get("pending", 0),
        "dead": outbox.get("dead", 0),
    }
