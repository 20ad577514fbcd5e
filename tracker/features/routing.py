"""Responsible-manager routing: UIS asks mid-call whom to dial, retailCRM knows the manager.

A UIS scenario step "interactive call processing" requests ``/webhooks/uis/{secret}/route``
(GET or POST; UIS documents ``cdr_id``, ``start_time``, ``input_result``, ``numa`` = caller,
``numb`` = called, public guides also send ``call_session_id``) and waits for
``{"phones": [...]}`` (whom to dial) or ``{"returned_code": N}`` (which branch to take).
tracker asks retailCRM ``telephony/manager`` for the caller's responsible manager (answers cached
per number for ``routing.cache_seconds``), finds them in ``[[employees]]`` by user id or code,
skips them when known to be unavailable, and dials their ``phone``. Whatever goes wrong, the
answer leaves within ``routing.deadline_seconds``: the configured fallback.

Every decision is journaled on the call (event ``route``), found by ``call_session_id``; without
it, by ``cdr_id`` (``call_for``): a call whose session id it is, else the newest live call of the
same caller. How ``cdr_id`` relates to the session is not documented (docs/reference-notes.md):
a decision whose call cannot be found is journaled without one and opens no card.

A routed manager's pop-up is stored in the same transaction, as a ``waiting_answer`` for them
fired through the statechart: the card reaches retailCRM before UIS even dials, and UIS's own
``waiting_answer`` for that leg then finds the card open (no second pop-up; the hangup closes it
like any other).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from tracker.config import Employee, RoutingSettings, StatusSyncSettings
from tracker.context import Context
from tracker.core import bodies
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.core.phones import to_e164
from tracker.db.store import Store
from tracker.errors import BodyError, DeliveryError, TrackerError
from tracker.features import status_sync
from tracker.intake import ingest
from tracker.logs import call_id_var

log = logging.getLogger(__name__)

CACHE_MAX_ENTRIES = 10_000  # numbers remembered at once; the oldest answer goes first
LIVE_CALL_SECONDS = 3600.0  # a call found by its caller must have moved within the last hour
_LOOKUP_SHARE = 0.9  # of the deadline for retailCRM; the rest journals and answers
_DIGITS = re.compile(r"[0-9]{1,19}")

# Decision kinds that mean the operator should fix something: recorded as warnings.
_WARNINGS = {
    "unmapped": "routing_unmapped_manager",
    "no_phone": "routing_no_phone",
    "crm_down": "routing_crm",
    "crm_slow": "routing_crm",
}


@dataclass(frozen=True)
class Decision:
    """What to answer UIS, and why (journaled on the call)."""

    answer: dict[str, Any]
    # "routed", or why not: no_manager, unmapped, no_phone, unavailable, crm_down, crm_slow,
    # disabled, no_caller, bad_request, error
    kind: str
    reason: str  # for people: the timeline and the log
    manager: Mapping[str, Any] | None = None  # retailCRM's answer, when it named one
    employee: Employee | None = None  # their [[employees]] entry, when there is one

    @property
    def routed(self) -> bool:
        return self.kind == "routed"


# -- the decision, without I/O ----------------------------------------------------------------


def fallback(settings: RoutingSettings, kind: str, reason: str,
             manager: Mapping[str, Any] | None = None,
             employee: Employee | None = None) -> Decision:
    """The configured fallback: the default group's phones, else a scenario branch."""
    answer: dict[str, Any] = (
        {"phones": list(settings.fallback_phones)} if settings.fallback_phones
        else {"returned_code": settings.fallback_returned_code}
    )
    return Decision(answer, kind, reason, manager, employee)


def employee_for(employees: Sequence[Employee], manager: Mapping[str, Any]) -> Employee | None:
    """The ``[[employees]]`` entry of a retailCRM manager: by user id, else by extension code."""
    by_id = next((e for e in employees if e.crm_user_id == manager.get("id")), None)
    if by_id is not None:
        return by_id
    code = manager.get("code")
    return next((e for e in employees if code is not None and e.code == str(code)), None)


def decide(settings: RoutingSettings, employees: Sequence[Employee],
           manager: Mapping[str, Any] | None,
           available: Callable[[int], bool | None]) -> Decision:
    """Route to ``manager`` (retailCRM's answer, None when it named nobody) if we can dial them.

    ``available(uis_id)`` is False only for an employee known to be unavailable.
    """
    if manager is None:
        return fallback(settings, "no_manager", "retailCRM names no responsible manager")
    who = f"retailCRM manager {manager.get('id')} (code {manager.get('code')!r})"
    employee = employee_for(employees, manager)
    if employee is None:
        return fallback(settings, "unmapped", f"{who} is not in [[employees]]", manager)
    if not employee.phone:
        return fallback(settings, "no_phone", f"UIS employee {employee.uis_id} has no phone "
                        "in [[employees]] to route to", manager, employee)
    if available(employee.uis_id) is False:
        return fallback(settings, "unavailable",
                        f"UIS employee {employee.uis_id} is unavailable", manager, employee)
    return Decision({"phones": [employee.phone]}, "routed", f"responsible manager: {who}",
                    manager, employee)


def employee_available(store: Store, sync: StatusSyncSettings, uis_id: int) -> bool | None:
    """What the status sync knows of an employee: True, False, or None when nothing is known.

    The newer of the two sides wins: a retailCRM status (read through ``status_sync.mapping``)
    or the state UIS was last seen in or set to. The one place routing asks about availability;
    retailCRM's own view is applied by ``ignoreStatus=0`` in the lookup.
    """
    known = store.presence(uis_id)
    if known is None:
        return None
    sides = []
    if known["crm_status"] in sync.pairs():
        sides.append((known["crm_at"] or 0.0, status_sync.target_state(sync, known["crm_status"])))
    if known["uis_state"] is not None:
        sides.append((known["uis_at"] or 0.0, known["uis_state"]))
    if not sides:
        return None
    return max(sides)[1] == "available"


def call_for(fields: Mapping[str, Any], caller: str | None, known: Callable[[int], bool],
             live: Sequence[Mapping[str, Any]], region: str) -> tuple[int | None, str]:
    """The call a routing request is about, and how it was found.

    ``call_session_id`` when given; else ``cdr_id`` when a call has that id (the reading that
    ``cdr_id`` is the session id); else the first of ``live`` (newest first) whose caller is
    ``caller``. ``(None, why)`` when none fits.
    """
    session_id = _session_id(fields.get("call_session_id"))
    if session_id is not None:
        return session_id, "call_session_id"
    cdr_id = _session_id(fields.get("cdr_id"))
    if cdr_id is None:
        return None, "no call_session_id or cdr_id"
    if known(cdr_id):
        return cdr_id, "cdr_id is a known session id"
    if caller is not None:
        for row in live:
            if to_e164(row.get("contact_phone"), region) == caller:
                return int(row["id"]), "cdr_id unknown: the caller's live call"
    return None, "cdr_id matches no call tracker knows"


# -- the I/O shell ----------------------------------------------------------------------------


class Router:
    """Decides routes for one daemon: the retailCRM lookup, its cache, the journal."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._settings = ctx.settings.routing
        # normalised caller -> (expires at, trio clock; retailCRM's manager or None)
        self._cache: OrderedDict[str, tuple[float, Mapping[str, Any] | None]] = OrderedDict()
        # normalised caller -> the customer retailCRM named with it (shown on the status page)
        self._customers: OrderedDict[str, dict[str, str | None]] = OrderedDict()

    async def route(self, fields: Mapping[str, Any], *, method: str = "GET",
                    problem: str | None = None) -> Decision:
        """Decide within the deadline, journal the decision on the call, return it.

        Never raises for upstream or storage trouble: the caller is waiting on the line.
        """
        deadline = trio.current_time() + self._settings.deadline_seconds * _LOOKUP_SHARE
        started = time.perf_counter()
        settings = self._settings
        caller = to_e164(_text(fields.get("numa")), self._ctx.settings.crm.phone_region)
        source = None
        if problem is not None:
            decision = fallback(settings, "bad_request", problem)
        elif not settings.enabled:
            decision = fallback(settings, "disabled", "routing.enabled is false")
        elif caller is None or not caller.startswith("+"):
            decision = fallback(settings, "no_caller", f"no routable caller number in numa "
                                f"({_text(fields.get('numa'))[:40]!r})")
        else:
            decision, source = await self._decide(caller, deadline)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        customer = self._customers.get(caller) if caller else None
        self._record(fields, decision, caller, source, elapsed_ms, method, customer)
        log.info("routing answer %s: %s (%s ms)", json.dumps(decision.answer), decision.reason,
                 elapsed_ms)
        return decision

    async def _decide(self, caller: str, deadline: float) -> tuple[Decision, str | None]:
        settings = self._settings
        store = self._ctx.store
        with trio.move_on_at(deadline):
            try:
                manager, source = await self._manager(caller)
            except DeliveryError as exc:
                return fallback(settings, "crm_down", f"retailCRM failed: {exc}"), None
            except Exception as exc:  # a bug here must not cost the caller their call
                log.exception("routing failed")
                return fallback(settings, "error", f"internal error: {exc!r}"), None
            sync = self._ctx.settings.status_sync
            # the live mapping: edits made through the admin API apply at once
            decision = decide(settings, store.all_employees(), manager,
                              lambda uis_id: employee_available(store, sync, uis_id))
            return decision, source
        return fallback(settings, "crm_slow", "retailCRM did not answer within "
                        f"{settings.deadline_seconds:g} s"), None

    async def _manager(self, caller: str) -> tuple[Mapping[str, Any] | None, str]:
        """retailCRM's responsible manager of ``caller`` and where it came from (cache, crm)."""
        cached = self._cache.get(caller)
        if cached is not None and cached[0] > trio.current_time():
            self._cache.move_to_end(caller)
            return cached[1], "cache"
        answer = await self._ctx.crm.responsible_manager(
            caller, ignore_status=self._settings.ignore_status)
        manager = answer.body.get("manager")
        manager = manager if isinstance(manager, dict) and manager else None
        customer = customer_summary(answer.body, self._ctx.settings.crm.url)
        if customer is not None:
            self._customers[caller] = customer
            self._customers.move_to_end(caller)
            if len(self._customers) > CACHE_MAX_ENTRIES:
                self._customers.popitem(last=False)
        if self._settings.cache_seconds > 0:
            self._cache[caller] = (trio.current_time() + self._settings.cache_seconds, manager)
            self._cache.move_to_end(caller)
            if len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)
        return manager, "crm"

    def _record(self, fields: Mapping[str, Any], decision: Decision, caller: str | None,
                source: str | None, elapsed_ms: float, method: str,
                customer: Mapping[str, str | None] | None = None) -> None:
        """Journal the decision (and open the routed manager's card) in one transaction."""
        store = self._ctx.store
        now = time.time()
        try:
            session_id, found_by = call_for(
                fields, caller, lambda call_id: store.call_row(call_id) is not None,
                store.live_calls_since(now - LIVE_CALL_SECONDS) if caller else [],
                self._ctx.settings.crm.phone_region)
        except sqlite3.Error:
            log.exception("could not look the routed call up; answering anyway")
            session_id, found_by = None, "lookup failed"
        body = {
            "answer": decision.answer, "decision": decision.kind, "reason": decision.reason,
            "caller": caller, "numb": _text(fields.get("numb")) or None,
            "cdr_id": _text(fields.get("cdr_id"))[:40] or None, "call": found_by,
            "manager": _manager_summary(decision.manager),
            "employee_id": decision.employee.uis_id if decision.employee else None,
            "source": source, "ms": elapsed_ms, "customer": customer,
        }
        try:
            with store.transaction():
                # Journaled either way; without a call it is still in the journal (call_id
                # NULL), which the admin API's get.call_events lists.
                store.journal(received_at=now, call_id=session_id, event="route",
                              outcome="routed" if decision.routed else "fallback",
                              method=method, body=json.dumps(body, ensure_ascii=False))
                self._warn(decision, now)
                if session_id is not None and decision.routed and decision.employee is not None:
                    ingest.ingest(store, self._ctx.chart, self._ctx.tz, {
                        "event": "waiting_answer", "call_session_id": session_id,
                        "direction": "in", "contact_phone_number": _text(fields.get("numa")),
                        "virtual_phone_number": _text(fields.get("numb"))[:64] or None,
                        "employee_id": decision.employee.uis_id, "source": "routing",
                    }, method=method, now=now)
        except (sqlite3.Error, TrackerError):
            log.exception("could not journal a routing decision; answering it anyway")
            return
        if decision.routed:
            self._ctx.outbox.wake()

    def _warn(self, decision: Decision, now: float) -> None:
        kind = _WARNINGS.get(decision.kind)
        if kind is None:
            return
        if decision.kind == "unmapped" and decision.manager is not None:
            subject = f"retailCRM user {decision.manager.get('id')}"
        elif decision.kind == "no_phone" and decision.employee is not None:
            subject = f"UIS employee {decision.employee.uis_id}"
        else:
            subject = "telephony/manager"
        self._ctx.store.warn(kind, subject, f"routing fell back: {decision.reason}", now)


def _text(value: Any) -> str:
    return "" if value is None or isinstance(value, dict | list) else str(value).strip()


def _session_id(value: Any) -> int | None:
    text = _text(value)
    return int(text) if _DIGITS.fullmatch(text) else None


def customer_summary(body: Mapping[str, Any], crm_url: str) -> dict[str, str | None] | None:
    """The caller's name and card link from a ``telephony/manager`` answer with ``details``
    (``customer`` and ``links.customerLink``; a path is resolved against ``crm.url``)."""
    customer = body.get("customer")
    if not isinstance(customer, dict):
        return None
    parts = [customer.get(k) for k in ("lastName", "firstName", "patronymic")]
    name = " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip()) \
        or (customer.get("nickName") if isinstance(customer.get("nickName"), str) else "")
    if not name:
        return None
    links = body.get("links")
    link = links.get("customerLink") if isinstance(links, dict) else None
    if isinstance(link, str) and link.startswith("/"):
        link = crm_url.rstrip("/") + link
    if not (isinstance(link, str) and link.startswith(("https://", "http://"))):
        link = None
    return {"name": name[:200], "link": link[:500] if link else None}


def _manager_summary(manager: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if manager is None:
        return None
    return {k: manager.get(k) for k in ("id", "code", "firstName", "lastName") if k in manager}


async def _request_fields() -> tuple[dict[str, Any], str | None]:
    """Query parameters, plus a POST body's fields (JSON or form); a problem when unreadable."""
    fields: dict[str, Any] = dict(request.args.items())
    if request.method != "POST":
        return fields, None
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not raw.strip():
        return fields, None
    try:
        if request.mimetype == "application/x-www-form-urlencoded":
            body: dict[str, Any] = dict(bodies.decode_form(raw))
        else:
            body = bodies.decode_object(raw)
    except BodyError as exc:
        return fields, f"unreadable body: {exc}"
    fields.update(body)
    return fields, None


def register(app: QuartTrio, ctx: Context) -> None:
    """Add ``GET|POST /webhooks/uis/{webhook_secret}/route`` to ``app``."""
    router = Router(ctx)
    secret = ctx.settings.uis.webhook_secret.reveal().encode()

    @app.route(f"{WEBHOOK_PREFIX}<given>/route", methods=["GET", "POST"])
    async def uis_route(given: str) -> Response:
        if not hmac.compare_digest(given.encode(), secret):
            raise NotFound()  # the same answer as any unknown path: nothing stored, nothing asked
        fields, problem = await _request_fields()
        if problem is not None:
            log.warning("routing request with %s: answering the fallback", problem)
        token = call_id_var.set(_session_id(fields.get("call_session_id")))
        try:
            decision = await router.route(fields, method=request.method, problem=problem)
        finally:
            call_id_var.reset(token)
        return Response(json.dumps(decision.answer), content_type="application/json")
