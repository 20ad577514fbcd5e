"""The notification templates name only what UIS offers each event, and a variable UIS leaves
unfilled costs one field, never the notification (issue 13, defect 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.support import open_system
from tracker.core import catalogue, notifications

_COMMON = {"call_session_id", "notification_time", "notification_name", "notification_mnemonic",
           "virtual_phone_number", "contact_phone_number", "contact_id", "contact_full_name",
           "communication_number", "scenario_name"}
# The variables UIS documents for each event: the list in UIS's notification settings as
# condensed in the team's reference, and the templates of a public connector's setup guide
# (docs/reference-notes.md, "Notification variables").
DOCUMENTED: dict[str, set[str]] = {
    "incoming_call": _COMMON,
    "waiting_answer": _COMMON | {"direction", "employee_id", "employee_full_name", "leg_id",
                                 "external_id", "call_source"},
    "talk_started": _COMMON | {"direction", "employee_id", "employee_full_name", "leg_ids",
                               "external_id", "call_source"},
    "talk_finished": _COMMON | {"direction", "employee_id", "employee_full_name", "leg_ids",
                                "external_id", "call_source", "talk_time_duration"},
    "call_finished": _COMMON | {"direction", "employee_id", "employee_full_name", "external_id",
                                "call_source", "talk_time_duration", "total_time_duration",
                                "wait_time_duration", "tag_names", "is_transfer",
                                "last_talked_employee_id"},
    "lost_call": _COMMON | {"employee_ids", "wait_time_duration"},
    "outgoing_call": _COMMON | {"employee_id", "employee_full_name", "employee_phone_number"},
    "call_recorded": _COMMON | {"employee_id", "employee_full_name", "file_link",
                                "file_duration", "tag_ids", "tag_names"},
}


@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_each_template_names_only_variables_its_event_documents(event: str) -> None:
    extra = set(catalogue.BY_EVENT[event].variables) - DOCUMENTED[event]
    assert not extra, f"{event} offers no {sorted(extra)}"


def test_a_bare_placeholder_becomes_null_and_is_named() -> None:
    text = ('{"event": "call_finished", "call_session_id": 5, "talk_time_duration": '
            '{{talk_time_duration}},\n "employee_ids": [{{ employee_id }}], "x": {{x}}}')
    filled, names = notifications.fill_bare_placeholders(text)
    assert json.loads(filled) == {"event": "call_finished", "call_session_id": 5,
                                  "talk_time_duration": None, "employee_ids": [None], "x": None}
    assert names == ["talk_time_duration", "employee_id", "x"]


def test_placeholders_inside_strings_are_left_alone() -> None:
    text = '{"note": "a {{b}} c", "d": "{{d}}"}'
    assert notifications.fill_bare_placeholders(text) == (text, [])
    assert notifications.unfilled_variables(json.loads(text)) == ["d"]


BODIES = {
    "quoted": '{"event": "call_finished", "call_session_id": 4242, '
              '"notification_time": "2024-05-17 14:05:00.120", "talk_time_duration": 0, '
              '"wait_time_duration": 12, "total_time_duration": "{{total_time_duration}}", '
              '"last_talked_employee_id": "{{last_talked_employee_id}}"}',
    "bare": '{"event": "call_finished", "call_session_id": 4242, '
            '"notification_time": "2024-05-17 14:05:00.120", "talk_time_duration": 0, '
            '"wait_time_duration": 12, "total_time_duration": {{total_time_duration}}, '
            '"last_talked_employee_id": {{last_talked_employee_id}}}',
}


@pytest.mark.parametrize("kind", list(BODIES))
async def test_a_notification_with_unfilled_variables_is_accepted_and_says_so(tmp_path, kind):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            await d.post({"event": "incoming_call", "call_session_id": 4242,
                          "contact_phone_number": "79991234567"})
            answer = await d.post(BODIES[kind])
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "accepted"
            call = d.ctx.store.call_row(4242)
            assert call["state"] == "lost" and call["wait_seconds"] == 12
            assert call["total_seconds"] is None and call["talked_employee_id"] is None
            [event] = [e for e in d.ctx.store.events_for(4242) if e["event"] == "call_finished"]
            assert event["outcome"] == "accepted"
            assert event["error"] == ("UIS left template variables unfilled (treated as "
                                      "absent): total_time_duration, last_talked_employee_id")
            warned: dict[str, Any] = {w["subject"]: w for w in d.ctx.store.warnings()
                                      if w["kind"] == "unfilled_variable"}
            assert set(warned) == {"call_finished.total_time_duration",
                                   "call_finished.last_talked_employee_id"}
            await d.settle()
            [upload] = d.uploads_for(4242)
            assert upload["result"] == "no answer" and upload["durationWaiting"] == 12


async def test_a_body_that_is_broken_otherwise_is_still_refused(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            answer = await d.post('{"event": "call_finished", "call_session_id": {{x}} oops}')
            assert answer.status_code == 400
            assert "not valid JSON" in answer.json()["message"]
