"""History uploads of several calls in one ``telephony/calls/upload`` request (at most 50 items).

The dispatcher runs the upload handlers of one batch side by side, each given its own slot. Each
prepares its call's item (the recording lookup may take a while) and hands it to
:meth:`Slot.submit`, which returns that item's share of the answer. The request goes out once
every handler of the batch has either submitted or finished without submitting (a recording
not ready yet, a dropped row).

Nothing is lost or doubled. Every item carries the UIS session id as ``externalId``, and an item
retailCRM already stored comes back in ``duplicateCalls``, which counts as delivered. retailCRM
refuses a whole upload when one item is invalid (HTTP 400), so the items then go one by one and
only the bad one becomes a dead letter; an answer accounting for fewer items than were sent
(``processedCallsCount`` + ``duplicateCalls``) is checked item by item the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tracker.clients.crm import CrmAnswer
from tracker.errors import DeliveryError, PermanentDelivery

Send = Callable[[list[dict[str, Any]]], Awaitable[CrmAnswer]]
Outcome = CrmAnswer | DeliveryError

async def upload(send: Send, items: list[dict[str, Any]]) -> list[Outcome]:
    """Upload ``items`` (one request when all goes well); one answer or error per item."""
    try:
        answer = await send(items)
    except PermanentDelivery as exc:
        if len(items) > 1 and exc.status == 400:
            return [await _one(send, item) for item in items]  # find the item that was refused
        return [exc] * len(items)
    except DeliveryError as exc:
        return [exc] * len(items)
    duplicates = {str(d) for d in answer.body.get("duplicateCalls") or []}
    processed = answer.body.get("processedCallsCount")
    missing = isinstance(processed, int) and not isinstance(processed, bool) \
        and processed + len(duplicates) < len(items)
    if not missing:
        return [_share(answer, item, len(items)) for item in items]
    if len(items) == 1:
        return [PermanentDelivery(
            "retailCRM telephony/calls/upload: answered success but stored nothing and reported "
            "no duplicate", status=answer.status, detail=answer.text)]
    # Some items were neither stored nor reported: ask again one by one. Those stored by the first
    # request come back as duplicates; the others are stored now or refused with their reason.
    return [_share(answer, item, len(items)) if str(item.get("externalId")) in duplicates
            else await _one(send, item) for item in items]


async def _one(send: Send, item: dict[str, Any]) -> Outcome:
    [outcome] = await upload(send, [item])
    return outcome


def _share(answer: CrmAnswer, item: dict[str, Any], size: int) -> CrmAnswer:
    """One item's part of a batch answer: the timeline shows that item, not all fifty."""
    request: dict[str, Any] = {"method": "POST", "endpoint": "telephony/calls/upload",
                               "form": {"calls": [item]}}
    if size > 1:
        request["batch_size"] = size
    return CrmAnswer(status=answer.status, body=answer.body, request=request, text=answer.text)


class Batch:
    """The rendezvous of the upload handlers of one outbox job."""

    def __init__(self, size: int, send: Send) -> None:
        self._send = send
        self._outstanding = size  # handlers that have neither submitted nor finished
        self._slots = 0
        self._items: dict[int, dict[str, Any]] = {}  # by slot: items go in the rows' order
        self._outcomes: dict[int, Outcome] = {}
        self._all_in = trio.Event()
        self._answered = trio.Event()
        if size == 0:
            self._all_in.set()

    def slot(self) -> Slot:
        """A place for one handler (the dispatcher passes it to the handler)."""
        self._slots += 1
        return Slot(self, self._slots - 1)

    async def run(self) -> int:
        """Send what was submitted once every handler has arrived; returns the item count."""
        await self._all_in.wait()
        if self._items:
            order = sorted(self._items)
            outcomes = await upload(self._send, [self._items[i] for i in order])
            self._outcomes = dict(zip(order, outcomes, strict=True))
        self._answered.set()
        return len(self._items)

    def _arrive(self) -> None:
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._all_in.set()

    async def _submit(self, index: int, item: dict[str, Any]) -> CrmAnswer:
        self._items[index] = item
        self._arrive()
        await self._answered.wait()
        outcome = self._outcomes[index]
        if isinstance(outcome, DeliveryError):
            raise copy.copy(outcome)  # each handler raises its own (tracebacks are per raise)
        return outcome


class Slot:
    """One handler's place in a batch: it either submits one item or finishes without."""

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index
        self._arrived = False

    async def submit(self, item: dict[str, Any]) -> CrmAnswer:
        """Add ``item`` to the batch request; its share of the answer (or its error, raised)."""
        if self._arrived:
            raise RuntimeError("a batch slot takes one item")
        self._arrived = True
        return await self._batch._submit(self._index, item)

    def finish(self) -> None:
        """The handler is done; if it never submitted, the batch stops waiting for it."""
        if not self._arrived:
            self._arrived = True
            self._batch._arrive()
