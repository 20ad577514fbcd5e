"""The outbox: deliver stored actions to retailCRM in per-call order, with retries and dead letters.

A dispatcher hands the first pending row of each call (never two of one call at once) to a few
worker tasks; it sleeps until woken by a commit or until the next retry is due, never polling.
Transient failures are retried with exponential backoff and jitter; permanent ones become dead
letters carrying the upstream's message. A pop-up for a call that has ended meanwhile is dropped,
and a hangup goes only to cards that were really opened.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import trio

from . import actions
from .config import Settings
from .crm import CrmAnswer, CrmClient
from .errors import DeliveryError, PermanentDelivery, RetryableDelivery
from .logs import call_id_var
from .store import Store
from .uis import UisClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxStatistics:
    pending: int
    retrying: int
    dead: int
    in_flight: int
    delivered_total: int
    failed_attempts_total: int
    consecutive_failures: int
    last_error: str | None
    last_success_at: float | None


@dataclass(frozen=True)
class Done:
    """A row is finished: ``delivered`` or ``dropped`` (pointless now), with a note."""

    status: str  # "delivered" | "dropped"
    note: str = ""
    request: dict[str, Any] | None = None  # what was sent, for the call's timeline
    response: str | None = None  # the upstream's answer text

    @classmethod
    def sent(cls, answer: CrmAnswer, note: str = "") -> Done:
        """Delivered to retailCRM with this answer."""
        return cls("delivered", note, answer.request, answer.text)


@dataclass(frozen=True)
class Later:
    """Not a failure: ask again after ``delay_seconds`` (e.g. a recording not ready yet)."""
    delay_seconds: float
    note: str


Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable["Done | Later"]]


class Outbox:
    """Delivers outbox rows. ``wake()`` after a commit; ``run()`` owns the worker tasks."""

    def __init__(self, store: Store, settings: Settings, crm: CrmClient, uis: UisClient) -> None:
        self._store = store
        self._settings = settings
        self._crm = crm
        self._uis = uis
        self._tz = ZoneInfo(settings.crm.timezone)
        self._wakeup = trio.Event()
        self._in_flight: set[str] = set()  # lanes being delivered
        self._idle = trio.Event()
        self._delivered_total = 0
        self._failed_total = 0
        self._consecutive_failures = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._rng = random.Random()
        self._progress = trio.Event()
        self.running = False
        # kind -> async (row, payload) -> Done | Later; other modules may register more kinds.
        self.handlers: dict[str, Handler] = {
            "popup": self._popup,
            "hangup": self._hangup,
            "upload": self._upload,
        }

    def wake(self) -> None:
        """Tell the dispatcher that new work may be due (call after each commit)."""
        self._wakeup.set()

    async def wait_until_idle(self) -> None:
        """Block until nothing is due now and nothing is in flight (rows waiting for a later
        retry or for a recording do not count). Tests and the benchmark use it; bound it with
        ``trio.fail_after``."""
        while self._in_flight or self._store.due_heads(time.time(), set(), 1):
            await self._progress.wait()

    def statistics(self) -> OutboxStatistics:
        counts = self._store.outbox_counts()
        return OutboxStatistics(
            pending=counts.get("pending", 0),
            retrying=counts.get("retrying", 0),
            dead=counts.get("dead", 0),
            in_flight=len(self._in_flight),
            delivered_total=self._delivered_total,
            failed_attempts_total=self._failed_total,
            consecutive_failures=self._consecutive_failures,
            last_error=self._last_error,
            last_success_at=self._last_success_at,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch and deliver until cancelled. Pending rows from before a restart resume."""
        workers = self._settings.outbox.workers
        send, receive = trio.open_memory_channel[dict[str, Any]](0)
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._work, receive.clone())
            receive.close()
            self.running = True
            task_status.started()
            try:
                async with send:
                    await self._dispatch(send, workers)
            finally:
                self.running = False

    async def _dispatch(self, send: trio.MemorySendChannel[dict[str, Any]], workers: int) -> None:
        while True:
            self._wakeup = trio.Event()
            now = time.time()
            free = workers - len(self._in_flight)
            rows = self._store.due_heads(now, self._in_flight, free) if free > 0 else []
            for row in rows:
                self._in_flight.add(row["lane"])
                await send.send(row)
            if rows:
                continue
            next_at = self._store.next_due_at()
            delay = math.inf if next_at is None else max(0.05, next_at - time.time())
            with trio.move_on_after(delay):
                await self._wakeup.wait()

    async def _work(self, receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        async with receive:
            async for row in receive:
                token = call_id_var.set(row["call_id"])  # None for lanes that are not calls
                try:
                    await self._deliver(row)
                finally:
                    call_id_var.reset(token)
                    self._in_flight.discard(row["lane"])
                    self.wake()
                    self._progress.set()
                    self._progress = trio.Event()

    async def _deliver(self, row: dict[str, Any]) -> None:
        handler = self.handlers.get(row["kind"])
        now = time.time()
        try:
            if handler is None:
                raise PermanentDelivery(f"unknown outbox kind {row['kind']!r}")
            outcome = await handler(row, json.loads(row["payload"]))
        except RetryableDelivery as exc:
            self._note_failure(exc)
            delay = self._backoff(row["attempts"], exc.retry_after_seconds)
            self._store.reschedule_outbox(
                row["id"], time.time() + delay, time.time(), count_attempt=True,
                last_error=_describe(exc),
            )
            log.warning("%s #%d failed (attempt %d), retrying in %.1fs: %s",
                        row["kind"], row["id"], row["attempts"] + 1, delay, _describe(exc))
            return
        except PermanentDelivery as exc:
            self._note_failure(exc)
            self._store.finish_outbox(row["id"], "dead", time.time(), last_error=_describe(exc))
            log.error("%s #%d is a dead letter: %s", row["kind"], row["id"], _describe(exc))
            return
        except Exception as exc:  # a bug must not stop delivery of other calls
            self._note_failure(exc)
            delay = self._backoff(row["attempts"], None)
            self._store.reschedule_outbox(row["id"], time.time() + delay, time.time(),
                                          count_attempt=True, last_error=f"internal error: {exc!r}")
            log.exception("%s #%d: internal error", row["kind"], row["id"])
            return
        if isinstance(outcome, Later):
            self._store.reschedule_outbox(row["id"], now + outcome.delay_seconds, now,
                                          count_attempt=False, last_error=outcome.note)
            log.info("%s #%d: %s", row["kind"], row["id"], outcome.note)
            return
        extra: dict[str, Any] = {"last_error": outcome.note or None}
        if outcome.request is not None:
            extra["request"] = json.dumps(outcome.request, ensure_ascii=False)
        if outcome.response is not None:
            extra["response"] = outcome.response
        self._store.finish_outbox(row["id"], outcome.status, time.time(), **extra)
        if outcome.status == "delivered":
            self._delivered_total += 1
            self._consecutive_failures = 0
            self._last_success_at = time.time()
        log.info("%s #%d %s%s", row["kind"], row["id"], outcome.status,
                 f": {outcome.note}" if outcome.note else "")

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        base = self._settings.outbox.retry_base_seconds
        cap = self._settings.outbox.retry_max_seconds
        delay = min(cap, base * (2 ** min(attempts, 30)))
        delay *= self._rng.uniform(0.75, 1.25)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay

    def _note_failure(self, exc: BaseException) -> None:
        self._failed_total += 1
        self._consecutive_failures += 1
        self._last_error = _describe(exc)

    # -- the actions --------------------------------------------------------------------------

    async def _popup(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        call = self._store.call_row(row["call_id"])
        if call is None or call["state"] in actions.FINAL_STATES:
            return Done("dropped", "the call ended before the card could be shown")
        employee = self._settings.employee_by_uis_id(payload["employee_id"])
        if employee is None:
            self._warn_unmapped(payload["employee_id"])
            return Done("dropped", f"UIS employee {payload['employee_id']} is not mapped")
        answer = await self._crm.send_call_event(actions.call_event(call, [employee], self._settings))
        self._note_mapping(answer)
        opened = self._store.cards_open(row["call_id"])
        if employee.uis_id not in opened:
            self._store.set_cards_open(row["call_id"], [*opened, employee.uis_id])
        return Done.sent(answer)

    async def _hangup(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        opened = self._store.cards_open(row["call_id"])
        targets = [e for e in payload["employee_ids"] if e in opened]
        if not targets:
            return Done("dropped", "no card was open for these employees")
        employees = [e for e in map(self._settings.employee_by_uis_id, targets) if e is not None]
        call = self._store.call_row(row["call_id"])
        assert call is not None
        event = actions.call_event(call, employees, self._settings, hangup_status=payload["status"])
        answer = await self._crm.send_call_event(event)
        self._note_mapping(answer)
        still_open = [e for e in self._store.cards_open(row["call_id"]) if e not in targets]
        self._store.set_cards_open(row["call_id"], still_open)
        return Done.sent(answer)

    async def _upload(self, row: dict[str, Any], payload: dict[str, Any]) -> Done | Later:
        call = self._store.call_row(row["call_id"])
        assert call is not None
        result = payload["result"]
        note = ""
        url: str | None = None
        employee_id = call["talked_employee_id"] if result == "answered" else None
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
        employee = self._settings.employee_by_uis_id(employee_id)
        if employee_id is not None and employee is None:
            self._warn_unmapped(employee_id)
        item = actions.upload_item(call, result, employee, self._settings, record_url=url,
                                   now=row["created_at"])
        answer = await self._crm.upload_calls([item])
        if str(call["id"]) in (answer.body.get("duplicateCalls") or []):
            note = (note + "; " if note else "") + "retailCRM already had it (duplicateCalls)"
        self._store.set_record_url(call["id"], url)
        return Done.sent(answer, note)

    def _warn_unmapped(self, uis_id: int) -> None:
        self._store.warn("unmapped_employee", str(uis_id),
                         f"UIS employee {uis_id} has no [[employees]] entry: no card, no credit")

    def _note_mapping(self, answer: CrmAnswer) -> None:
        for key, label in (("notExistCodes", "code"), ("notExistUsers", "user id")):
            for value in answer.body.get(key) or []:
                self._store.warn(key, str(value),
                                 f"retailCRM does not know the {label} {value!r} (check [[employees]])")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeliveryError) and exc.detail and exc.detail not in str(exc):
        return f"{exc} — {exc.detail[:500]}"
    return str(exc)
