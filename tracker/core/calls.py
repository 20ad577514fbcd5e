"""The call model and ``apply``: one notification through the statechart, no I/O.

The statechart's callbacks are methods of ``Call``. They only update the call's own fields and
record the actions to deliver as ``commands``; the outbox delivers them after the transaction
that stored them commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transitions import EventData

from tracker.core.commands import Command, Hangup, Popup, Upload
from tracker.core.notifications import Notification
from tracker.core.statecharts import Chart

# The chart's final states (statecharts/call.json marks them; a test pins the two together).
FINAL_STATES = ("ended", "lost")


@dataclass(eq=False)  # eq=False: transitions' add_model compares models by equality
class Call:
    """One UIS call session as stored in the ``calls`` table."""

    id: int
    state: str = "ringing"
    direction: str = "in"
    contact_phone: str | None = None
    contact_name: str | None = None
    virtual_phone: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    talked: bool = False
    talk_seconds: int | None = None
    wait_seconds: int | None = None
    total_seconds: int | None = None
    rang: list[int] = field(default_factory=list)
    carded: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    talked_employee_id: int | None = None
    external_id: str | None = None
    file_link: str | None = None
    commands: list[Command] = field(default_factory=list)

    # -- conditions ---------------------------------------------------------------------------

    def has_talked(self, event: EventData) -> bool:
        n: Notification = event.kwargs["notification"]
        return self.talked or (n.talk_seconds or 0) > 0

    # -- callbacks: enrich the record ---------------------------------------------------------

    def record(self, event: EventData) -> None:
        """Keep what the notification adds; never overwrite a known value with an absent one."""
        n: Notification = event.kwargs["notification"]
        if n.direction:
            self.direction = n.direction
        self.contact_phone = n.contact_phone or self.contact_phone
        self.contact_name = n.contact_name or self.contact_name
        self.virtual_phone = n.virtual_phone or self.virtual_phone
        self.external_id = n.external_id or self.external_id
        self.file_link = n.file_link or self.file_link
        if n.at is not None and (self.started_at is None or n.at < self.started_at):
            self.started_at = n.at
        if n.event == "waiting_answer" and n.employee_id is not None:
            if n.employee_id in self.rang:
                self.rang.remove(n.employee_id)
            self.rang.append(n.employee_id)
        for employee_id in n.employee_ids:
            if employee_id not in self.rang:
                self.rang.append(employee_id)
        if n.event == "call_finished":
            self.talk_seconds = n.talk_seconds if n.talk_seconds is not None else self.talk_seconds
            self.total_seconds = n.total_seconds or self.total_seconds
            self.wait_seconds = n.wait_seconds if n.wait_seconds is not None else self.wait_seconds
            if n.last_talked_employee_id is not None:
                self.talked_employee_id = n.last_talked_employee_id
            if n.at is not None:
                self.finished_at = n.at
        elif n.event == "lost_call":
            self.wait_seconds = n.wait_seconds if n.wait_seconds is not None else self.wait_seconds
            self.total_seconds = n.total_seconds or self.total_seconds
        elif (n.event == "talk_finished" and n.talk_seconds is not None
              and self.state not in FINAL_STATES):
            # Talks of one session add up until call_finished gives the session's own total
            # (every call_finished leaves the call final); after that (it may arrive first: UIS
            # sends each notification on its own) a talk_finished changes nothing, or the talk
            # would count twice.
            self.talk_seconds = (self.talk_seconds or 0) + n.talk_seconds

    def note_talk(self, event: EventData) -> None:
        """A talk began (or ended, if its start was lost): credit the employee on the line."""
        n: Notification = event.kwargs["notification"]
        self.talked = True
        if n.event == "talk_started" and n.employee_id is not None:
            self.talked_employee_id = n.employee_id
        elif self.talked_employee_id is None and n.employee_id is not None:
            self.talked_employee_id = n.employee_id

    # -- callbacks: actions -------------------------------------------------------------------

    def open_card(self, event: EventData) -> None:
        n: Notification = event.kwargs["notification"]
        if n.employee_id is None or n.employee_id in self.carded:
            return
        self.carded.append(n.employee_id)
        self.commands.append(Popup(employee_id=n.employee_id))

    def close_other_cards(self, event: EventData) -> None:
        targets = [e for e in self.carded if e not in self.closed and e != self.talked_employee_id]
        self._close(targets, "answered")

    def close_all_cards(self, event: EventData) -> None:
        if event.transition is not None and event.transition.dest == "ended" or self.talked:
            status = "answered"
        else:
            status = "no answered"
        self._close([e for e in self.carded if e not in self.closed], status)

    def upload(self, event: EventData) -> None:
        n: Notification = event.kwargs["notification"]
        if self.finished_at is None:
            self.finished_at = n.at
        answered = event.transition is not None and event.transition.dest == "ended"
        if answered:
            self.talked = True
        result = "answered" if answered else "no answer"
        self.commands.append(Upload(result=result, snapshot=self.upload_snapshot(n, result)))

    def upload_snapshot(self, n: Notification, result: str) -> dict[str, Any]:
        """What the upload carries, fixed at the final transition (see ``Upload.snapshot``).

        The start is the finish minus the session's total when call_finished says both: that
        does not depend on whether incoming_call arrived before or after it.
        """
        started_at = self.started_at
        if n.event == "call_finished" and n.at is not None and n.total_seconds is not None:
            started_at = n.at - n.total_seconds
        if result == "answered":
            employee_id = self.talked_employee_id
        else:
            employee_id = self.rang[-1] if self.rang else None  # the last employee it rang
        return {
            "employee_id": employee_id,
            "direction": self.direction,
            "contact_phone": self.contact_phone,
            "virtual_phone": self.virtual_phone,
            "started_at": started_at if started_at is not None else n.at,
            "finished_at": self.finished_at,
            "talk_seconds": self.talk_seconds,
            "wait_seconds": self.wait_seconds,
        }

    def _close(self, targets: list[int], status: str) -> None:
        if targets:
            self.closed.extend(targets)
            self.commands.append(Hangup(employee_ids=tuple(targets), status=status))


@dataclass(frozen=True)
class Applied:
    """What one notification did to a call."""

    state_before: str
    state_after: str
    commands: tuple[Command, ...]


def apply(chart: Chart, call: Call, notification: Notification) -> Applied:
    """Fire ``notification`` on ``call`` (mutated in place) and return what must be done."""
    before = call.state
    call.commands = []
    # Fire the chart's Event on the model directly: the same transitions, conditions and
    # callbacks as add_model/trigger/remove_model, without attaching some forty convenience
    # methods to the model on every event (that was a third of the ingest CPU). The machine
    # holds no reference to the call afterwards.
    chart.machine.events[notification.event].trigger(call, notification=notification)
    return Applied(state_before=before, state_after=call.state, commands=tuple(call.commands))
