"""Notifications synthesised from Data API ``get.calls_report`` rows (no I/O).

When UIS's own notifications went missing, its report still says what happened. These functions
turn a report row into the notification dicts UIS would have sent, so that they go through the
one write path (``ingest``) and fire the same actions as real ones.

Every value comes from the row's settled fields (never from volatile ones such as
``call_records``) plus a fixed ``tracker_source`` marker, so the same finished session always
gives the same dicts and therefore the same dedupe keys: a second sweep or backfill of one
session is journaled as a duplicate, never acted on twice. The marker also shows on the call's
timeline where an event came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

# What the sweeper and reconciliation ask ``get.calls_report`` for.
REPORT_FIELDS = [
    "id", "start_time", "finish_time", "direction", "is_lost", "contact_phone_number",
    "virtual_phone_number", "wait_duration", "talk_duration", "total_duration", "employees",
    "last_talked_employee_id", "call_api_external_id",
]
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def is_finished(row: Mapping[str, Any]) -> bool:
    """The session is over (``include_ongoing_calls`` rows of live calls have no finish)."""
    return bool(row.get("finish_time"))


def is_lost(row: Mapping[str, Any]) -> bool:
    """Nobody talked: the report's ``is_lost``, or no talk time when that flag is absent."""
    flag = row.get("is_lost")
    if isinstance(flag, bool):
        return flag
    return not row.get("talk_duration")


def report_time(row: Mapping[str, Any], name: str) -> datetime | None:
    """A report time (account-local, naive) or None when absent or unreadable."""
    text = row.get(name)
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text.strip()[:19], TIME_FORMAT)
    except ValueError:
        return None


def _employee_ids(row: Mapping[str, Any]) -> list[int]:
    ids = []
    for employee in row.get("employees") or []:
        if isinstance(employee, Mapping) and isinstance(employee.get("employee_id"), int):
            ids.append(employee["employee_id"])
    return ids


def _common(row: Mapping[str, Any], event: str, at: Any, source: str) -> dict[str, Any]:
    direction = row.get("direction")
    fields = {
        "event": event,
        "call_session_id": row.get("id"),
        "notification_time": at,
        "direction": direction if direction in ("in", "out") else None,
        "contact_phone_number": row.get("contact_phone_number"),
        "virtual_phone_number": row.get("virtual_phone_number"),
        "external_id": row.get("call_api_external_id"),
        "tracker_source": source,
    }
    return fields


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def opening(row: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The first notification of a session tracker never heard of: ``incoming_call``, or
    ``outgoing_call`` (with the employee who called) for an outbound one. No card follows:
    only ``waiting_answer`` opens cards, and none is synthesised."""
    if row.get("direction") == "out":
        fields = _common(row, "outgoing_call", row.get("start_time"), source)
        ids = _employee_ids(row)
        fields["employee_id"] = ids[0] if ids else None
    else:
        fields = _common(row, "incoming_call", row.get("start_time"), source)
    return _clean(fields)


def ending(row: Mapping[str, Any], *, state: str, source: str) -> dict[str, Any]:
    """The missing end of a finished session, as UIS would have sent it.

    Lost → ``lost_call`` with every employee it rang (the last one is credited in the upload);
    answered → ``call_finished`` with talk/wait/total times and the employee who talked last.
    A session tracker saw talking ends with ``call_finished`` even if the report calls it lost:
    ``lost_call`` is ignored while talking, and the talk tracker saw did happen.
    """
    if is_lost(row) and state != "talking":
        fields = _common(row, "lost_call", row.get("finish_time"), source)
        fields["employee_ids"] = _employee_ids(row) or None
        fields["wait_time_duration"] = row.get("wait_duration")
        fields["total_time_duration"] = row.get("total_duration")
        return _clean(fields)
    fields = _common(row, "call_finished", row.get("finish_time"), source)
    talked = row.get("last_talked_employee_id")
    fields["employee_id"] = talked
    fields["last_talked_employee_id"] = talked
    fields["talk_time_duration"] = row.get("talk_duration") or 0
    fields["wait_time_duration"] = row.get("wait_duration")
    fields["total_time_duration"] = row.get("total_duration")
    return _clean(fields)


def session(row: Mapping[str, Any], *, source: str) -> list[dict[str, Any]]:
    """The minimal sequence for a finished session tracker never heard of: its opening and its
    end. The upload then has the phone, virtual number, direction, employees, durations and
    ``date`` = the report's ``start_time``."""
    return [opening(row, source=source), ending(row, state="ringing", source=source)]


def unknown_end(session_id: int, at: str, reason: str, *, source: str) -> dict[str, Any]:
    """A ``call_finished`` that closes a session UIS does not know, keeping what tracker saw:
    without a talk it ends ``lost`` (cards closed, uploaded as missed); a talk tracker saw ends
    it ``ended``. ``at`` is the last activity tracker saw; ``reason`` goes on the timeline."""
    return {"event": "call_finished", "call_session_id": session_id, "notification_time": at,
            "tracker_source": source, "tracker_reason": reason}
