"""The retailCRM handlers of the outbox: the pop-up card, its hangup, the history upload.

A pop-up for a call that has ended meanwhile is dropped, and a hangup goes only to cards that
were really opened. An answered call's upload waits up to ``uis.record_wait_seconds`` for its
recording (``Later``), then goes without it. Uploads are ``Batched``: those due together share
one ``telephony/calls/upload`` request (``batching``). ``kinds()`` is this module's part of the
dispatcher's mapping; the composition root adds the others.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from zoneinfo import ZoneInfo

from tracker.clients.crm import CrmAnswer, CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.core import payloads
from tracker.core.calls import FINAL_STATES
from tracker.db.store import Store
from tracker.delivery import batching
from tracker.delivery.dispatcher import Batched, BatchHandler, Done, Handler, Later
from tracker.errors import DeliveryError, PermanentDelivery

log = logging.getLogger(__name__)

POPUP = "popup"
HANGUP = "hangup"
UPLOAD = "upload"


class RetailCrmHandlers:
    """Deliver a call's rows to retailCRM: ``popup``, ``hangup``, ``upload``."""

    def __init__(self, store: Store, settings: Settings, crm: CrmClient, uis: UisClient) -> None:
        self._store = store
        self._settings = settings
        self._crm = crm
        self._uis = uis
        self._tz = ZoneInfo(settings.crm.timezone)

    def kinds(self, upload: BatchHandler | None = None) -> dict[str, Handler | Batched]:
        """This module's entries of the dispatcher's mapping; ``upload`` replaces the plain
        upload handler (busy detection wraps it)."""
        return {
            POPUP: self.popup,
            HANGUP: self.hangup,
            UPLOAD: Batched(self.upload if upload is None else upload, self._crm.upload_calls),
        }

    async def popup(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        """Show the card to one employee, unless the call has ended meanwhile."""
        employee_id = payload["employee_id"]

        def card_opened() -> None:
            opened = self._store.cards_open(row["call_id"])
            if employee_id not in opened:
                self._store.set_cards_open(row["call_id"], [*opened, employee_id])

        call = self._store.call_row(row["call_id"])
        if call is None or call["state"] in FINAL_STATES:
            if row.get("sent_at") is not None:
                # An earlier attempt's answer never came back (a crash, a timeout): the card
                # may be showing. Count it as open, so that the call's hangup closes it.
                return Done("dropped", "the call ended; an earlier attempt may have shown the "
                            "card, so its hangup closes it", effects=card_opened)
            return Done("dropped", "the call ended before the card could be shown")
        employee = self._store.employee_by_uis_id(employee_id)
        if employee is None:
            self._warn_unmapped(employee_id)
            return Done("dropped", f"UIS employee {employee_id} is not mapped")
        event = payloads.call_event(call, [employee], self._settings)
        self._store.set_sent_at(row["id"], time.time())  # committed before the request leaves
        answer = await self._crm.send_call_event(event)
        self._note_mapping(answer)
        return Done.sent(answer, effects=card_opened)

    async def hangup(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        """Close the cards that were really opened."""
        opened = self._store.cards_open(row["call_id"])
        targets = [e for e in payload["employee_ids"] if e in opened]
        if not targets:
            return Done("dropped", "no card was open for these employees")
        employees = [e for e in map(self._store.employee_by_uis_id, targets) if e is not None]
        call = self._store.call_row(row["call_id"])
        assert call is not None
        event = payloads.call_event(call, employees, self._settings,
                                    hangup_status=payload["status"])
        answer = await self._crm.send_call_event(event)
        self._note_mapping(answer)

        def cards_closed() -> None:
            still_open = [e for e in self._store.cards_open(row["call_id"]) if e not in targets]
            self._store.set_cards_open(row["call_id"], still_open)

        return Done.sent(answer, effects=cards_closed)

    async def upload(self, row: dict[str, Any], payload: dict[str, Any],
                     slot: batching.Slot | None = None) -> Done | Later:
        """The call's history item (with its recording once UIS has it), in ``slot``'s batch
        request when it has one."""
        stored = self._store.call_row(row["call_id"])
        assert stored is not None
        # what the upload says was fixed when the call became final (payloads.upload_view)
        call = payloads.upload_view(stored, payload)
        result = payload["result"]
        note = ""
        url: str | None = None
        employee_id = call["upload_employee_id"]
        if result == "answered":
            waited = time.time() - row["created_at"]
            remaining = self._settings.uis.record_wait_seconds - waited
            try:
                recording = await self._uis.find_recording(
                    call["id"],
                    started_at=call["started_at"] or row["created_at"],
                    finished_at=call["finished_at"] or row["created_at"],
                    tz=self._tz,
                    prefer_employee_id=employee_id,
                )
                url = recording.url
                if employee_id is None and recording.talked_employee_ids:
                    employee_id = recording.talked_employee_ids[-1]
                problem = "the recording is not ready yet"
            except DeliveryError as exc:
                problem = f"recording lookup failed: {exc}"
                if isinstance(exc, PermanentDelivery):
                    remaining = 0  # retrying will not help; upload without the link now
            url = url or call["file_link"]
            if url is None and remaining > 0:
                delay = min(remaining, max(1.0, min(30.0, 2.0 ** row["attempts"])))
                return Later(delay, f"{problem}; asking again in {delay:.0f}s")
            if url is None:
                note = f"uploaded without a recording ({problem})"
                log.warning("call %s: %s", call["id"], note)
        else:
            rang = json.loads(call["rang"] or "[]")
            employee_id = rang[-1] if rang else None  # the last employee it rang
        employee = self._store.employee_by_uis_id(employee_id)
        if employee_id is not None and employee is None:
            self._warn_unmapped(employee_id)
        item = payloads.upload_item(call, result, employee, self._settings, record_url=url,
                                   now=row["created_at"])
        answer = await self._send_upload(item, slot)
        if str(call["id"]) in (answer.body.get("duplicateCalls") or []):
            note = (note + "; " if note else "") + "retailCRM already had it (duplicateCalls)"
        return Done.sent(answer, note, effects=lambda: self._store.set_record_url(call["id"], url))

    async def _send_upload(self, item: dict[str, Any], slot: batching.Slot | None) -> CrmAnswer:
        """Upload one history item: in this job's batch request if it has one, else alone."""
        if slot is not None:
            return await slot.submit(item)
        [outcome] = await batching.upload(self._crm.upload_calls, [item])
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def _warn_unmapped(self, uis_id: int) -> None:
        self._store.warn("unmapped_employee", str(uis_id),
                         f"UIS employee {uis_id} has no [[employees]] entry: no card, no credit")

    def _note_mapping(self, answer: CrmAnswer) -> None:
        for key, label in (("notExistCodes", "code"), ("notExistUsers", "user id")):
            for value in answer.body.get(key) or []:
                self._store.warn(key, str(value), f"retailCRM does not know the {label} "
                                 f"{value!r} (check [[employees]])")
