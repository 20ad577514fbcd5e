"""The SQLite store: opening and migrating the file, transactions, and the call-flow queries.

One connection, owned by the trio thread (sqlite3 connections are bound to their thread). WAL
mode; writes are short and synchronous. ``transaction()`` is the only way to write several rows
at once: it commits all or nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlite_utils

from tracker.config import Employee
from tracker.core.calls import Call
from tracker.db.migrations import MIGRATIONS
from tracker.errors import StoreError

# A pending row is its lane's head when no older row of the lane is pending (the lanes index).
_IS_LANE_HEAD = ("NOT EXISTS (SELECT 1 FROM outbox p WHERE p.status = 'pending'"
                 " AND p.lane = o.lane AND p.id < o.id)")


class _Transaction:
    """``Store.transaction()``: BEGIN IMMEDIATE … COMMIT, or a savepoint when nested."""

    __slots__ = ("_store", "_savepoint")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._savepoint: str | None = None

    def __enter__(self) -> None:
        store = self._store
        if store._depth:
            self._savepoint = f"nested_{store._depth}"
            store.conn.execute(f"SAVEPOINT {self._savepoint}")
        else:
            store.conn.execute("BEGIN IMMEDIATE")
        store._depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        store = self._store
        conn = store.conn
        store._depth -= 1
        if self._savepoint is not None:
            if kind is not None:
                conn.execute(f"ROLLBACK TO {self._savepoint}")
            conn.execute(f"RELEASE {self._savepoint}")
            return
        if kind is not None:
            conn.execute("ROLLBACK")
            return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:  # some failed commits leave the transaction open
                conn.execute("ROLLBACK")
            raise


class Store:
    """The database, with the queries tracker uses. Not thread-safe: use from one thread."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        if str(path) != ":memory:" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # owner-only from birth
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        self.db = sqlite_utils.Database(self.conn)
        self._depth = 0

    def close(self) -> None:
        self.conn.close()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations; return the schema version. Refuses a newer schema."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this tracker "
                f"({len(MIGRATIONS)}); upgrade tracker"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction():
                migration(self.db)
                self.conn.execute(f"PRAGMA user_version={number}")
        return len(MIGRATIONS)

    def integrity_ok(self) -> str:
        """``"ok"`` or SQLite's description of what is broken. The full ``integrity_check``, not
        ``quick_check``: only it sees an index that disagrees with its table, the kind of damage
        that makes de-duplication and lane order silently wrong. It reads the whole file: see
        ``integrity`` for when the daemon runs it before listening."""
        try:
            rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "; ".join(str(r[0]) for r in rows)

    def transaction(self) -> _Transaction:
        """All writes inside commit together or not at all. Nested use is a savepoint of the
        outer one: an exception leaving it undoes its writes alone (the outer goes on if the
        exception is caught). A plain class, not ``@contextmanager``: it runs several times for
        every notification."""
        return _Transaction(self)

    # -- journal ------------------------------------------------------------------------------

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

    # -- calls --------------------------------------------------------------------------------

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

    # -- outbox -------------------------------------------------------------------------------

    def enqueue(self, call_id: int | None, kind: str, priority: int, payload: dict[str, Any],
                now: float, *, lane: str | None = None) -> int:
        """Add an outbox row. Rows of one ``lane`` (default ``call:<id>``) are delivered in
        order, one at a time; other work (e.g. ``employee:<id>``) picks its own lane."""
        lane = lane if lane is not None else f"call:{call_id}"
        cursor = self.conn.execute(
            "INSERT INTO outbox (lane, call_id, kind, priority, payload, status, attempts, next_at,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (lane, call_id, kind, priority, json.dumps(payload), now, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def due_heads(self, now: float, exclude_lanes: set[str], limit: int) -> list[dict[str, Any]]:
        """The first pending row of each lane whose time has come, cards before uploads."""
        rows = self.conn.execute(
            f"""
            SELECT o.* FROM outbox o INDEXED BY idx_outbox_status_priority_id
            WHERE o.status = 'pending' AND o.next_at <= ? AND {_IS_LANE_HEAD}
            ORDER BY o.priority, o.id
            LIMIT ?
            """,
            (now, limit + len(exclude_lanes)),
        ).fetchall()
        return [dict(r) for r in rows if r["lane"] not in exclude_lanes][:limit]

    def next_due_at(self) -> float | None:
        """When the earliest lane head is due (None when nothing is pending)."""
        row = self.conn.execute(
            f"""
            SELECT o.next_at FROM outbox o INDEXED BY idx_outbox_status_next_at
            WHERE o.status = 'pending' AND {_IS_LANE_HEAD}
            ORDER BY o.next_at
            LIMIT 1
            """
        ).fetchone()
        return row[0] if row else None

    def finish_outbox(self, row_id: int, status: str, now: float, **extra: Any) -> None:
        """Mark a row delivered, dead or dropped, keeping the request and answer for the
        timeline."""
        self._update_outbox(row_id, ["status = ?", "updated_at = ?", "attempts = attempts + 1"],
                            [status, now], extra)

    def set_sent_at(self, row_id: int, at: float | None) -> None:
        """Mark (or clear, with None) an outbox row's request as sent without a known outcome."""
        self.conn.execute("UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NOT ?",
                          (at, row_id, at))

    def reschedule_outbox(self, row_id: int, next_at: float, now: float, *, count_attempt: bool,
                          **extra: Any) -> None:
        sets = ["next_at = ?", "updated_at = ?"]
        if count_attempt:
            sets.append("attempts = attempts + 1")
        self._update_outbox(row_id, sets, [next_at, now], extra)

    def _update_outbox(self, row_id: int, sets: list[str], values: list[Any],
                       extra: dict[str, Any]) -> None:
        """``UPDATE`` one row: ``sets`` with their ``values``, plus whichever of the kept
        exchange fields (last error, request, response) ``extra`` carries."""
        for key in ("last_error", "request", "response"):
            if key in extra:
                sets = [*sets, f"{key} = ?"]
                values = [*values, extra[key]]
        self.conn.execute(f"UPDATE outbox SET {', '.join(sets)} WHERE id = ?", [*values, row_id])

    def outbox_for(self, call_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE call_id = ? ORDER BY id", (call_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    def delivered_popups(self, call_id: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT payload FROM outbox "
            "WHERE call_id = ? AND kind = 'popup' AND status = 'delivered'",
            (call_id,),
        ).fetchall()
        return [json.loads(r[0])["employee_id"] for r in rows]

    def outbox_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        counts = {r[0]: r[1] for r in rows}
        retrying = self.conn.execute(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts > 0"
        ).fetchone()[0]
        counts["retrying"] = retrying
        return counts

    def enqueue_latest(self, kind: str, priority: int, payload: dict[str, Any], now: float, *,
                       lane: str) -> tuple[int, list[int]]:
        """Enqueue where only the newest change matters (an employee's status): older pending
        rows of ``kind`` on ``lane`` become ``superseded``. The new row keeps their retry time,
        so a backoff the upstream asked for still holds. Returns (new id, superseded ids)."""
        rows = self.conn.execute(
            "SELECT id, next_at FROM outbox WHERE lane = ? AND kind = ? AND status = 'pending'",
            (lane, kind),
        ).fetchall()
        row_id = self.enqueue(None, kind, priority, payload, now, lane=lane)
        older = [r["id"] for r in rows]
        if older:
            marks = ", ".join("?" for _ in older)
            self.conn.execute(
                f"UPDATE outbox SET status = 'superseded', updated_at = ?, last_error = ?"
                f" WHERE id IN ({marks})", (now, f"superseded by #{row_id}", *older))
            next_at = max([now, *(r["next_at"] for r in rows)])
            self.conn.execute("UPDATE outbox SET next_at = ? WHERE id = ?", (next_at, row_id))
        return row_id, older

    def lane_busy(self, lane: str) -> bool:
        """True while ``lane`` has a row waiting for delivery (or being delivered)."""
        return self.conn.execute(
            "SELECT 1 FROM outbox WHERE lane = ? AND status = 'pending' LIMIT 1", (lane,)
        ).fetchone() is not None

    def requeue_dead(self, row_ids: Iterable[int], now: float) -> list[int]:
        """Make these dead letters pending again, due now (the status page's and the admin
        API's retry); returns the ids that were dead. The caller wakes the outbox."""
        requeued = []
        for row_id in row_ids:
            cursor = self.conn.execute(
                "UPDATE outbox SET status = 'pending', next_at = ?, updated_at = ?"
                " WHERE id = ? AND status = 'dead'", (now, now, row_id))
            if cursor.rowcount:
                requeued.append(row_id)
        return requeued

    def dead_letters(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE status = 'dead' ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    # -- request log --------------------------------------------------------------------------

    def log_request(self, *, source: str, method: str, params: dict[str, Any], outcome: str,
                    status: int, duration_ms: float, key_name: str | None = None,
                    at: float | None = None) -> None:
        """Append to the request log; ``params`` must already have its secrets masked."""
        self.conn.execute(
            "INSERT INTO api_requests (at, source, key_name, method, params, outcome, status,"
            " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time() if at is None else at, source, key_name, method,
             json.dumps(params, ensure_ascii=False, default=str), outcome, status, duration_ms),
        )

    # -- employees: the live mapping --------------------------------------------------------

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

    # -- warnings -----------------------------------------------------------------------------

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


_EMPLOYEE_COLUMNS = ("crm_user_id", "code", "phone", "full_name", "tags")


def _employee_of(row: sqlite3.Row) -> Employee:
    return Employee(uis_id=row[0], crm_user_id=row[1], code=row[2], phone=row[3] or "")
