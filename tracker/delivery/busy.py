"""Outgoing calls: tell a busy customer from one who did not answer.

Outbound sessions (click-to-call included) run through the same statechart as inbound ones: the
``outgoing_call`` notification sets the direction, so the pop-up and the upload say ``out``. No
notification says *why* an outbound call was not answered; the Data API's ``finish_reason`` of
the session does. ``get.calls_report`` documents its values; the one meaning the customer was
busy is ``subscriber_busy`` ("Абонент занят"), the default of ``click.busy_finish_reasons``
(``none``: never ask; ``operator_busy`` and the like are the employee's side and stay
``no answer``). When it names one, the history item says
``busy`` instead of ``no answer``; when the lookup fails, the upload goes out as ``no answer``
rather than wait. The card's hangup status stays ``no answered`` (it is sent first, before the
session reaches the report).
"""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo

from tracker.clients.uis import UisClient
from tracker.core.payloads import uis_date, upload_view
from tracker.db.store import Store
from tracker.delivery import batching
from tracker.delivery.dispatcher import BatchHandler, Done, Later
from tracker.errors import DeliveryError

log = logging.getLogger(__name__)


def telling_busy(upload: BatchHandler, *, store: Store, uis: UisClient, tz: ZoneInfo,
                 reasons: frozenset[str]) -> BatchHandler:
    """``upload``, but an outbound call's ``no answer`` becomes ``busy`` when UIS's
    ``finish_reason`` is one of ``reasons`` (lower case)."""

    async def upload_telling_busy(row: dict[str, Any], payload: dict[str, Any],
                                  slot: batching.Slot | None) -> Done | Later:
        if payload.get("result") == "no answer":
            stored = store.call_row(row["call_id"])
            # the direction the upload will carry (fixed when the call became final)
            call = upload_view(stored, payload) if stored is not None else None
            if call is not None and call["direction"] == "out":
                reason = await finish_reason(uis, tz, call, row["created_at"])
                if reason is not None and reason.lower() in reasons:
                    payload = {**payload, "result": "busy"}
        return await upload(row, payload, slot)

    return upload_telling_busy


async def finish_reason(uis: UisClient, tz: ZoneInfo, call: dict[str, Any],
                        fallback_at: float) -> str | None:
    """``finish_reason`` of the session from ``get.calls_report``; None when unknown."""
    started = call["started_at"] or fallback_at
    finished = call["finished_at"] or fallback_at
    try:
        result = await uis.data("get.calls_report", {
            "date_from": uis_date(started - 3600, tz),
            "date_till": uis_date(finished + 3600, tz),
            "filter": {"field": "id", "operator": "=", "value": call["id"]},
            "fields": ["id", "finish_reason"],
        })
    except DeliveryError as exc:
        log.warning("call %s: finish_reason lookup failed, uploading as no answer: %s",
                    call["id"], exc)
        return None
    for item in result.get("data") or []:
        if isinstance(item, dict) and item.get("id") == call["id"]:
            reason = item.get("finish_reason")
            return reason if isinstance(reason, str) else None
    return None
