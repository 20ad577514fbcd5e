"""The schema's versioned migrations, applied in order at start-up (``Store.migrate``).

Migration N brings a database from version N-1 to N; ``PRAGMA user_version`` holds the version.
A migration is appended, never edited once released, and none is ever removed: the version
numbers of databases in the field must keep their meaning (migration 5 is empty for that reason).
"""

from __future__ import annotations

import sqlite_utils


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("calls").create(
        {
            "id": int,
            "state": str,
            "direction": str,
            "contact_phone": str,
            "contact_name": str,
            "virtual_phone": str,
            "started_at": float,
            "finished_at": float,
            "updated_at": float,
            "talked": int,
            "talk_seconds": int,
            "wait_seconds": int,
            "total_seconds": int,
            "rang": str,
            "carded": str,
            "closed": str,
            "cards_open": str,
            "talked_employee_id": int,
            "external_id": str,
            "file_link": str,
            "record_url": str,
        },
        pk="id",
        not_null={"state"},
    )
    db.table("calls").create_index(["state", "updated_at"])
    db.table("calls").create_index(["updated_at"])
    db.table("events").create(
        {
            "id": int,
            "received_at": float,
            "call_id": int,
            "event": str,
            "outcome": str,
            "dedupe_key": str,
            "duplicates": int,
            "state_before": str,
            "state_after": str,
            "error": str,
            "method": str,
            "body": str,
        },
        pk="id",
        defaults={"duplicates": 0},
    )
    db.table("events").create_index(["dedupe_key"], unique=True)
    db.table("events").create_index(["call_id", "id"])
    db.table("outbox").create(
        {
            "id": int,
            "lane": str,
            "call_id": int,
            "kind": str,
            "priority": int,
            "payload": str,
            "status": str,
            "attempts": int,
            "next_at": float,
            "created_at": float,
            "updated_at": float,
            "last_error": str,
            "request": str,
            "response": str,
        },
        pk="id",
        not_null={"lane", "kind", "status"},
        defaults={"attempts": 0, "priority": 0},
    )
    db.table("outbox").create_index(["status", "lane", "id"])
    db.table("outbox").create_index(["call_id", "id"])
    db.table("warnings").create(
        {
            "id": int,
            "kind": str,
            "subject": str,
            "message": str,
            "count": int,
            "first_at": float,
            "last_at": float,
        },
        pk="id",
    )
    db.table("warnings").create_index(["kind", "subject"], unique=True)
    # The request log: admin API calls and retailCRM callbacks (make-call, user-status).
    db.table("api_requests").create(
        {
            "id": int,
            "at": float,
            "source": str,  # "admin" | "crm" | "uis"
            "key_name": str,
            "method": str,
            "params": str,  # JSON, secrets masked
            "outcome": str,  # "ok" or an error mnemonic
            "status": int,  # HTTP status answered
            "duration_ms": float,
        },
        pk="id",
    )
    db.table("api_requests").create_index(["at"])


def _migration_2(db: sqlite_utils.Database) -> None:
    """Click-to-call journal, employee status journal and what each side last showed."""
    # Every make-call request that passed the clientId check. It is also the double-click
    # guard: a click row younger than click.dedupe_seconds for the same employee and number.
    db.table("clicks").create(
        {
            "id": int,
            "at": float,
            "crm_user_id": int,
            "code": str,
            "uis_id": int,
            "phone": str,  # as retailCRM sent it
            "contact": str,  # normalised digits dialled
            "virtual_phone": str,
            "external_id": str,  # sent to start.employee_call; UIS echoes it in notifications
            "outcome": str,  # pending | started | duplicate | timeout | an error mnemonic
            "message": str,
            "call_session_id": int,
            "duplicate_of": int,
            "duration_ms": float,
        },
        pk="id",
    )
    db.table("clicks").create_index(["uis_id", "contact", "at"])
    db.table("clicks").create_index(["external_id"])
    # Every status change in either direction, with the outbox row that carries it.
    db.table("status_changes").create(
        {
            "id": int,
            "at": float,
            "direction": str,  # "crm_to_uis" | "uis_to_crm"
            "uis_id": int,
            "crm_user_id": int,
            "crm_status": str,
            "uis_state": str,
            "outcome": str,  # queued | echo | baseline | in_sync
            "outbox_id": int,
        },
        pk="id",
    )
    db.table("status_changes").create_index(["uis_id", "id"])
    # What each side last showed for an employee, and who made it so: the echo guard.
    db.table("employee_presence").create(
        {
            "uis_id": int,
            "crm_user_id": int,
            "crm_status": str,
            "crm_by": str,  # "crm" (a user changed it) | "tracker" (we pushed it)
            "crm_at": float,
            "uis_state": str,
            "uis_by": str,  # "uis" (seen by polling) | "tracker" (we set it)
            "uis_at": float,
        },
        pk="uis_id",
    )


def _migration_3(db: sqlite_utils.Database) -> None:
    """API keys, and the employee mapping as live data (seeded from [[employees]])."""
    db.table("api_keys").create(
        {
            "id": int,
            "name": str,
            "rights": str,  # JSON array
            "token_hash": str,  # sha256 of the key; the key itself is never stored
            "hint": str,  # the key's first characters, to tell keys apart in `keys list`
            "created_at": float,
            "last_used_at": float,
            "revoked_at": float,
        },
        pk="id",
        not_null={"name", "rights", "token_hash", "created_at"},
    )
    db.execute("CREATE UNIQUE INDEX api_keys_token_hash ON api_keys(token_hash)")
    db.execute("CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name)"
               " WHERE revoked_at IS NULL")
    db.table("employees").create(
        {
            "id": int,  # the UIS employee id
            "crm_user_id": int,
            "code": str,
            "phone": str,
            "full_name": str,
            "tags": str,  # JSON array
            "updated_at": float,
        },
        pk="id",
        not_null={"crm_user_id", "code"},
    )
    db.table("employees").create_index(["code"])
    db.table("employees").create_index(["crm_user_id"])
    db.table("api_requests").create_index(["key_name", "at"])


def _migration_4(db: sqlite_utils.Database) -> None:
    """The sweeper and reconciliation's bookkeeping; journal retention's indexes; when a pop-up
    last left."""
    # Why a call ended without its own end notification (sweeper, backfill), for the operator.
    db.table("calls").add_column("end_reason", str)
    # The sweeper's bookkeeping: Data API lookups that did not find the session, when to look
    # again, and what the last lookup said (shown on the call's timeline).
    db.table("calls").add_column("sweep_attempts", int, not_null_default=0)
    db.table("calls").add_column("sweep_next_at", float)
    db.table("calls").add_column("sweep_note", str)
    # Journal retention (tracker/db/maintenance.py) deletes old rows oldest first, in batches.
    db.table("events").create_index(["received_at"])
    db.table("outbox").create_index(["status", "updated_at"])
    # When a pop-up's request last left for retailCRM: set before it goes, cleared by an answer
    # saying nothing was done (429, 503). On a pending row it means the last attempt may have
    # shown the card (a crash or a lost answer): the outbox then keeps the card for the hangup.
    db.table("outbox").add_column("sent_at", float)


def _migration_5(db: sqlite_utils.Database) -> None:
    """Responsible-manager routing: no schema of its own (each decision is an ``events`` row,
    event ``route``, on its call; the answer cache lives in memory). The slot stays, empty, so
    that version 5 keeps meaning what it meant when it was released."""


def _migration_6(db: sqlite_utils.Database) -> None:
    """The dispatcher's look-ups walk these in order and stop early, instead of
    grouping every pending row by lane on each wake-up (slow with a backlog of thousands)."""
    db.table("outbox").create_index(["status", "priority", "id"])
    db.table("outbox").create_index(["status", "next_at"])


def _migration_7(db: sqlite_utils.Database) -> None:
    """Issue 17: status-page logins are server-side sessions (db/sessions.py): the cookie holds
    a random id whose hash is stored here, tied to the key whose rights it has, until it
    expires, its user logs out or the key is revoked."""
    db.table("page_sessions").create(
        {"id": int, "token_hash": str, "key_id": int, "created_at": float, "expires_at": float},
        pk="id", not_null={"token_hash", "key_id", "created_at", "expires_at"},
        foreign_keys=[("key_id", "api_keys", "id")],
    )
    db.table("page_sessions").create_index(["token_hash"], unique=True)
    db.table("page_sessions").create_index(["key_id"])


def _migration_8(db: sqlite_utils.Database) -> None:
    """Issue 16: the status page's pictures of the day read today's and last week's calls by
    start time, and each missed call's next answered call with the same number."""
    db.table("calls").create_index(["started_at"])
    db.table("calls").create_index(["contact_phone", "started_at"])


def _migration_9(db: sqlite_utils.Database) -> None:
    """Issue 14: calls become CRM work. What tracker found or created in retailCRM per number,
    the open call-back task of each number, every missed call and when it was returned, and the
    attribution UIS's report gave a call."""
    db.table("crm_customers").create(
        {
            "number": str,  # the caller's digits (79991234567)
            "customer_id": int,  # retailCRM customer id
            "manager_id": int,  # the customer's responsible manager (retailCRM user id), if any
            "origin": str,  # "found" | "created"
            "call_id": int,  # the call that found or created it
            "at": float,
        },
        pk="number",
        not_null={"customer_id", "origin", "at"},
    )
    db.table("crm_tasks").create(
        {
            "id": int,
            "number": str,
            "task_id": int,  # retailCRM task id
            "call_id": int,  # the first missed call
            "performer_id": int,
            "misses": int,
            "commentary": str,  # what the task's commentary holds now (edits replace it)
            "opened_at": float,
            "completed_at": float,
            "completed_call_id": int,
        },
        pk="id",
        not_null={"number", "task_id", "opened_at"},
    )
    # One open task per number, enforced by the database.
    db.execute("CREATE UNIQUE INDEX crm_tasks_open_number ON crm_tasks(number)"
               " WHERE completed_at IS NULL")
    db.table("callbacks").create(
        {
            "call_id": int,  # the missed call
            "number": str,
            "missed_at": float,
            "returned_at": float,  # when an answered call with the number began
            "returned_call_id": int,
            "returned_by": int,  # UIS employee id on that call
            "direction": str,  # of the returning call: "out" (called back) | "in"
        },
        pk="call_id",
        not_null={"number", "missed_at"},
    )
    db.table("callbacks").create_index(["number", "returned_at"])
    db.table("callbacks").create_index(["missed_at"])
    # JSON of core.crmwork.attribution_of; "{}" when the report had nothing or no row.
    db.table("calls").add_column("attribution", str)


def _migration_10(db: sqlite_utils.Database) -> None:
    """Issue 15: retailCRM orders as UIS deals (features/deals.py, db/deals.py)."""
    # Cursors and the loop's last words: the history sinceId, its start date, the last error.
    db.table("deal_state").create({"key": str, "value": str, "updated_at": float}, pk="key")
    # One row per retailCRM order seen: the facts its deal is built from, and why it was
    # skipped (no contact data) or when its deal last reached UIS.
    db.table("deal_orders").create(
        {
            "order_id": int,
            "number": str,
            "site": str,
            "status": str,
            "created_at": str,  # retailCRM's text, account time
            "created_ts": float,
            "amount": float,
            "manager_id": int,
            "customer_id": int,
            "name": str,
            "phones": str,  # JSON list
            "emails": str,  # JSON list
            "call_id": int,  # the call UIS credits, when tracker knows it
            "skipped_reason": str,
            "deleted": int,
            "first_seen_at": float,
            "updated_at": float,
            "uploaded_at": float,
        },
        pk="order_id",
        defaults={"deleted": 0},
    )
    db.table("deal_orders").create_index(["skipped_reason"])
    # Each history entry that changes a deal, once (history_id is retailCRM's entry id).
    db.table("deal_transitions").create(
        {
            "id": int,
            "history_id": int,
            "order_id": int,
            "kind": str,  # stage | update
            "status": str,
            "at": str,  # when it happened, retailCRM's text
            "stage_at": str,  # when the order reached the status it was in then
            "uploaded_at": float,
        },
        pk="id",
        not_null={"history_id", "order_id", "kind"},
    )
    db.table("deal_transitions").create_index(["history_id"], unique=True)
    db.table("deal_transitions").create_index(["order_id", "id"])
    # What UIS was last given of retailCRM's structure: the funnel, each status's stage, each
    # responsible, each contact; ``digest`` tells when something changed.
    db.table("deal_structure").create({"kind": str, "ext_id": str, "digest": str,
                                       "value": str, "updated_at": float},
                                      pk=("kind", "ext_id"))
    # The customer's last call before an order is a look-up by number and time: migration 8's
    # index on calls (contact_phone, started_at) serves it.


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
              _migration_6, _migration_7, _migration_8, _migration_9, _migration_10]
