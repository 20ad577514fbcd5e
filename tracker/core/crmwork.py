"""Calls become CRM work (no I/O): which customer, task and order rows a finished call implies,
what each request carries, and where the caller came from (UIS report -> retailCRM ``source``).

A call that ends yields at most one row of each kind, all on the lane of the caller's number
(``number:<digits>``): the outbox delivers one row of a lane at a time, in order, so two calls
from one number at the same moment can never both create a customer or a task. Their priority
is below the history uploads', so a card never waits behind this work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tracker.config import Settings
from tracker.core.commands import Upload
from tracker.core.phones import to_e164

CUSTOMER, TASK, REACH, ORDER = "crm_customer", "crm_task", "crm_reach", "crm_order"
KINDS = (CUSTOMER, TASK, REACH, ORDER)
PRIORITY_CRM = 2  # after cards (0) and history uploads (1)

# UIS ``get.calls_report`` columns that say where a call came from.
REPORT_FIELDS = ("id", "campaign_name", "utm_source", "utm_medium", "utm_campaign", "utm_term",
                 "utm_content", "search_query", "ua_client_id", "ym_client_id")


@dataclass(frozen=True)
class Switches:
    """Which parts of the CRM work are on (from ``[customers]``, ``[tasks]``, ``[orders]``)."""

    customers: bool = False
    missed_tasks: bool = False
    complete_on_reach: bool = False
    orders: bool = False
    region: str = "RU"

    def any(self) -> bool:
        return self.customers or self.missed_tasks or self.complete_on_reach or self.orders


def switches(settings: Settings) -> Switches:
    """The switches a configuration sets."""
    return Switches(customers=settings.customers.create,
                    missed_tasks=settings.tasks.missed_calls,
                    complete_on_reach=settings.tasks.complete_on_reach,
                    orders=settings.orders.create_for_new_callers and settings.customers.create,
                    region=settings.crm.phone_region)


@dataclass(frozen=True)
class Work:
    """One outbox row to add: ``kind`` on ``lane`` with ``payload``."""

    kind: str
    lane: str
    payload: dict[str, Any]

    @property
    def priority(self) -> int:
        return PRIORITY_CRM


@dataclass(frozen=True)
class Caller:
    """The other party of a call as far as CRM work goes."""

    phone: str  # what a task shows and a customer stores: E.164 when it parses
    number: str  # digits: the lane key and the idempotency marker
    valid: bool  # a real number (a customer may be made for it)


def caller_of(raw: str | None, region: str = "RU") -> Caller | None:
    """None for an anonymous caller or one without any digits to call back."""
    phone = to_e164(raw, region)
    if phone is None:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    if len(digits) < 3:  # "anonymous", "unknown", a lone digit: no number to call back
        return None
    return Caller(phone=phone, number=digits, valid=phone.startswith("+"))


def plan(call: Any, commands: tuple[Any, ...], sw: Switches) -> list[Work]:
    """The CRM work of a call whose ``commands`` include its history upload (it just ended).

    ``call`` is the call model (``core.calls.Call``). A missed inbound call: the customer (valid
    numbers only) and the call-back task. An answered call in either direction: the open task
    completed; inbound from a valid number also the customer and, when on, the order.
    """
    upload = next((c for c in commands if isinstance(c, Upload)), None)
    if upload is None or not sw.any():
        return []
    caller = caller_of(call.contact_phone, sw.region)
    if caller is None:
        return []
    lane = f"number:{caller.number}"
    inbound = (call.direction or "in") == "in"
    answered = upload.result == "answered"
    base = {"call_id": call.id, "phone": caller.phone, "number": caller.number,
            "at": call.started_at}
    rows: list[Work] = []
    if inbound and caller.valid and sw.customers:
        manager = call.talked_employee_id if answered else None
        rows.append(Work(CUSTOMER, lane, {**base, "employee_id": manager}))
    if not answered and inbound and sw.missed_tasks:
        rang = call.rang[-1] if call.rang else None
        rows.append(Work(TASK, lane, {**base, "employee_id": rang}))
    if answered and sw.complete_on_reach:
        rows.append(Work(REACH, lane, {**base, "employee_id": call.talked_employee_id,
                                       "direction": call.direction or "in"}))
    if answered and inbound and caller.valid and sw.orders:
        rows.append(Work(ORDER, lane, {**base, "employee_id": call.talked_employee_id}))
    return rows


def ledger(call: Any, commands: tuple[Any, ...], region: str) -> tuple[str, Caller] | None:
    """What a call that just ended means for the call-back figures: ``("miss", caller)`` for a
    missed inbound call, ``("reach", caller)`` for an answered one in either direction."""
    upload = next((c for c in commands if isinstance(c, Upload)), None)
    if upload is None:
        return None
    caller = caller_of(call.contact_phone, region)
    if caller is None:
        return None
    if upload.result == "answered":
        return "reach", caller
    if (call.direction or "in") == "in":
        return "miss", caller
    return None


# -- what the requests carry -------------------------------------------------------------------


def external_id(number: str) -> str:
    """The customer's ``externalId`` tracker derives from the number: a create sent again after
    a crash is then found by it (and refused by retailCRM as a duplicate)."""
    return f"uis-{number}"


def order_external_id(call_id: int) -> str:
    """One order per call: its ``externalId``."""
    return f"uis-call-{call_id}"


def task_time(timestamp: float, tz: ZoneInfo) -> str:
    """``Y-m-d H:i``, the format of a task's ``datetime``."""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M")


def clock(timestamp: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(timestamp, tz).strftime("%d.%m %H:%M")


def task_text(phone: str) -> str:
    return f"Call back {phone}"


def miss_note(call_id: int, at: float, tz: ZoneInfo, employee: str | None) -> str:
    """One commentary line per missed call (the marker ``call <id>`` finds the task again)."""
    rang = f", rang {employee}" if employee else ""
    return f"Missed call at {clock(at, tz)} (UIS call {call_id}{rang})"


def reach_note(call_id: int, at: float, missed_at: float | None, tz: ZoneInfo,
               who: str | None, direction: str) -> str:
    how = "called back" if direction == "out" else "called again and got through"
    by = f" by {who}" if who else ""
    after = ""
    if missed_at is not None:
        after = f", {minutes_between(missed_at, at)} min after the miss"
    return f"Reached at {clock(at, tz)}: {how}{by}{after} (UIS call {call_id})"


def minutes_between(start: float, end: float) -> int:
    return max(0, round((end - start) / 60))


def task_body(phone: str, commentary: str, at: float, tz: ZoneInfo, performer_id: int,
              customer_id: int | None) -> dict[str, Any]:
    """The ``task`` of ``tasks/create``."""
    task: dict[str, Any] = {"text": task_text(phone), "commentary": commentary,
                            "datetime": task_time(at, tz), "performerId": performer_id,
                            "phone": phone}
    if customer_id is not None:
        task["customer"] = {"id": customer_id}
    return task


def performers(manager_id: int | None, rang_user_id: int | None, fallback_id: int) -> list[int]:
    """Who may perform a task, best first: the customer's manager, the last employee it rang,
    then ``tasks.fallback_performer_id`` (0: none)."""
    out: list[int] = []
    for candidate in (manager_id, rang_user_id, fallback_id or None):
        if candidate is not None and candidate not in out:
            out.append(candidate)
    return out


def source_of(row: Mapping[str, Any]) -> dict[str, str]:
    """retailCRM's ``source`` (source, medium, campaign, keyword, content) from a report row;
    absent or empty fields are left out, never sent empty."""
    pairs = (("source", ("utm_source",)), ("medium", ("utm_medium",)),
             ("campaign", ("utm_campaign", "campaign_name")),
             ("keyword", ("utm_term", "search_query")), ("content", ("utm_content",)))
    out = {}
    for name, columns in pairs:
        value = next((_text(row.get(c)) for c in columns if _text(row.get(c))), "")
        if value:
            out[name] = value
    return out


def client_id_of(row: Mapping[str, Any]) -> str | None:
    """The web analytics client id (Google's first, then Yandex Metrica's)."""
    return _text(row.get("ua_client_id")) or _text(row.get("ym_client_id")) or None


def attribution_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """What tracker keeps of a report row (stored with the call as JSON)."""
    kept: dict[str, Any] = {}
    source = source_of(row)
    if source:
        kept["source"] = source
    client_id = client_id_of(row)
    if client_id:
        kept["clientId"] = client_id
    campaign = _text(row.get("campaign_name"))
    if campaign:
        kept["campaign_name"] = campaign
    query = [f"utm_{k}={_text(row.get('utm_' + k))}" for k in
             ("source", "medium", "campaign", "term", "content") if _text(row.get("utm_" + k))]
    if query:
        kept["queryString"] = "&".join(query)
    return kept


def web_analytics(attribution: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pop-up's ``webAnalyticsData`` (campaign name, query string) when anything is known."""
    data: dict[str, Any] = {}
    if attribution.get("campaign_name"):
        data["campaign"] = {"name": attribution["campaign_name"]}
    if attribution.get("queryString"):
        data["queryString"] = attribution["queryString"]
    return data or None


def customer_body(phone: str, number: str, *, manager_id: int | None,
                  source: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``customer`` of ``customers/create``."""
    customer: dict[str, Any] = {"externalId": external_id(number), "phones": [{"number": phone}],
                                "firstName": phone}
    if manager_id is not None:
        customer["managerId"] = manager_id
    if source:
        customer["source"] = dict(source)
    return customer


def order_body(call_id: int, phone: str, customer_id: int, *, method: str,
               manager_id: int | None, source: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``order`` of ``orders/create``."""
    order: dict[str, Any] = {"externalId": order_external_id(call_id),
                             "customer": {"id": customer_id}, "phone": phone,
                             "orderMethod": method}
    if manager_id is not None:
        order["managerId"] = manager_id
    if source:
        order["source"] = dict(source)
    return order


def same_number(phones: Any, number: str) -> bool:
    """Whether a retailCRM customer's ``phones`` hold ``number`` (digits compared; a customer
    may hold ``+7 (999) 123-45-67`` or ``8 999 123 45 67``)."""
    for entry in phones if isinstance(phones, list) else []:
        raw = entry.get("number") if isinstance(entry, Mapping) else None
        digits = "".join(ch for ch in str(raw or "") if ch.isdigit())
        if digits and (digits == number or (len(digits) == len(number)
                                            and digits[1:] == number[1:]
                                            and {digits[0], number[0]} == {"7", "8"})):
            return True
    return False


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""
