"""The UIS and retailCRM simulators speak the wire formats the reference docs describe."""

from __future__ import annotations

import json
import random
from datetime import datetime
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from tracker.core.catalogue import BY_EVENT
from tracker.simulators import CrmSimulator, RestartableServer, UisSimulator, open_server
from tracker.simulators import scenarios as sc

START = datetime(2024, 5, 17, 14, 3, 27)
ANNA, BORIS, VERA = (101, "Анна Иванова"), (102, "Борис Петров"), (103, "Вера Смирнова")

BUILT = {
    "answered": sc.answered(1001, start=START, employee=ANNA),
    "ring_group_lost": sc.ring_group_lost(1002, start=START, ringing=[ANNA, BORIS, VERA]),
    "lost_in_ivr": sc.lost_in_ivr(1003, start=START),
    "ring_group_answered": sc.ring_group_answered(1004, start=START, ringing=[ANNA],
                                                  employee=BORIS),
    "transfer": sc.transfer(1005, start=START, first=ANNA, second=BORIS),
    "outbound": sc.outbound(1006, start=START, employee=ANNA, external_id="req-1"),
    "outbound_lost": sc.outbound(1007, start=START, employee=ANNA, answered=False),
}


def rpc(method: str, token: str = "tok", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method,
            "params": {"access_token": token, **params}}


def receiver() -> tuple[QuartTrio, list[tuple[str, bytes, dict[str, str]]]]:
    """A tiny webhook endpoint recording (content type, body, query) of each request."""
    app, got = QuartTrio(__name__), []

    @app.route("/hook", methods=["GET", "POST"])
    async def hook() -> str:
        got.append((request.content_type or "", await request.get_data(),
                    request.args.to_dict()))
        return "ok"

    return app, got


@pytest.mark.parametrize("name", list(BUILT))
def test_every_notification_carries_exactly_its_template_variables(name: str) -> None:
    scenario = BUILT[name]
    assert scenario.notifications[-1].event in ("call_finished", "call_recorded")
    times = [n.values["notification_time"] for n in scenario.notifications]
    assert times == sorted(times)
    for n in scenario.notifications:
        assert set(n.values) == set(BY_EVENT[n.event].variables)
        assert n.values["call_session_id"] == scenario.session_id


def test_scenarios_are_deterministic_and_consistent() -> None:
    transfer = BUILT["transfer"]
    assert transfer == sc.transfer(1005, start=START, first=ANNA, second=BORIS)
    assert [leg.is_talked for leg in transfer.legs] == [True, True]
    assert transfer.report["last_talked_employee_id"] == BORIS[0]
    finished = next(n for n in transfer.notifications if n.event == "call_finished")
    assert finished.values["talk_time_duration"] == transfer.report["talk_duration"]
    lost = BUILT["ring_group_lost"]
    assert lost.report["is_lost"] and not any(leg.call_records for leg in lost.legs)
    rng = random.Random(7)
    kinds = {sc.random_scenario(rng, i, [ANNA, BORIS], start=START).name for i in range(200)}
    assert {"answered", "transfer", "lost_in_ivr", "outbound_answered"} <= kinds


async def test_upload_twice_reports_duplicate() -> None:
    crm = CrmSimulator("key")
    call = {"date": "2024-05-17 14:03:27", "type": "in", "phone": "+79991234567",
            "result": "answered", "duration": 95, "externalId": "998677427"}
    with trio.fail_after(10):
        async with open_server(crm.app) as url, httpx.AsyncClient(base_url=url) as client:
            answers = [await client.post("/api/v5/telephony/calls/upload",
                                         data={"calls": json.dumps([call])},
                                         headers={"X-API-KEY": "key"}) for _ in range(2)]
    assert answers[0].json() == {"success": True, "processedCallsCount": 1, "duplicateCalls": []}
    assert answers[1].json()["duplicateCalls"] == ["998677427"]
    assert list(crm.uploaded) == ["998677427"]
    assert len(crm.calls_for("998677427")) == 2


async def test_call_event_with_wrong_key_is_refused_and_recorded() -> None:
    crm = CrmSimulator("key")
    event = {"phone": "+79991234567", "type": "in", "codes": ["101"]}
    with trio.fail_after(10):
        async with open_server(crm.app) as url, httpx.AsyncClient(base_url=url) as client:
            wrong = await client.post("/api/v5/telephony/call/event",
                                      data={"event": json.dumps(event)},
                                      headers={"X-API-KEY": "nope"})
            as_json = await client.post("/api/v5/telephony/call/event", json={"event": event},
                                        params={"apiKey": "key"})
    assert wrong.status_code == 403
    assert wrong.json() == {"success": False, "errorMsg": 'Wrong "apiKey" value.'}
    assert as_json.status_code == 400
    assert as_json.json()["errorMsg"] == "Errors in the entity format"
    assert [r.status for r in crm.requests] == [403, 400]
    assert crm.requests[0].data["event"] == event and crm.events == []


async def test_faults_answer_html_503_and_hang_until_cleared() -> None:
    crm = CrmSimulator("key", known_codes={"101"})
    event = {"phone": "+79991234567", "type": "in", "codes": ["101", "999"],
             "callExternalId": "5"}
    form = {"event": json.dumps(event)}
    with trio.fail_after(10):
        async with open_server(crm.app) as url, httpx.AsyncClient(
                base_url=url, headers={"X-API-KEY": "key"}) as client:
            crm.fault = "503"
            down = await client.post("/api/v5/telephony/call/event", data=form)
            crm.fault = "hang"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(client.post, "/api/v5/telephony/call/event",
                                           data=form))
                await crm.wait_for(lambda: crm.hanging == 1)
                assert len(crm.requests) == 1  # held, not answered
                crm.fault = None
            await crm.wait_for(lambda: len(crm.requests) == 2)
    assert down.status_code == 503 and down.headers["content-type"].startswith("text/html")
    assert "503 Service Temporarily Unavailable" in down.text
    assert crm.requests[1].status == 200
    assert crm.events_for("5") == [event]


async def test_call_legs_report_filters_talked_legs() -> None:
    uis = UisSimulator("tok")
    scenario = BUILT["ring_group_answered"]
    uis.register(scenario)
    window = {"date_from": "2024-05-17 00:00:00", "date_till": "2024-05-17 23:59:59"}
    talked = {"filters": [{"field": "call_session_id", "operator": "=", "value": 1004},
                          {"field": "is_talked", "operator": "=", "value": True}],
              "condition": "and"}
    with trio.fail_after(10):
        async with open_server(uis.app) as url, httpx.AsyncClient(base_url=url) as client:
            plain = await client.post("/dataapi/v2.0", json=rpc("get.call_legs_report", **window))
            only = await client.post("/dataapi/v2.0", json=rpc(
                "get.call_legs_report", **window, filter=talked,
                fields=["id", "employee_id", "is_talked", "call_records"]))
            too_long = await client.post("/dataapi/v2.0", json=rpc(
                "get.calls_report", date_from="2024-01-01 00:00:00",
                date_till="2024-05-01 00:00:00"))
    rows = plain.json()["result"]["data"]
    assert [r["id"] for r in rows] == [leg.id for leg in scenario.legs]
    assert "is_talked" not in rows[0]
    result = only.json()["result"]
    assert result["data"] == [{"id": scenario.legs[1].id, "employee_id": BORIS[0],
                               "is_talked": True, "call_records": scenario.legs[1].call_records}]
    assert result["metadata"]["total_items"] == 1
    assert result["metadata"]["limits"]["minute_remaining"] == 998
    assert too_long.json()["error"]["data"]["mnemonic"] == "date_interval_limit_reached"
    assert [r["_api"] for r in uis.rpc_requests] == ["data"] * 3


async def test_wrong_access_token_gets_the_uis_error_envelope() -> None:
    uis = UisSimulator("tok")
    with trio.fail_after(10):
        async with open_server(uis.app) as url, httpx.AsyncClient(base_url=url) as client:
            answer = await client.post("/dataapi/v2.0", json=rpc("get.account", token="bad"))
            batch = await client.post("/dataapi/v2.0", json=[rpc("get.account")])
    assert answer.status_code == 200
    assert answer.json() == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": -32001, "message": "Access token invalid",
        "data": {"mnemonic": "access_token_invalid", "field": "access_token", "value": None,
                 "params": {}, "extended_helper": None}}}
    assert batch.json()["error"]["code"] == -32099


async def test_start_employee_call_returns_a_session_and_plays_it() -> None:
    uis = UisSimulator("tok")
    app, got = receiver()
    params = {"first_call": "employee", "virtual_phone_number": "74950000000",
              "contact": "79991234567", "employee": {"id": 101}, "direction": "out",
              "external_id": "crm-42"}
    with trio.fail_after(10):
        async with open_server(uis.app) as url, open_server(app) as hook, \
                httpx.AsyncClient(base_url=url) as client, trio.open_nursery() as nursery:
            await nursery.start(uis.run)
            uis.webhook_url = hook + "/hook"
            answer = await client.post("/callapi/v4.0", json=rpc("start.employee_call",
                                                                 **params))
            session_id = answer.json()["result"]["data"]["call_session_id"]
            await uis.wait_for(lambda: session_id in uis.finished and len(got) == 6)
            uis.fail_next("start.employee_call", "contact_in_blacklist", -32002)
            refused = await client.post("/callapi/v4.0", json=rpc("start.employee_call",
                                                                  **params))
            nursery.cancel_scope.cancel()
    assert uis.sessions[session_id].report["call_api_external_id"] == "crm-42"
    bodies = [json.loads(body) for _, body, _ in got]
    assert [b["event"] for b in bodies] == uis.sessions[session_id].events
    assert {b["call_session_id"] for b in bodies} == {session_id}
    assert refused.json()["error"]["data"]["mnemonic"] == "contact_in_blacklist"


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_play_sends_rendered_templates(method: str) -> None:
    uis = UisSimulator("tok")
    app, got = receiver()
    scenario = BUILT["answered"]
    with trio.fail_after(10):
        async with open_server(app) as hook, httpx.AsyncClient() as client:
            responses = await uis.play(scenario, hook + "/hook", client, method=method)
    assert [r.status_code for r in responses] == [200] * len(scenario.notifications)
    assert scenario.session_id in uis.finished
    for n, (content_type, body, query) in zip(scenario.notifications, got, strict=True):
        if method == "POST":
            assert content_type == "application/json"
            assert json.loads(body) == {"event": n.event, **n.values}
        else:
            assert query["event"] == n.event
            assert set(query) == {"event"} | {k for k, v in n.values.items() if v is not None}


async def test_records_lag_behind_registration() -> None:
    uis = UisSimulator("tok")
    uis.register(BUILT["answered"], records_after_seconds=0.2)
    params = {"date_from": "2024-05-17 00:00:00", "date_till": "2024-05-17 23:59:59",
              "fields": ["id", "call_records"]}
    with trio.fail_after(10):
        async with open_server(uis.app) as url, httpx.AsyncClient(base_url=url) as client:
            early = await client.post("/dataapi/v2.0", json=rpc("get.calls_report", **params))
            await trio.sleep(0.25)
            late = await client.post("/dataapi/v2.0", json=rpc("get.calls_report", **params))
    assert early.json()["result"]["data"] == [{"id": 1001, "call_records": []}]
    assert late.json()["result"]["data"][0]["call_records"] == ["100151"]


async def test_restartable_server_refuses_connections_while_stopped() -> None:
    crm = CrmSimulator("key")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            server = RestartableServer(crm.app, nursery)
            url = await server.start()
            first = await client.get(url + "/api/v5/telephony/manager?phone=1",
                                     headers={"X-API-KEY": "key"})
            await server.stop()
            with pytest.raises(httpx.ConnectError):
                await client.get(url + "/api/v5/telephony/manager?phone=1")
            assert await server.start() == url
            again = await client.get(url + "/api/v5/nothing", headers={"X-API-KEY": "key"})
            await server.stop()
    assert first.json() == {"success": True}
    assert again.status_code == 404
    assert again.json() == {"success": False, "errorMsg": "API method not found"}


@pytest.mark.parametrize(("method", "params", "mnemonic", "field", "value"), [
    ("get.calls_report", {"sort": [{"field": "start_time"}, {"field": "id"}]},
     "sort_prohibited", "sort.field", "id"),
    ("get.calls_report", {"sort": [{"field": "finish_time"}]},
     "sort_prohibited", "sort.field", "finish_time"),
    ("get.calls_report", {"filter": {"field": "finish_time", "operator": "is_null"}},
     "filter_prohibited", "filter.field", "finish_time"),
    ("get.calls_report", {"filter": {"field": "start_time", "operator": ">=",
                                     "value": "2024-05-17 10:00:00"}},
     "filter_prohibited", "filter.field", "start_time"),
    ("get.call_legs_report", {"sort": [{"field": "id", "order": "desc"}]},
     "sort_prohibited", "sort.field", "id"),
    ("get.call_legs_report", {"filter": {"filters": [
        {"field": "call_session_id", "operator": "=", "value": 1004},
        {"field": "call_records", "operator": "is_null"}]}},
     "filter_prohibited", "filter.filters.field", "call_records"),
])
async def test_reports_refuse_sorting_and_filtering_their_field_tables_forbid(
        method: str, params: dict[str, Any], mnemonic: str, field: str, value: str) -> None:
    """Refused even when no row would match: UIS checks the request, not the data."""
    uis = UisSimulator("tok")
    window = {"date_from": "2024-05-17 00:00:00", "date_till": "2024-05-17 23:59:59"}
    with trio.fail_after(10):
        async with open_server(uis.app) as url, httpx.AsyncClient(base_url=url) as client:
            answer = (await client.post("/dataapi/v2.0",
                                        json=rpc(method, **window, **params))).json()
    assert answer["error"]["code"] == -32602
    assert answer["error"]["data"]["mnemonic"] == mnemonic
    assert (answer["error"]["data"]["field"], answer["error"]["data"]["value"]) == (field, value)


async def test_reports_sort_by_the_fields_their_tables_allow() -> None:
    uis = UisSimulator("tok")
    for scenario in BUILT.values():
        uis.register(scenario)
    window = {"date_from": "2024-05-17 00:00:00", "date_till": "2024-05-17 23:59:59"}
    with trio.fail_after(10):
        async with open_server(uis.app) as url, httpx.AsyncClient(base_url=url) as client:
            calls = (await client.post("/dataapi/v2.0", json=rpc(
                "get.calls_report", **window, sort=[{"field": "start_time"}],
                filter={"field": "id", "operator": ">=", "value": 1004}))).json()
            legs = (await client.post("/dataapi/v2.0", json=rpc(
                "get.call_legs_report", **window,
                sort=[{"field": "call_session_id", "order": "desc"}]))).json()
    assert sorted(r["id"] for r in calls["result"]["data"]) == [1004, 1005, 1006, 1007]
    sessions = [r["call_session_id"] for r in legs["result"]["data"]]
    assert sessions == sorted(sessions, reverse=True) and len(set(sessions)) > 3
