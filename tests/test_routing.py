"""Responsible-manager routing: UIS asks whom to dial, retailCRM names the manager, in time."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
import trio

from tests.support import (
    ANNA,
    BORIS,
    CLIENT_ID,
    MAPPING,
    SECRET,
    VERA,
    open_daemon,
    open_sims,
    open_system,
    settings_for,
    start_time,
)
from tracker import config
from tracker.errors import ConfigError
from tracker.features import routing
from tracker.simulators import scenarios

SESSION = 998677427
CALLER = "79991234567"  # scenarios.DEFAULT_CONTACT: the caller of the simulator's calls
VIRTUAL = "74950000000"
# Anna and Boris can be dialled; Vera has no phone in [[employees]].
PHONES = {ANNA[0]: "79000000101", BORIS[0]: "79000000102"}
EMPLOYEES = [{"uis_id": u, "crm_user_id": c, "code": code, **({"phone": PHONES[u]}
                                                               if u in PHONES else {})}
             for u, (c, code) in MAPPING.items()]
MANAGER_ANNA = {"id": 1, "firstName": "Анна", "lastName": "Иванова", "email": "anna@shop.test",
                "code": "101"}
FALLBACK = {"returned_code": 0}


def _sections(**routing_settings: Any) -> dict[str, Any]:
    return {"employees": EMPLOYEES, "routing": routing_settings}


async def ask(d: Any, *, session: int = SESSION, numa: str = CALLER, how: str = "GET",
              secret: str = SECRET) -> httpx.Response:
    """The request UIS's interactive call processing step makes."""
    url = f"{d.url}/webhooks/uis/{secret}/route"
    fields = {"call_session_id": session, "numa": numa, "numb": VIRTUAL}
    if how == "GET":
        return await d.client.get(url, params=fields)
    if how == "json":
        return await d.client.post(url, json=fields)
    return await d.client.post(url, data={k: str(v) for k, v in fields.items()})


def manager_requests(d: Any) -> list[Any]:
    return d.crm_requests("telephony/manager")


def route_rows(d: Any, session: int = SESSION) -> list[dict[str, Any]]:
    """The journaled routing decisions of a call: (outcome, body as data)."""
    return [{**row, "body": json.loads(row["body"])} for row in d.ctx.store.events_for(session)
            if row["event"] == "route"]


def warnings(d: Any) -> dict[tuple[str, str], str]:
    return {(w["kind"], w["subject"]): w["message"] for w in d.ctx.store.warnings()}


def anna_card(kind: str = "in", **extra: Any) -> dict[str, Any]:
    return {"phone": "+79991234567", "externalPhone": "+74950000000", "type": kind,
            "codes": ["101"], "userIds": [1], "callExternalId": str(SESSION), **extra}


@pytest.mark.parametrize("how", ["GET", "json", "form"])
async def test_known_customer_is_routed_to_their_manager_with_a_card_at_once(tmp_path, how):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            response = await ask(d, how=how)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            assert response.json() == {"phones": ["79000000101"]}
            [lookup] = manager_requests(d)
            assert (lookup.method, lookup.api_version, lookup.status) == ("GET", "v5", 200)
            assert lookup.query == {"phone": "+79991234567", "details": "1", "ignoreStatus": "0"}
            [row] = route_rows(d)
            assert row["outcome"] == "routed"
            assert row["body"]["answer"] == {"phones": ["79000000101"]}
            assert row["body"]["decision"] == "routed" and row["body"]["source"] == "crm"
            assert row["body"]["employee_id"] == ANNA[0]
            assert row["body"]["manager"] == {"id": 1, "code": "101", "firstName": "Анна",
                                              "lastName": "Иванова"}
            await d.settle()
            # the card is in retailCRM before UIS has even dialled Anna
            assert d.events_for(SESSION) == [anna_card()]
            assert d.ctx.store.call_row(SESSION)["state"] == "waiting_answer"
            assert d.ctx.store.warnings() == []


@pytest.mark.parametrize("route_first", [True, False], ids=["route-first", "incoming-first"])
async def test_routed_managers_card_comes_first_once_and_closes_with_the_call(tmp_path,
                                                                              route_first):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA,
                                          talk_seconds=40)
            d.sims.uis.register(scenario, finished=False)
            incoming, *rest = scenario.notifications
            assert incoming.event == "incoming_call"
            if not route_first:
                await d.sims.uis.send_notification(incoming, d.webhook, d.client)
            assert (await ask(d)).json() == {"phones": ["79000000101"]}
            await d.settle()
            assert d.events_for(SESSION) == [anna_card()]  # before any waiting_answer from UIS
            for notification in ([incoming] if route_first else []) + rest:
                if notification.event == "call_finished":
                    d.sims.uis.mark_finished(SESSION)
                response = await d.sims.uis.send_notification(notification, d.webhook, d.client)
                assert response.status_code == 200
                await d.settle()
            # UIS's own waiting_answer for Anna found her card open: no second pop-up
            assert d.events_for(SESSION) == [anna_card(),
                                             anna_card("hangup", hangupStatus="answered")]
            [upload] = d.uploads_for(SESSION)
            assert (upload["result"], upload["code"], upload["duration"]) == ("answered", "101", 40)
            assert d.ctx.store.call_row(SESSION)["state"] == "ended"
            timeline = [(e["event"], e["outcome"]) for e in d.ctx.store.events_for(SESSION)]
            routed_at = timeline.index(("route", "routed"))
            assert timeline[routed_at + 1] == ("waiting_answer", "accepted")  # the card's event
            assert len(timeline) == len(scenario.notifications) + 2


async def test_repeated_route_request_for_one_call_opens_one_card(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            for _ in range(2):
                assert (await ask(d)).json() == {"phones": ["79000000101"]}
            await d.settle()
            assert d.events_for(SESSION) == [anna_card()]
            assert [r["outcome"] for r in route_rows(d)] == ["routed", "routed"]


# (id, routing settings, set-up of the simulator, numa, decision, warning, manager lookups)
FALLBACKS = [
    ("unknown-number", {}, {}, CALLER, "no_manager", None, 1),
    ("manager-not-mapped", {}, {"manager": {"id": 99, "code": "199"}}, CALLER, "unmapped",
     ("routing_unmapped_manager", "retailCRM user 99"), 1),
    ("manager-without-phone", {}, {"manager": {"id": 3, "code": "103"}}, CALLER, "no_phone",
     ("routing_no_phone", f"UIS employee {VERA[0]}"), 1),
    ("manager-not-free-in-crm", {}, {"manager": MANAGER_ANNA, "status": "break"}, CALLER,
     "no_manager", None, 1),
    ("anonymous-caller", {}, {"manager": MANAGER_ANNA}, "anonymous", "no_caller", None, 0),
    ("routing-disabled", {"enabled": False}, {"manager": MANAGER_ANNA}, CALLER, "disabled",
     None, 0),
]


@pytest.mark.parametrize("routing_settings,setup,numa,decision,warning,lookups",
                         [case[1:] for case in FALLBACKS], ids=[case[0] for case in FALLBACKS])
async def test_fallback_when_the_manager_cannot_be_dialled(tmp_path, routing_settings, setup,
                                                          numa, decision, warning, lookups):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(**routing_settings)) as d:
            if "manager" in setup:
                d.sims.crm.managers["+79991234567"] = setup["manager"]
            if "status" in setup:
                d.sims.crm.user_statuses[setup["manager"]["id"]] = setup["status"]
            response = await ask(d, numa=numa)
            assert response.status_code == 200
            assert response.json() == FALLBACK
            assert len(manager_requests(d)) == lookups
            [row] = route_rows(d)
            assert (row["outcome"], row["body"]["decision"]) == ("fallback", decision)
            assert row["body"]["answer"] == FALLBACK
            assert list(warnings(d)) == ([warning] if warning else [])
            await d.settle()
            assert d.events_for(SESSION) == [] and d.ctx.store.call_row(SESSION) is None


@pytest.mark.parametrize("ignore_status,answer", [
    (False, FALLBACK),
    (True, {"phones": ["79000000101"]}),
])
async def test_ignore_status_decides_whether_a_busy_manager_is_dialled(tmp_path, ignore_status,
                                                                       answer):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(ignore_status=ignore_status)) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            d.sims.crm.user_statuses[1] = "dinner"
            assert (await ask(d)).json() == answer
            [lookup] = manager_requests(d)
            assert lookup.query["ignoreStatus"] == ("1" if ignore_status else "0")


@pytest.mark.parametrize("routing_settings,answer", [
    ({}, {"returned_code": 0}),
    ({"fallback_returned_code": 7}, {"returned_code": 7}),
    ({"fallback_phones": ["+7 (900) 000-01-02", "79000000103"]},
     {"phones": ["79000000102", "79000000103"]}),
])
async def test_the_fallback_answer_is_configurable(tmp_path, routing_settings, answer):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(**routing_settings)) as d:
            assert (await ask(d)).json() == answer


async def test_manager_unavailable_in_the_status_sync_falls_back_until_free_again(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA  # retailCRM itself still names her
            decisions = []
            for i, status in enumerate(["break", "free"]):
                response = await d.client.post(f"{d.url}/crm/user-status", data={
                    "clientId": CLIENT_ID, "userId": "1", "code": "101", "status": status})
                assert response.status_code == 200, response.text
                answer = (await ask(d, session=SESSION + i)).json()
                decisions.append((answer, route_rows(d, SESSION + i)[0]["body"]["decision"]))
            assert decisions == [(FALLBACK, "unavailable"),
                                 ({"phones": ["79000000101"]}, "routed")]
            assert d.events_for(SESSION) == []  # no card for a manager who was not dialled


async def test_retailcrm_slower_than_the_deadline_gets_the_fallback_in_time(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:  # the default 1 s deadline
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            d.sims.crm.fault = "hang"
            started = time.perf_counter()
            response = await ask(d)
            elapsed = time.perf_counter() - started
            assert response.json() == FALLBACK
            assert 0.8 < elapsed < 1.0, elapsed
            [row] = route_rows(d)
            assert row["body"]["decision"] == "crm_slow"
            assert "did not answer within 1 s" in warnings(d)[("routing_crm", "telephony/manager")]
            d.sims.crm.fault = None
            # a timeout is not cached: the next call asks again and is routed
            assert (await ask(d, session=SESSION + 1)).json() == {"phones": ["79000000101"]}


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("fault,words", [
    ("503", "HTTP 503"), ("500", "HTTP 500"), ("429", "HTTP 429"), ("unreachable", "ConnectError"),
])
async def test_retailcrm_down_gets_the_fallback_and_a_warning(tmp_path, fault, words):
    with trio.fail_after(20):
        async with open_sims() as sims:
            crm_url = _closed_port_url() if fault == "unreachable" else sims.crm_url
            settings = settings_for(tmp_path, sims.uis_url, crm_url, **_sections())
            async with open_daemon(sims, settings) as d:
                sims.crm.managers["+79991234567"] = MANAGER_ANNA
                if fault != "unreachable":
                    sims.crm.fault = fault
                started = time.perf_counter()
                assert (await ask(d)).json() == FALLBACK
                assert time.perf_counter() - started < 1.0
                [row] = route_rows(d)
                assert (row["outcome"], row["body"]["decision"]) == ("fallback", "crm_down")
                assert words in warnings(d)[("routing_crm", "telephony/manager")]
                sims.crm.fault = None
                if fault == "500":  # a failure is not cached (503/429 also slow the rate gate)
                    assert (await ask(d, session=SESSION + 1)).json() == {
                        "phones": ["79000000101"]}


@pytest.mark.parametrize("cache_seconds,numbers,pause,lookups", [
    (60, [CALLER, CALLER], 0, 1),
    (60, [CALLER, "+7 (999) 123-45-67", "8 999 123 45 67"], 0, 1),  # cached per normalised number
    (60, [CALLER, "79990000000"], 0, 2),
    (0, [CALLER, CALLER], 0, 2),
    (0.2, [CALLER, CALLER], 0.3, 2),  # expired
])
async def test_cache_hit_avoids_a_second_crm_request(tmp_path, cache_seconds, numbers, pause,
                                                     lookups):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(cache_seconds=cache_seconds)) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            for i, number in enumerate(numbers):
                await trio.sleep(pause if i else 0)
                answer = (await ask(d, session=SESSION + i, numa=number)).json()
                known = number != "79990000000"
                assert answer == ({"phones": ["79000000101"]} if known else FALLBACK)
            assert len(manager_requests(d)) == lookups
            sources = [route_rows(d, SESSION + i)[0]["body"]["source"]
                       for i in range(len(numbers))]
            assert sources.count("crm") == lookups


async def test_unknown_numbers_are_cached_too(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            for session in (SESSION, SESSION + 1):
                assert (await ask(d, session=session)).json() == FALLBACK
            assert len(manager_requests(d)) == 1
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA  # assigned meanwhile: seen later
            assert (await ask(d, session=SESSION + 2)).json() == FALLBACK


@pytest.mark.parametrize("path", [
    "/webhooks/uis/wrong-secret-0123456789/route",
    f"/webhooks/uis/{SECRET}x/route",
    f"/webhooks/uis/{SECRET[:-1]}/route",
    f"/webhooks/uis/{SECRET}/route/extra",
    f"/webhooks/uis/{SECRET}/routes",
    "/webhooks/uis/route",
    f"/webhooks/{SECRET}/route",
])
async def test_wrong_secret_or_path_is_404_and_asks_nobody(tmp_path, path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            fields = {"call_session_id": SESSION, "numa": CALLER, "numb": VIRTUAL}
            for response in (await d.client.get(d.url + path, params=fields),
                             await d.client.post(d.url + path, json=fields)):
                assert response.status_code == 404, path
                assert response.json()["error"] == "not_found"
            assert manager_requests(d) == []
            assert d.count("events") == 0 and d.count("calls") == 0 and d.count("outbox") == 0


async def test_notification_endpoint_still_works_and_still_404s_wrong_secrets(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            body = {"event": "incoming_call", "call_session_id": SESSION,
                    "contact_phone_number": CALLER}
            for path in ("/webhooks/uis/wrong-secret-0123456789", f"/webhooks/uis/{SECRET}x",
                         f"/webhooks/uis/{SECRET}/extra", f"/webhooks/uis/{SECRET}/route/x",
                         f"/webhooks/uis/x/{SECRET}", "/webhooks/uis/"):
                response = await d.client.post(d.url + path, json=body)
                assert response.status_code == 404, path
            assert d.count("events") == 0
            response = await d.client.post(d.webhook, json=body)
            assert response.status_code == 200
            assert response.json() == {"status": "accepted", "call_session_id": SESSION,
                                       "state": "ringing"}
            response = await d.client.get(d.webhook, params={**body, "event": "lost_call"})
            assert response.json()["state"] == "lost"


async def test_unreadable_route_request_still_gets_the_fallback(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            url = f"{d.url}/webhooks/uis/{SECRET}/route?call_session_id={SESSION}"
            response = await d.client.post(url, content=b"{not json",
                                           headers={"content-type": "application/json"})
            assert response.status_code == 200 and response.json() == FALLBACK
            [row] = route_rows(d)
            assert row["body"]["decision"] == "bad_request"
            assert manager_requests(d) == []


# -- the decision and its settings, without I/O ----------------------------------------------

EMPLOYEE_ROWS = (config.Employee(101, 1, "101", "79000000101"),
                 config.Employee(102, 2, "102", "79000000102"))


@pytest.mark.parametrize("manager,uis_id", [
    ({"id": 2, "code": "101"}, 102),  # the user id wins over the code
    ({"id": 77, "code": "101"}, 101),
    ({"id": 77, "code": 102}, 102),
    ({"id": 77, "code": "999"}, None),
    ({}, None),
])
def test_employee_for_matches_user_id_then_code(manager, uis_id):
    found = routing.employee_for(EMPLOYEE_ROWS, manager)
    assert (found.uis_id if found else None) == uis_id


@pytest.mark.parametrize("available,kind", [(None, "routed"), (True, "routed"),
                                            (False, "unavailable")])
def test_an_employee_known_to_be_unavailable_is_skipped(available, kind):
    decision = routing.decide(config.RoutingSettings(), EMPLOYEE_ROWS, {"id": 1},
                              lambda uis_id: available)
    assert decision.kind == kind
    assert decision.answer == ({"phones": ["79000000101"]} if kind == "routed" else FALLBACK)


BASE = {"server": {"public_url": "http://t.test"}, "uis": {"webhook_secret": SECRET,
        "access_token": "t"}, "crm": {"url": "http://crm.test", "api_key": "k",
                                       "client_id": "routing-client-0123456789"}}


@pytest.mark.parametrize("routing_data,environ,expected", [
    ({}, {}, config.RoutingSettings()),
    ({"enabled": False, "deadline_seconds": 0.5, "cache_seconds": 0, "ignore_status": True,
      "fallback_returned_code": 3, "fallback_phones": ["+7 900 000-01-01", 101]}, {},
     config.RoutingSettings(False, 0.5, 0.0, True, 3, ("79000000101", "101"))),
    ({}, {"TRACKER_ROUTING_ENABLED": "false", "TRACKER_ROUTING_IGNORE_STATUS": "1",
          "TRACKER_ROUTING_FALLBACK_PHONES": "74950000001, 74950000002"},
     config.RoutingSettings(enabled=False, ignore_status=True,
                            fallback_phones=("74950000001", "74950000002"))),
])
def test_routing_settings_parse(routing_data, environ, expected):
    assert config.parse({**BASE, "routing": routing_data}, environ).routing == expected


@pytest.mark.parametrize("routing_data,employee,problem", [
    ({"deadline_seconds": 0}, {}, "routing.deadline_seconds: must be between 0.05 and 10"),
    ({"deadline_seconds": 30}, {}, "routing.deadline_seconds: must be between 0.05 and 10"),
    ({"enabled": "maybe"}, {}, "routing.enabled: must be true or false, got 'maybe'"),
    ({"fallback_phones": "ext. 5"}, {}, "routing.fallback_phones: 'ext5' is not a phone number"),
    ({"fallback_phones": {"a": 1}}, {}, "routing.fallback_phones: must be an array"),
    ({}, {"phone": "call Anna"}, "employees[0].phone: must be a phone number or extension"),
    ({}, {"phone": True}, "employees[0].phone: must be a phone number or extension"),
])
def test_bad_routing_settings_are_named(routing_data, employee, problem):
    data = {**BASE, "routing": routing_data,
            "employees": [{"uis_id": 1, "crm_user_id": 1, "code": "101", **employee}]}
    with pytest.raises(ConfigError) as caught:
        config.parse(data, {})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_employee_phone_is_kept_as_uis_dials_it():
    data = {**BASE, "employees": [{"uis_id": 1, "crm_user_id": 1, "code": "101",
                                   "phone": "+7 (900) 000-01-01"},
                                  {"uis_id": 2, "crm_user_id": 2, "code": "102", "phone": 205},
                                  {"uis_id": 3, "crm_user_id": 3, "code": "103"}]}
    employees = config.parse(data, {}).employees
    assert [e.phone for e in employees] == ["79000000101", "205", ""]


async def ask_cdr(d: Any, **fields: Any) -> httpx.Response:
    """UIS's documented parameter set of interactive call processing (no call_session_id)."""
    params = {"start_time": "2024-05-17 14:03:28", "input_result": "", "numa": CALLER,
              "numb": VIRTUAL, **fields}
    return await d.client.get(f"{d.url}/webhooks/uis/{SECRET}/route", params=params)


def route_rows_without_call(d: Any) -> list[dict[str, Any]]:
    rows = d.ctx.store.conn.execute(
        "SELECT * FROM events WHERE event = 'route' AND call_id IS NULL").fetchall()
    return [{**dict(row), "body": json.loads(row["body"])} for row in rows]


async def test_cdr_id_of_a_known_session_routes_and_journals_on_that_call(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            await d.post({"event": "incoming_call", "call_session_id": SESSION,
                          "contact_phone_number": CALLER, "virtual_phone_number": VIRTUAL})
            response = await ask_cdr(d, cdr_id=SESSION)
            assert response.json() == {"phones": ["79000000101"]}
            [row] = route_rows(d)
            assert row["outcome"] == "routed"
            assert row["body"]["cdr_id"] == str(SESSION)
            assert row["body"]["call"] == "cdr_id is a known session id"
            await d.settle()
            assert d.events_for(SESSION) == [anna_card()]


async def test_an_unknown_cdr_id_finds_the_callers_live_call(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            for session, caller in ((SESSION, CALLER), (SESSION + 1, "79990000000")):
                await d.post({"event": "incoming_call", "call_session_id": session,
                              "contact_phone_number": caller, "virtual_phone_number": VIRTUAL})
            assert (await ask_cdr(d, cdr_id=123456)).json() == {"phones": ["79000000101"]}
            [row] = route_rows(d)
            assert row["body"]["call"] == "cdr_id unknown: the caller's live call"
            assert row["body"]["cdr_id"] == "123456"
            assert route_rows(d, SESSION + 1) == []
            await d.settle()
            assert d.events_for(SESSION) == [anna_card()]
            assert d.ctx.store.call_row(123456) is None  # no call made up from a cdr_id


async def test_a_cdr_id_that_matches_no_call_is_journaled_without_one_and_opens_no_card(
        tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            assert (await ask_cdr(d, cdr_id=123456)).json() == {"phones": ["79000000101"]}
            [row] = route_rows_without_call(d)
            assert row["outcome"] == "routed"
            assert row["body"]["call"] == "cdr_id matches no call tracker knows"
            await d.settle()
            assert d.ctx.store.call_row(123456) is None
            assert d.sims.crm.events == []


async def test_call_session_id_wins_over_cdr_id(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            d.sims.crm.managers["+79991234567"] = MANAGER_ANNA
            await ask_cdr(d, cdr_id=123456, call_session_id=SESSION)
            [row] = route_rows(d)
            assert row["body"]["call"] == "call_session_id"
            assert route_rows_without_call(d) == []
