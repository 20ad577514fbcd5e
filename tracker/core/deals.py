"""retailCRM orders as UIS deals, without I/O: the funnel, outcomes, transitions and payloads.

retailCRM's order statuses, grouped by status group in retailCRM's own order, become the stages
of one UIS sales funnel. UIS gives a funnel one success and one failed stage besides the stages
in process (``create.sales_funnel``: ``stages.success``, ``stages.failed``,
``stages.in_process``), so every status of a won group (``deals.won_status_groups``) maps to the
stage ``won``, every status of a lost group to ``lost``, and each other status to a stage of its
own (its code). An order is one deal (``ext_id`` = the order id); each status it went through is
one row of ``upload.deals_history`` (same ``ext_id``, the stage and when it was reached).
See docs/reference-notes.md "UIS: deals" for which field names are confirmed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FUNNEL_EXT_ID = "retailcrm-orders"
FUNNEL_NAME = "retailCRM orders"
WON_STAGE, LOST_STAGE = "won", "lost"
COMMUNICATION_TYPE_CALL = "call"
LINK_WINDOW_SECONDS = 30 * 86_400  # UIS links no communication older than 30 days to a deal


@dataclass(frozen=True)
class Stage:
    """Where a retailCRM status lands in the UIS funnel."""

    ext_id: str
    outcome: str  # "won" | "lost" | "open"
    group: str


def outcome_of(group: str | None, won: Sequence[str], lost: Sequence[str]) -> str:
    """``won``/``lost`` for the configured status groups, ``open`` for any other."""
    if group in won:
        return "won"
    if group in lost:
        return "lost"
    return "open"


def _ordering(item: Mapping[str, Any]) -> tuple[int, str]:
    ordering = item.get("ordering")
    return (ordering if isinstance(ordering, int) else 1_000_000, str(item.get("code") or ""))


def ordered_statuses(groups: Mapping[str, Any], statuses: Mapping[str, Any]
                     ) -> list[dict[str, Any]]:
    """retailCRM's statuses in its own order: by group ``ordering``, then status ``ordering``.
    A status naming no known group comes last (its group is kept as it was given)."""
    rank = {code: _ordering(g) for code, g in groups.items() if isinstance(g, Mapping)}
    rows = [dict(s, code=s.get("code") or code) for code, s in statuses.items()
            if isinstance(s, Mapping)]
    return sorted(rows, key=lambda s: (rank.get(str(s.get("group")), (2_000_000, "")),
                                       _ordering(s)))


def stage_map(groups: Mapping[str, Any], statuses: Mapping[str, Any], won: Sequence[str],
              lost: Sequence[str]) -> dict[str, Stage]:
    """status code -> its stage."""
    stages = {}
    for status in ordered_statuses(groups, statuses):
        group = str(status.get("group") or "")
        outcome = outcome_of(group, won, lost)
        ext_id = {"won": WON_STAGE, "lost": LOST_STAGE}.get(outcome, str(status["code"]))
        stages[str(status["code"])] = Stage(ext_id, outcome, group)
    return stages


def funnel_params(groups: Mapping[str, Any], statuses: Mapping[str, Any], won: Sequence[str],
                  lost: Sequence[str]) -> dict[str, Any]:
    """``create.sales_funnel`` parameters (without the access token)."""
    in_process: list[dict[str, Any]] = []
    won_names: list[str] = []
    lost_names: list[str] = []
    for status in ordered_statuses(groups, statuses):
        if status.get("active") is False:
            continue
        outcome = outcome_of(str(status.get("group") or ""), won, lost)
        name = str(status.get("name") or status["code"])
        if outcome == "won":
            won_names.append(name)
        elif outcome == "lost":
            lost_names.append(name)
        else:
            in_process.append({"ext_id": str(status["code"]), "name": name,
                               "order": 10 * (len(in_process) + 1)})
    return {
        "ext_id": FUNNEL_EXT_ID,
        "name": FUNNEL_NAME,
        "stages": {
            "success": {"ext_id": WON_STAGE, "name": ", ".join(won_names) or "Won"},
            "failed": {"ext_id": LOST_STAGE, "name": ", ".join(lost_names) or "Lost"},
            "in_process": in_process,
        },
    }


def digest(value: Any) -> str:
    """A short fingerprint of what was sent to UIS, to tell when it changed."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def responsible(user: Mapping[str, Any]) -> dict[str, Any] | None:
    """A retailCRM user as a UIS responsible employee (None without an id)."""
    user_id = user.get("id")
    if not isinstance(user_id, int):
        return None
    name = " ".join(str(user.get(k)) for k in ("firstName", "lastName") if user.get(k))
    return {"ext_id": str(user_id), "name": name or str(user.get("email") or f"user {user_id}")}


# -- orders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderFacts:
    """What a deal needs from a retailCRM order, flattened for the store."""

    order_id: int
    number: str
    site: str
    status: str
    created_at: str  # retailCRM's "Y-m-d H:i:s", account time
    amount: float | None
    manager_id: int | None
    customer_id: int | None
    name: str
    phones: tuple[str, ...]
    emails: tuple[str, ...]


def order_facts(order: Mapping[str, Any]) -> OrderFacts | None:
    """The facts of an order from ``GET orders`` (or a history entry's full order); None
    when it has no id or no creation date."""
    order_id, created = order.get("id"), order.get("createdAt")
    if not isinstance(order_id, int) or not isinstance(created, str):
        return None
    customer = order.get("customer") if isinstance(order.get("customer"), Mapping) else {}
    assert isinstance(customer, Mapping)
    phones: list[str] = []
    for value in [order.get("phone"), order.get("additionalPhone"),
                  *[p.get("number") for p in customer.get("phones") or []
                    if isinstance(p, Mapping)]]:
        if isinstance(value, str) and value.strip() and value.strip() not in phones:
            phones.append(value.strip())
    emails = [e for e in dict.fromkeys([order.get("email"), customer.get("email")])
              if isinstance(e, str) and e.strip()]
    name = " ".join(str(order.get(k)) for k in ("firstName", "lastName") if order.get(k)) or \
        " ".join(str(customer.get(k)) for k in ("firstName", "lastName") if customer.get(k))
    amount = order.get("totalSumm", order.get("summ"))
    manager = order.get("managerId")
    customer_id = customer.get("id")
    status = order.get("status")
    return OrderFacts(
        order_id=order_id, number=str(order.get("number") or order_id),
        site=str(order.get("site") or ""), status=status if isinstance(status, str) else "",
        created_at=created,
        amount=float(amount) if isinstance(amount, int | float) else None,
        manager_id=manager if isinstance(manager, int) else None,
        customer_id=customer_id if isinstance(customer_id, int) else None,
        name=name, phones=tuple(phones), emails=tuple(emails))


def contact_ext_id(facts: Mapping[str, Any]) -> str:
    """The UIS contact of an order: its retailCRM customer id (the order's own id, prefixed,
    for an order without a customer)."""
    customer = facts.get("customer_id")
    return str(customer) if customer is not None else f"order-{facts['order_id']}"


def contact(facts: Mapping[str, Any]) -> dict[str, Any] | None:
    """``create.deal_contacts`` item for an order's customer; None without phone and e-mail."""
    phones = [p for p in json.loads(facts.get("phones") or "[]")]
    emails = [e for e in json.loads(facts.get("emails") or "[]")]
    if not phones and not emails:
        return None
    item: dict[str, Any] = {"ext_id": contact_ext_id(facts),
                            "name": facts.get("name") or f"Customer {contact_ext_id(facts)}"}
    if phones:
        item["phone_numbers"] = phones
    if emails:
        item["emails"] = emails
    return item


@dataclass(frozen=True)
class Change:
    """What one history entry means for a deal."""

    kind: str  # "stage" (a status reached), "update" (other deal data changed), "deleted"
    status: str | None = None
    needs_order: bool = False  # the entry does not carry what the deal needs: fetch the order


DEAL_FIELDS = frozenset({"total_summ", "summ", "manager", "customer", "phone", "email",
                         "first_name", "last_name", "site", "status", "order_product"})


def change_of(entry: Mapping[str, Any]) -> Change | None:
    """Classify a ``orders/history`` entry; None for changes a deal does not show."""
    if entry.get("deleted"):
        return Change("deleted")
    order = entry.get("order") if isinstance(entry.get("order"), Mapping) else {}
    assert isinstance(order, Mapping)
    if entry.get("created"):
        status = order.get("status")
        # A creation entry carries the whole order; without its status it is fetched.
        return Change("stage", status if isinstance(status, str) else None,
                      needs_order=not isinstance(status, str) or "createdAt" not in order)
    field = entry.get("field")
    if field == "status":
        new = entry.get("newValue")
        code = new.get("code") if isinstance(new, Mapping) else new
        return Change("stage", code if isinstance(code, str) else None)
    if isinstance(field, str) and (field in DEAL_FIELDS or field.startswith("order_product")):
        return Change("update", needs_order=True)
    return None


def deal_rows(facts: Mapping[str, Any], transitions: Iterable[Mapping[str, Any]],
              stages: Mapping[str, Stage], *, communication_id: int | None) -> list[dict[str, Any]]:
    """``upload.deals_history`` rows for these transitions of one order (oldest first).

    A ``stage`` transition is a row at its stage reached then; an ``update`` repeats the stage
    the order was in, with the latest amount and contact. Transitions to a status without a
    stage (unknown to retailCRM's reference) are left out; the caller logs them."""
    rows = []
    for transition in transitions:
        status = transition["status"]
        stage = stages.get(status) if status else None
        if stage is None:
            continue
        row: dict[str, Any] = {
            "ext_id": str(facts["order_id"]),
            "name": f"Order {facts.get('number') or facts['order_id']}",
            "created_date_time": facts["created_at"],
            "modified_date_time": transition["at"],
            "modified_stage_date_time": transition["stage_at"],
            "sales_funnel_ext_id": FUNNEL_EXT_ID,
            "stage_ext_id": stage.ext_id,
            "comments": _comment(facts, status),
        }
        if stage.outcome != "open":
            row["closed_date_time"] = transition["stage_at"]
        if facts.get("amount") is not None:
            row["price"] = facts["amount"]
        if facts.get("manager_id") is not None:
            row["responsible_ext_id"] = str(facts["manager_id"])
        if contact(facts) is not None:
            row["main_contact_ext_id"] = contact_ext_id(facts)
            row["contact_ext_ids"] = [contact_ext_id(facts)]
        if communication_id is not None:
            row["communication_id"] = communication_id
            row["communication_type"] = COMMUNICATION_TYPE_CALL
        rows.append(row)
    return rows


def _comment(facts: Mapping[str, Any], status: str) -> str:
    site = f", site {facts['site']}" if facts.get("site") else ""
    return f"retailCRM order {facts.get('number') or facts['order_id']}{site}, status {status}"


def skip_reason(facts: Mapping[str, Any], communication_id: int | None) -> str | None:
    """Why an order cannot be a deal in UIS's report (None when it can): UIS needs a contact
    with contact data or a communication."""
    if communication_id is None and contact(facts) is None:
        return "no phone, no e-mail and no known call: UIS cannot attribute it"
    return None
