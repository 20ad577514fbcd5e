"""Click-to-call: retailCRM's makeCallUrl against the real daemon, the UIS Call API simulated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support import (
    ANNA,
    CLIENT_ID,
    UIS_TOKEN,
    Daemon,
    open_daemon,
    open_sims,
    open_system,
    settings_for,
)
from tracker.features.clicktocall import normalise_phone
from tracker.simulators.scenarios import record_id

CONTACT = "79991234567"


def started_calls(d: Daemon) -> list[dict[str, Any]]:
    """The ``start.employee_call`` params UIS received, without the token (checked apart)."""
    found = []
    for r in d.sims.uis.rpc_requests:
        if r.get("method") == "start.employee_call":
            params = dict(r["params"])
            assert params.pop("access_token") == UIS_TOKEN
            found.append(params)
    return found


def expected_start(click_id: int, *, contact: str = CONTACT, employee: int = ANNA[0],
                   virtual: str = "74950000000") -> dict[str, Any]:
    return {"first_call": "employee", "virtual_phone_number": virtual, "contact": contact,
            "employee": {"id": employee}, "direction": "out",
            "external_id": f"tracker-click-{click_id}"}


async def click(d: Daemon, method: str = "GET", **params: str) -> Any:
    fields = {"clientId": CLIENT_ID, "code": "101", "userId": "1", "phone": CONTACT, **params}
    fields = {k: v for k, v in fields.items() if v is not None}
    url = f"{d.url}/crm/make-call"
    if method == "GET":
        return await d.client.get(url, params=fields)
    return await d.client.post(url, data=fields)


def clicks(d: Daemon) -> list[dict[str, Any]]:
    return [dict(r) for r in d.ctx.store.conn.execute("SELECT * FROM clicks ORDER BY id")]


def logged(d: Daemon) -> list[dict[str, Any]]:
    rows = d.ctx.store.conn.execute(
        "SELECT * FROM api_requests WHERE source = 'crm' ORDER BY id").fetchall()
    return [{**dict(r), "params": json.loads(r["params"])} for r in rows]


@pytest.mark.parametrize("raw", ["8 (999) 123-45-67", "+7 999 1234567", "79991234567",
                                 "+7 (999) 123-45-67", "89991234567"])
def test_numbers_as_people_type_them_become_uis_digits(raw):
    assert normalise_phone(raw, "RU") == "79991234567"


@pytest.mark.parametrize("raw", ["", "12", "not a number", "+7 999", "8 (999) 123-45-6"])
def test_what_is_not_a_phone_number_is_refused(raw):
    assert normalise_phone(raw, "RU") is None


@pytest.mark.parametrize(("method", "phone"), [
    ("GET", "8 (999) 123-45-67"),
    ("POST", "+7 999 1234567"),
    ("POST", "79991234567"),
    ("GET", "+79991234567"),
])
async def test_click_starts_one_outbound_employee_call_and_answers_with_the_session(
        tmp_path, method, phone):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            response = await click(d, method, phone=phone)
            assert response.status_code == 200, response.text
            [session] = d.sims.uis.sessions
            assert response.json() == {"status": "started", "call_session_id": session,
                                       "external_id": "tracker-click-1"}
            assert started_calls(d) == [expected_start(1)]
            [row] = clicks(d)
            assert (row["outcome"], row["uis_id"], row["crm_user_id"], row["phone"],
                    row["contact"], row["call_session_id"]) == (
                "started", ANNA[0], 1, phone, CONTACT, session)
            [entry] = logged(d)
            assert entry["method"] == f"{method} /crm/make-call"
            assert (entry["outcome"], entry["status"]) == ("ok", 200)
            assert entry["params"]["clientId"] == "***" and CLIENT_ID not in json.dumps(entry)
            assert d.count("outbox") == 0  # a click never goes through the outbox


@pytest.mark.parametrize(("external_phone", "virtual"), [
    ("+7 (495) 111-11-11", "74951111111"),  # one of ours: the caller id the store line shows
    ("74950000000", "74950000000"),
    ("+7 495 222-22-22", "74950000000"),  # not ours: the default
    ("", "74950000000"),
])
async def test_external_phone_picks_the_caller_id_only_when_it_is_ours(
        tmp_path, external_phone, virtual):
    with trio.fail_after(20):
        async with open_system(tmp_path, click={"virtual_phone_numbers": "74951111111"}) as d:
            response = await click(d, "POST", externalPhone=external_phone)
            assert response.status_code == 200, response.text
            assert started_calls(d) == [expected_start(1, virtual=virtual)]


async def test_user_is_found_by_user_id_when_the_code_is_absent(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            response = await click(d, code=None, userId="2")
            assert response.status_code == 200, response.text
            assert started_calls(d) == [expected_start(1, employee=102)]


async def test_wrong_or_missing_client_id_is_403_and_starts_nothing(tmp_path):
    wrong = [None, "", "wrong", CLIENT_ID[:-1], CLIENT_ID + "x", CLIENT_ID.upper()]
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            for client_id in wrong:
                for method in ("GET", "POST"):
                    response = await click(d, method, clientId=client_id)
                    assert response.status_code == 403, client_id
                    assert response.json() == {"error": "forbidden",
                                               "message": "wrong or missing clientId"}
            assert started_calls(d) == [] and clicks(d) == []
            entries = logged(d)
            # ten refusals a minute are logged one by one (web/failures.py counts the rest)
            assert [(e["status"], e["outcome"]) for e in entries] == [(403, "forbidden")] * 10
            # A refusal keeps only a summary: no clientId, masked or not, and nothing else sent.
            assert {json.dumps(e["params"], sort_keys=True) for e in entries} <= {
                json.dumps({"_refused": True, "bytes": size, "from": "127.0.0.1"},
                           sort_keys=True) for size in range(200)}


@pytest.mark.parametrize(("params", "status", "error"), [
    ({"phone": None}, 400, "missing_parameter"),
    ({"phone": "  "}, 400, "missing_parameter"),
    ({"phone": "12"}, 400, "invalid_phone"),
    ({"phone": "+7 999"}, 400, "invalid_phone"),
    ({"code": None, "userId": None}, 400, "missing_parameter"),
    ({"code": None, "userId": "abc"}, 400, "invalid_parameter"),
    ({"code": "777", "userId": "77"}, 422, "unmapped_user"),
    ({"code": None, "userId": "77"}, 422, "unmapped_user"),
])
async def test_bad_clicks_are_4xx_json_journaled_and_start_nothing(tmp_path, params, status,
                                                                   error):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            response = await click(d, "POST", **params)
            assert response.status_code == status
            body = response.json()
            assert body["error"] == error and body["message"]
            assert started_calls(d) == []
            [row] = clicks(d)
            assert row["outcome"] == error and row["message"] == body["message"]
            assert [(e["status"], e["outcome"]) for e in logged(d)] == [(status, error)]


async def test_unmapped_user_is_a_mapping_warning_naming_the_user(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            response = await click(d, code="777", userId="77")
            assert "user 77 (code 777)" in response.json()["message"]
            [warning] = d.ctx.store.warnings()
            assert warning["kind"] == "unmapped_crm_user"
            assert "user 77 (code 777) has no [[employees]] entry" in warning["message"]


async def test_double_click_starts_one_call_sequential_or_concurrent(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            first = await click(d)
            again = await click(d, "POST", phone="8 999 123-45-67")  # the same number, typed
            session = first.json()["call_session_id"]
            assert again.status_code == 200
            assert again.json() == {
                "status": "duplicate", "click_id": 1, "call_session_id": session,
                "message": "the same click arrived moments ago: one call only"}
            # two clicks in flight at once (another number): still one call
            answers = []

            async def one() -> None:
                answers.append(await click(d, phone="79990000001"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                nursery.start_soon(one)
            assert sorted(a.json()["status"] for a in answers) == ["duplicate", "started"]
            # another employee clicking the same number is a call of their own
            other = await click(d, code="102", userId="2")
            assert other.json()["status"] == "started"
            assert [(c["contact"], c["employee"]["id"]) for c in started_calls(d)] == [
                (CONTACT, 101), ("79990000001", 101), (CONTACT, 102)]
            outcomes = [(r["outcome"], r["duplicate_of"]) for r in clicks(d)]
            assert outcomes == [("started", None), ("duplicate", 1), ("started", None),
                                ("duplicate", 3), ("started", None)]


async def test_the_same_click_after_the_window_is_a_new_call(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, click={"dedupe_seconds": 0.2}) as d:
            assert (await click(d)).json()["status"] == "started"
            await trio.sleep(0.3)
            assert (await click(d)).json()["status"] == "started"
            assert started_calls(d) == [expected_start(1), expected_start(2)]


@pytest.mark.parametrize(("fault", "status", "error", "says"), [
    (("employee_not_found", -32602), 422, "employee_not_found", "UIS refused the call"),
    (("no_active_phone_number", -32602), 422, "no_active_phone_number", "UIS refused the call"),
    ("blacklist", 422, "contact_in_blacklist", "UIS refused the call"),
    ("virtual_numbers", 422, "virtual_phone_number_not_found", "UIS refused the call"),
    (("limit_exceeded", -32029), 429, "limit_exceeded", "try again later"),
    (("internal_error", -32603), 502, "uis_unavailable", "internal_error"),
])
async def test_uis_refusal_is_a_clear_error_journaled_and_never_retried(tmp_path, fault, status,
                                                                       error, says):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            if fault == "blacklist":
                d.sims.uis.blacklist.add(CONTACT)
            elif fault == "virtual_numbers":
                d.sims.uis.virtual_numbers = {"74951111111"}
            else:
                d.sims.uis.fail_next("start.employee_call", *fault)
            response = await click(d)
            assert response.status_code == status
            body = response.json()
            assert body["error"] == error and says in body["message"]
            assert fault[0] in body["message"] if isinstance(fault, tuple) else error in body[
                "message"]
            await d.settle()
            await trio.sleep(0.2)
            assert started_calls(d) == [expected_start(1)]  # asked once, never again
            [row] = clicks(d)
            assert (row["outcome"], row["call_session_id"]) == (error, None)
            assert row["message"] == body["message"]
            assert d.count("outbox") == 0
            d.sims.uis.blacklist.clear()
            d.sims.uis.virtual_numbers = None
            again = await click(d)
            if error == "limit_exceeded":
                # UIS said to hold off: the next click is refused at once, not sent, not queued
                assert again.status_code == 429 and again.json()["error"] == "limit_exceeded"
                assert len(started_calls(d)) == 1
            else:
                # a failed click does not block the user's next try
                assert again.json()["status"] == "started"


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server that reads requests and never answers: a Call API that hangs."""
    received: list[bytes] = []

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            async for chunk in stream:
                received.append(chunk)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}", received
        nursery.cancel_scope.cancel()


async def test_call_api_past_the_deadline_is_504_and_a_repeat_click_starts_nothing(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims, silent_server() as (url, received):
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    uis={"call_api_url": url},
                                    click={"deadline_seconds": 0.3})
            async with open_daemon(sims, settings) as d:
                started = trio.current_time()
                response = await click(d)
                assert trio.current_time() - started < 2
                assert response.status_code == 504
                assert response.json()["error"] == "timeout"
                assert "may still start" in response.json()["message"]
                [row] = clicks(d)
                assert row["outcome"] == "timeout"
                requests = b"".join(received).count(b"POST ")
                assert requests == 1
                # the call may have started: a second click within the window is not a second call
                again = await click(d)
                assert again.json()["status"] == "duplicate"
                assert b"".join(received).count(b"POST ") == 1


# -- the outgoing call that follows the click, end to end --------------------------------------

@asynccontextmanager
async def open_autoplay(tmp_path: Path, **sections: Any) -> AsyncIterator[Daemon]:
    """Daemon and simulators, with UIS playing each started call back to the daemon's webhook."""
    async with open_sims() as sims:
        settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections)
        async with open_daemon(sims, settings) as d, trio.open_nursery() as nursery:
            # the player stops first: its idle keep-alive connection would hold up the
            # daemon's shutdown for hypercorn's whole graceful timeout
            await nursery.start(sims.uis.run)
            sims.uis.webhook_url = d.webhook
            # room for the pop-up to reach retailCRM before the call ends
            sims.uis.autoplay_gap_seconds = 0.15
            yield d
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("answered", "finish_reason", "hangup", "result"), [
    (True, None, "answered", "answered"),
    (False, None, "no answered", "no answer"),
    (False, "subscriber_busy", "no answered", "busy"),
    (False, "operator_busy", "no answered", "no answer"),  # the employee's side, not the customer
])
async def test_clicked_call_pops_up_out_hangs_up_and_uploads_once(tmp_path, answered,
                                                                 finish_reason, hangup, result):
    with trio.fail_after(30):
        async with open_autoplay(tmp_path) as d:
            d.sims.uis.outbound_answered = answered
            d.sims.uis.outbound_finish_reason = finish_reason
            response = await click(d, phone="8 (999) 123-45-67")
            session = response.json()["call_session_id"]
            await d.sims.crm.wait_for(lambda: d.uploads_for(session), timeout=15)
            await d.settle()
            common = {"phone": "+79991234567", "externalPhone": "+74950000000",
                      "codes": ["101"], "userIds": [1], "callExternalId": str(session)}
            assert d.events_for(session) == [
                {**common, "type": "out"},
                {**common, "type": "hangup", "hangupStatus": hangup},
            ]
            scenario = d.sims.uis.sessions[session]
            [upload] = d.uploads_for(session)
            expected = {"phone": "+79991234567", "externalPhone": "+74950000000",
                        "date": scenario.notifications[0].values["notification_time"][:19],
                        "type": "out", "result": result, "externalId": str(session),
                        "code": "101", "userId": 1, "durationWaiting": 9}
            if answered:
                expected["duration"] = 60
                expected["recordUrl"] = f"https://media.test/talk/{session}/" \
                                        f"{record_id(session, 1)}"
            assert upload == expected
            # the session carries the click's external_id: the click knows its call
            assert d.ctx.store.call_row(session)["external_id"] == "tracker-click-1"
            [row] = clicks(d)
            assert (row["external_id"], row["call_session_id"]) == ("tracker-click-1", session)
            assert d.ctx.store.click_for_session(session) == row
            asked = [r["params"]["fields"] for r in d.sims.uis.rpc_requests
                     if r.get("method") == "get.calls_report"]
            assert asked == ([] if answered else [["id", "finish_reason"]])


async def test_busy_detection_can_be_switched_off(tmp_path):
    with trio.fail_after(30):
        async with open_autoplay(tmp_path, click={"busy_finish_reasons": "none"}) as d:
            d.sims.uis.outbound_answered = False
            d.sims.uis.outbound_finish_reason = "subscriber_busy"
            session = (await click(d)).json()["call_session_id"]
            await d.sims.crm.wait_for(lambda: d.uploads_for(session), timeout=15)
            assert d.uploads_for(session)[0]["result"] == "no answer"
            assert not [r for r in d.sims.uis.rpc_requests
                        if r.get("method") == "get.calls_report"]
