"""Scripted UIS calls: the notifications UIS would send and the reports its Data API would give.

Sans-I/O: builders take plain values and return a :class:`Scenario`; the UIS simulator plays and
reports them. Times are account-local wall-clock times (``start`` is read as such, any tzinfo is
ignored). Every id is derived from ``session_id``, so the same arguments give the same scenario:

- leg ids are ``session_id * 100 + k`` (k = 1, 2, ...), one leg per employee dialled;
- record ids are ``str(session_id * 100 + 50 + k)`` for the leg k that talked;
- ``communication_id`` equals ``session_id``, as UIS does for calls.

Only employee legs are modelled; the contact's own leg is left out of ``legs`` and ``leg_ids``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tracker.core.catalogue import BY_EVENT, render, template_body

Employee = tuple[int, str]
"""An employee as the builders need it: ``(employee_id, full_name)``."""

DEFAULT_MEDIA_URL = "https://app.uiscom.ru/system/media/talk"
DEFAULT_CONTACT = "79991234567"
DEFAULT_VIRTUAL = "74950000000"


@dataclass(frozen=True)
class Sent:
    """One webhook UIS sends: the event name and the value of every variable its template lists."""

    event: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Leg:
    """A ``get.call_legs_report`` row for one employee leg."""

    id: int
    call_session_id: int
    employee_id: int | None
    employee_full_name: str | None
    is_talked: bool
    duration: int
    call_records: list[str]
    start_time: str
    direction: str


@dataclass(frozen=True)
class Scenario:
    """A whole call session: its notifications in sending order, its report row and its legs."""

    name: str
    session_id: int
    direction: str
    contact_phone_number: str
    virtual_phone_number: str
    notifications: list[Sent]
    report: dict[str, Any]
    legs: list[Leg] = field(default_factory=list)

    @property
    def events(self) -> list[str]:
        """The event names in sending order (handy in assertions)."""
        return [n.event for n in self.notifications]


def notification_time(moment: datetime) -> str:
    """UIS ``notification_time``: ``2024-05-17 14:03:27.123``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def report_time(moment: datetime) -> str:
    """Data API time: ``2024-05-17 14:03:27``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def leg_id(session_id: int, k: int) -> int:
    """The id of the k-th employee leg (k from 1) of a session."""
    return session_id * 100 + k


def record_id(session_id: int, k: int) -> str:
    """The id of the record made on the k-th leg of a session."""
    return str(session_id * 100 + 50 + k)


def record_link(media_url: str, session_id: int, record: str) -> str:
    """The media URL of a record (``communication_id`` equals the session id for calls)."""
    return f"{media_url.rstrip('/')}/{session_id}/{record}/"


def render_notification(notification: Sent) -> bytes:
    """The POST body UIS sends: the event's template with every variable substituted."""
    return render(template_body(notification.event), notification.values).encode()


def query_values(notification: Sent) -> dict[str, str]:
    """The GET parameters of a notification: arrays and booleans as JSON, None left out."""
    out = {"event": notification.event}
    for name, value in notification.values.items():
        if value is not None:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class _Call:
    """Accumulates one session's notifications; each carries exactly its template's variables."""

    def __init__(self, session_id: int, start: datetime, direction: str, contact: str,
                 virtual: str, external_id: str | None) -> None:
        self.session_id = session_id
        self.start = start.replace(tzinfo=None)
        self.direction = direction
        self.contact = contact
        self.virtual = virtual
        self.external_id = external_id
        self.notifications: list[Sent] = []

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def _jitter(self) -> float:
        """A few deterministic milliseconds, as real stamps have; under 10 ms keeps the order."""
        return ((self.session_id * 31 + len(self.notifications) * 17) % 10) / 1000

    def add(self, event: str, seconds: float, **values: Any) -> None:
        common = {
            "call_session_id": self.session_id,
            "notification_time": notification_time(self.at(seconds + self._jitter())),
            "direction": self.direction,
            "virtual_phone_number": self.virtual,
            "contact_phone_number": self.contact,
            "external_id": self.external_id,
        }
        names = BY_EVENT[event].variables
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"{event} has no variables {sorted(unknown)}")
        merged = {name: values.get(name, common.get(name)) for name in names}
        self.notifications.append(Sent(event, merged))

    def scenario(self, name: str, *, wait: int, talk: int, total: int, legs: list[Leg],
                 rang: Sequence[Employee], last_talked: int | None) -> Scenario:
        talked_ids = {leg.employee_id for leg in legs if leg.is_talked}
        report = {
            "id": self.session_id,
            "start_time": report_time(self.start),
            "finish_time": report_time(self.at(total)),
            "direction": self.direction,
            "is_lost": talk == 0,
            "contact_phone_number": self.contact,
            "virtual_phone_number": self.virtual,
            "communication_id": self.session_id,
            "wait_duration": wait,
            "talk_duration": talk,
            "total_duration": total,
            "call_records": [r for leg in legs for r in leg.call_records],
            "employees": [
                {"employee_id": eid, "employee_full_name": ename,
                 "is_answered": eid in talked_ids, "is_talked": eid in talked_ids}
                for eid, ename in rang
            ],
            "last_talked_employee_id": last_talked,
            "call_api_external_id": self.external_id,
            # documented values only: the caller hung up, before or after a talk
            "finish_reason": "subscriber_disconnects",
        }
        return Scenario(name, self.session_id, self.direction, self.contact, self.virtual,
                        self.notifications, report, legs)

    def leg(self, k: int, employee: Employee, seconds: float, talk: int | None) -> Leg:
        """Leg k of ``employee``, dialled at ``seconds``; ``talk`` None means it never talked."""
        return Leg(
            id=leg_id(self.session_id, k),
            call_session_id=self.session_id,
            employee_id=employee[0],
            employee_full_name=employee[1],
            is_talked=talk is not None,
            duration=talk or 0,
            call_records=[record_id(self.session_id, k)] if talk is not None else [],
            start_time=report_time(self.at(seconds)),
            direction=self.direction,
        )

    def recorded(self, seconds: float, k: int, employee: Employee, talk: int,
                 media_url: str) -> None:
        link = record_link(media_url, self.session_id, record_id(self.session_id, k))
        self.add("call_recorded", seconds, employee_id=employee[0], file_link=link,
                 file_duration=talk)


def answered(session_id: int, *, start: datetime, employee: Employee,
             contact: str = DEFAULT_CONTACT, virtual: str = DEFAULT_VIRTUAL,
             wait_seconds: int = 7, talk_seconds: int = 95,
             media_url: str = DEFAULT_MEDIA_URL) -> Scenario:
    """An inbound call answered by ``employee``, recorded once."""
    return ring_group_answered(session_id, start=start, ringing=[], employee=employee,
                               contact=contact, virtual=virtual, wait_seconds=wait_seconds,
                               talk_seconds=talk_seconds, media_url=media_url, name="answered")


def ring_group_answered(session_id: int, *, start: datetime, ringing: Sequence[Employee],
                        employee: Employee, contact: str = DEFAULT_CONTACT,
                        virtual: str = DEFAULT_VIRTUAL, wait_seconds: int = 7,
                        talk_seconds: int = 95, media_url: str = DEFAULT_MEDIA_URL,
                        name: str = "ring_group_answered") -> Scenario:
    """An inbound call dialled to ``ringing`` and ``employee`` at once; ``employee`` answers."""
    call = _Call(session_id, start, "in", contact, virtual, None)
    wait, talk = wait_seconds, talk_seconds
    call.add("incoming_call", 0, contact_full_name=None)
    group = [*ringing, employee]
    for k, (eid, ename) in enumerate(group, start=1):
        call.add("waiting_answer", 1 + k / 100, employee_id=eid, employee_full_name=ename,
                 leg_id=leg_id(session_id, k))
    k_ans = len(group)
    legs = [call.leg(k, e, 1, None) for k, e in enumerate(ringing, start=1)]
    legs.append(call.leg(k_ans, employee, 1, talk))
    eid, ename = employee
    call.add("talk_started", wait, employee_id=eid, employee_full_name=ename,
             leg_ids=[leg_id(session_id, k_ans)])
    call.add("talk_finished", wait + talk, employee_id=eid, talk_time_duration=talk,
             leg_ids=[leg_id(session_id, k_ans)])
    call.add("call_finished", wait + talk + 0.05, employee_id=eid, employee_full_name=ename,
             talk_time_duration=talk, total_time_duration=wait + talk, wait_time_duration=wait,
             last_talked_employee_id=eid)
    call.recorded(wait + talk + 3, k_ans, employee, talk, media_url)
    return call.scenario(name, wait=wait, talk=talk, total=wait + talk, legs=legs, rang=group,
                         last_talked=eid)


def ring_group_lost(session_id: int, *, start: datetime, ringing: Sequence[Employee],
                    contact: str = DEFAULT_CONTACT, virtual: str = DEFAULT_VIRTUAL,
                    wait_seconds: int = 25) -> Scenario:
    """An inbound call dialled to every employee in ``ringing``; nobody answers."""
    call = _Call(session_id, start, "in", contact, virtual, None)
    wait = wait_seconds
    call.add("incoming_call", 0, contact_full_name=None)
    for k, (eid, ename) in enumerate(ringing, start=1):
        call.add("waiting_answer", 1 + k / 100, employee_id=eid, employee_full_name=ename,
                 leg_id=leg_id(session_id, k))
    legs = [call.leg(k, e, 1, None) for k, e in enumerate(ringing, start=1)]
    return _lost(call, "ring_group_lost", wait, [eid for eid, _ in ringing], legs, ringing)


def lost_in_ivr(session_id: int, *, start: datetime, contact: str = DEFAULT_CONTACT,
                virtual: str = DEFAULT_VIRTUAL, wait_seconds: int = 12) -> Scenario:
    """An inbound call whose caller hangs up in the voice menu, before any employee rings."""
    call = _Call(session_id, start, "in", contact, virtual, None)
    call.add("incoming_call", 0, contact_full_name=None)
    return _lost(call, "lost_in_ivr", wait_seconds, None, [], [])


def _lost(call: _Call, name: str, wait: int, employee_ids: list[int] | None, legs: list[Leg],
          rang: Sequence[Employee]) -> Scenario:
    call.add("lost_call", wait, employee_ids=employee_ids, wait_time_duration=wait)
    call.add("call_finished", wait + 0.05, employee_id=None, employee_full_name=None,
             talk_time_duration=0, total_time_duration=wait, wait_time_duration=wait,
             last_talked_employee_id=None)
    return call.scenario(name, wait=wait, talk=0, total=wait, legs=legs, rang=rang,
                         last_talked=None)


def transfer(session_id: int, *, start: datetime, first: Employee, second: Employee,
             contact: str = DEFAULT_CONTACT, virtual: str = DEFAULT_VIRTUAL,
             wait_seconds: int = 6, first_talk_seconds: int = 40, ring_seconds: int = 4,
             second_talk_seconds: int = 120, media_url: str = DEFAULT_MEDIA_URL) -> Scenario:
    """``first`` answers, then transfers (attended) to ``second``, who finishes the call."""
    call = _Call(session_id, start, "in", contact, virtual, None)
    wait, talk_a, ring, talk_b = wait_seconds, first_talk_seconds, ring_seconds, second_talk_seconds
    leg_a, leg_b = leg_id(session_id, 1), leg_id(session_id, 2)
    t_a, t_b = wait, wait + talk_a + ring
    a_duration, talk = talk_a + ring, talk_a + ring + talk_b
    call.add("incoming_call", 0, contact_full_name=None)
    call.add("waiting_answer", 1, employee_id=first[0], employee_full_name=first[1], leg_id=leg_a)
    call.add("talk_started", t_a, employee_id=first[0], employee_full_name=first[1],
             leg_ids=[leg_a])
    call.add("waiting_answer", t_a + talk_a, employee_id=second[0], employee_full_name=second[1],
             leg_id=leg_b)
    call.add("talk_started", t_b, employee_id=second[0], employee_full_name=second[1],
             leg_ids=[leg_b])
    call.add("talk_finished", t_b + 0.1, employee_id=first[0], talk_time_duration=a_duration,
             leg_ids=[leg_a])
    call.recorded(t_b + 1, 1, first, a_duration, media_url)
    call.add("talk_finished", t_b + talk_b, employee_id=second[0], talk_time_duration=talk_b,
             leg_ids=[leg_b])
    call.add("call_finished", t_b + talk_b + 0.05, employee_id=second[0],
             employee_full_name=second[1], talk_time_duration=talk,
             total_time_duration=wait + talk, wait_time_duration=wait,
             last_talked_employee_id=second[0])
    call.recorded(t_b + talk_b + 3, 2, second, talk_b, media_url)
    legs = [call.leg(1, first, 1, a_duration), call.leg(2, second, t_a + talk_a, talk_b)]
    return call.scenario("transfer", wait=wait, talk=talk, total=wait + talk, legs=legs,
                         rang=[first, second], last_talked=second[0])


def outbound(session_id: int, *, start: datetime, employee: Employee, answered: bool = True,
             external_id: str | None = None, contact: str = DEFAULT_CONTACT,
             virtual: str = DEFAULT_VIRTUAL, wait_seconds: int = 9, talk_seconds: int = 60,
             direction: str = "out", media_url: str = DEFAULT_MEDIA_URL) -> Scenario:
    """A click-to-call: ``employee`` is connected first, then the contact is dialled.

    ``direction`` is what UIS reports; it echoes ``start.employee_call``'s ``direction``, so a
    caller that forgets to pass ``"out"`` gets ``"in"`` here.
    """
    call = _Call(session_id, start, direction, contact, virtual, external_id)
    wait, talk = wait_seconds, talk_seconds if answered else 0
    eid, ename = employee
    call.add("outgoing_call", 0, employee_id=eid, employee_full_name=ename)
    call.add("waiting_answer", 0.2, employee_id=eid, employee_full_name=ename,
             leg_id=leg_id(session_id, 1))
    if answered:
        call.add("talk_started", wait, employee_id=eid, employee_full_name=ename,
                 leg_ids=[leg_id(session_id, 1)])
        call.add("talk_finished", wait + talk, employee_id=eid, talk_time_duration=talk,
                 leg_ids=[leg_id(session_id, 1)])
    call.add("call_finished", wait + talk + 0.05, employee_id=eid, employee_full_name=ename,
             talk_time_duration=talk, total_time_duration=wait + talk, wait_time_duration=wait,
             last_talked_employee_id=eid if answered else None)
    if answered:
        call.recorded(wait + talk + 3, 1, employee, talk, media_url)
    legs = [call.leg(1, employee, 0, talk if answered else None)]
    name = "outbound_answered" if answered else "outbound_not_answered"
    return call.scenario(name, wait=wait, talk=talk, total=wait + talk, legs=legs,
                         rang=[employee], last_talked=eid if answered else None)


def with_attribution(scenario: Scenario, **fields: str) -> Scenario:
    """The same scenario whose report row says where the call came from (``campaign_name``,
    ``utm_source`` … ``utm_content``, ``search_query``, ``ua_client_id``, ``ym_client_id``)."""
    scenario.report.update(fields)
    return scenario


KIND_WEIGHTS: dict[str, int] = {
    "answered": 35,
    "ring_group_answered": 15,
    "ring_group_lost": 10,
    "lost_in_ivr": 10,
    "transfer": 10,
    "outbound_answered": 14,
    "outbound_not_answered": 6,
}


def random_scenario(rng: random.Random, session_id: int, employees: Sequence[Employee], *,
                    start: datetime, virtual: str = DEFAULT_VIRTUAL,
                    media_url: str = DEFAULT_MEDIA_URL,
                    weights: dict[str, int] | None = None,
                    contact: str | None = None) -> Scenario:
    """A scenario of a kind drawn by ``weights`` (default :data:`KIND_WEIGHTS`), with random
    contact (or ``contact``), durations and employees; reproducible for a seeded ``rng``.
    Needs two employees at least for the ring group and transfer kinds (others are drawn
    otherwise)."""
    table = dict(weights or KIND_WEIGHTS)
    if len(employees) < 2:
        for kind in ("ring_group_answered", "ring_group_lost", "transfer"):
            table.pop(kind, None)
    if not employees:
        table = {"lost_in_ivr": 1}
    kind = rng.choices(list(table), weights=list(table.values()))[0]
    drawn = "79" + "".join(rng.choice("0123456789") for _ in range(9))
    contact = contact or drawn  # drawn either way: a seeded rng gives the same durations
    # Durations as a sales line has them: most talks last a minute or two, few pass ten.
    talk = min(900, max(5, round(rng.lognormvariate(4.1, 0.8))))
    wait = min(60, max(2, round(rng.lognormvariate(2.2, 0.6))))
    common: dict[str, Any] = {"start": start, "contact": contact, "virtual": virtual}
    if kind == "answered":
        return answered(session_id, employee=rng.choice(employees), wait_seconds=wait,
                        talk_seconds=talk, media_url=media_url, **common)
    if kind == "ring_group_answered":
        group = rng.sample(list(employees), k=rng.randint(2, min(4, len(employees))))
        return ring_group_answered(session_id, ringing=group[:-1], employee=group[-1],
                                   wait_seconds=wait, talk_seconds=talk, media_url=media_url,
                                   **common)
    if kind == "ring_group_lost":
        group = rng.sample(list(employees), k=rng.randint(2, min(4, len(employees))))
        return ring_group_lost(session_id, ringing=group, wait_seconds=wait + 15, **common)
    if kind == "lost_in_ivr":
        return lost_in_ivr(session_id, wait_seconds=wait, **common)
    if kind == "transfer":
        first, second = rng.sample(list(employees), k=2)
        return transfer(session_id, first=first, second=second, wait_seconds=wait,
                        first_talk_seconds=rng.randint(5, 120), second_talk_seconds=talk,
                        media_url=media_url, **common)
    return outbound(session_id, employee=rng.choice(employees),
                    answered=kind == "outbound_answered", wait_seconds=wait, talk_seconds=talk,
                    media_url=media_url, **common)


def offsets(scenario: Scenario) -> list[float]:
    """Each notification's moment, in seconds after the first one's ``notification_time``
    (what a player needs to send them when they would really happen)."""
    stamps = [datetime.strptime(n.values["notification_time"], "%Y-%m-%d %H:%M:%S.%f")
              for n in scenario.notifications]
    return [(s - stamps[0]).total_seconds() for s in stamps] if stamps else []
