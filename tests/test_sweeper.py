"""The stale-call sweeper: calls whose end notification never came are settled from the Data API."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio

from tests.support import ANNA, BORIS, VERA, open_system, start_time
from tracker.core import synthesis
from tracker.features.sweeper import Sweeper
from tracker.intake import ingest
from tracker.simulators import Scenario, scenarios

SESSION = 998677427
OTHER = 998677428

FAST = {
    # stale_after leaves room for a slow settle() between two notifications of one play()
    "sweeper": {"stale_after_seconds": 1.0, "interval_seconds": 0.1, "max_attempts": 3},
    "reconcile": {"enabled": False},
    "ratelimit": {"uis_per_second": 500},
}


def _sections(**changes: dict) -> dict:
    return {name: {**FAST.get(name, {}), **changes.get(name, {})}
            for name in {*FAST, *changes}}


def _prefix(scenario: Scenario, *events: str) -> Scenario:
    """The scenario with only its first notifications, up to and including ``events`` in order
    (the rest are "lost on the way")."""
    kept = scenario.notifications[:len(events)]
    assert [n.event for n in kept] == list(events), scenario.events
    return dataclasses.replace(scenario, notifications=kept)


def _lookups(d, session_id: int) -> list[dict]:
    return [r["params"] for r in d.sims.uis.rpc_requests
            if r.get("method") == "get.calls_report"
            and r["params"].get("filter", {}).get("value") == session_id]


async def _wait_final(d, session_id: int, timeout: float = 8.0) -> dict:  # noqa: ASYNC109
    row = await d.sims.uis.wait_for(
        lambda: (r := d.ctx.store.call_row(session_id)) and r["state"] in ("ended", "lost") and r,
        timeout)
    await d.settle()
    return row


def _answered() -> Scenario:
    return scenarios.answered(SESSION, start=start_time(), employee=ANNA, wait_seconds=7,
                              talk_seconds=95)


# (name, scenario, events UIS did deliver, final state, card events retailCRM got, upload)
CASES = [
    ("talking, its end lost", _answered(),
     ("incoming_call", "waiting_answer", "talk_started"), "ended",
     [("in", ["101"], None), ("hangup", ["101"], "answered")],
     {"result": "answered", "code": "101", "userId": 1, "duration": 95, "durationWaiting": 7,
      "recordUrl": f"https://media.test/talk/{SESSION}/{SESSION * 100 + 51}"}),
    ("ring group, nobody answered, lost_call lost",
     scenarios.ring_group_lost(SESSION, start=start_time(), ringing=[ANNA, BORIS, VERA],
                               wait_seconds=31),
     ("incoming_call", "waiting_answer", "waiting_answer", "waiting_answer"), "lost",
     [("in", ["101"], None), ("in", ["102"], None), ("in", ["103"], None),
      ("hangup", ["101", "102", "103"], "no answered")],
     {"result": "no answer", "code": "103", "userId": 3, "durationWaiting": 31}),
    ("hung up in the voice menu",
     scenarios.lost_in_ivr(SESSION, start=start_time(), wait_seconds=12),
     ("incoming_call",), "lost", [],
     {"result": "no answer", "durationWaiting": 12}),
    ("ring group answered, talk_started lost too",
     scenarios.ring_group_answered(SESSION, start=start_time(), ringing=[ANNA], employee=BORIS,
                                   wait_seconds=5, talk_seconds=40),
     ("incoming_call", "waiting_answer", "waiting_answer"), "ended",
     [("in", ["101"], None), ("in", ["102"], None), ("hangup", ["101", "102"], "answered")],
     {"result": "answered", "code": "102", "userId": 2, "duration": 40, "durationWaiting": 5,
      "recordUrl": f"https://media.test/talk/{SESSION}/{SESSION * 100 + 52}"}),
]


@pytest.mark.parametrize(("name", "scenario", "delivered", "state", "cards", "upload"), CASES,
                         ids=[c[0] for c in CASES])
async def test_finished_session_gets_its_end_from_the_report_once(
        tmp_path, name, scenario, delivered, state, cards, upload):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            await d.play(_prefix(scenario, *delivered))
            row = await _wait_final(d, SESSION)
            assert row["state"] == state
            assert [(e["type"], e["codes"], e.get("hangupStatus"))
                    for e in d.events_for(SESSION)] == cards
            [item] = d.uploads_for(SESSION)
            assert item == {"phone": "+79991234567", "externalPhone": "+74950000000",
                            "date": "2024-05-17 14:03:27", "type": "in",
                            "externalId": str(SESSION), **upload}
            assert "sweeper took the end from the Data API report" in row["end_reason"]
            [lookup] = _lookups(d, SESSION)
            assert lookup["include_ongoing_calls"] is True
            assert lookup["filter"] == {"field": "id", "operator": "=", "value": SESSION}
            assert lookup["date_from"] <= "2024-05-17 14:03:27" <= lookup["date_till"]
            [synthesised] = [e for e in d.ctx.store.events_for(SESSION) if e["method"] == "SWEEP"]
            assert json.loads(synthesised["body"])["tracker_source"] == "sweeper"
            assert (synthesised["state_before"], synthesised["state_after"]) == (
                d.ctx.store.events_for(SESSION)[len(delivered) - 1]["state_after"], state)
            assert synthesised["state_before"] not in ("ended", "lost")
            [warning] = [w for w in d.ctx.store.warnings() if w["kind"] == "sweeper"]
            assert warning["count"] == 1 and str(SESSION) in warning["message"]
            # later passes leave a settled call alone
            await trio.sleep(0.5)
            await d.settle()
            assert len(_lookups(d, SESSION)) == 1
            assert len(d.uploads_for(SESSION)) == 1 and len(d.events_for(SESSION)) == len(cards)


async def test_two_sweeps_at_once_and_a_replayed_end_act_once(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(sweeper={"enabled": False})) as d:
            await d.play(_prefix(_answered(), "incoming_call", "waiting_answer", "talk_started"))
            await trio.sleep(1.1)  # stale now
            first, second = Sweeper(d.ctx), Sweeper(d.ctx)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.sweep_once)
                nursery.start_soon(second.sweep_once)
            await d.settle()
            assert first.statistics().lookups == second.statistics().lookups == 1
            assert first.statistics().finished + second.statistics().finished == 1
            # the same report row gives the same notification, hence the same dedupe key
            report = d.sims.uis.sessions[SESSION].report
            again = synthesis.ending(report, state="talking", source="sweeper")
            outcome = ingest.ingest(d.ctx.store, d.ctx.chart, d.ctx.tz, again, method="SWEEP")
            assert outcome.status == "duplicate"
            await d.settle()
            assert len(d.uploads_for(SESSION)) == 1
            assert [e["type"] for e in d.events_for(SESSION)] == ["in", "hangup"]
            assert d.count("events", "call_id = ? AND method = 'SWEEP'", SESSION) == 1


async def test_ongoing_call_waits_until_uis_reports_it_finished(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections()) as d:
            scenario = _answered()
            await d.play(_prefix(scenario, "incoming_call", "waiting_answer", "talk_started"))
            d.sims.uis.register(scenario, finished=False)  # UIS: still talking
            await d.sims.uis.wait_for(lambda: len(_lookups(d, SESSION)) >= 2)
            row = d.ctx.store.call_row(SESSION)
            assert row["state"] == "talking" and row["end_reason"] is None
            assert "in progress" in row["sweep_note"]
            assert d.uploads_for(SESSION) == []
            d.sims.uis.mark_finished(SESSION)
            row = await _wait_final(d, SESSION)
            assert row["state"] == "ended"
            [item] = d.uploads_for(SESSION)
            assert (item["result"], item["duration"]) == ("answered", 95)
            # one lookup per stale_after_seconds while it talked, not one per pass
            assert len(_lookups(d, SESSION)) <= 8


UNKNOWN = [
    ("ringing", ("incoming_call", "waiting_answer"), "lost",
     [("in", ["101"], None), ("hangup", ["101"], "no answered")],
     {"result": "no answer", "code": "101", "userId": 1}),
    ("talking", ("incoming_call", "waiting_answer", "talk_started"), "ended",
     [("in", ["101"], None), ("hangup", ["101"], "answered")],
     {"result": "answered", "code": "101", "userId": 1, "duration": 0}),
]


@pytest.mark.parametrize(("name", "delivered", "state", "cards", "upload"), UNKNOWN,
                         ids=[u[0] for u in UNKNOWN])
async def test_session_uis_does_not_know_is_closed_after_max_attempts_with_a_reason(
        tmp_path, name, delivered, state, cards, upload):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(uis={"record_wait_seconds": 0.5})) as d:
            scenario = _prefix(_answered(), *delivered)
            for notification in scenario.notifications:  # never registered with the Data API
                response = await d.sims.uis.send_notification(notification, d.webhook, d.client)
                assert response.status_code == 200
            row = await _wait_final(d, SESSION)
            assert row["state"] == state
            assert row["end_reason"].startswith("UIS does not know this session after 3 lookups")
            assert row["sweep_attempts"] == 3
            assert len(_lookups(d, SESSION)) == 3
            assert [(e["type"], e["codes"], e.get("hangupStatus"))
                    for e in d.events_for(SESSION)] == cards
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            [item] = d.uploads_for(SESSION)
            assert {k: item.get(k) for k in upload} == upload
            [closing] = [e for e in d.ctx.store.events_for(SESSION) if e["method"] == "SWEEP"]
            assert json.loads(closing["body"])["tracker_reason"] == row["end_reason"]
            await trio.sleep(0.5)
            assert len(_lookups(d, SESSION)) == 3


@pytest.mark.parametrize(("mnemonic", "code"), [("limit_exceeded", -32029),
                                                ("internal_error", -32603),
                                                ("access_token_invalid", -32001)])
async def test_failed_lookups_end_the_pass_and_do_not_count_as_unknown(tmp_path, mnemonic, code):
    with trio.fail_after(20):
        async with open_system(tmp_path, **_sections(sweeper={"max_attempts": 1})) as d:
            d.sims.uis.minute_seconds = 1.0  # limit_exceeded pauses until the minute resets
            await d.ctx.uis.data("get.account", {})  # the budget as UIS last reported it
            await d.play(_prefix(_answered(), "incoming_call", "waiting_answer", "talk_started"))
            other = scenarios.lost_in_ivr(OTHER, start=start_time(), wait_seconds=12)
            await d.play(_prefix(other, "incoming_call"))
            d.sims.uis.fail_next("get.calls_report", mnemonic, code, count=2)
            first = await _wait_final(d, SESSION)
            second = await _wait_final(d, OTHER)
            order = [r["params"]["filter"]["value"] for r in d.sims.uis.rpc_requests
                     if r.get("method") == "get.calls_report"]
            assert order == [SESSION, SESSION, SESSION, OTHER]  # no lookup after a failure
            assert (first["state"], second["state"]) == ("ended", "lost")
            assert "Data API report" in first["end_reason"]
            assert d.uploads_for(SESSION)[0]["duration"] == 95
