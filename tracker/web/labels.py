"""Names people read for the page's values: states, directions, outcomes, statuses, employees.

The values themselves (``waiting_answer``, ``delivered``) stay in the page's data attributes
for scripts and tests; what a person reads comes from the catalogue. A value without a label
(a new outbox kind, a future state) is shown as it is, marked ``translate="no"`` by the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from tracker.core.formatting import N_
from tracker.web import i18n

LABELS: dict[str, dict[str, str]] = {
    "state": {
        "ringing": N_("ringing"),
        "waiting_answer": N_("waiting for an answer"),
        "talking": N_("talking"),
        "ended": N_("ended"),
        "lost": N_("lost"),
    },
    "direction": {"in": N_("inbound"), "out": N_("outbound")},
    "filter": {"state": N_("State"), "direction": N_("Direction"), "employee": N_("Employee"),
               "phone": N_("Phone"), "since": N_("From"), "until": N_("To"),
               "limit": N_("Limit")},
    "direction_short": {"in": N_("in"), "out": N_("out")},
    "outcome": {
        "accepted": N_("accepted"), "applied": N_("applied"), "ignored": N_("ignored"),
        "rejected": N_("rejected"), "duplicate": N_("duplicate"), "routed": N_("routed"),
        "fallback": N_("fallback"), "ok": N_("ok"), "internal_error": N_("internal error"),
    },
    "status": {
        "pending": N_("pending"), "delivered": N_("delivered"), "dead": N_("dead letter"),
        "superseded": N_("superseded"), "dropped": N_("dropped"),
    },
    "kind": {
        "popup": N_("pop-up card"), "hangup": N_("card closed"), "upload": N_("history upload"),
        "employee_status": N_("UIS status"), "crm_user_status": N_("retailCRM status"),
    },
    "warning": {
        "unmapped_employee": N_("employee not in [[employees]]"),
        "notExistCodes": N_("extension unknown to retailCRM"),
        "notExistUsers": N_("user unknown to retailCRM"),
        "unmapped_crm_user": N_("retailCRM user not in [[employees]]"),
        "routing_unmapped_manager": N_("routing: manager not in [[employees]]"),
        "routing_no_phone": N_("routing: no phone to dial"),
        "routing_crm": N_("routing: retailCRM did not answer"),
        "sweeper": N_("calls without an end"),
        "reconcile": N_("sessions without notifications"),
        "database_damaged": N_("database damaged"),
    },
}


def label(lang: str, group: str, value: Any) -> str | None:
    """The translated name of ``value`` in ``group``, or None when it has none."""
    known = LABELS.get(group, {}).get(str(value))
    return None if known is None else i18n.text(lang, known)


def employee(lang: str, employees: Mapping[int, Mapping[str, Any]], uis_id: int | None) -> str:
    """``Анна Иванова · 101`` (name · extension); ``UIS 13421 · not mapped`` when the
    employee has no ``[[employees]]`` entry."""
    if uis_id is None:
        return ""
    known = employees.get(uis_id) or {}
    name = known.get("full_name") or f"UIS {uis_id}"
    if known.get("code") is None:
        not_mapped = i18n.text(lang, N_("not mapped"))
        return f"{name} · {not_mapped}"
    return f"{name} · {known['code']}"


def person(lang: str, employees: Mapping[int, Mapping[str, Any]], uis_id: int | None) -> Markup:
    """``employee`` as HTML, marked as a name (no translator, no untranslated-text check)."""
    if uis_id is None:
        return Markup("")
    return Markup('<span class="person" translate="no">{}</span>').format(
        employee(lang, employees, uis_id))


def raw(params: Mapping[str, Any]) -> dict[str, Markup]:
    """Values typed by someone (a filter's input) marked as not to be translated."""
    return {name: Markup('<span translate="no">{}</span>').format(value)
            for name, value in params.items()}
