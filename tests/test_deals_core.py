"""The pure half of deals (tracker/core/deals.py): funnel, outcomes, history entries, rows."""

from __future__ import annotations

import json

import pytest

from tracker.core import deals

GROUPS = {"cancel": {"code": "cancel", "ordering": 60}, "new": {"code": "new", "ordering": 10},
          "complete": {"code": "complete", "ordering": 50},
          "approval": {"code": "approval", "ordering": 20}}
STATUSES = {
    "cancel-other": {"name": "Отменен", "group": "cancel", "ordering": 10},
    "new": {"name": "Новый", "group": "new", "ordering": 10},
    "complete": {"name": "Выполнен", "group": "complete", "ordering": 10},
    "client-confirmed": {"name": "Согласовано", "group": "approval", "ordering": 20},
    "availability-confirmed": {"name": "Наличие", "group": "approval", "ordering": 10},
    "orphan": {"name": "Без группы", "group": "vanished", "ordering": 1},
}


@pytest.mark.parametrize(("group", "outcome"), [
    ("complete", "won"), ("cancel", "lost"), ("new", "open"), (None, "open"), ("", "open")])
def test_status_groups_decide_won_lost_open(group, outcome):
    assert deals.outcome_of(group, ["complete"], ["cancel"]) == outcome


def test_funnel_follows_retailcrms_order_with_one_success_and_one_failed_stage():
    params = deals.funnel_params(GROUPS, STATUSES, ["complete"], ["cancel"])
    assert [s["ext_id"] for s in params["stages"]["in_process"]] == [
        "new", "availability-confirmed", "client-confirmed", "orphan"]
    assert params["stages"]["success"] == {"ext_id": "won", "name": "Выполнен"}
    assert params["stages"]["failed"] == {"ext_id": "lost", "name": "Отменен"}
    stages = deals.stage_map(GROUPS, STATUSES, ["complete"], ["cancel"])
    assert stages["complete"].ext_id == "won" and stages["cancel-other"].outcome == "lost"
    assert deals.digest(params) == deals.digest(json.loads(json.dumps(params)))


@pytest.mark.parametrize(("entry", "kind", "status", "fetch"), [
    ({"created": True, "order": {"id": 1, "status": "new", "createdAt": "x"}}, "stage", "new",
     False),
    ({"created": True, "order": {"id": 1}}, "stage", None, True),
    ({"field": "status", "newValue": {"code": "complete"}, "order": {"id": 1}}, "stage",
     "complete", False),
    ({"field": "total_summ", "newValue": 10, "order": {"id": 1}}, "update", None, True),
    ({"field": "order_product.quantity", "order": {"id": 1}}, "update", None, True),
    ({"deleted": True, "order": {"id": 1}}, "deleted", None, False),
])
def test_history_entries_are_classified(entry, kind, status, fetch):
    change = deals.change_of(entry)
    assert change is not None
    assert (change.kind, change.status, change.needs_order) == (kind, status, fetch)


def test_entries_a_deal_does_not_show_are_ignored():
    assert deals.change_of({"field": "manager_comment", "order": {"id": 1}}) is None


FACTS = {"order_id": 7, "number": "7A", "site": "shop", "created_at": "2026-01-01 10:00:00",
         "amount": 990.0, "manager_id": 3, "customer_id": 55, "name": "Иван",
         "phones": json.dumps(["+79991234567"]), "emails": "[]", "call_id": None}


def test_deal_rows_one_per_transition_closed_when_won_unknown_status_left_out():
    stages = deals.stage_map(GROUPS, STATUSES, ["complete"], ["cancel"])
    transitions = [{"status": "new", "at": "2026-01-01 10:00:00",
                    "stage_at": "2026-01-01 10:00:00"},
                   {"status": "nobody-knows", "at": "t", "stage_at": "t"},
                   {"status": "complete", "at": "2026-01-02 10:00:00",
                    "stage_at": "2026-01-02 10:00:00"}]
    rows = deals.deal_rows(FACTS, transitions, stages, communication_id=3_000_000_001)
    assert [r["stage_ext_id"] for r in rows] == ["new", "won"]
    assert "closed_date_time" not in rows[0]
    assert rows[1]["closed_date_time"] == "2026-01-02 10:00:00"
    assert {r["ext_id"] for r in rows} == {"7"}
    assert rows[0]["main_contact_ext_id"] == "55" and rows[0]["price"] == 990.0
    assert rows[0]["communication_id"] == 3_000_000_001
    assert rows[0]["communication_type"] == "call"
    assert "site shop" in rows[0]["comments"]


def test_an_order_without_contact_data_or_call_is_skipped():
    anonymous = dict(FACTS, phones="[]", emails="[]")
    assert deals.skip_reason(anonymous, None) is not None
    assert deals.skip_reason(anonymous, 3_000_000_001) is None
    assert deals.skip_reason(FACTS, None) is None
    assert deals.contact(anonymous) is None


def test_order_facts_take_the_customers_numbers_and_skip_an_order_without_id():
    facts = deals.order_facts({"id": 5, "createdAt": "2026-01-01 10:00:00", "totalSumm": 10,
                               "phone": "+7 999 123-45-67",
                               "customer": {"id": 9, "phones": [{"number": "+7 999 123-45-67"},
                                                                {"number": "8 800 000"}],
                                            "email": "a@b.c"}})
    assert facts is not None
    assert facts.phones == ("+7 999 123-45-67", "8 800 000")
    assert facts.emails == ("a@b.c",) and facts.customer_id == 9 and facts.amount == 10.0
    assert deals.order_facts({"createdAt": "x"}) is None
