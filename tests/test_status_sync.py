"""Employee status sync both ways, against the real daemon and both simulators."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.support import ANNA, BORIS, CLIENT_ID, UIS_TOKEN, Daemon, open_system
from tracker import config
from tracker.features.status_sync import crm_status_for, observed_state, target_state

DIRECTIONS = ("in_external_allowed_call_directions", "in_internal_allowed_call_directions")


def updates(d: Daemon) -> list[dict[str, Any]]:
    """``update.employees`` params UIS received (token checked and removed)."""
    found = []
    for r in d.sims.uis.rpc_requests:
        if r.get("method") == "update.employees":
            params = dict(r["params"])
            assert params.pop("access_token") == UIS_TOKEN
            found.append(params)
    return found


def rpc_count(d: Daemon, method: str) -> int:
    return sum(r.get("method") == method for r in d.sims.uis.rpc_requests)


def pushes(d: Daemon) -> list[tuple[str, str]]:
    """Accepted ``users/{id}/status`` requests retailCRM received: (endpoint, status)."""
    return [(r.endpoint, r.form["status"]) for r in d.crm_requests("users/1/status")
            + d.crm_requests("users/2/status") + d.crm_requests("users/3/status")
            if r.status == 200]


async def set_status(d: Daemon, status: str | None, method: str = "POST", **params: Any) -> Any:
    fields = {"clientId": CLIENT_ID, "userId": "1", "code": "101", "status": status, **params}
    fields = {k: v for k, v in fields.items() if v is not None}
    url = f"{d.url}/crm/user-status"
    if method == "GET":
        return await d.client.get(url, params=fields)
    return await d.client.post(url, data=fields)


def journal(d: Daemon) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in d.ctx.store.conn.execute(
        "SELECT direction, uis_id, crm_status, uis_state, outcome FROM status_changes ORDER BY id")]


def sync(mode: str = "calls_available", mapping: str = config.DEFAULT_STATUS_MAPPING
         ) -> config.StatusSyncSettings:
    return config.StatusSyncSettings(mode=mode, mapping=mapping)


@pytest.mark.parametrize(("settings", "status", "state"), [
    (sync(), "free", "available"),
    (sync(), "busy", "unavailable"),
    (sync(), "dinner", "unavailable"),
    (sync(mapping="dinner=available"), "dinner", "available"),
    (sync("status_id"), "free", "available"),
    (sync("status_id"), "busy", "do_not_disturb"),
    (sync("status_id", "break=break,dinner=not_at_workplace"), "dinner", "not_at_workplace"),
    (sync("directions", "break=break"), "break", "unavailable"),
])
def test_mapping_turns_a_crm_status_into_a_uis_state(settings, status, state):
    assert target_state(settings, status) == state


@pytest.mark.parametrize(("settings", "state", "status"), [
    (sync(), "available", "free"),
    (sync(), "unavailable", "busy"),
    (sync("status_id", "break=break"), "break", "break"),
    (sync("status_id"), "not_at_work", "busy"),  # mapped by nobody: not available
    (sync("status_id", "free=break,busy=available"), "available", "busy"),
])
def test_a_uis_state_goes_back_to_the_first_crm_status_mapped_to_it(settings, state, status):
    assert crm_status_for(settings, state) == status


@pytest.mark.parametrize(("mode", "row", "state"), [
    ("calls_available", {"calls_available": False}, "unavailable"),
    ("calls_available", {}, None),
    ("directions", {DIRECTIONS[0]: ["in"]}, "available"),
    ("directions", {DIRECTIONS[0]: []}, "unavailable"),
    ("status_id", {"status": "break", "status_id": 2}, "break"),
])
def test_what_get_employees_says_is_read_per_mode(mode, row, state):
    assert observed_state(mode, row) == state


@pytest.mark.parametrize(("sections", "method", "status", "sent", "after"), [
    ({}, "POST", "busy", {"calls_available": False}, {"calls_available": False}),
    ({}, "GET", "dinner", {"calls_available": False}, {"calls_available": False}),
    ({"status_sync": {"mode": "directions"}}, "POST", "break",
     {DIRECTIONS[0]: [], DIRECTIONS[1]: []}, {DIRECTIONS[0]: [], DIRECTIONS[1]: []}),
    ({"status_sync": {"mode": "status_id"}}, "GET", "busy", {"status_id": 3},
     {"status_id": 3, "status": "do_not_disturb"}),
    ({"status_sync": {"mode": "status_id", "mapping": "break=break"}}, "POST", "break",
     {"status_id": 2}, {"status_id": 2, "status": "break"}),
])
async def test_crm_status_updates_the_uis_employee_partially(tmp_path, sections, method, status,
                                                             sent, after):
    with trio.fail_after(20):
        async with open_system(tmp_path, **sections) as d:
            response = await set_status(d, status, method)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "queued"
            await d.settle()
            assert updates(d) == [{"id": ANNA[0], **sent}]
            employee = d.sims.uis.employees[ANNA[0]]
            assert {k: employee[k] for k in after} == after
            assert d.sims.uis.employees[BORIS[0]]["calls_available"] is True  # nobody else
            [row] = d.ctx.store.conn.execute("SELECT * FROM outbox").fetchall()
            assert (row["kind"], row["lane"], row["status"]) == (
                "employee_status", f"employee:{ANNA[0]}", "delivered")
            assert json.loads(row["request"])["params"] == {"id": ANNA[0], **sent}
            [(direction, uis_id, crm_status, _, outcome)] = journal(d)
            assert (direction, uis_id, crm_status, outcome) == (
                "crm_to_uis", ANNA[0], status, "queued")
            [entry] = d.ctx.store.conn.execute("SELECT * FROM api_requests").fetchall()
            assert entry["method"] == f"{method} /crm/user-status" and entry["status"] == 200
            assert json.loads(entry["params"])["clientId"] == "***"


async def test_free_makes_the_employee_available_again(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await set_status(d, "busy")
            await d.settle()
            await set_status(d, "free", code=None)  # by userId alone
            await d.settle()
            assert updates(d) == [{"id": ANNA[0], "calls_available": False},
                                  {"id": ANNA[0], "calls_available": True}]
            assert d.sims.uis.employees[ANNA[0]]["calls_available"] is True


@pytest.mark.parametrize(("params", "status", "error"), [
    ({"clientId": None}, 403, "forbidden"),
    ({"clientId": "wrong"}, 403, "forbidden"),
    ({"status": None}, 400, "missing_parameter"),
    ({"status": "sleeping"}, 400, "invalid_status"),
    ({"code": None, "userId": None}, 400, "missing_parameter"),
    ({"code": "777", "userId": "77"}, 422, "unmapped_user"),
])
async def test_bad_status_requests_are_4xx_and_change_nothing(tmp_path, params, status, error):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            fields = {"status": "busy", **params}
            response = await set_status(d, fields.pop("status"), **fields)
            assert response.status_code == status
            assert response.json()["error"] == error
            await d.settle()
            assert updates(d) == [] and d.count("outbox") == 0 and journal(d) == []
            [entry] = d.ctx.store.conn.execute("SELECT * FROM api_requests").fetchall()
            assert (entry["status"], entry["outcome"]) == (status, error)
            if error == "unmapped_user":
                [warning] = d.ctx.store.warnings()
                assert warning["kind"] == "unmapped_crm_user"


async def test_a_burst_for_one_employee_delivers_only_the_latest(tmp_path):
    # A slow first retry keeps the lane waiting while the burst arrives.
    with trio.fail_after(20):
        async with open_system(tmp_path, outbox={"retry_base_seconds": 0.6}) as d:
            d.sims.uis.fail_next("update.employees", "internal_error", -32603)
            await set_status(d, "busy")
            await d.sims.uis.wait_for(lambda: rpc_count(d, "update.employees") == 1)
            await d.sims.uis.wait_for(
                lambda: d.count("outbox", "attempts = 1 AND status = 'pending'"))
            for status in ("dinner", "break", "free"):
                response = await set_status(d, status)
                assert response.json()["status"] == "queued"
            assert response.json()["superseded"] == 1
            await d.sims.uis.wait_for(lambda: rpc_count(d, "update.employees") == 2)
            await d.settle()
            assert updates(d) == [{"id": ANNA[0], "calls_available": False},  # failed
                                  {"id": ANNA[0], "calls_available": True}]  # the latest
            rows = d.ctx.store.conn.execute(
                "SELECT status, last_error FROM outbox ORDER BY id").fetchall()
            assert [r["status"] for r in rows] == ["superseded"] * 3 + ["delivered"]
            assert rows[0]["last_error"] == "superseded by #2"
            assert [(c[2], c[4]) for c in journal(d)] == [
                ("busy", "queued"), ("dinner", "queued"), ("break", "queued"), ("free", "queued")]
            assert d.sims.uis.employees[ANNA[0]]["calls_available"] is True


async def test_changes_for_different_employees_do_not_supersede_each_other(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await set_status(d, "busy")
            await set_status(d, "dinner", userId="2", code="102")
            await d.settle()
            assert sorted(u["id"] for u in updates(d)) == [ANNA[0], BORIS[0]]
            assert d.count("outbox", "status = 'delivered'") == 2


async def test_unknown_uis_employee_is_a_dead_letter_with_the_reason(tmp_path):
    employees = [{"uis_id": 109, "crm_user_id": 1, "code": "101"}]
    with trio.fail_after(20):
        async with open_system(tmp_path, employees=employees) as d:
            await set_status(d, "busy")
            await d.settle()
            [dead] = d.ctx.store.dead_letters()
            assert dead["kind"] == "employee_status"
            assert "entity_not_found" in dead["last_error"]  # UIS's update.* error


# -- UIS -> retailCRM --------------------------------------------------------------------------

POLL = {"status_sync": {"poll_seconds": 0.05}}


async def polls(d: Daemon, more: int = 2) -> None:
    """Wait until UIS was polled ``more`` more times (and what that queued is delivered)."""
    target = rpc_count(d, "get.employees") + more
    await d.sims.uis.wait_for(lambda: rpc_count(d, "get.employees") >= target)
    await d.settle()


async def test_polling_is_off_by_default(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await set_status(d, "busy")
            await d.settle()
            await trio.sleep(0.3)
            assert rpc_count(d, "get.employees") == 0


async def test_a_change_in_uis_is_pushed_to_retailcrm_once(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **POLL) as d:
            await polls(d)  # the first look only records what UIS shows
            assert pushes(d) == []
            d.sims.uis.employees[BORIS[0]]["calls_available"] = False
            await d.sims.crm.wait_for(lambda: pushes(d))
            await polls(d)
            assert pushes(d) == [("users/2/status", "busy")]
            assert d.sims.crm.user_statuses == {2: "busy"}
            d.sims.uis.employees[BORIS[0]]["calls_available"] = True
            await d.sims.crm.wait_for(lambda: len(pushes(d)) == 2)
            await polls(d)
            assert pushes(d) == [("users/2/status", "busy"), ("users/2/status", "free")]
            asked = [r["params"] for r in d.sims.uis.rpc_requests
                     if r.get("method") == "get.employees"]
            assert asked[0] == {"access_token": UIS_TOKEN, "fields": ["id", "calls_available"]}
            assert [(c[0], c[1], c[2], c[4]) for c in journal(d)] == [
                ("uis_to_crm", BORIS[0], "busy", "queued"),
                ("uis_to_crm", BORIS[0], "free", "queued")]


async def test_status_id_mode_pushes_the_mapped_status(tmp_path):
    sections = {"status_sync": {"poll_seconds": 0.05, "mode": "status_id",
                                "mapping": "break=break"}}
    with trio.fail_after(20):
        async with open_system(tmp_path, **sections) as d:
            await polls(d)
            d.sims.uis.employees[BORIS[0]].update(status="break", status_id=2)
            await d.sims.crm.wait_for(lambda: pushes(d))
            assert pushes(d) == [("users/2/status", "break")]


async def test_a_change_that_came_from_the_crm_is_never_echoed(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **POLL) as d:
            await polls(d)
            # retailCRM -> UIS: polling sees the new state, knows it is ours, pushes nothing
            await set_status(d, "dinner")
            await d.settle()
            assert d.sims.uis.employees[ANNA[0]]["calls_available"] is False
            await polls(d, 3)
            assert pushes(d) == []
            # UIS -> retailCRM: retailCRM calling back with what we pushed changes nothing in UIS
            d.sims.uis.employees[BORIS[0]]["calls_available"] = False
            await d.sims.crm.wait_for(lambda: pushes(d))
            await d.settle()
            response = await set_status(d, "busy", userId="2", code="102")
            assert response.json()["status"] == "unchanged"
            await polls(d, 3)
            assert updates(d) == [{"id": ANNA[0], "calls_available": False}]
            assert pushes(d) == [("users/2/status", "busy")]
            assert [(c[0], c[1], c[2], c[4]) for c in journal(d)] == [
                ("crm_to_uis", ANNA[0], "dinner", "queued"),
                ("uis_to_crm", BORIS[0], "busy", "queued"),
                ("crm_to_uis", BORIS[0], "busy", "echo")]
            # a real change afterwards goes through again
            await set_status(d, "free", userId="2", code="102")
            await d.settle()
            assert updates(d)[-1] == {"id": BORIS[0], "calls_available": True}


async def test_uis_change_matching_the_crm_status_already_is_not_pushed(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **POLL) as d:
            await polls(d)
            await set_status(d, "dinner")  # UIS: unavailable
            await d.settle()
            await polls(d)
            d.sims.uis.employees[ANNA[0]]["calls_available"] = True  # someone in UIS
            await d.sims.crm.wait_for(lambda: pushes(d))
            assert pushes(d) == [("users/1/status", "free")]
            d.sims.uis.employees[ANNA[0]]["calls_available"] = False
            await d.sims.crm.wait_for(lambda: len(pushes(d)) == 2)
            assert pushes(d)[-1] == ("users/1/status", "busy")


async def test_polling_goes_on_after_failed_polls(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **POLL) as d:
            await polls(d)
            d.sims.uis.fail_next("get.employees", "internal_error", -32603, count=2)
            d.sims.uis.employees[BORIS[0]]["calls_available"] = False
            await d.sims.crm.wait_for(lambda: pushes(d))
            assert pushes(d) == [("users/2/status", "busy")]


# -- configuration ----------------------------------------------------------------------------

BASE_CONFIG = {"server": {"public_url": "http://tracker.test"},
               "uis": {"webhook_secret": "s" * 20, "access_token": "t"},
               "crm": {"url": "http://crm.test", "api_key": "k",
                       "client_id": "status-sync-client-0123456789"}}


@pytest.mark.parametrize(("sections", "problem"), [
    ({"status_sync": {"mode": "presence"}}, "status_sync.mode: must be one of calls_available, "
                                            "directions, status_id, got 'presence'"),
    ({"status_sync": {"mapping": "free=online"}}, "status_sync.mapping: 'free=online' must be"),
    ({"status_sync": {"mapping": "lunch=unavailable"}}, "status_sync.mapping: 'lunch=unavailable'"),
    ({"status_sync": {"mapping": "free"}}, "status_sync.mapping: 'free' must be"),
    ({"status_sync": {"poll_seconds": 30}, "crm": {"api_version": "v4"}},
     "status_sync.poll_seconds: pushing statuses to retailCRM needs crm.api_version v5"),
    ({"status_sync": {"poll_seconds": -1}}, "status_sync.poll_seconds: must not be negative"),
    ({"click": {"deadline_seconds": 0}}, "click.deadline_seconds: must be more than 0"),
    ({"click": {"dedupe_seconds": "soon"}}, "click.dedupe_seconds: must be a number"),
    ({"click": {"virtual_phone_numbers": "74951111111,main"}},
     "click.virtual_phone_numbers: 'main' is not a phone number"),
])
def test_bad_click_and_status_sync_settings_are_named(sections, problem):
    data = {k: {**v, **sections.get(k, {})} for k, v in BASE_CONFIG.items()}
    data.update({k: v for k, v in sections.items() if k not in data})
    with pytest.raises(config.ConfigError) as caught:
        config.parse(data, {})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_click_and_status_sync_settings_come_from_the_environment_too():
    settings = config.parse(BASE_CONFIG, {"TRACKER_STATUS_SYNC_MODE": "status_id",
                                          "TRACKER_STATUS_SYNC_MAPPING": "dinner=break",
                                          "TRACKER_STATUS_SYNC_POLL_SECONDS": "15",
                                          "TRACKER_CLICK_DEDUPE_SECONDS": "3"})
    assert settings.status_sync == config.StatusSyncSettings("status_id", "dinner=break", 15.0)
    assert settings.status_sync.pairs() == {"free": "available", "busy": "unavailable",
                                            "dinner": "break", "break": "unavailable"}
    assert settings.click.dedupe_seconds == 3.0
    defaults = config.parse(BASE_CONFIG, {})
    assert defaults.status_sync.poll_seconds == 0 and defaults.click.busy_reasons() == {
        "subscriber_busy"}  # get.calls_report's documented finish_reason for a busy customer


async def test_a_status_set_in_retailcrm_cancels_an_older_push_from_uis(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, outbox={"retry_base_seconds": 0.6}, **POLL) as d:
            await polls(d)
            d.sims.crm.fault = "503"
            d.sims.uis.employees[BORIS[0]]["calls_available"] = False
            await d.sims.crm.wait_for(lambda: d.crm_requests("users/2/status"))
            d.sims.crm.fault = None
            # the user sets a status in retailCRM while the push waits for its retry
            assert (await set_status(d, "free", userId="2", code="102")).status_code == 200
            await d.settle()
            await polls(d)
            assert pushes(d) == []
            assert updates(d) == [{"id": BORIS[0], "calls_available": True}]
            kinds = d.ctx.store.conn.execute(
                "SELECT kind, status FROM outbox ORDER BY id").fetchall()
            assert [tuple(k) for k in kinds] == [("crm_user_status", "superseded"),
                                                 ("employee_status", "delivered")]


async def test_a_status_id_uis_no_longer_knows_is_read_again_after_entity_not_found(tmp_path):
    """update.employees names an unknown status_id with -32602 entity_not_found, field
    status_id: that push is a dead letter, and the next one reads get.statuses again."""
    with trio.fail_after(20):
        async with open_system(tmp_path, status_sync={"mode": "status_id"}) as d:
            await set_status(d, "busy")
            await d.settle()
            assert updates(d) == [{"id": ANNA[0], "status_id": 3}]
            d.sims.uis.statuses = {1: "available", 2: "break", 7: "do_not_disturb"}  # edited
            await set_status(d, "free")
            await set_status(d, "busy")
            await d.settle()
            [dead] = d.ctx.store.dead_letters()
            assert "entity_not_found" in dead["last_error"]
            await set_status(d, "busy", userId="1", code="101", extra="again")
            await d.settle()
            assert updates(d)[-1] == {"id": ANNA[0], "status_id": 7}
            asked = [r for r in d.sims.uis.rpc_requests if r.get("method") == "get.statuses"]
            assert len(asked) == 2
