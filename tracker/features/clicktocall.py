"""Click-to-call: retailCRM's ``makeCallUrl`` starts a UIS call, once, now or never.

``GET|POST /crm/make-call`` with ``clientId``, ``code``, ``phone``, ``userId``, ``externalPhone``.
The employee's phone rings first, then the customer's (Call API ``start.employee_call``,
``first_call`` employee, ``direction`` out). The request waits for UIS's answer under
``click.deadline_seconds`` and reports the outcome. A click is never retried later and never
goes through the outbox: a call minutes after the click would surprise everyone.

Double clicks: the ``clicks`` journal is the guard. Checking it and inserting the new row happen
in one synchronous step on the trio thread, so a second request for the same employee and number
within ``click.dedupe_seconds`` sees the first one (even while its Call API request is still in
flight) and starts nothing. SQLite rather than memory because the journal must exist anyway, and
so the guard also holds across a quick restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import phonenumbers
import trio
from quart import Response
from quart_trio import QuartTrio

from tracker.clients.throttle import priority_var
from tracker.clients.uis import UisError
from tracker.config import Employee, Settings
from tracker.context import Context
from tracker.core.phones import to_e164
from tracker.db.store import Store
from tracker.errors import DeliveryError, RetryableDelivery
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

ROUTE = "/crm/make-call"
METHOD = "start.employee_call"
# Still counted as "a call is on its way" by the double-click guard: a timed-out request may
# well have started the call.
_LIVE_OUTCOMES = ("pending", "started", "timeout")


@dataclass(frozen=True)
class Click:
    """A validated click: who calls whom, from which virtual number."""

    employee: Employee
    phone: str  # as retailCRM sent it
    contact: str  # digits, E.164 without "+"
    virtual_phone: str  # digits


def normalise_phone(raw: str | None, region: str) -> str | None:
    """The UIS form (``79991234567``) of a number a person typed, or None if it is not valid.

    ``8 (999) 123-45-67``, ``+7 999 1234567`` and ``79991234567`` all give ``79991234567`` with
    region RU.
    """
    e164 = to_e164(raw, region)
    if not e164 or not e164.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    return e164[1:] if phonenumbers.is_valid_number(number) else None


class _Unmapped(Exception):
    """The user has no employee; the caller records the mapping warning."""


def plan(settings: Settings, store: Store, params: dict[str, str]) -> Click:
    """Validate a make-call request against the live employee mapping in ``store`` (reads
    only). Raises ``Refused`` with the 4xx answer."""
    region = settings.crm.phone_region
    raw_phone = (params.get("phone") or "").strip()
    if not raw_phone:
        raise Refused(Reply.error(400, "missing_parameter", "phone is missing", field="phone"))
    contact = normalise_phone(raw_phone, region)
    if contact is None:
        raise Refused(Reply.error(400, "invalid_phone",
                                  f"{raw_phone[:40]!r} is not a valid phone number "
                                  f"(default region {region})", field="phone"))
    employee = find_employee(store, params.get("code"), params.get("userId"))
    if employee is None:
        raise _Unmapped()
    virtual = choose_virtual_number(settings, params.get("externalPhone"))
    if virtual is None:
        raise Refused(Reply.error(422, "no_virtual_number",
                                  "set uis.virtual_phone_number: the caller id of click-to-call"))
    return Click(employee, raw_phone, contact, virtual)


def choose_virtual_number(settings: Settings, external_phone: str | None) -> str | None:
    """``externalPhone`` if it is one of our virtual numbers, else ``uis.virtual_phone_number``."""
    default = normalise_phone(settings.uis.virtual_phone_number, settings.crm.phone_region) \
        or "".join(c for c in settings.uis.virtual_phone_number if c.isdigit())
    ours = {n for n in (default, *settings.click.our_virtual_numbers()) if n}
    wanted = normalise_phone(external_phone, settings.crm.phone_region) if external_phone else None
    if wanted is not None and wanted in ours:
        return wanted
    return default or None


def start_params(click: Click, external_id: str) -> dict[str, Any]:
    """The ``start.employee_call`` parameters (without the access token)."""
    return {
        "first_call": "employee",
        "virtual_phone_number": click.virtual_phone,
        "contact": click.contact,
        "employee": {"id": click.employee.uis_id},
        # The vendor's current doc defaults to "in": say "out" or the call is tracked as inbound.
        "direction": "out",
        "external_id": external_id,
    }


async def make_call(ctx: Context, params: dict[str, str]) -> Reply:
    """Handle one authenticated click end to end; every outcome is journaled."""
    started = time.perf_counter()
    store = ctx.store
    try:
        click = plan(ctx.settings, store, params)
    except _Unmapped:
        reply = unmapped(ctx, params.get("code"), params.get("userId"), "click-to-call refused")
        _journal_refusal(store, params, reply, started)
        return reply
    except Refused as exc:
        _journal_refusal(store, params, exc.reply, started)
        return exc.reply

    now = time.time()
    with store.transaction():
        earlier = store.recent_click(click.employee.uis_id, click.contact,
                                     now - ctx.settings.click.dedupe_seconds, _LIVE_OUTCOMES)
        click_id = store.insert_click(click.employee, click.phone, click.contact,
                                      click.virtual_phone, now,
                                      duplicate_of=earlier["id"] if earlier else None)
        external_id = f"tracker-click-{click_id}"
        if earlier is None:
            store.set_click_external_id(click_id, external_id)
    if earlier is not None:
        body = {"status": "duplicate", "click_id": earlier["id"],
                "call_session_id": earlier["call_session_id"],
                "message": "the same click arrived moments ago: one call only"}
        _finish(store, click_id, "duplicate", None, None, started)
        log.info("click %d: duplicate of click %d", click_id, earlier["id"])
        return Reply(200, body, "duplicate")

    reply, session_id = await _start(ctx, click, external_id)
    _finish(store, click_id, reply.outcome if reply.outcome != "ok" else "started",
            reply.body.get("message") if reply.status >= 400 else None, session_id, started)
    return reply


async def _start(ctx: Context, click: Click, external_id: str) -> tuple[Reply, int | None]:
    deadline = ctx.settings.click.deadline_seconds
    request = start_params(click, external_id)
    gate = ctx.uis.gate
    if gate is not None:
        # Waiting out a spent UIS budget would end in a timeout that claims the call may have
        # started: say at once that it cannot be made now.
        wait = gate.limiter.delay(METHOD, trio.current_time())
        if wait > deadline:
            return Reply.error(429, "limit_exceeded", f"the UIS API budget is spent for "
                               f"{wait:.0f} s more; click again later"), None
    token = priority_var.set(-1)  # a person is waiting: ahead of queued deliveries at the gate
    with trio.move_on_after(deadline) as scope:
        try:
            result = await ctx.uis.call_api(METHOD, request)
        except UisError as exc:
            log.warning("click for employee %s: UIS refused: %s", click.employee.uis_id, exc)
            return Reply.error(422, exc.mnemonic, f"UIS refused the call: {exc}"), None
        except RetryableDelivery as exc:
            if exc.detail == "limit_exceeded":
                return Reply.error(429, "limit_exceeded",
                                   f"UIS API limit reached; try again later: {exc}"), None
            if isinstance(exc.__cause__, httpx.TimeoutException):  # uis.timeout_seconds
                return _timed_out(deadline), None
            return Reply.error(502, "uis_unavailable", f"UIS could not be reached: {exc}"), None
        except DeliveryError as exc:
            return Reply.error(502, "uis_unavailable", f"UIS could not be reached: {exc}"), None
        finally:
            priority_var.reset(token)
    if scope.cancelled_caught:
        return _timed_out(deadline), None
    data = given if isinstance(given := result.get("data"), dict) else {}
    session_id = data.get("call_session_id")
    session_id = session_id if isinstance(session_id, int) else None
    log.info("click: employee %s calls %s (session %s, %s)", click.employee.uis_id,
             click.contact, session_id, external_id)
    return Reply(200, {"status": "started", "call_session_id": session_id,
                       "external_id": external_id}), session_id


def _timed_out(deadline: float) -> Reply:
    return Reply.error(504, "timeout",
                       f"UIS did not answer within {deadline:g} s; the call may still start "
                       "(it will not be retried)")


def _finish(store: Store, click_id: int, outcome: str, message: str | None,
            session_id: int | None, started: float) -> None:
    store.finish_click(click_id, outcome, message, session_id,
                       round((time.perf_counter() - started) * 1000, 3))


def _journal_refusal(store: Store, params: dict[str, str], reply: Reply, started: float) -> None:
    user_id = (params.get("userId") or "").strip()
    store.journal_refused_click(
        time.time(), int(user_id) if user_id.isascii() and user_id.isdigit()
        and len(user_id) <= 18 else None,
        params.get("code"), (params.get("phone") or "")[:64], reply.outcome,
        reply.body.get("message"), round((time.perf_counter() - started) * 1000, 3))


def register(app: QuartTrio, ctx: Context) -> None:
    """Add ``GET|POST /crm/make-call`` to ``app``."""

    @app.route(ROUTE, methods=["GET", "POST"])
    async def crm_make_call() -> Response:
        started = time.perf_counter()
        params: dict[str, str] = {}
        try:
            params = await read_params()
            if not client_id_ok(ctx.settings, params.get("clientId")):
                reply = Reply.error(403, "forbidden", "wrong or missing clientId")
            else:
                reply = await make_call(ctx, params)
        except Refused as exc:
            reply = exc.reply
        return respond(ctx, ROUTE, params, reply, started)
