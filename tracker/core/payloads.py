"""retailCRM payloads built from a stored call (no I/O): pop-up and hangup events, history items."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tracker.config import Employee, Settings
from tracker.core.crmwork import web_analytics
from tracker.core.phones import to_e164


def crm_date(timestamp: float, tz: ZoneInfo) -> str:
    """``Y-m-d H:i:s`` in the account's time zone, as retailCRM wants its dates."""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M:%S")


def uis_date(timestamp: float, tz: ZoneInfo) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in the account's time zone, as the UIS Data API wants its dates."""
    return crm_date(timestamp, tz)


def _common(call: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    region = settings.crm.phone_region
    item: dict[str, Any] = {"phone": to_e164(call["contact_phone"], region) or ""}
    external_phone = to_e164(call["virtual_phone"], region)
    if external_phone:
        item["externalPhone"] = external_phone
    if settings.crm.site:
        item["site"] = settings.crm.site
    return item


def call_event(
    call: Mapping[str, Any],
    employees: Sequence[Employee],
    settings: Settings,
    *,
    hangup_status: str | None = None,
) -> dict[str, Any]:
    """The ``event`` of ``telephony/call/event``: a card for ``employees``, or closing it."""
    event = _common(call, settings)
    event["type"] = "hangup" if hangup_status else (call["direction"] or "in")
    event["codes"] = [e.code for e in employees]
    event["userIds"] = [e.crm_user_id for e in employees]
    event["callExternalId"] = str(call["id"])
    if hangup_status:
        event["hangupStatus"] = hangup_status
    else:
        analytics = web_analytics(_attribution(call, settings))
        if analytics:
            event["webAnalyticsData"] = analytics
    return event


def upload_item(
    call: Mapping[str, Any],
    result: str,
    employee: Employee | None,
    settings: Settings,
    *,
    record_url: str | None,
    now: float,
) -> dict[str, Any]:
    """One item of ``telephony/calls/upload``; the UIS session id is its ``externalId``."""
    tz = ZoneInfo(settings.crm.timezone)
    item = _common(call, settings)
    item.update(
        {
            "date": crm_date(call["started_at"] or now, tz),
            "type": call["direction"] or "in",
            "result": result,
            "externalId": str(call["id"]),
        }
    )
    if employee is not None:
        item["code"] = employee.code
        item["userId"] = employee.crm_user_id
    if result == "answered":
        item["duration"] = int(call["talk_seconds"] or 0)
    if call["wait_seconds"] is not None:
        item["durationWaiting"] = int(call["wait_seconds"])
    if record_url:
        item["recordUrl"] = record_url
    attribution = _attribution(call, settings)
    if attribution.get("source"):
        item["source"] = dict(attribution["source"])
    if attribution.get("clientId"):
        item["clientId"] = attribution["clientId"]
    return item


def _attribution(call: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The call's stored attribution (``calls.attribution``), or {} when off or unknown."""
    raw = call.get("attribution")
    if not settings.attribution.enabled or not raw:
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


_SNAPSHOT_KEYS = ("direction", "contact_phone", "virtual_phone", "started_at", "finished_at",
                  "talk_seconds", "wait_seconds")


def upload_view(call: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
    """The call as its upload must describe it: the stored row overlaid with the snapshot the
    outbox row took when the call became final, plus ``upload_employee_id`` (whom to credit).

    Rows queued before snapshots existed fall back to the stored call, as they always did.
    """
    view = dict(call)
    snapshot = payload.get("snapshot")
    if isinstance(snapshot, Mapping):
        view.update({key: snapshot[key] for key in _SNAPSHOT_KEYS if key in snapshot})
        view["upload_employee_id"] = snapshot.get("employee_id")
    elif payload.get("result") == "answered":
        view["upload_employee_id"] = call.get("talked_employee_id")
    else:
        rang = json.loads(call.get("rang") or "[]")
        view["upload_employee_id"] = rang[-1] if rang else None  # the last employee it rang
    return view


def record_url(media_url: str, owner_id: int, record_id: str, *, report: str = "legs") -> str:
    """The playable link of a UIS recording, in the form the report it came from documents.

    ``get.call_legs_report``: ``{media_url}/{call_session_id}/{record}`` (the row's
    ``call_session_id``); ``get.calls_report``: ``{media_url}/{communication_id}/{record}/``
    (the row's ``communication_id``, with the trailing slash that page writes).
    """
    base = f"{media_url.rstrip('/')}/{owner_id}/{record_id}"
    if report == "legs":
        return base
    if report == "calls":
        return base + "/"
    raise ValueError(f"unknown report {report!r}")
