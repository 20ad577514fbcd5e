"""The pure side of the CRM work (core/crmwork.py): callers, plans, performers, attribution."""

from __future__ import annotations

import pytest

from tracker.core import crmwork
from tracker.core.calls import Call
from tracker.core.commands import Hangup, Upload

ALL_ON = crmwork.Switches(customers=True, missed_tasks=True, complete_on_reach=True, orders=True)


@pytest.mark.parametrize(("raw", "phone", "valid"), [
    ("79991234567", "+79991234567", True),
    ("8 (999) 123-45-67", "+79991234567", True),
    ("5556", "5556", False),
    ("anonymous", None, None),
    ("", None, None),
    (None, None, None),
    ("12", None, None),
])
def test_caller_of(raw, phone, valid):
    caller = crmwork.caller_of(raw)
    if phone is None:
        assert caller is None
    else:
        assert caller is not None and (caller.phone, caller.valid) == (phone, valid)


def _call(direction="in", phone="79991234567", talked=None, rang=(101, 102)):
    return Call(id=7, direction=direction, contact_phone=phone, started_at=1000.0,
                talked_employee_id=talked, rang=list(rang))


@pytest.mark.parametrize(("call", "result", "kinds"), [
    (_call(), "no answer", ["crm_customer", "crm_task"]),
    (_call(talked=101), "answered", ["crm_customer", "crm_reach", "crm_order"]),
    (_call("out", talked=101), "answered", ["crm_reach"]),
    (_call("out"), "no answer", []),
    (_call(phone="5556"), "no answer", ["crm_task"]),
    (_call(phone="anonymous"), "no answer", []),
])
def test_plan_kinds(call, result, kinds):
    rows = crmwork.plan(call, (Hangup((101,), "no answered"), Upload(result)), ALL_ON)
    assert [r.kind for r in rows] == kinds
    digits = "".join(c for c in call.contact_phone if c.isdigit())
    assert {r.lane for r in rows} <= {f"number:{digits}"}
    assert all(r.priority == crmwork.PRIORITY_CRM for r in rows)


def test_plan_needs_the_upload_and_a_switch():
    assert crmwork.plan(_call(), (Hangup((101,), "no answered"),), ALL_ON) == []
    assert crmwork.plan(_call(), (Upload("no answer"),), crmwork.Switches()) == []
    [task] = crmwork.plan(_call(), (Upload("no answer"),), crmwork.Switches(missed_tasks=True))
    assert task.payload["employee_id"] == 102  # the last employee it rang


def test_performers_best_first_without_repeats():
    assert crmwork.performers(5, 2, 3) == [5, 2, 3]
    assert crmwork.performers(None, 2, 2) == [2]
    assert crmwork.performers(None, None, 0) == []


def test_source_leaves_out_what_is_missing():
    row = {"utm_source": "yandex", "utm_medium": "", "campaign_name": "Brand",
           "search_query": "shoes", "ua_client_id": None, "ym_client_id": "42"}
    assert crmwork.source_of(row) == {"source": "yandex", "campaign": "Brand",
                                      "keyword": "shoes"}
    kept = crmwork.attribution_of(row)
    assert kept["clientId"] == "42" and kept["queryString"] == "utm_source=yandex"
    assert crmwork.web_analytics(kept) == {"campaign": {"name": "Brand"},
                                           "queryString": "utm_source=yandex"}
    assert crmwork.attribution_of({}) == {} and crmwork.web_analytics({}) is None


@pytest.mark.parametrize(("stored", "same"), [
    ("+7 (999) 123-45-67", True), ("8 999 123 45 67", True), ("79991234568", False), ("", False)])
def test_same_number_compares_digits(stored, same):
    assert crmwork.same_number([{"number": stored}], "79991234567") is same
