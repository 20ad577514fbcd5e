"""Scenario tests: the real daemon on 127.0.0.1, UIS notifications in, retailCRM requests out."""

from __future__ import annotations

import json

import trio

from tests.support import (
    ANNA,
    BORIS,
    CRM_KEY,
    VERA,
    open_daemon,
    open_sims,
    open_system,
    settings_for,
    start_time,
)
from tracker.simulators import scenarios

SESSION = 998677427


def _strip_nones(item: dict) -> dict:
    return {k: v for k, v in item.items() if v is not None}


async def test_answered_call_pops_up_hangs_up_and_uploads_with_recording(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA,
                                          wait_seconds=7, talk_seconds=95)
            await d.play(scenario)
            await d.settle()
            assert d.events_for(SESSION) == [
                {"phone": "+79991234567", "externalPhone": "+74950000000", "type": "in",
                 "codes": ["101"], "userIds": [1], "callExternalId": str(SESSION)},
                {"phone": "+79991234567", "externalPhone": "+74950000000", "type": "hangup",
                 "codes": ["101"], "userIds": [1], "callExternalId": str(SESSION),
                 "hangupStatus": "answered"},
            ]
            record = scenario.legs[0].call_records[0]
            assert d.uploads_for(SESSION) == [{
                "phone": "+79991234567", "externalPhone": "+74950000000",
                "date": "2024-05-17 14:03:27", "type": "in", "result": "answered",
                "externalId": str(SESSION), "code": "101", "userId": 1, "duration": 95,
                "durationWaiting": 7, "recordUrl": f"https://media.test/talk/{SESSION}/{record}",
            }]
            # every request carried the key and the documented form shape
            assert all(r.api_key == CRM_KEY for r in d.sims.crm.requests)
            assert all(r.status == 200 for r in d.sims.crm.requests)
            legs_query = await d.sims.uis.wait_for_rpc("get.call_legs_report")
            assert legs_query["params"]["filter"]["filters"][0] == {
                "field": "call_session_id", "operator": "=", "value": SESSION}
            row = d.ctx.store.call_row(SESSION)
            assert row["state"] == "ended" and row["talked_employee_id"] == ANNA[0]


async def test_ring_group_lost_cards_everyone_closes_all_and_uploads_missed_once(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            scenario = scenarios.ring_group_lost(SESSION, start=start_time(),
                                                 ringing=[ANNA, BORIS, VERA], wait_seconds=31)
            await d.play(scenario)
            events = d.events_for(SESSION)
            assert [(e["type"], e["codes"]) for e in events] == [
                ("in", ["101"]), ("in", ["102"]), ("in", ["103"]),
                ("hangup", ["101", "102", "103"]),
            ]
            assert events[-1]["hangupStatus"] == "no answered"
            uploads = d.uploads_for(SESSION)
            assert len(uploads) == 1
            assert uploads[0]["result"] == "no answer"
            assert uploads[0]["code"] == "103" and uploads[0]["userId"] == 3  # the last it rang
            assert uploads[0]["durationWaiting"] == 31
            assert "duration" not in uploads[0] and "recordUrl" not in uploads[0]
            assert d.ctx.store.call_row(SESSION)["state"] == "lost"


async def test_lost_in_ivr_uploads_missed_without_employee_or_card(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time(), wait_seconds=12))
            assert d.events_for(SESSION) == []
            [upload] = d.uploads_for(SESSION)
            assert upload["result"] == "no answer"
            assert "code" not in upload and "userId" not in upload
            assert upload["durationWaiting"] == 12


async def test_ring_group_answered_closes_the_other_cards_when_one_answers(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.ring_group_answered(
                SESSION, start=start_time(), ringing=[ANNA], employee=BORIS, talk_seconds=40))
            events = d.events_for(SESSION)
            assert [(e["type"], e["codes"], e.get("hangupStatus")) for e in events] == [
                ("in", ["101"], None), ("in", ["102"], None),
                ("hangup", ["101"], "answered"),   # Anna's card closes when Boris answers
                ("hangup", ["102"], "answered"),   # Boris's at the end
            ]
            [upload] = d.uploads_for(SESSION)
            assert (upload["result"], upload["code"], upload["duration"]) == ("answered", "102", 40)


async def test_transfer_credits_the_employee_who_talked_last_with_their_record(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            scenario = scenarios.transfer(SESSION, start=start_time(), first=ANNA, second=BORIS,
                                          first_talk_seconds=20, second_talk_seconds=50)
            await d.play(scenario)
            [upload] = d.uploads_for(SESSION)
            assert upload["code"] == "102" and upload["userId"] == 2
            boris_leg = next(leg for leg in scenario.legs if leg.employee_id == BORIS[0])
            assert upload["recordUrl"].endswith(f"/{SESSION}/{boris_leg.call_records[0]}")
            assert upload["duration"] == scenario.report["talk_duration"]


async def test_every_notification_delivered_twice_is_acted_on_once(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            scenario = scenarios.ring_group_answered(SESSION, start=start_time(), ringing=[ANNA],
                                                     employee=BORIS)
            d.sims.uis.register(scenario)
            for notification in scenario.notifications:
                first = await d.sims.uis.send_notification(notification, d.webhook, d.client)
                again = await d.sims.uis.send_notification(notification, d.webhook, d.client)
                assert first.json()["status"] == "accepted"
                assert again.status_code == 200 and again.json()["status"] == "duplicate"
                await d.settle()
            assert len(d.events_for(SESSION)) == 4
            assert len(d.uploads_for(SESSION)) == 1
            assert d.count("events", "call_id = ?", SESSION) == len(scenario.notifications)
            assert d.count("events", "duplicates = 1 AND call_id = ?", SESSION) == len(
                scenario.notifications)


async def test_finish_before_talk_started_is_an_answered_call_and_late_events_do_nothing(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA,
                                          talk_seconds=30)
            by_event = {n.event: n for n in scenario.notifications}
            order = ["incoming_call", "call_finished", "waiting_answer", "talk_started",
                     "talk_finished", "call_recorded"]
            d.sims.uis.register(scenario)
            for name in order:
                response = await d.sims.uis.send_notification(by_event[name], d.webhook, d.client)
                assert response.status_code == 200
                await d.settle()
            assert d.events_for(SESSION) == []  # no card for a call that is already over
            [upload] = d.uploads_for(SESSION)
            assert upload["result"] == "answered" and upload["duration"] == 30
            row = d.ctx.store.call_row(SESSION)
            assert row["state"] == "ended"
            assert row["file_link"]  # call_recorded after the end still enriched the record
            assert d.count("outbox", "call_id = ?", SESSION) == 1


async def test_unknown_event_is_journaled_and_ignored(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            response = await d.post({"event": "sms_received", "call_session_id": 5})
            assert response.status_code == 200
            assert response.json() == {"status": "ignored"}
            assert d.count("events", "outcome = 'ignored' AND event = 'sms_received'") == 1
            assert d.count("calls") == 0 and d.count("outbox") == 0


async def test_wrong_secret_is_404_and_stores_nothing(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            body = json.dumps({"event": "incoming_call", "call_session_id": 5})
            for url in (f"{d.url}/webhooks/uis/wrong-secret-0123456789",
                        f"{d.url}/webhooks/uis/", f"{d.webhook}x", f"{d.webhook}/extra"):
                response = await d.client.post(url, content=body,
                                               headers={"content-type": "application/json"})
                assert response.status_code == 404, url
                assert response.json()["error"] == "not_found"
            assert d.count("events") == 0 and d.count("calls") == 0


async def test_malformed_bodies_are_400_naming_the_problem_and_journaled(tmp_path):
    cases = [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"event": "incoming_call"}', "call_session_id", "missing"),
        (b'{"event": "talk_started", "call_session_id": "abc"}', "call_session_id", "integer"),
        (b'{"event": 5, "call_session_id": 1}', "event", "string"),
        (b'{"event": "call_finished", "call_session_id": 1, "talk_time_duration": true}',
         "talk_time_duration", "integer"),
        (b'{"event": "incoming_call", "call_session_id": 1, "call_session_id": 2}',
         "call_session_id", "twice"),
        (b"\xff\xfe{}", None, "UTF-8"),
        (b"", None, "empty"),
    ]
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            for body, field, words in cases:
                response = await d.post(body)
                assert response.status_code == 400, body
                answer = response.json()
                assert answer["error"] == "invalid_notification"
                assert words in answer["message"], (body, answer)
                assert answer.get("field") == field, (body, answer)
            assert d.count("events", "outcome = 'rejected'") == len(cases)
            assert d.count("calls") == 0 and d.count("outbox") == 0


async def test_body_over_the_size_limit_is_413(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, server={"max_body_bytes": 2048}) as d:
            big = json.dumps({"event": "incoming_call", "call_session_id": 1, "pad": "x" * 5000})
            response = await d.post(big)
            assert response.status_code == 413
            assert response.json()["error"] == "body_too_large"
            assert d.count("calls") == 0
            ok = await d.post({"event": "incoming_call", "call_session_id": 1})
            assert ok.status_code == 200


async def test_get_notifications_take_query_parameters(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.ring_group_lost(SESSION, start=start_time(),
                                                   ringing=[ANNA, BORIS]), method="GET")
            assert [e["type"] for e in d.events_for(SESSION)] == ["in", "in", "hangup"]
            assert d.uploads_for(SESSION)[0]["result"] == "no answer"


async def test_crm_503_then_recovery_delivers_everything_once_in_order(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            d.sims.crm.fault = "503"
            scenario = scenarios.ring_group_answered(SESSION, start=start_time(), ringing=[ANNA],
                                                     employee=BORIS)
            await d.play(scenario, settle=False)
            await d.sims.crm.wait_for(lambda: len(d.sims.crm.requests) >= 3)
            health = (await d.client.get(f"{d.url}/healthz")).json()
            assert health["status"] == "degraded" and health["outbox"]["pending"] > 0
            assert "503" in health["outbox"]["last_error"]
            d.sims.crm.fault = None
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            await d.settle()
            # the pop-ups were dropped (the call ended meanwhile); hangups only for opened cards
            assert d.events_for(SESSION) == []
            assert len(d.uploads_for(SESSION)) == 1
            assert d.count("outbox", "status = 'dead'") == 0
            assert (await d.client.get(f"{d.url}/healthz")).json()["status"] == "ok"


async def test_crm_503_during_a_live_call_keeps_per_call_order(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            scenario = scenarios.ring_group_lost(SESSION, start=start_time(), ringing=[ANNA, BORIS])
            notes = scenario.notifications
            await d.sims.uis.send_notification(notes[0], d.webhook, d.client)
            d.sims.crm.fail_next("503", count=2)   # the first pop-up fails twice, then works
            for n in notes[1:3]:
                await d.sims.uis.send_notification(n, d.webhook, d.client)
            await d.settle()
            await d.sims.crm.wait_for(lambda: len(d.events_for(SESSION)) == 2)
            for n in notes[3:]:
                await d.sims.uis.send_notification(n, d.webhook, d.client)
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            await d.settle()
            assert [(e["type"], e["codes"]) for e in d.events_for(SESSION)] == [
                ("in", ["101"]), ("in", ["102"]), ("hangup", ["101", "102"])]
            statuses = [r.status for r in d.sims.crm.requests]
            assert statuses[:2] == [503, 503] and set(statuses[2:]) == {200}


async def test_pending_work_resumes_after_a_restart(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            scenario = scenarios.lost_in_ivr(SESSION, start=start_time())
            sims.crm.fault = "503"
            async with open_daemon(sims, settings) as d:
                await d.play(scenario, settle=False)
                await sims.crm.wait_for(lambda: sims.crm.requests)
                assert d.count("outbox", "status = 'pending'") == 1
            sims.crm.fault = None
            before = len(sims.crm.requests)
            async with open_daemon(sims, settings) as d2:
                await sims.crm.wait_for(lambda: d2.uploads_for(SESSION))
                await d2.settle()
                assert len(d2.uploads_for(SESSION)) == 1
                assert d2.count("outbox", "status = 'delivered'") == 1
            assert len(sims.crm.requests) == before + 1


async def test_permanent_refusal_becomes_a_dead_letter_with_the_upstream_message(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, crm={"api_key": "wrong-key"}) as d:
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
            [dead] = d.ctx.store.dead_letters()
            assert dead["kind"] == "upload"
            assert "Wrong \"apiKey\" value" in dead["last_error"]
            page = (await d.client.get(f"{d.url}/", headers=d.page_headers())).text
            assert "Dead letters" in page and "apiKey" in page


async def test_duplicate_calls_answer_counts_as_delivered(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            d.sims.crm.uploaded[str(SESSION)] = {"externalId": str(SESSION)}
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
            [row] = d.ctx.store.outbox_for(SESSION)
            assert row["status"] == "delivered"
            assert "duplicateCalls" in row["last_error"]


async def test_unmapped_employee_and_unknown_codes_are_mapping_warnings(tmp_path):
    employees = [{"uis_id": 101, "crm_user_id": 1, "code": "101"},
                 {"uis_id": 102, "crm_user_id": 77, "code": "777"}]
    with trio.fail_after(20):
        async with open_system(tmp_path, employees=employees) as d:
            await d.play(scenarios.ring_group_lost(SESSION, start=start_time(),
                                                   ringing=[ANNA, BORIS, VERA]))
            warnings = {(w["kind"], w["subject"]) for w in d.ctx.store.warnings()}
            assert ("unmapped_employee", "103") in warnings
            assert ("notExistCodes", "777") in warnings
            assert ("notExistUsers", "77") in warnings
            assert [e["codes"] for e in d.events_for(SESSION)] == [["101"], ["777"],
                                                                   ["101", "777"]]


async def test_recording_that_lags_the_hangup_is_waited_for(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, uis={"record_wait_seconds": 10}) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            await d.play(scenario, records_after_seconds=1.0)
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            [upload] = d.uploads_for(SESSION)
            assert upload["recordUrl"].endswith(f"/{scenario.legs[0].call_records[0]}")
            asked = [r for r in d.sims.uis.rpc_requests if r["method"] == "get.call_legs_report"]
            assert len(asked) >= 2


async def test_answered_call_without_any_recording_is_uploaded_without_a_link(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, uis={"record_wait_seconds": 0.5}) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            no_record = [n for n in scenario.notifications if n.event != "call_recorded"]
            d.sims.uis.register(scenario, records_after_seconds=3600)
            for n in no_record:
                await d.sims.uis.send_notification(n, d.webhook, d.client)
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            await d.settle()
            [upload] = d.uploads_for(SESSION)
            assert upload["result"] == "answered" and "recordUrl" not in upload
            [row] = [r for r in d.ctx.store.outbox_for(SESSION) if r["kind"] == "upload"]
            assert "without a recording" in row["last_error"]


async def test_api_v4_uses_the_v4_paths(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, crm={"api_version": "v4"}) as d:
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA))
            assert {r.api_version for r in d.sims.crm.requests} == {"v4"}
            assert len(d.uploads_for(SESSION)) == 1


async def test_status_page_and_timeline_escape_outside_data(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            evil = "<script>alert(1)</script>"
            await d.post({"event": "incoming_call", "call_session_id": 7,
                          "contact_phone_number": evil, "contact_full_name": evil})
            for path in ("/", "/calls/7"):
                page = (await d.client.get(d.url + path, headers=d.page_headers())).text
                assert evil not in page and "&lt;script&gt;" in page
            timeline = (await d.client.get(f"{d.url}/calls/7?format=json",
                                           headers=d.page_headers())).json()
            assert timeline["call"]["state"] == "ringing"
            assert [e["event"] for e in timeline["events"]] == ["incoming_call"]
