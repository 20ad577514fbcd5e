"""The outbox: deliver stored actions to retailCRM in per-call order, with retries and dead letters.

A dispatcher hands the first pending row of each lane (a call; never two of one lane at once) to
a few worker tasks, cards before history uploads; it sleeps until woken by a commit or until the
next retry is due. Uploads due together go as one batch (``batching``) of lane heads only, so
per-call order holds; one worker is always left for cards. Every request waits its turn at the
account's rate limit (``throttle``), where the row's priority decides who goes first.
Transient failures are retried with exponential backoff and jitter; permanent ones become dead
letters carrying the upstream's message. A pop-up for a call that has ended meanwhile is dropped,
and a hangup goes only to cards that were really opened. A row's status and the store writes of
its handler (``Done.effects``) commit together, so a crash cannot record one without the other.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import trio

from tracker.clients.crm import CrmAnswer, CrmClient
from tracker.clients.throttle import priority_var
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.core import payloads
from tracker.core.calls import FINAL_STATES
from tracker.db.store import Store
from tracker.delivery import batching
from tracker.errors import DeliveryError, PermanentDelivery, RetryableDelivery
from tracker.logs import call_id_var
from tracker.metrics import Metrics

log = logging.getLogger(__name__)

# Rows re-queued by another process (``run.py outbox retry``) commit no wake-up here: the
# dispatcher looks at the database at least this often, a cheap query on an indexed column.
EXTERNAL_CHECK_SECONDS = 2.0
BATCHED_KINDS = frozenset({"upload"})
# Look-ups slower than this (a large backlog) are spaced by this many times their duration.
SLOW_SCAN_SECONDS = 0.002
SLOW_SCAN_PAUSE = 4


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
    batches_total: int = 0  # upload requests that carried more than one call
    batched_rows_total: int = 0


@dataclass(frozen=True)
class Done:
    """A row is finished: ``delivered`` or ``dropped`` (pointless now), with a note."""

    status: str  # "delivered" | "dropped"
    note: str = ""
    request: dict[str, Any] | None = None  # what was sent, for the call's timeline
    response: str | None = None  # the upstream's answer text
    # Store writes committed in the same transaction as the row's new status.
    effects: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def sent(cls, answer: CrmAnswer, note: str = "",
             effects: Callable[[], None] | None = None) -> Done:
        """Delivered to retailCRM with this answer."""
        return cls("delivered", note, answer.request, answer.text, effects)


@dataclass(frozen=True)
class Later:
    """Not a failure: ask again after ``delay_seconds`` (e.g. a recording not ready yet)."""
    delay_seconds: float
    note: str


Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable["Done | Later"]]


class Outbox:
    """Delivers outbox rows. ``wake()`` after a commit; ``run()`` owns the worker tasks."""

    def __init__(self, store: Store, settings: Settings, crm: CrmClient, uis: UisClient, *,
                 metrics: Metrics | None = None) -> None:
        self._store = store
        self.metrics = Metrics() if metrics is None else metrics
        self._settings = settings
        self._crm = crm
        self._uis = uis
        self._tz = ZoneInfo(settings.crm.timezone)
        self._wakeup = trio.Event()
        self._in_flight: set[str] = set()  # lanes being delivered
        self._busy = 0  # workers holding a job
        self._bulk_busy = 0  # of which on uploads (priority > 0)
        self._batch_size = settings.ratelimit.upload_batch_size
        self._batches_total = 0
        self._batched_rows_total = 0
        self._delivered_total = 0
        self._failed_total = 0
        self._consecutive_failures = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._rng = random.Random()
        self._progress = trio.Event()
        self.running = False
        # Called on every wake(), i.e. after each commit and each delivery: the status page's
        # live feed (tracker/live.py) listens here. Listeners must not block.
        self.on_wake: list[Callable[[], None]] = []
        # kind -> async (row, payload) -> Done | Later; other modules may register more kinds.
        self.handlers: dict[str, Handler] = {
            "popup": self._popup,
            "hangup": self._hangup,
            "upload": self._upload,
        }

    def wake(self) -> None:
        """Tell the dispatcher that new work may be due (call after each commit)."""
        self._wakeup.set()
        for listener in self.on_wake:
            listener()

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
            batches_total=self._batches_total,
            batched_rows_total=self._batched_rows_total,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch and deliver until cancelled. Pending rows from before a restart resume."""
        workers = self._settings.outbox.workers
        send, receive = trio.open_memory_channel[list[dict[str, Any]]](0)
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

    async def _dispatch(self, send: trio.MemorySendChannel[list[dict[str, Any]]],
                        workers: int) -> None:
        while True:
            self._wakeup = trio.Event()
            scan_started = time.perf_counter()
            jobs = self._due_jobs(time.time(), workers)
            for job in jobs:
                self._in_flight.update(row["lane"] for row in job)
                self._busy += 1
                self._bulk_busy += _bulk(job)
                await send.send(job)
            if jobs:
                continue
            # Whatever is due but was not handed out waits for a busy worker, whose end wakes us.
            now = time.time()
            next_at = self._store.next_due_at()
            scan_seconds = time.perf_counter() - scan_started
            delay = EXTERNAL_CHECK_SECONDS
            if next_at is not None and next_at > now:
                delay = min(delay, max(0.05, next_at - now))
            with trio.move_on_after(delay):
                await self._wakeup.wait()
            if scan_seconds > SLOW_SCAN_SECONDS:
                # A backlog of thousands of rows whose lane heads wait for a retry (an outage)
                # makes a look-up cost milliseconds; every commit wakes us, so let the wake-ups
                # gather for a while instead of spending the event loop on look-ups.
                await trio.sleep(min(scan_seconds * SLOW_SCAN_PAUSE, 0.1))

    def _due_jobs(self, now: float, workers: int) -> list[list[dict[str, Any]]]:
        """What to hand out now: one row per job, or a batch of upload lane heads."""
        free = workers - self._busy
        if free <= 0:
            return []
        bulk_room = max(1, workers - 1) - self._bulk_busy  # a worker stays free for cards
        heads = self._store.due_heads(now, self._in_flight,
                                      free + max(0, bulk_room) * self._batch_size)
        jobs: list[list[dict[str, Any]]] = []
        batches: dict[str, list[dict[str, Any]]] = {}
        for row in heads:  # cards first, then by age
            if row["kind"] not in BATCHED_KINDS:
                jobs.append([row])
                continue
            batch = batches.get(row["kind"])
            if batch is None or len(batch) >= self._batch_size:
                batch = batches[row["kind"]] = []
                jobs.append(batch)
            batch.append(row)
        chosen: list[list[dict[str, Any]]] = []
        for job in jobs:
            if len(chosen) >= free:
                break
            if _bulk(job):
                if bulk_room <= 0:
                    continue
                bulk_room -= 1
            chosen.append(job)
        return chosen

    async def _work(self, receive: trio.MemoryReceiveChannel[list[dict[str, Any]]]) -> None:
        async with receive:
            async for job in receive:
                try:
                    if len(job) == 1:
                        await self._deliver(job[0])
                    else:
                        await self._deliver_batch(job)
                finally:
                    self._in_flight.difference_update(row["lane"] for row in job)
                    self._busy -= 1
                    self._bulk_busy -= _bulk(job)
                    self.wake()
                    self._progress.set()
                    self._progress = trio.Event()

    async def _deliver_batch(self, rows: list[dict[str, Any]]) -> None:
        """Run the rows' handlers side by side; their uploads meet in one request."""
        batch = batching.Batch(len(rows), self._crm.upload_calls)

        async def send_batch() -> None:
            count = await batch.run()
            if count > 1:
                self._batches_total += 1
                self._batched_rows_total += count

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_batch)
            for row in rows:
                nursery.start_soon(self._deliver, row, batch.slot())

    async def _deliver(self, row: dict[str, Any], slot: batching.Slot | None = None) -> None:
        call_token = call_id_var.set(row["call_id"])  # None for lanes that are not calls
        priority_token = priority_var.set(row["priority"] or 0)
        slot_token = batching.slot_var.set(slot)
        try:
            await self._run_handler(row, slot)
        finally:
            batching.slot_var.reset(slot_token)
            priority_var.reset(priority_token)
            call_id_var.reset(call_token)

    async def _run_handler(self, row: dict[str, Any], slot: batching.Slot | None) -> None:
        handler = self.handlers.get(row["kind"])
        now = time.time()
        try:
            try:
                if handler is None:
                    raise PermanentDelivery(f"unknown outbox kind {row['kind']!r}")
                outcome = await handler(row, json.loads(row["payload"]))
            finally:
                if slot is not None:
                    slot.finish()
        except RetryableDelivery as exc:
            self._note_failure(exc)
            self.metrics.observe_failure(row["kind"], exc)
            if exc.status in (429, 503):  # retailCRM did nothing: the card is not showing
                self._store.set_sent_at(row["id"], None)
            delay = self._backoff(row["attempts"], exc.retry_after_seconds)
            self._store.reschedule_outbox(
                row["id"], time.time() + delay, time.time(), count_attempt=True,
                last_error=_describe(exc), **_exchange(exc),
            )
            log.warning("%s #%d failed (attempt %d), retrying in %.1fs: %s",
                        row["kind"], row["id"], row["attempts"] + 1, delay, _describe(exc))
            return
        except PermanentDelivery as exc:
            self._note_failure(exc)
            self._store.finish_outbox(row["id"], "dead", time.time(), last_error=_describe(exc),
                                      **_exchange(exc))
            self.metrics.observe_failure(row["kind"], exc)
            self.metrics.observe_delivery(row["kind"], "dead", row["created_at"])
            log.error("%s #%d is a dead letter: %s", row["kind"], row["id"], _describe(exc))
            return
        except Exception as exc:  # a bug must not stop delivery of other calls
            self._note_failure(exc)
            self.metrics.observe_failure(row["kind"], exc)
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
        with self._store.transaction():
            if outcome.effects is not None:
                outcome.effects()
            self._store.finish_outbox(row["id"], outcome.status, time.time(), **extra)
        self.metrics.observe_delivery(row["kind"], outcome.status, row["created_at"])
        if outcome.status == "delivered":
            self._delivered_total += 1
            self._consecutive_failures = 0
            self._last_success_at = time.time()
        log.info("%s #%d %s%s", row["kind"], row["id"], outcome.status,
                 f": {outcome.note}" if outcome.note else "")

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        base = self._settings.outbox.retry_base_seconds
        cap = self._settings.outbox.retry_max_seconds
        delay: float = min(cap, base * (2.0 ** min(attempts, 30)))
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

    async def _hangup(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
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

    async def _upload(self, row: dict[str, Any], payload: dict[str, Any]) -> Done | Later:
        stored = self._store.call_row(row["call_id"])
        assert stored is not None
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
        employee = self._store.employee_by_uis_id(employee_id)
        if employee_id is not None and employee is None:
            self._warn_unmapped(employee_id)
        item = payloads.upload_item(call, result, employee, self._settings, record_url=url,
                                   now=row["created_at"])
        answer = await self._send_upload(item)
        if str(call["id"]) in (answer.body.get("duplicateCalls") or []):
            note = (note + "; " if note else "") + "retailCRM already had it (duplicateCalls)"
        return Done.sent(answer, note, effects=lambda: self._store.set_record_url(call["id"], url))

    async def _send_upload(self, item: dict[str, Any]) -> CrmAnswer:
        """Upload one history item: in this job's batch request if it has one, else alone."""
        slot = batching.slot_var.get()
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


def _bulk(job: list[dict[str, Any]]) -> bool:
    """History uploads and other work that may wait (priority above 0), as opposed to cards."""
    return (job[0]["priority"] or 0) > 0


def _exchange(exc: DeliveryError) -> dict[str, str]:
    """What a failed attempt sent and what came back, kept for the call's timeline."""
    kept = {}
    if exc.request is not None:
        kept["request"] = json.dumps(exc.request, ensure_ascii=False)
    if exc.detail:
        kept["response"] = exc.detail
    return kept


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeliveryError) and exc.detail and exc.detail not in str(exc):
        return f"{exc} — {exc.detail[:500]}"
    return str(exc)
