"""The single write path for notifications: journal, transition, outbox rows — one transaction.

Synchronous on purpose: the whole write takes a fraction of a millisecond and must not be
interleaved with another notification of the same call. The caller answers UIS only after this
returns, and wakes the outbox afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from tracker.core import calls, crmwork, notifications
from tracker.core.calls import Call
from tracker.core.commands import PRIORITY, Command, payload
from tracker.core.statecharts import Chart
from tracker.db import crmwork as crmwork_db
from tracker.db.store import Store
from tracker.errors import RejectedNotification
from tracker.logs import about_call

log = logging.getLogger(__name__)

_BODY_KEEP = 16384  # characters of a rejected body kept for diagnosis


@dataclass(frozen=True)
class Outcome:
    """What became of one notification; the web layer turns it into the 200 answer."""

    status: str  # "accepted" | "duplicate" | "ignored"
    call_id: int | None = None
    state: str | None = None
    actions: int = 0
    event: str | None = None  # the known event name (for metrics)
    state_before: str | None = None


def ingest(
    store: Store,
    chart: Chart,
    tz: ZoneInfo,
    fields: Mapping[str, Any],
    *,
    method: str = "POST",
    now: float | None = None,
    work: crmwork.Switches | None = None,
) -> Outcome:
    """Store one decoded notification and everything it implies, atomically.

    With ``work`` (the daemon always passes it), a call that ends also records its miss or its
    return (the call-back figures) and enqueues the CRM work that is switched on.
    Raises ``RejectedNotification`` (after journaling the rejection) for bad fields.
    """
    now = time.time() if now is None else now
    body = notifications.canonical(fields)
    try:
        name = notifications.event_name(fields)
        if not notifications.is_known_event(name):
            return _ignore(store, fields, name, method, body, now)
        notification = notifications.parse(fields, tz, body)
    except RejectedNotification as exc:
        journal_rejected(store, str(exc), body, method, now)
        raise

    unfilled = notifications.unfilled_variables(fields)
    with store.transaction():
        event_id = store.journal(
            received_at=now,
            call_id=notification.session_id,
            event=notification.event,
            outcome="accepted",
            dedupe_key=notification.dedupe_key,
            method=method,
            body=body,
            error=_unfilled_note(unfilled),
        )
        if event_id is None:
            store.count_duplicate(notification.dedupe_key)
            return Outcome("duplicate", notification.session_id, event=notification.event)
        for name in unfilled:
            store.warn("unfilled_variable", f"{notification.event}.{name}"[:200],
                       f"UIS left {{{{{name[:100]}}}}} unfilled in {notification.event} "
                       "notifications: the template names a variable this event does not "
                       "offer (treated as absent); use the README's template", now)
        call = store.load_call(notification.session_id) or Call(id=notification.session_id)
        applied = calls.apply(chart, call, notification)
        call.updated_at = now
        if call.started_at is None:
            call.started_at = notification.at or now
        if chart.is_final(call.state) and call.finished_at is None:
            call.finished_at = notification.at or now
        store.save_call(call)
        store.set_event_states(event_id, applied.state_before, applied.state_after)
        for command in applied.commands:
            store.enqueue(call.id, command.kind, PRIORITY[command.kind], payload(command), now)
        if work is not None and applied.commands:
            _crm_work(store, call, applied.commands, work, now)
    if applied.state_before != applied.state_after:
        with about_call(call.id):
            log.info(
                "call %s: %s -> %s on %s (%d actions)",
                call.id, applied.state_before, applied.state_after, notification.event,
                len(applied.commands),
            )
    return Outcome("accepted", call.id, call.state, len(applied.commands),
                   event=notification.event, state_before=applied.state_before)


def _crm_work(store: Store, call: Call, commands: tuple[Command, ...],
              work: crmwork.Switches, now: float) -> None:
    entry = crmwork.ledger(call, commands, work.region)
    if entry is not None:
        what, caller = entry
        at = call.started_at or now
        if what == "miss":
            crmwork_db.note_miss(store, call.id, caller.number, at)
        else:
            crmwork_db.note_reach(store, call.id, caller.number, at, call.talked_employee_id,
                                  call.direction or "in")
    for row in crmwork.plan(call, commands, work):
        store.enqueue(call.id, row.kind, row.priority, row.payload, now, lane=row.lane)
def _unfilled_note(names: list[str]) -> str | None:
    """The journal's note on a notification that arrived with unfilled variables."""
    if not names:
        return None
    return ("UIS left template variables unfilled (treated as absent): "
            + ", ".join(names))[:1000]


def _ignore(store: Store, fields: Mapping[str, Any], name: str, method: str, body: str,
            now: float) -> Outcome:
    with store.transaction():
        key = notifications.dedupe_key(fields, body)
        if store.journal(received_at=now, event=name[:100], outcome="ignored", dedupe_key=key,
                         method=method, body=body[:_BODY_KEEP]) is None:
            store.count_duplicate(key)
    log.info("ignored a notification with unknown event %r", name[:100])
    return Outcome("ignored")


def journal_rejected(store: Store, error: str, body: str, method: str,
                     now: float | None = None) -> None:
    """Keep a rejected request for diagnosis; it never reaches a call or the outbox."""
    with store.transaction():
        store.journal(
            received_at=time.time() if now is None else now,
            outcome="rejected",
            error=error[:1000],
            method=method,
            body=body[:_BODY_KEEP],
        )
