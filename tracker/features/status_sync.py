"""Employee status sync: a retailCRM user's status makes the UIS employee (un)available, and back.

retailCRM → UIS: ``GET|POST /crm/user-status`` (``clientId``, ``userId``, ``code``, ``status`` ∈
free, busy, dinner, break) enqueues a Data API ``update.employees`` partial update on the lane
``employee:<uis_id>``; a newer change supersedes older pending ones (the latest wins) and keeps
their retry time. What is written depends on ``status_sync.mode``:

- ``calls_available``: ``{"calls_available": true|false}`` (deprecated by the vendor, still works);
- ``directions``: ``in_external_allowed_call_directions`` and
  ``in_internal_allowed_call_directions``: ``["in", "out"]`` when available, ``[]`` when not;
- ``status_id``: the id of a UIS status (``get.statuses``) named by its mnemonic.

UIS → retailCRM (off unless ``status_sync.poll_seconds`` > 0): ``get.employees`` at that
interval; a change of a mapped employee is pushed with ``POST /api/v5/users/{id}/status``
through the outbox (lane ``crm-user:<id>``). ``employee_presence`` remembers what each side last
showed and who made it so; a change we made ourselves is never sent back (no echo).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

from tracker.clients.crm import CrmClient
from tracker.clients.uis import UisClient, UisError
from tracker.config import CRM_STATUSES, Employee, StatusSyncSettings
from tracker.context import Context
from tracker.db.store import Store
from tracker.delivery.dispatcher import Done, Handler
from tracker.errors import DeliveryError, PermanentDelivery
from tracker.features.crm_callbacks import (
    Refused,
    Reply,
    client_id_ok,
    find_employee,
    read_params,
    respond,
    unmapped,
)

log = logging.getLogger(__name__)

ROUTE = "/crm/user-status"
TO_UIS = "employee_status"  # outbox kind: update.employees
TO_CRM = "crm_user_status"  # outbox kind: users/{id}/status
PRIORITY = 0
_DIRECTION_FIELDS = ("in_external_allowed_call_directions", "in_internal_allowed_call_directions")


# -- the mapping, without I/O -----------------------------------------------------------------

def target_state(sync: StatusSyncSettings, crm_status: str) -> str:
    """The UIS state a retailCRM status asks for, in the vocabulary of ``sync.mode``: available or
    unavailable, or (mode ``status_id``) a UIS status mnemonic."""
    state = sync.pairs()[crm_status]
    if sync.mode == "status_id":
        return "do_not_disturb" if state == "unavailable" else state
    return "available" if state == "available" else "unavailable"


def crm_status_for(sync: StatusSyncSettings, state: str) -> str:
    """The retailCRM status for a UIS state: the first status mapped to it, else free or busy."""
    for status in CRM_STATUSES:
        if target_state(sync, status) == state:
            return status
    return "free" if state == "available" else "busy"


def uis_fields(mode: str, state: str) -> dict[str, Any]:
    """The ``update.employees`` fields for modes ``calls_available`` and ``directions``."""
    available = state == "available"
    if mode == "directions":
        return {name: ["in", "out"] if available else [] for name in _DIRECTION_FIELDS}
    return {"calls_available": available}


def observed_state(mode: str, row: dict[str, Any]) -> str | None:
    """What a ``get.employees`` row says, in the vocabulary of ``target_state``."""
    if mode == "status_id":
        status = row.get("status")
        return status if isinstance(status, str) and status else None
    if mode == "directions":
        value = row.get(_DIRECTION_FIELDS[0])
        return None if value is None else ("available" if value else "unavailable")
    value = row.get("calls_available")
    return None if value is None else ("available" if value else "unavailable")


def poll_fields(mode: str) -> list[str]:
    extra = {"status_id": ["status", "status_id"], "directions": [_DIRECTION_FIELDS[0]]}
    return ["id", *extra.get(mode, ["calls_available"])]


# -- the journal and the echo guard -----------------------------------------------------------

def accept_crm_status(ctx: Context, employee: Employee, status: str,
                      now: float | None = None) -> Reply:
    """Journal a retailCRM status change and enqueue it for UIS (the caller need not wake the
    outbox). A change we pushed to retailCRM ourselves coming back is only journaled."""
    now = time.time() if now is None else now
    store, sync = ctx.store, ctx.settings.status_sync
    state = target_state(sync, status)
    body: dict[str, Any] = {"employee_id": employee.uis_id, "state": state}
    with store.transaction():
        known = store.presence(employee.uis_id)
        if (known and known["crm_by"] == "tracker" and known["crm_status"] == status
                and known["uis_state"] == state):
            store.journal_status_change("crm_to_uis", employee, status, state, "echo", now)
            return Reply(200, {"status": "unchanged", **body}, "echo")
        store.remember_presence(employee, "crm", status, "crm", now)
        # The user's own change is newer than a UIS change still on its way to retailCRM.
        store.supersede(f"crm-user:{employee.crm_user_id}", TO_CRM, now,
                        "superseded by a status change in retailCRM")
        payload = {"uis_id": employee.uis_id, "crm_user_id": employee.crm_user_id,
                   "crm_status": status, "state": state}
        row_id, older = store.enqueue_latest(TO_UIS, PRIORITY, payload, now,
                                             lane=f"employee:{employee.uis_id}")
        store.journal_status_change("crm_to_uis", employee, status, state, "queued", now,
                                    row_id)
    ctx.outbox.wake()
    log.info("retailCRM user %s is %s: UIS employee %s -> %s%s", employee.crm_user_id, status,
             employee.uis_id, state, f" (supersedes {len(older)})" if older else "")
    return Reply(200, {"status": "queued", **body, "superseded": len(older)})


# -- delivery and polling ---------------------------------------------------------------------

@dataclass(frozen=True)
class StatusSyncStatistics:
    polls: int
    poll_failures: int
    last_poll_at: float | None
    last_error: str | None
    changes_seen_in_uis: int


class StatusPush:
    """The outbox handlers of status changes: ``employee_status`` (``to_uis``) and
    ``crm_user_status`` (``to_crm``); ``kinds()`` is their part of the dispatcher's mapping."""

    def __init__(self, store: Store, sync: StatusSyncSettings, uis: UisClient,
                 crm: CrmClient) -> None:
        self._store = store
        self._sync = sync
        self._uis = uis
        self._crm = crm
        self._status_ids: dict[str, int] = {}  # UIS status mnemonic -> id, from get.statuses

    def kinds(self) -> dict[str, Handler]:
        return {TO_UIS: self.to_uis, TO_CRM: self.to_crm}

    async def to_uis(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        """Make the UIS employee (un)available as the retailCRM status asked."""
        state = payload["state"]
        if self._sync.mode == "status_id":
            fields: dict[str, Any] = {"status_id": await self._status_id(state)}
        else:
            fields = uis_fields(self._sync.mode, state)
        params = {"id": payload["uis_id"], **fields}
        try:
            await self._uis.data("update.employees", params)
        except UisError as exc:
            # update.* names an unknown id with entity_not_found (field: the parameter)
            if exc.mnemonic == "entity_not_found" and exc.field == "status_id":
                self._status_ids.clear()  # statuses were edited in UIS: read them again
            raise
        employee = _employee(payload)
        self._store.remember_presence(employee, "uis", state, "tracker", time.time())
        return Done("delivered", request={"method": "update.employees", "params": params},
                    response="{}")

    async def _status_id(self, mnemonic: str) -> int:
        if mnemonic not in self._status_ids:
            result = await self._uis.data("get.statuses", {})
            self._status_ids = {str(s.get("mnemonic")): s["id"] for s in result.get("data") or []
                                if isinstance(s, dict) and isinstance(s.get("id"), int)}
        if mnemonic not in self._status_ids:
            raise PermanentDelivery(f"UIS has no status {mnemonic!r} (see get.statuses); "
                                    "check status_sync.mapping")
        return self._status_ids[mnemonic]

    async def to_crm(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        """Set the retailCRM user's status as UIS showed it."""
        status = payload["crm_status"]
        answer = await self._crm.post(f"users/{payload['crm_user_id']}/status",
                                      {"status": status})
        self._store.remember_presence(_employee(payload), "crm", status, "tracker", time.time())
        return Done.sent(answer)


class StatusSync:
    """Polls UIS for the employees' state and enqueues each change for retailCRM."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sync = ctx.settings.status_sync
        self._polls = 0
        self._poll_failures = 0
        self._last_poll_at: float | None = None
        self._last_error: str | None = None
        self._changes_seen = 0

    def statistics(self) -> StatusSyncStatistics:
        return StatusSyncStatistics(self._polls, self._poll_failures, self._last_poll_at,
                                    self._last_error, self._changes_seen)

    async def run_poller(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Poll UIS every ``status_sync.poll_seconds`` until cancelled."""
        task_status.started()
        while True:
            await self.poll_once()
            await trio.sleep(self._sync.poll_seconds)

    async def poll_once(self) -> int:
        """Read the employees' state in UIS once; enqueue a push for each change. Returns how
        many were enqueued."""
        store, sync = self._ctx.store, self._sync
        asked_at = time.time()
        try:
            result = await self._ctx.uis.data("get.employees", {"fields": poll_fields(sync.mode)})
        except DeliveryError as exc:
            self._poll_failures += 1
            self._last_error = str(exc)
            log.warning("status sync: get.employees failed: %s", exc)
            return 0
        self._polls += 1
        self._last_poll_at = now = time.time()
        rows = {r.get("id"): r for r in result.get("data") or [] if isinstance(r, dict)}
        queued = 0
        with store.transaction():
            for employee in self._ctx.settings.employees:
                row = rows.get(employee.uis_id)
                state = observed_state(sync.mode, row) if row is not None else None
                if state is None or store.lane_busy(f"employee:{employee.uis_id}"):
                    continue  # unknown, or our own change is on its way there
                queued += self._compare(employee, state, asked_at, now)
        if queued:
            self._ctx.outbox.wake()
        return queued

    def _compare(self, employee: Employee, state: str, asked_at: float, now: float) -> int:
        store, sync = self._ctx.store, self._sync
        known = store.presence(employee.uis_id)
        if known and known["uis_by"] == "tracker" and (known["uis_at"] or 0) >= asked_at:
            return 0  # we changed it while the answer was on its way: the answer is stale
        if known is None or known["uis_state"] is None:
            store.remember_presence(employee, "uis", state, "uis", now)  # first look: a baseline
            return 0
        if known["uis_state"] == state:
            return 0
        self._changes_seen += 1
        store.remember_presence(employee, "uis", state, "uis", now)
        crm_status = known["crm_status"]
        if crm_status is not None and target_state(sync, crm_status) == state:
            store.journal_status_change("uis_to_crm", employee, crm_status, state, "in_sync",
                                        now)
            return 0
        status = crm_status_for(sync, state)
        payload = {"uis_id": employee.uis_id, "crm_user_id": employee.crm_user_id,
                   "crm_status": status, "state": state}
        row_id, _ = store.enqueue_latest(TO_CRM, PRIORITY, payload, now,
                                         lane=f"crm-user:{employee.crm_user_id}")
        store.journal_status_change("uis_to_crm", employee, status, state, "queued", now,
                                    row_id)
        log.info("UIS employee %s is %s: retailCRM user %s -> %s", employee.uis_id, state,
                 employee.crm_user_id, status)
        return 1


def _employee(payload: dict[str, Any]) -> Employee:
    return Employee(uis_id=payload["uis_id"], crm_user_id=payload["crm_user_id"], code="")


def register(app: QuartTrio, ctx: Context) -> None:
    """Add ``GET|POST /crm/user-status`` to ``app``."""

    @app.route(ROUTE, methods=["GET", "POST"])
    async def crm_user_status() -> Response:
        started = time.perf_counter()
        params: dict[str, str] = {}
        try:
            params = await read_params()
            if not client_id_ok(ctx.settings, params.get("clientId")):
                raise Refused(Reply.error(403, "forbidden", "wrong or missing clientId"))
            status = (params.get("status") or "").strip().lower()
            if not status:
                raise Refused(Reply.error(400, "missing_parameter", "status is missing",
                                          field="status"))
            if status not in CRM_STATUSES:
                raise Refused(Reply.error(400, "invalid_status",
                                          f"status must be one of {', '.join(CRM_STATUSES)}, "
                                          f"got {status[:40]!r}", field="status"))
            employee = find_employee(ctx.store, params.get("code"), params.get("userId"))
            if employee is None:
                reply = unmapped(ctx, params.get("code"), params.get("userId"),
                                 "status not synced")
            else:
                reply = accept_crm_status(ctx, employee, status)
        except Refused as exc:
            reply = exc.reply
        return respond(ctx, ROUTE, params, reply, started)
