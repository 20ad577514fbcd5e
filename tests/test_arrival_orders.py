"""Every arrival order of a call's notifications gives the same upload (issue 13, defect 1).

UIS sends each notification on its own, so they may arrive in any order. The session totals of
``call_finished`` are authoritative; whatever arrives after the call became final may enrich the
stored call but never changes what is uploaded. Each order is fed through the real write path
(``intake.ingest``) into a real SQLite file and the upload is built from the outbox row, the way
the dispatcher builds it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.support import settings_for
from tracker.core import payloads, statecharts
from tracker.core.calls import Call
from tracker.core.catalogue import EVENTS
from tracker.db.store import Store
from tracker.intake.ingest import ingest

CHART = statecharts.load_all(statecharts.DEFAULT_DIR, Call, EVENTS)["call"]
TZ = ZoneInfo("Europe/Moscow")
A, B, C = 101, 102, 103


def _at(seconds: float) -> str:
    whole = int(seconds)
    return f"2026-03-02 10:{whole // 60:02d}:{whole % 60:02d}.{int(seconds * 1000) % 1000:03d}"


def _answered(session: int) -> list[dict[str, Any]]:
    """A 40-second talk with B: start 0 s, answer 10 s, hang up 50 s."""
    common = {"call_session_id": session, "contact_phone_number": "79508418541",
              "virtual_phone_number": "74950000000"}
    return [
        {"event": "incoming_call", "notification_time": _at(0), **common},
        {"event": "waiting_answer", "notification_time": _at(2), "direction": "in",
         "employee_id": B, **common},
        {"event": "talk_started", "notification_time": _at(10), "direction": "in",
         "employee_id": B, **common},
        {"event": "talk_finished", "notification_time": _at(50), "employee_id": B,
         "talk_time_duration": 40, "call_session_id": session},
        {"event": "call_finished", "notification_time": _at(50.3), "direction": "in",
         "employee_id": B, "last_talked_employee_id": B, "talk_time_duration": 40,
         "total_time_duration": 50, "wait_time_duration": 10, **common},
    ]


def _ring_group(session: int) -> list[dict[str, Any]]:
    """The same call rung to A, B and C at once; B answers."""
    first, waiting, *rest = _answered(session)
    legs = [{**waiting, "employee_id": e, "leg_id": session * 10 + i}
            for i, e in enumerate((A, B, C))]
    return [first, *legs, *rest]


def _upload(store: Store, settings: Any, session: int) -> dict[str, Any]:
    [row] = [r for r in store.outbox_for(session) if r["kind"] == "upload"]
    payload = json.loads(row["payload"])
    call = payloads.upload_view(store.call_row(session) or {}, payload)
    employee = next((e for e in settings.employees if e.uis_id == call["upload_employee_id"]),
                    None)
    item = payloads.upload_item(call, payload["result"], employee, settings, record_url=None,
                                now=0.0)
    assert item.pop("externalId") == str(session)
    return item


def _every_order(store: Store, tmp_path: Path, build: Any) -> None:
    settings = settings_for(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    seen: dict[str, list[tuple[str, ...]]] = {}
    count = len(build(0))
    for number, order in enumerate(itertools.permutations(range(count))):
        session = 1000 + number
        notes = build(session)
        names = tuple(f"{notes[i]['event']}:{notes[i].get('employee_id', '')}" for i in order)
        queued = False
        for index in order:
            ingest(store, CHART, TZ, notes[index], now=1.0)
            if not queued and store.outbox_for(session):
                # The dispatcher may deliver the upload right now, before the rest arrives:
                # what it would send then must be what it would send after everything.
                queued = any(r["kind"] == "upload" for r in store.outbox_for(session))
                if queued:
                    early = _upload(store, settings, session)
        late = _upload(store, settings, session)
        assert early == late, names
        seen.setdefault(json.dumps(late, sort_keys=True), []).append(names)
        stored = store.call_row(session)
        assert stored is not None and stored["talk_seconds"] == 40, names
    assert len(seen) == 1, "uploads differ by arrival order:\n" + "\n".join(
        f"{upload}\n  first seen in order {orders[0]}" for upload, orders in seen.items())
    [upload] = [json.loads(text) for text in seen]
    assert upload == {
        "phone": "+79508418541", "externalPhone": "+74950000000", "date": "2026-03-02 10:00:00",
        "type": "in", "result": "answered", "code": "102", "userId": 2, "duration": 40,
        "durationWaiting": 10,
    }


def test_every_order_of_an_answered_calls_five_notifications_uploads_the_same(store, tmp_path):
    _every_order(store, tmp_path, _answered)


def test_every_order_of_a_ring_group_call_uploads_the_same(store, tmp_path):
    _every_order(store, tmp_path, _ring_group)


def test_a_talk_finished_after_the_finish_does_not_double_the_talk(store, tmp_path):
    """The order from the issue: the upload said 80 seconds for a 40-second talk."""
    settings = settings_for(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    notes = _answered(77)
    for index in (0, 1, 4, 2, 3):
        ingest(store, CHART, TZ, notes[index], now=1.0)
    assert _upload(store, settings, 77)["duration"] == 40
