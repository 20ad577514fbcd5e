"""Statecharts are data pinned to code, and the call chart does the right thing on every path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tracker.core import calls, catalogue, notifications, statecharts
from tracker.core.commands import Command, Hangup, Popup, Upload
from tracker.errors import StatechartError

MOSCOW = ZoneInfo("Europe/Moscow")
CALL_JSON = statecharts.DEFAULT_DIR / "call.json"
A, B, C = 13421, 13422, 13423


def chart_definition() -> dict[str, Any]:
    return json.loads(CALL_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def chart() -> statecharts.Chart:
    return statecharts.load_all(statecharts.DEFAULT_DIR, calls.Call, catalogue.EVENTS)["call"]


# -- the charts on disk ------------------------------------------------------------------------


def test_every_chart_on_disk_loads() -> None:
    charts = statecharts.load_all(statecharts.DEFAULT_DIR, calls.Call, catalogue.EVENTS)
    assert "call" in charts
    assert len(charts) == len(list(statecharts.DEFAULT_DIR.glob("*.json")))
    for chart in charts.values():
        assert set(statecharts.REQUIRED_STATES) <= set(chart.states)
        assert chart.triggers == catalogue.EVENTS


def test_call_chart_shape(chart: statecharts.Chart) -> None:
    assert chart.initial == "ringing"
    assert chart.final_states == {"ended", "lost"}
    assert calls.Call(id=1).state == chart.initial


def names_in(transition: dict[str, Any], *keys: str) -> list[str]:
    found: list[str] = []
    for key in keys:
        value = transition.get(key)
        found += value if isinstance(value, list) else [value] if value else []
    return found


CHART_FILES = sorted(statecharts.DEFAULT_DIR.glob("*.json"))


@pytest.mark.parametrize("path", CHART_FILES, ids=lambda p: p.name)
def test_every_callback_and_condition_a_chart_names_is_a_method_of_call(path: Path) -> None:
    definition = json.loads(path.read_text(encoding="utf-8"))
    named = {
        name
        for t in definition["transitions"]
        for name in names_in(t, "after", "before", "conditions", "unless")
    }
    assert named
    for name in sorted(named):
        assert callable(getattr(calls.Call, name, None)), name


# -- build() refuses a broken chart ------------------------------------------------------------


def drop_transitions(definition: dict[str, Any], trigger: str, source: str) -> None:
    definition["transitions"] = [
        t for t in definition["transitions"]
        if not (t["trigger"] == trigger and source in names_in(t, "source"))
    ]


def unknown_callback(d: dict[str, Any]) -> None:
    d["transitions"][0]["after"] = ["record", "ring_the_bell"]


def unknown_condition(d: dict[str, Any]) -> None:
    d["transitions"].append(
        {"trigger": "lost_call", "source": "ringing", "dest": "lost", "conditions": "is_vip"}
    )


def unknown_trigger(d: dict[str, Any]) -> None:
    d["transitions"].append({"trigger": "fax_received", "source": "ringing", "dest": None})


def missing_required_state(d: dict[str, Any]) -> None:
    d["states"] = [s for s in d["states"] if s["name"] != "talking"]


def unhandled_pair(d: dict[str, Any]) -> None:
    drop_transitions(d, "lost_call", "talking")


def only_conditional(d: dict[str, Any]) -> None:
    # Without its unconditional fallback, call_finished in "ringing" could match nothing.
    d["transitions"] = [
        t for t in d["transitions"] if not (t["trigger"] == "call_finished" and t["dest"] == "lost")
    ]


def leaves_final_state(d: dict[str, Any]) -> None:
    d["transitions"].insert(0, {"trigger": "talk_started", "source": "ended", "dest": "talking"})


def unknown_chart_key(d: dict[str, Any]) -> None:
    d["colour"] = "blue"


def unknown_state_key(d: dict[str, Any]) -> None:
    d["states"][0]["timeout"] = 30


def unknown_transition_key(d: dict[str, Any]) -> None:
    d["transitions"][0]["prepare"] = "record"


def unknown_dest(d: dict[str, Any]) -> None:
    d["transitions"].append({"trigger": "lost_call", "source": "ringing", "dest": "voicemail"})


def bad_initial(d: dict[str, Any]) -> None:
    d["initial"] = "dialing"


BROKEN = [
    pytest.param(unknown_callback, "callback 'ring_the_bell' is not a method", id="bad-callback"),
    pytest.param(unknown_condition, "condition 'is_vip' is not a method", id="unknown-condition"),
    pytest.param(unknown_trigger, "unknown trigger 'fax_received'", id="unknown-trigger"),
    pytest.param(missing_required_state, "required state 'talking' is missing", id="missing-state"),
    pytest.param(
        unhandled_pair,
        "trigger 'lost_call' is not handled unconditionally in state 'talking'",
        id="unhandled-pair",
    ),
    pytest.param(
        only_conditional,
        "trigger 'call_finished' is not handled unconditionally in state 'ringing'",
        id="only-conditional",
    ),
    pytest.param(leaves_final_state, "final state 'ended' must not be left", id="leaves-final"),
    pytest.param(unknown_chart_key, "unknown key 'colour'", id="unknown-chart-key"),
    pytest.param(unknown_state_key, "state 'ringing': unknown key 'timeout'", id="bad-state-key"),
    pytest.param(
        unknown_transition_key, "transition #0: unknown key 'prepare'", id="bad-transition-key"
    ),
    pytest.param(unknown_dest, "unknown dest state 'voicemail'", id="unknown-dest"),
    pytest.param(bad_initial, "initial state 'dialing' is not a state", id="bad-initial"),
]


def test_the_unbroken_definition_builds() -> None:
    # The baseline every BROKEN case starts from, so each failure below is the mutation's.
    chart = statecharts.build(chart_definition(), calls.Call, catalogue.EVENTS)
    assert chart.name == "call"


@pytest.mark.parametrize(("breaks", "message"), BROKEN)
def test_build_rejects_a_broken_chart(breaks: Any, message: str) -> None:
    definition = chart_definition()
    breaks(definition)
    with pytest.raises(StatechartError) as info:
        statecharts.build(definition, calls.Call, catalogue.EVENTS)
    assert message in str(info.value)


def test_build_rejects_an_event_the_chart_does_not_handle() -> None:
    with pytest.raises(StatechartError) as info:
        statecharts.build(chart_definition(), calls.Call, (*catalogue.EVENTS, "call_parked"))
    expected = "trigger 'call_parked' is not handled unconditionally in state 'ringing'"
    assert expected in str(info.value)


def test_build_rejects_a_chart_without_states() -> None:
    with pytest.raises(StatechartError, match="'states' must be a non-empty list"):
        statecharts.build(
            {"name": "x", "states": [], "transitions": []}, calls.Call, catalogue.EVENTS
        )


def test_load_names_the_file_of_a_broken_chart(tmp_path: Path) -> None:
    definition = chart_definition()
    unknown_callback(definition)
    (tmp_path / "broken.json").write_text(json.dumps(definition), encoding="utf-8")
    with pytest.raises(StatechartError, match=r"^broken\.json: .*ring_the_bell"):
        statecharts.load_all(tmp_path, calls.Call, catalogue.EVENTS)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "cannot read"), ("[1, 2]", "must hold a JSON object")],
    ids=["invalid-json", "not-an-object"],
)
def test_load_rejects_an_unreadable_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "call.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StatechartError, match=message):
        statecharts.load(path, calls.Call, catalogue.EVENTS)


def test_load_all_rejects_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(StatechartError, match="no statechart found"):
        statecharts.load_all(tmp_path, calls.Call, catalogue.EVENTS)


def test_load_all_rejects_two_charts_with_one_name(tmp_path: Path) -> None:
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(CALL_JSON.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(StatechartError, match="used twice"):
        statecharts.load_all(tmp_path, calls.Call, catalogue.EVENTS)


# -- the call chart over notification sequences ------------------------------------------------


def note(event: str, **fields: Any) -> notifications.Notification:
    """A notification as the webhook would parse it (always call session 1)."""
    return notifications.parse({"event": event, "call_session_id": 1, **fields}, MOSCOW)


Step = tuple[notifications.Notification, list[Command]]

INCOMING = note(
    "incoming_call", contact_phone_number="79508418541", virtual_phone_number="74950000000"
)


def waiting(employee: int) -> notifications.Notification:
    return note("waiting_answer", direction="in", employee_id=employee)


def talk_started(employee: int) -> notifications.Notification:
    return note("talk_started", direction="in", employee_id=employee)


def talk_finished(employee: int, seconds: int) -> notifications.Notification:
    return note("talk_finished", employee_id=employee, talk_time_duration=seconds)


def call_finished(talk: int, **fields: Any) -> notifications.Notification:
    return note(
        "call_finished",
        direction="in",
        talk_time_duration=talk,
        total_time_duration=talk + 20,
        wait_time_duration=20,
        **fields,
    )


def lost(*employees: int) -> notifications.Notification:
    return note("lost_call", direction="in", employee_ids=list(employees), wait_time_duration=40)


SCENARIOS = [
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (talk_started(A), []),
            (talk_finished(A, 95), []),
            (call_finished(95, employee_id=A, last_talked_employee_id=A),
             [Hangup((A,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="answered",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (waiting(B), [Popup(B)]),
            (waiting(C), [Popup(C)]),
            (lost(A, B, C), [Hangup((A, B, C), "no answered"), Upload("no answer")]),
            (call_finished(0), []),
        ],
        "lost",
        id="ring-group-lost",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (lost(), [Upload("no answer")]),
            (call_finished(0), []),
        ],
        "lost",
        id="lost-in-ivr",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (waiting(B), [Popup(B)]),
            (talk_started(B), [Hangup((A,), "answered")]),
            (talk_finished(B, 60), []),
            (call_finished(60, employee_id=B, last_talked_employee_id=B),
             [Hangup((B,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="ring-group-answered-by-b",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (talk_started(A), []),
            (waiting(B), [Popup(B)]),
            (talk_started(B), [Hangup((A,), "answered")]),
            (call_finished(120, last_talked_employee_id=B),
             [Hangup((B,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="transfer-a-to-b",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (call_finished(30, employee_id=A), [Hangup((A,), "answered"), Upload("answered")]),
            (talk_started(A), []),
            (waiting(A), []),
            (waiting(B), []),
        ],
        "ended",
        id="finish-before-talk-started",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (call_finished(30), [Upload("answered")]),
            (talk_started(A), []),
        ],
        "ended",
        id="finish-with-talk-and-nothing-before",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (call_finished(0), [Hangup((A,), "no answered"), Upload("no answer")]),
        ],
        "lost",
        id="finish-without-talk-is-lost",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (note("call_finished", talk_time_duration=None), [Upload("no answer")]),
        ],
        "lost",
        id="finish-with-talk-unknown-is-lost",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (waiting(A), []),
            (lost(A), [Hangup((A,), "no answered"), Upload("no answer")]),
        ],
        "lost",
        id="same-waiting-twice-one-popup",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (talk_started(A), []),
            (lost(A), []),
            (call_finished(45), [Hangup((A,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="lost-after-talk-is-still-answered",
    ),
    pytest.param(
        [
            (note("outgoing_call", employee_id=A, contact_phone_number="79508418541"), []),
            (note("waiting_answer", direction="out", employee_id=A), [Popup(A)]),
            (note("talk_started", direction="out", employee_id=A), []),
            (note("call_finished", direction="out", talk_time_duration=12),
             [Hangup((A,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="outbound-answered",
    ),
    pytest.param(
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (talk_finished(A, 30), []),
            (call_finished(30), [Hangup((A,), "answered"), Upload("answered")]),
        ],
        "ended",
        id="talk-started-lost-in-transit",
    ),
]


def run_steps(chart: statecharts.Chart, call: calls.Call, steps: list[Step]) -> None:
    for index, (notification, expected) in enumerate(steps):
        applied = calls.apply(chart, call, notification)
        assert list(applied.commands) == expected, f"step {index}: {notification.event}"
        assert applied.state_after == call.state


@pytest.mark.parametrize(("steps", "final"), SCENARIOS)
def test_call_scenario(chart: statecharts.Chart, steps: list[Step], final: str) -> None:
    call = calls.Call(id=1)
    run_steps(chart, call, steps)
    assert call.state == final


@pytest.mark.parametrize(("steps", "final"), SCENARIOS)
def test_every_scenario_uploads_exactly_once_and_closes_every_card(
    chart: statecharts.Chart, steps: list[Step], final: str
) -> None:
    call = calls.Call(id=1)
    issued: list[Command] = []
    for notification, _ in steps:
        issued += calls.apply(chart, call, notification).commands
    uploads = [c for c in issued if isinstance(c, Upload)]
    assert uploads == [Upload("answered" if final == "ended" else "no answer")]
    opened = [c.employee_id for c in issued if isinstance(c, Popup)]
    closed = [e for c in issued if isinstance(c, Hangup) for e in c.employee_ids]
    assert sorted(closed) == sorted(opened)
    # A card is never closed before it was opened.
    for index, command in enumerate(issued):
        if isinstance(command, Hangup):
            earlier = [c.employee_id for c in issued[:index] if isinstance(c, Popup)]
            assert set(command.employee_ids) <= set(earlier)


def test_answered_call_keeps_what_the_notifications_said(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    for notification, _ in SCENARIOS[0].values[0]:
        calls.apply(chart, call, notification)
    assert call.talked
    assert call.talked_employee_id == A
    assert call.contact_phone == "79508418541"
    assert call.virtual_phone == "74950000000"
    assert call.talk_seconds == 95
    assert call.total_seconds == 115
    assert call.wait_seconds == 20
    assert call.rang == [A]
    assert call.carded == [A]


def test_transfer_credits_the_last_employee_who_talked(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    run_steps(chart, call, SCENARIOS[4].values[0])
    assert call.talked_employee_id == B


def test_ring_group_credits_b_who_answered_not_a_who_rang_first(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    run_steps(chart, call, SCENARIOS[3].values[0])
    assert call.talked_employee_id == B
    assert call.rang == [A, B]


def test_outbound_call_is_recorded_as_outbound(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    run_steps(chart, call, SCENARIOS[11].values[0])
    assert call.direction == "out"


def test_transfer_target_card_stays_open_while_it_rings(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    run_steps(
        chart,
        call,
        [
            (INCOMING, []),
            (waiting(A), [Popup(A)]),
            (talk_started(A), []),
            (waiting(B), [Popup(B)]),
            (talk_finished(A, 40), []),
            (talk_started(B), [Hangup((A,), "answered")]),
            (call_finished(100, last_talked_employee_id=B),
             [Hangup((B,), "answered"), Upload("answered")]),
        ],
    )


# -- final states absorb everything ------------------------------------------------------------

TO_FINAL = {
    "ended": [INCOMING, waiting(A), talk_started(A), call_finished(30, last_talked_employee_id=A)],
    "lost": [INCOMING, waiting(A), lost(A)],
}

# The most tempting notification of each kind: a new employee, a talk, a recording.
LATE = {
    "incoming_call": note("incoming_call", contact_phone_number="79990000000"),
    "outgoing_call": note("outgoing_call", employee_id=C),
    "waiting_answer": waiting(C),
    "talk_started": talk_started(C),
    "talk_finished": talk_finished(C, 50),
    "call_finished": call_finished(50, employee_id=C, last_talked_employee_id=C),
    "lost_call": lost(A, B, C),
    "call_recorded": note("call_recorded", employee_id=A, file_link="https://media.example/1/"),
}


def test_late_table_covers_every_event() -> None:
    assert set(LATE) == set(catalogue.EVENTS)


@pytest.mark.parametrize("final", sorted(TO_FINAL))
@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_every_event_in_a_final_state_yields_no_command(
    chart: statecharts.Chart, final: str, event: str
) -> None:
    call = calls.Call(id=1)
    for notification in TO_FINAL[final]:
        calls.apply(chart, call, notification)
    assert call.state == final

    applied = calls.apply(chart, call, LATE[event])

    assert applied.commands == ()
    assert applied.state_before == applied.state_after == call.state == final


@pytest.mark.parametrize("final", sorted(TO_FINAL))
def test_call_recorded_after_the_end_sets_file_link(chart: statecharts.Chart, final: str) -> None:
    call = calls.Call(id=1)
    for notification in TO_FINAL[final]:
        calls.apply(chart, call, notification)
    assert call.file_link is None

    applied = calls.apply(chart, call, LATE["call_recorded"])

    assert call.file_link == "https://media.example/1/"
    assert applied.commands == ()
    assert call.state == final


def test_apply_leaves_no_model_attached(chart: statecharts.Chart) -> None:
    call = calls.Call(id=1)
    calls.apply(chart, call, waiting(A))
    assert call not in chart.machine.models
    # A fresh call after another one starts clean: the chart holds no per-call state.
    assert calls.apply(chart, calls.Call(id=2), waiting(A)).commands == (Popup(A),)


def test_state_is_restored_from_the_stored_value(chart: statecharts.Chart) -> None:
    # The store rebuilds a call from SQLite: its state and opened cards, nothing else in memory.
    call = calls.Call(id=1, state="waiting_answer", carded=[A, B], rang=[A, B])
    applied = calls.apply(chart, call, talk_started(B))
    assert applied.state_before == "waiting_answer"
    assert applied.state_after == "talking"
    assert applied.commands == (Hangup((A,), "answered"),)


def test_the_final_states_the_code_names_are_the_charts(chart: statecharts.Chart) -> None:
    assert set(calls.FINAL_STATES) == set(chart.final_states)
