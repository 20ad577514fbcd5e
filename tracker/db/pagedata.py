"""What the status page shows, read from SQLite: filters, overview, call timeline. No web here.

The readers run in a worker thread on their own read-only connection (WAL lets it read while
the trio thread writes), under a time limit: an operator's filter that has to scan a large
table must neither stall the webhook path nor run for ever. Every filter becomes a fixed SQL
clause with ``?`` parameters; nothing typed by a user reaches SQL text.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import trio

from tracker.core import phones
from tracker.core.formatting import N_
from tracker.db import deals

T = TypeVar("T")

STATUS_PARTS = ("counters", "board", "pictures", "outbox", "callbacks", "recent", "deals",
                "warnings", "requests", "chart")
CALL_PARTS = ("callhead", "timeline")
DIRECTIONS = ("in", "out")
BOARD_LIMIT = 50  # calls shown per state in "in progress"
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
QUERY_SECONDS = 2.0  # a page query running longer is interrupted
_READERS = trio.CapacityLimiter(2)  # page reads in flight at once, whatever the number of viewers


NAME_WINDOW = 5000  # the newest notifications read for employee names UIS sent
CALLBACK_HORIZON = 2 * 86400  # a missed call returned later than this counts as not returned


class QueryTooSlow(Exception):
    """A page query hit ``QUERY_SECONDS``."""


@dataclass(frozen=True)
class Problem:
    """One ignored filter: ``text`` is a catalogue message (``%(name)s`` from ``params``)."""

    name: str  # the filter's field
    text: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}: {self.text % self.params if self.params else self.text}"


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
    problems: tuple[Problem, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.state or self.direction or self.employee is not None or self.phone
                    or self.since is not None or self.until is not None)


def parse_filters(args: Mapping[str, str], states: tuple[str, ...], tz: ZoneInfo,
                  region: str) -> Filters:
    """Read ``state``, ``direction``, ``employee``, ``phone``, ``since``, ``until``, ``limit``."""
    given = {k: str(args.get(k, "")).strip()[:100]
             for k in ("state", "direction", "employee", "phone", "since", "until", "limit")}
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    if given["state"]:
        if given["state"] in states:
            values["state"] = given["state"]
        else:
            problems.append(Problem("state", N_("unknown state %(value)s"),
                                    {"value": repr(given["state"])}))
    if given["direction"]:
        if given["direction"] in DIRECTIONS:
            values["direction"] = given["direction"]
        else:
            problems.append(Problem("direction", N_("must be in or out")))
    if given["employee"]:
        if given["employee"].isascii() and given["employee"].isdigit():
            values["employee"] = int(given["employee"])
        else:
            problems.append(Problem("employee", N_("must be a UIS employee id (digits)")))
    if given["phone"]:
        digits = "".join(ch for ch in given["phone"] if ch.isascii() and ch.isdigit())
        full = phones.to_digits(given["phone"], region) if len(digits) >= 10 else None
        if full and full.isdigit():
            digits = full  # "8 (999) 123-45-67" finds 79991234567
        if digits:
            values["phone"] = digits
        else:
            problems.append(Problem("phone", N_("give some digits of the number")))
    for name in ("since", "until"):
        if given[name]:
            moment = _moment(given[name], tz)
            if moment is None:
                problems.append(Problem(name, N_("expected a date and time like %(example)s"),
                                        {"example": "2024-05-17 14:00"}))
            else:
                values[name] = moment
    if given["limit"]:
        if given["limit"].isascii() and given["limit"].isdigit() and int(given["limit"]) > 0:
            values["limit"] = min(int(given["limit"]), MAX_LIMIT)
        else:
            problems.append(Problem("limit", N_("must be a number from 1 to %(max)s"),
                                    {"max": MAX_LIMIT}))
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
            conn.execute("PRAGMA temp_store=MEMORY")  # no temp files beside the state directory
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
                  with_log: bool, callback_target_minutes: float = 15.0) -> dict[str, Any]:
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
        "recent_error_seconds": QUERY_SECONDS,
        "recent": [],
        "callbacks": callbacks(conn, now=now, tz=tz, target_minutes=callback_target_minutes),
        "deals": read_deals(conn, now),
    }
    try:
        data["recent"] = _rows(conn, *recent_calls_query(filters))
    except sqlite3.OperationalError as exc:
        if "interrupted" not in str(exc):
            raise
        data["recent_error"] = N_("The search took over %(seconds)s s and was stopped: "
                                  "narrow it (a time range, a state).")
    shown = [c["id"] for rows in board.values() for c in rows] + [c["id"] for c in data["recent"]]
    data["customers"] = _customers(conn, shown)
    _learn_names(conn, data["employees"])
    for warning in data["warnings"]:
        subject = str(warning.get("subject") or "")
        warning["employee_id"] = (int(subject) if warning.get("kind") == "unmapped_employee"
                                  and subject.isascii() and subject.isdigit() else None)
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
            "employees": employees, "customers": _customers(conn, [call_id])}


# -- formatting helpers for the templates -----------------------------------------------------

CALLBACKS_LIMIT = 50  # missed calls listed on the page


def callbacks(conn: sqlite3.Connection, *, now: float, tz: ZoneInfo,
              target_minutes: float) -> dict[str, Any]:
    """Missed calls not yet returned (oldest first, with their age) and today's call-back
    figures: misses, returned, the median minutes to call back, the share returned within
    ``target_minutes`` (of all today's misses, returned or not)."""
    rows = conn.execute("SELECT call_id, number, missed_at FROM callbacks"
                        " WHERE returned_at IS NULL ORDER BY missed_at LIMIT ?",
                        (CALLBACKS_LIMIT,)).fetchall()
    waiting = [{"call_id": r[0], "number": r[1], "missed_at": r[2], "age": now - r[2]}
               for r in rows]
    total_open = conn.execute("SELECT count(*) FROM callbacks WHERE returned_at IS NULL"
                              ).fetchone()[0]
    midnight = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    today = conn.execute("SELECT missed_at, returned_at FROM callbacks WHERE missed_at >= ?"
                         " AND missed_at <= ?", (midnight.timestamp(), now)).fetchall()
    minutes = sorted((r[1] - r[0]) / 60 for r in today if r[1] is not None)
    median = statistics.median(minutes) if minutes else None
    within = sum(1 for m in minutes if m <= target_minutes)
    return {"open": waiting, "open_total": total_open, "target_minutes": target_minutes,
            "today": {"missed": len(today), "returned": len(minutes),
                      "median_minutes": None if median is None else round(median, 1),
                      "within_target_share": within / len(today) if today else None}}


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


def event_employee(body: str | None) -> int | None:
    """The UIS employee a notification names (``employee_id``), if any."""
    try:
        value = json.loads(body or "{}")
    except ValueError:
        return None
    uis_id = value.get("employee_id") if isinstance(value, dict) else None
    if isinstance(uis_id, str) and uis_id.isascii() and uis_id.isdigit():
        uis_id = int(uis_id)
    return uis_id if isinstance(uis_id, int) and not isinstance(uis_id, bool) else None


def _learn_names(conn: sqlite3.Connection, employees: dict[int, dict[str, Any]]) -> None:
    """Fill in the names of employees the mapping has none for, from the newest notifications
    (UIS sends ``employee_full_name``): a bounded read of the journal's newest rows."""
    if employees and all(e.get("full_name") for e in employees.values()):
        return
    last = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
    rows = conn.execute(
        "SELECT json_extract(body, '$.employee_id'), json_extract(body, '$.employee_full_name')"
        " FROM events WHERE id > ? AND json_valid(body)"
        " AND json_type(body, '$.employee_full_name') = 'text' ORDER BY id",
        (last - NAME_WINDOW,)).fetchall()
    for raw_id, name in rows:  # in id order: the newest name wins
        uis_id = raw_id if isinstance(raw_id, int) else (
            int(raw_id) if isinstance(raw_id, str) and raw_id.isascii() and raw_id.isdigit()
            else None)
        if uis_id is None or not name:
            continue
        known = employees.setdefault(uis_id, {"id": uis_id, "code": None, "full_name": None})
        if not known.get("full_name") or known.get("learned"):
            known["full_name"], known["learned"] = str(name)[:200], True


def _customers(conn: sqlite3.Connection, call_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The retailCRM customer of each call, as the routing look-up (``telephony/manager`` with
    ``details``) returned it and journaled it on the call (event ``route``): name and link."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(call_ids), 500):
        chunk = call_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT call_id, json_extract(body, '$.customer.name'),"
            f" json_extract(body, '$.customer.link') FROM events"
            f" WHERE call_id IN ({marks}) AND event = 'route' AND json_valid(body)"
            f" ORDER BY id", chunk).fetchall()
        for call_id, name, link in rows:
            if name:
                safe = link if isinstance(link, str) and link.startswith(("https://", "http://")) \
                    else None
                found[call_id] = {"name": str(name)[:200], "link": safe}
    return found


# -- the pictures of the day ------------------------------------------------------------------

def read_day(conn: sqlite3.Connection, *, tz: ZoneInfo, now: float) -> dict[str, Any]:
    """Today's calls against the same weekday last week, for the status page's pictures."""
    midnight = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight.timestamp()
    week_ago = (midnight - timedelta(days=7)).timestamp()  # a DST change moves it by an hour
    week_ago_end = (midnight - timedelta(days=6)).timestamp()
    columns = ("id, state, direction, contact_phone, started_at, finished_at, wait_seconds,"
               " talk_seconds, talked, talked_employee_id, rang")
    today = _rows(conn, f"SELECT {columns} FROM calls WHERE started_at >= ? AND started_at < ?",
                  (start, now + 1))
    before = conn.execute("SELECT started_at FROM calls WHERE started_at >= ? AND started_at < ?",
                          (week_ago, week_ago_end)).fetchall()
    hours = datetime.fromtimestamp(now, tz).hour + 1

    def hour_of(timestamp: float) -> int:
        return datetime.fromtimestamp(timestamp, tz).hour

    per_hour = [0] * 24
    for call in today:
        per_hour[hour_of(call["started_at"])] += 1
    last_week = [0] * 24
    for (started,) in before:
        last_week[hour_of(started)] += 1
    inbound = [c for c in today if c["direction"] == "in" and c["state"] in ("ended", "lost")]
    missed = [c for c in inbound if not _answered(c)]
    waits = sorted(c["wait_seconds"] for c in inbound
                   if _answered(c) and c["wait_seconds"] is not None)
    people: dict[int, dict[str, int]] = {}
    for call in today:
        if call["talked_employee_id"] is not None and _answered(call):
            people.setdefault(call["talked_employee_id"], {"answered": 0, "missed": 0})[
                "answered"] += 1
        if call["state"] == "lost":
            for uis_id in id_list(call["rang"]):
                people.setdefault(uis_id, {"answered": 0, "missed": 0})["missed"] += 1
    return {
        "hours": hours,
        "per_hour": per_hour,
        "last_week": last_week,
        "week_ago": week_ago,
        "inbound": len(inbound),
        "missed": len(missed),
        "median_wait": _median(waits),
        "waits": len(waits),
        "people": dict(sorted(people.items(), key=lambda kv: -sum(kv[1].values()))),
        "callbacks": _callbacks(conn, missed, now),
    }


def _answered(call: Mapping[str, Any]) -> bool:
    return call["state"] == "ended" or bool(call["talked"]) or bool(call["talk_seconds"])


def _median(values: list[int]) -> float | None:
    if not values:
        return None
    middle = len(values) // 2
    return float(values[middle]) if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


CALLBACK_BUCKETS = ((300, "5min"), (1800, "30min"), (7200, "2h"), (CALLBACK_HORIZON, "later"))


def _callbacks(conn: sqlite3.Connection, missed: list[dict[str, Any]],
               now: float) -> dict[str, Any]:
    """How long each missed inbound call of today waited to be returned: the next answered
    call with the same number, in either direction (computed from ``calls``; the CRM tasks of
    missed calls are another source and not read here)."""
    delays: list[float] = []
    open_calls = 0
    for call in missed:
        if not call["contact_phone"]:
            continue
        end = call["finished_at"] or call["started_at"]
        row = conn.execute(
            "SELECT min(started_at) FROM calls WHERE contact_phone = ? AND started_at > ?"
            " AND started_at < ? AND (state = 'ended' OR talked = 1 OR talk_seconds > 0)",
            (call["contact_phone"], call["started_at"], end + CALLBACK_HORIZON)).fetchone()
        if row[0] is None:
            open_calls += 1
        else:
            delays.append(max(0.0, row[0] - end))
    buckets = {name: 0 for _, name in CALLBACK_BUCKETS}
    for delay in delays:
        name = next(n for limit, n in CALLBACK_BUCKETS if delay < limit or n == "later")
        buckets[name] += 1
    return {"returned": len(delays), "waiting": open_calls, "buckets": buckets,
            "median": _median(sorted(int(d) for d in delays))}


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
