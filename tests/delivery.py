"""A stream of calls sent as UIS sends them, and the delivery contract checked against what the
retailCRM simulator received (shared by the crash and outage tests).

The delivery guarantee of the project's contract (the design notes the team keeps outside this
repository; README, "Reliability", says it for users), as asserted by :func:`check_contract`:

- Uploads: every call has exactly one record in retailCRM (``externalId`` = UIS session id),
  with the right result. A request re-sent after a crash or a lost answer is fine on the wire:
  retailCRM reports the repeat in ``duplicateCalls`` and stores nothing.
- Cards: per call and employee, the pop-up comes before the hangup that closes it, and every card
  retailCRM showed is closed; the call's upload comes after all its card events. A pop-up may be
  missing: it is dropped when the call ended before it could be shown. Card events have no id
  retailCRM could de-duplicate by, so a crash between retailCRM's answer and the daemon's commit
  can repeat one on the wire, as can an answer lost on the way back; such a repeat is identical
  to its first copy, comes right after it, and its first copy was one of the ``in_flight``
  requests retailCRM recorded around an :class:`Interruption`; otherwise never a repeat. A
  hangup names only cards that were shown, or whose pop-up's fate is unknown to tracker (sent,
  then the answer was lost to a kill or a timeout, then the call ended): ``doubtful`` lists
  those (session, code) pairs, read from tracker's own records. Closing a card that never
  opened is harmless; leaving one open is not.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from tests.support import ANNA, BORIS, MAPPING, VERA, start_time
from tracker.simulators import CrmSimulator, Scenario, UisSimulator, scenarios

CODES = {uis_id: code for uis_id, (_, code) in MAPPING.items()}


@dataclass
class Stream:
    """Calls played by a few concurrent senders until ``stop`` is set; every notification is
    retried until tracker answers 200, as UIS retries (connection refused, 5xx, timeouts)."""

    uis: UisSimulator
    webhook: str
    first_session: int
    seed: int = 5
    senders: int = 6
    gap_seconds: float = 0.05
    calls: dict[int, Scenario] = field(default_factory=dict)
    acknowledged: int = 0
    retries: int = 0
    in_progress: int = 0

    async def run(self, stop: trio.Event, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Play calls until ``stop``; returns once every started call is fully acknowledged."""
        rng = random.Random(self.seed)
        ids = iter(range(self.first_session, self.first_session + 1_000_000))
        async with httpx.AsyncClient(timeout=3) as client, trio.open_nursery() as nursery:
            task_status.started()
            for _ in range(self.senders):
                nursery.start_soon(self._sender, rng, ids, stop, client)

    async def burst(self, count: int, client: httpx.AsyncClient) -> None:
        """``count`` one-notification calls sent at once (each retried until acknowledged)."""
        rng = random.Random(self.seed + count)
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                session = self.first_session + 900_000 + len(self.calls)
                scenario = scenarios.lost_in_ivr(session, start=start_time(),
                                                 wait_seconds=rng.randint(2, 20))
                self._register(scenario)
                nursery.start_soon(self._play, scenario, client)

    async def _sender(self, rng: random.Random, ids: Iterable[int], stop: trio.Event,
                      client: httpx.AsyncClient) -> None:
        for session in ids:
            if stop.is_set():
                return
            scenario = scenarios.random_scenario(rng, session, [ANNA, BORIS, VERA],
                                                 start=start_time())
            self._register(scenario)
            await self._play(scenario, client)

    def _register(self, scenario: Scenario) -> None:
        self.calls[scenario.session_id] = scenario
        self.uis.register(scenario, finished=True)

    async def _play(self, scenario: Scenario, client: httpx.AsyncClient) -> None:
        self.in_progress += 1
        try:
            for notification in scenario.notifications:
                while True:
                    try:
                        response = await self.uis.send_notification(notification, self.webhook,
                                                                    client)
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        self.acknowledged += 1
                        break
                    assert response is None or response.status_code >= 500, response.text
                    self.retries += 1
                    await trio.sleep(0.05)
                await trio.sleep(self.gap_seconds)
        finally:
            self.in_progress -= 1


@dataclass(frozen=True)
class Interruption:
    """A moment answers could be lost (a kill, retailCRM stopped, held requests let go after the
    client gave up), as positions in the simulator's request log: ``before`` requests were
    recorded when it happened, ``after`` once things were running again."""

    before: int
    after: int


@dataclass
class Report:
    calls: int = 0
    card_events: int = 0
    repeats: int = 0
    popups_dropped: int = 0
    upload_resends: int = 0
    doubtful_hangups: int = 0
    problems: list[str] = field(default_factory=list)


def expected_result(scenario: Scenario) -> set[str]:
    if scenario.report.get("is_lost"):
        return {"no answer", "busy"} if scenario.direction == "out" else {"no answer"}
    return {"answered"}


def check_contract(crm: CrmSimulator, calls: dict[int, Scenario], *,
                   interruptions: list[Interruption] = (),
                   in_flight: int = 4, doubtful: set[tuple[int, str]] = frozenset()) -> Report:
    """Compare what retailCRM recorded with the contract above; ``problems`` lists breaches."""
    report = Report(calls=len(calls))
    problems = report.problems
    stored = Counter(str(c.get("externalId")) for c in crm.calls)
    events: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    uploads: dict[str, list[int]] = defaultdict(list)
    for index, r in enumerate(crm.requests):
        if r.status != 200:
            continue
        if r.endpoint == "telephony/call/event":
            events[str(r.data["event"].get("callExternalId"))].append((index, r.data["event"]))
        elif r.endpoint == "telephony/calls/upload":
            for item in r.data["calls"]:
                uploads[str(item.get("externalId"))].append(index)
    unknown = set(stored) - {str(s) for s in calls}
    if unknown:
        problems.append(f"records for calls never sent: {sorted(unknown)[:5]}")
    for session, scenario in calls.items():
        key = str(session)
        if stored[key] != 1:
            problems.append(f"{session}: {stored[key]} records in retailCRM, expected 1")
            continue
        report.upload_resends += len(uploads[key]) - 1
        item = crm.uploaded[key]
        if item.get("result") not in expected_result(scenario):
            problems.append(f"{session}: uploaded as {item.get('result')!r} "
                            f"({scenario.name})")
        first_upload = uploads[key][0]
        seen: list[tuple[int, dict[str, Any]]] = []
        opened: list[str] = []
        closed: set[str] = set()
        for index, event in events.get(key, []):
            report.card_events += 1
            if index > first_upload:
                problems.append(f"{session}: a card event after the call's upload")
            if seen and seen[-1][1] == event:
                report.repeats += 1
                if not any(i.before - in_flight <= seen[-1][0] < i.after for i in interruptions):
                    problems.append(f"{session}: {event['type']} {event['codes']} repeated "
                                    "though no answer was lost")
                continue
            if any(e == event for _, e in seen):
                problems.append(f"{session}: {event['type']} {event['codes']} sent twice, "
                                "not in a row")
            seen.append((index, event))
            if event["type"] == "hangup":
                for code in event["codes"]:
                    if code in closed or (code not in opened and (session, code) not in doubtful):
                        problems.append(f"{session}: hangup for {code} whose card was not open")
                    if code not in opened:
                        report.doubtful_hangups += 1
                    closed.add(code)
            else:
                if event["codes"][0] in opened:
                    problems.append(f"{session}: a second pop-up for {event['codes']}")
                opened.extend(event["codes"])
        if set(opened) - closed:
            problems.append(f"{session}: cards left open: {sorted(set(opened) - closed)}")
        rang = [CODES[n.values["employee_id"]] for n in scenario.notifications
                if n.event == "waiting_answer" and n.values.get("employee_id") in CODES]
        report.popups_dropped += len(set(rang)) - len(set(opened))
        order = [c for c in dict.fromkeys(rang) if c in opened]
        if order != list(dict.fromkeys(opened)):
            problems.append(f"{session}: pop-ups in the order {opened}, rung {rang}")
    return report


def doubtful_popups(conn: Any) -> set[tuple[int, str]]:
    """(session, code) of pop-ups tracker dropped not knowing whether retailCRM had shown them."""
    rows = conn.execute("SELECT call_id, payload FROM outbox WHERE kind = 'popup' AND status ="
                        " 'dropped' AND last_error LIKE '%may have shown%'").fetchall()
    return {(int(call_id), CODES[json.loads(payload)["employee_id"]]) for call_id, payload in rows}
