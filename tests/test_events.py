"""Webhook parsing: every UIS event, both transports (JSON body, GET query), every absent form."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tracker.core import catalogue, notifications
from tracker.errors import RejectedNotification

MOSCOW = ZoneInfo("Europe/Moscow")

# One realistic value for every variable any template carries.
VALUES: dict[str, Any] = {
    "call_session_id": 998677427,
    "notification_time": "2019-12-16 14:40:47.234",
    "virtual_phone_number": "74950000000",
    "contact_phone_number": "79508418541",
    "contact_full_name": "Иван Петров",
    "direction": "in",
    "employee_id": 13421,
    "employee_full_name": "Анна Смирнова",
    "leg_id": 55501,
    "leg_ids": [55501, 55502],
    "external_id": "ext-42",
    "talk_time_duration": 95,
    "total_time_duration": 120,
    "wait_time_duration": 25,
    "last_talked_employee_id": 13422,
    "employee_ids": [13421, 13422],
    "file_link": "https://app.uiscom.ru/system/media/talk/998677427/abc/",
    "file_duration": 95,
}

# UIS variable -> (Notification attribute, value expected from VALUES).
EXPECTED: dict[str, tuple[str, Any]] = {
    "notification_time": ("at", datetime(2019, 12, 16, 11, 40, 47, 234000, UTC).timestamp()),
    "virtual_phone_number": ("virtual_phone", "74950000000"),
    "contact_phone_number": ("contact_phone", "79508418541"),
    "contact_full_name": ("contact_name", "Иван Петров"),
    "direction": ("direction", "in"),
    "employee_id": ("employee_id", 13421),
    "employee_full_name": ("employee_name", "Анна Смирнова"),
    "leg_id": ("leg_id", 55501),
    "external_id": ("external_id", "ext-42"),
    "talk_time_duration": ("talk_seconds", 95),
    "total_time_duration": ("total_seconds", 120),
    "wait_time_duration": ("wait_seconds", 25),
    "last_talked_employee_id": ("last_talked_employee_id", 13422),
    "employee_ids": ("employee_ids", (13421, 13422)),
    "file_link": ("file_link", "https://app.uiscom.ru/system/media/talk/998677427/abc/"),
}
ABSENT_VALUE = {attr: () if attr == "employee_ids" else None for attr, _ in EXPECTED.values()}


def json_body(event: str) -> dict[str, Any]:
    """The body UIS POSTs: the pasted template rendered with JSON literals."""
    return json.loads(catalogue.render(catalogue.template_body(event), VALUES))


def query_fields(event: str) -> dict[str, str]:
    """The same notification sent by GET: every value a string, arrays comma-separated."""
    fields = {"event": event}
    for name in catalogue.BY_EVENT[event].variables:
        value = VALUES[name]
        fields[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return fields


def fields(event: str = "waiting_answer", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"event": event, "call_session_id": 998677427}
    data.update(overrides)
    return data


def expected_attributes(event: str) -> dict[str, Any]:
    attrs = dict(ABSENT_VALUE)
    for name in catalogue.BY_EVENT[event].variables:
        if name in EXPECTED:
            attr, value = EXPECTED[name]
            attrs[attr] = value
    if event == "outgoing_call":
        attrs["direction"] = "out"
    return attrs


@pytest.mark.parametrize("transport", [json_body, query_fields], ids=["json", "get"])
@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_every_event_parses_with_its_template_variables(event: str, transport: Any) -> None:
    notification = notifications.parse(transport(event), MOSCOW)

    assert notification.event == event
    assert notification.session_id == 998677427
    expected = expected_attributes(event)
    assert notification.at == pytest.approx(expected.pop("at"), abs=1e-6)
    assert {attr: getattr(notification, attr) for attr in expected} == expected


def test_parse_covers_every_event_in_the_catalogue() -> None:
    # The table above is the whole catalogue: a new event must come with its own parse case.
    assert set(catalogue.EVENTS) == {
        "incoming_call", "waiting_answer", "talk_started", "talk_finished",
        "call_finished", "lost_call", "outgoing_call", "call_recorded",
    }


INT_FIELDS = [
    ("employee_id", "employee_id"),
    ("leg_id", "leg_id"),
    ("talk_time_duration", "talk_seconds"),
    ("total_time_duration", "total_seconds"),
    ("wait_time_duration", "wait_seconds"),
    ("last_talked_employee_id", "last_talked_employee_id"),
]


@pytest.mark.parametrize(
    "raw", [42, "42", " 42 ", 42.0], ids=["json-int", "get-digits", "padded", "float"]
)
@pytest.mark.parametrize(("name", "attr"), INT_FIELDS)
def test_integers_come_as_json_ints_or_digit_strings(name: str, attr: str, raw: Any) -> None:
    notification = notifications.parse(fields(**{name: raw}), MOSCOW)
    value = getattr(notification, attr)
    assert value == 42 and type(value) is int


@pytest.mark.parametrize("raw", [998677427, "998677427"], ids=["json-int", "get-digits"])
def test_session_id_comes_as_int_or_digit_string(raw: Any) -> None:
    assert notifications.parse(fields(call_session_id=raw), MOSCOW).session_id == 998677427


@pytest.mark.parametrize("raw", [0, 2**63 - 1, str(2**63 - 1)], ids=["zero", "max", "max-text"])
def test_session_id_accepts_the_whole_int64_range(raw: Any) -> None:
    assert notifications.parse(fields(call_session_id=raw), MOSCOW).session_id == int(raw)


ABSENT_FORMS = [
    pytest.param(None, id="null"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("null", id="null-text"),
    pytest.param("NULL", id="null-upper"),
    pytest.param("UNREPLACED", id="unreplaced"),
    pytest.param("UNREPLACED-SPACED", id="unreplaced-spaced"),
]


def absent(form: Any, name: str) -> Any:
    if form == "UNREPLACED":
        return "{{" + name + "}}"
    if form == "UNREPLACED-SPACED":
        return "{{ " + name + " }}"
    return form


@pytest.mark.parametrize("form", ABSENT_FORMS)
@pytest.mark.parametrize(("name", "attr"), [(v, a) for v, (a, _) in EXPECTED.items()])
def test_absent_value_in_any_form_reads_as_absent(name: str, attr: str, form: Any) -> None:
    notification = notifications.parse(fields(**{name: absent(form, name)}), MOSCOW)
    assert getattr(notification, attr) == ABSENT_VALUE[attr]


@pytest.mark.parametrize("form", ABSENT_FORMS)
def test_absent_session_id_is_rejected(form: Any) -> None:
    with pytest.raises(RejectedNotification) as info:
        notifications.parse(fields(call_session_id=absent(form, "call_session_id")), MOSCOW)
    assert info.value.field == "call_session_id"


def test_a_missing_variable_reads_as_absent() -> None:
    notification = notifications.parse({"event": "call_finished", "call_session_id": 1}, MOSCOW)
    assert {attr: getattr(notification, attr) for attr in ABSENT_VALUE} == ABSENT_VALUE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param([13421, 13422], (13421, 13422), id="json-array"),
        pytest.param(["13421", "13422"], (13421, 13422), id="json-array-of-text"),
        pytest.param("[13421,13422]", (13421, 13422), id="json-text"),
        pytest.param("[13421, 13422]", (13421, 13422), id="json-text-spaced"),
        pytest.param("13421,13422", (13421, 13422), id="comma-list"),
        pytest.param("13421, 13422", (13421, 13422), id="comma-list-spaced"),
        pytest.param("13421", (13421,), id="one-as-text"),
        pytest.param(13421, (13421,), id="one-as-int"),
        pytest.param([], (), id="empty-array"),
        pytest.param("[]", (), id="empty-json-text"),
        pytest.param(None, (), id="null"),
        pytest.param("null", (), id="null-text"),
        pytest.param("{{employee_ids}}", (), id="unreplaced"),
    ],
)
def test_employee_ids_forms(raw: Any, expected: tuple[int, ...]) -> None:
    notification = notifications.parse(fields("lost_call", employee_ids=raw), MOSCOW)
    assert notification.employee_ids == expected


@pytest.mark.parametrize(
    ("event", "raw", "expected"),
    [
        ("waiting_answer", "in", "in"),
        ("waiting_answer", "out", "out"),
        ("waiting_answer", "IN", "in"),
        ("waiting_answer", "Out", "out"),
        ("waiting_answer", "incoming", "in"),
        ("waiting_answer", "inbound", "in"),
        ("waiting_answer", "outgoing", "out"),
        ("waiting_answer", "outbound", "out"),
        ("waiting_answer", "internal", None),
        ("waiting_answer", "transit", None),
        ("waiting_answer", None, None),
        ("waiting_answer", "{{direction}}", None),
        ("call_finished", "outbound", "out"),
        ("outgoing_call", None, "out"),
        ("outgoing_call", "in", "out"),
        ("outgoing_call", "internal", "out"),
    ],
)
def test_direction_is_normalised(event: str, raw: str | None, expected: str | None) -> None:
    notification = notifications.parse(fields(event, direction=raw), MOSCOW)
    assert notification.direction == expected


@pytest.mark.parametrize(
    ("zone", "text", "utc"),
    [
        pytest.param("Europe/Moscow", "2019-12-16 14:40:47.234",
                     datetime(2019, 12, 16, 11, 40, 47, 234000, UTC), id="moscow-millis"),
        pytest.param("Europe/Moscow", "2019-12-16 14:40:47",
                     datetime(2019, 12, 16, 11, 40, 47, tzinfo=UTC), id="moscow-seconds"),
        pytest.param("Europe/Moscow", "2010-07-01 12:00:00",
                     datetime(2010, 7, 1, 8, 0, tzinfo=UTC), id="moscow-2010-summer-msd"),
        pytest.param("Europe/Moscow", "2010-12-01 12:00:00",
                     datetime(2010, 12, 1, 9, 0, tzinfo=UTC), id="moscow-2010-winter-msk"),
        pytest.param("Europe/Berlin", "2019-07-16 14:40:47.234",
                     datetime(2019, 7, 16, 12, 40, 47, 234000, UTC), id="berlin-summer-cest"),
        pytest.param("Europe/Berlin", "2019-12-16 14:40:47.234",
                     datetime(2019, 12, 16, 13, 40, 47, 234000, UTC), id="berlin-winter-cet"),
        pytest.param("Europe/Berlin", "2019-03-31 03:30:00",
                     datetime(2019, 3, 31, 1, 30, tzinfo=UTC), id="berlin-after-spring-forward"),
        pytest.param("Europe/Moscow", "2019-12-16T14:40:47+00:00",
                     datetime(2019, 12, 16, 14, 40, 47, tzinfo=UTC), id="explicit-offset-wins"),
    ],
)
def test_notification_time_is_read_in_the_account_zone(zone: str, text: str, utc: datetime) -> None:
    notification = notifications.parse(fields(notification_time=text), ZoneInfo(zone))
    assert notification.at == pytest.approx(utc.timestamp(), abs=1e-6)


TOO_LONG = "x" * 5000

REJECTIONS = [
    pytest.param({"event": None}, "event", id="event-null"),
    pytest.param({"event": ""}, "event", id="event-empty"),
    pytest.param({"event": 5}, "event", id="event-int"),
    pytest.param({"event": ["incoming_call"]}, "event", id="event-array"),
    pytest.param({"event": True}, "event", id="event-bool"),
    pytest.param({"event": "fax_received"}, "event", id="event-unknown"),
    pytest.param({"call_session_id": None}, "call_session_id", id="session-null"),
    pytest.param({"call_session_id": "abc"}, "call_session_id", id="session-text"),
    pytest.param({"call_session_id": "12abc"}, "call_session_id", id="session-digits-then-text"),
    pytest.param({"call_session_id": True}, "call_session_id", id="session-true"),
    pytest.param({"call_session_id": False}, "call_session_id", id="session-false"),
    pytest.param({"call_session_id": -1}, "call_session_id", id="session-negative"),
    pytest.param({"call_session_id": "-1"}, "call_session_id", id="session-negative-text"),
    pytest.param({"call_session_id": 2**63}, "call_session_id", id="session-2-63"),
    pytest.param({"call_session_id": 2**63 + 1}, "call_session_id", id="session-over-2-63"),
    pytest.param({"call_session_id": str(2**64)}, "call_session_id", id="session-over-text"),
    pytest.param({"call_session_id": 1.5}, "call_session_id", id="session-fraction"),
    pytest.param({"call_session_id": [1]}, "call_session_id", id="session-array"),
    pytest.param({"call_session_id": {"id": 1}}, "call_session_id", id="session-object"),
    pytest.param({"talk_time_duration": "x"}, "talk_time_duration", id="talk-x"),
    pytest.param({"talk_time_duration": -5}, "talk_time_duration", id="talk-negative"),
    pytest.param({"employee_id": TOO_LONG}, "employee_id", id="employee-5000-chars"),
    pytest.param({"contact_full_name": TOO_LONG}, "contact_full_name", id="name-5000-chars"),
    pytest.param({"external_id": TOO_LONG}, "external_id", id="external-5000-chars"),
    pytest.param({"contact_phone_number": "7" * 65}, "contact_phone_number", id="phone-too-long"),
    pytest.param({"contact_full_name": {"a": 1}}, "contact_full_name", id="name-object"),
    pytest.param({"contact_full_name": True}, "contact_full_name", id="name-bool"),
    pytest.param({"notification_time": "yesterday"}, "notification_time", id="time-word"),
    pytest.param({"notification_time": "2019-13-45 00:00:00"}, "notification_time", id="time-13th"),
    pytest.param({"notification_time": "16.12.2019 14:40"}, "notification_time", id="time-dmy"),
    pytest.param({"notification_time": TOO_LONG}, "notification_time", id="time-5000-chars"),
    pytest.param({"employee_ids": "[1,"}, "employee_ids", id="ids-broken-json"),
    pytest.param({"employee_ids": '[1,"x"]'}, "employee_ids", id="ids-text-item"),
    pytest.param({"employee_ids": "1,x"}, "employee_ids", id="ids-comma-text"),
    pytest.param({"employee_ids": {"a": 1}}, "employee_ids", id="ids-object"),
    pytest.param({"employee_ids": [True]}, "employee_ids", id="ids-bool-item"),
    pytest.param({"employee_ids": list(range(1001))}, "employee_ids", id="ids-over-1000"),
]


@pytest.mark.parametrize(("overrides", "field"), REJECTIONS)
def test_bad_field_is_rejected_and_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(RejectedNotification) as info:
        notifications.parse(fields(**overrides), MOSCOW)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_missing_event_is_rejected() -> None:
    with pytest.raises(RejectedNotification) as info:
        notifications.parse({"call_session_id": 1}, MOSCOW)
    assert info.value.field == "event"


def test_missing_session_id_is_rejected() -> None:
    with pytest.raises(RejectedNotification) as info:
        notifications.parse({"event": "incoming_call"}, MOSCOW)
    assert info.value.field == "call_session_id"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"call_session_id": "1" * 5000}, id="session-5000-digits"),
        pytest.param({"talk_time_duration": "9" * 5000}, id="talk-5000-digits"),
        pytest.param({"employee_ids": "9" * 5000}, id="ids-5000-digits"),
        pytest.param({"call_session_id": "²"}, id="session-superscript-two"),
        pytest.param({"call_session_id": "--5"}, id="session-double-minus"),
    ],
)
def test_integer_text_int_refuses_is_rejected_not_crashing(overrides: dict[str, Any]) -> None:
    field = next(iter(overrides))
    with pytest.raises(RejectedNotification) as info:
        notifications.parse(fields(**overrides), MOSCOW)
    assert info.value.field == field


@pytest.mark.parametrize("event", catalogue.EVENTS)
def test_event_name_and_is_known_event_for_the_catalogue(event: str) -> None:
    assert notifications.event_name({"event": event}) == event
    assert notifications.is_known_event(event)


@pytest.mark.parametrize("name", ["fax_received", "", "Incoming_Call", "incoming_call ", "event"])
def test_other_names_are_not_known_events(name: str) -> None:
    assert not notifications.is_known_event(name)


def test_event_name_returns_an_unknown_name_for_the_caller_to_ignore() -> None:
    # Unknown events are answered 200 and ignored, so event_name itself must not refuse them.
    assert notifications.event_name({"event": "fax_received"}) == "fax_received"


@pytest.mark.parametrize(
    "data",
    [{}, {"event": None}, {"event": ""}, {"event": "null"}, {"event": "{{event}}"}, {"event": 7}],
    ids=["missing", "null", "empty", "null-text", "unreplaced", "int"],
)
def test_event_name_refuses_missing_or_non_string(data: dict[str, Any]) -> None:
    with pytest.raises(RejectedNotification) as info:
        notifications.event_name(data)
    assert info.value.field == "event"


SAMPLE = json_body("call_finished")


def test_dedupe_key_ignores_key_order() -> None:
    reordered = dict(reversed(list(SAMPLE.items())))
    assert list(reordered) != list(SAMPLE)
    assert notifications.dedupe_key(reordered) == notifications.dedupe_key(SAMPLE)
    assert (notifications.dedupe_key(json.loads(json.dumps(SAMPLE)))
            == notifications.dedupe_key(SAMPLE))


def changed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return "changed"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "1"
    return [*value, 1]


@pytest.mark.parametrize("key", list(SAMPLE))
def test_dedupe_key_differs_when_any_value_differs(key: str) -> None:
    other = {**SAMPLE, key: changed(SAMPLE[key])}
    assert notifications.dedupe_key(other) != notifications.dedupe_key(SAMPLE)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": 1}, {"x": "1"}),
        ({"x": 1}, {"x": 1.5}),
        ({"x": None}, {}),
        ({"x": True}, {"x": 1}),
        ({"x": "a"}, {"x": "a", "y": "a"}),
        ({"x": "Иван"}, {"x": "Иванн"}),
    ],
    ids=["int-vs-text", "int-vs-float", "null-vs-missing", "bool-vs-int", "extra-key", "unicode"],
)
def test_dedupe_key_tells_apart_near_misses(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert notifications.dedupe_key(a) != notifications.dedupe_key(b)


def test_parsed_notification_carries_the_dedupe_key_of_its_fields() -> None:
    notification = notifications.parse(SAMPLE, MOSCOW)
    assert notification.dedupe_key == notifications.dedupe_key(SAMPLE)
    assert len(notification.dedupe_key) == 64
