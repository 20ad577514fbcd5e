"""Group commit for UIS notifications: those that arrive together share one transaction.

A commit costs more than everything else a notification does to the database (SQLite writes
every changed page to the WAL, and checkpoints them later), so the webhook hands each decoded
notification to ``Intake.submit`` and waits. The writer task takes everything queued at that
moment, applies each notification in a savepoint of its own (a rejected or failing one spoils
none of the others), commits once, and only then releases the waiters: every 200 still follows
the commit that holds its notification. A batch is whatever arrived during one pass of the
scheduler, so a lone notification waits for nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import trio

from tracker.core.crmwork import Switches
from tracker.core.statecharts import Chart
from tracker.db.store import Store
from tracker.intake import ingest
from tracker.intake.ingest import Outcome

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    fields: Mapping[str, Any]
    method: str
    done: trio.Event
    outcome: Outcome | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class IntakeStatistics:
    batches: int
    notifications: int
    largest_batch: int
    queued: int


class Intake:
    """The webhook's way into ``ingest.ingest``; ``run_writer`` must run for batching to happen
    (without it, ``submit`` writes at once, alone)."""

    def __init__(self, store: Store, chart: Chart, tz: ZoneInfo, *, max_batch: int = 200,
                 on_batch: Callable[[int], None] | None = None,
                 work: Switches | None = None) -> None:
        self._store = store
        self._work = work  # the CRM work a call's end implies (core.crmwork)
        self._on_batch = on_batch  # told the size of each batch written (metrics)
        self._chart = chart
        self._tz = tz
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._queued = trio.Event()
        self._writing = False
        self._batches = 0
        self._notifications = 0
        self._largest = 0

    async def submit(self, fields: Mapping[str, Any], method: str) -> Outcome:
        """Store one notification; returns once it is committed. Raises what ``ingest.ingest``
        raises (``RejectedNotification``, ``sqlite3.Error``)."""
        if not self._writing:
            return ingest.ingest(self._store, self._chart, self._tz, fields, method=method,
                                 work=self._work)
        pending = _Pending(fields, method, trio.Event())
        self._queue.append(pending)
        self._queued.set()
        # Not cancellable: once queued, the notification is written whatever happens to the
        # request, and its answer must say how that went.
        with trio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Write batches until cancelled; what is queued then is written before returning."""
        self._writing = True
        task_status.started()
        try:
            while True:
                await self._queued.wait()
                self._queued = trio.Event()
                while self._queue:
                    batch = self._queue[:self._max_batch]
                    del self._queue[:self._max_batch]
                    self._write(batch)
                    await trio.lowlevel.checkpoint()
        finally:
            self._writing = False
            while self._queue:  # synchronous: safe even while being cancelled
                batch = self._queue[:self._max_batch]
                del self._queue[:self._max_batch]
                self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        now = time.time()
        try:
            with self._store.transaction():
                for pending in batch:
                    self._apply(pending, now)
        except Exception as exc:  # the commit failed: none of the batch is stored
            log.error("could not commit %d notifications: %r", len(batch), exc)
            for pending in batch:
                pending.outcome = None
                pending.error = exc
        self._batches += 1
        self._notifications += len(batch)
        self._largest = max(self._largest, len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for pending in batch:
            pending.done.set()

    def _apply(self, pending: _Pending, now: float) -> None:
        # ingest's own transaction is a savepoint inside the batch: a notification that fails
        # is undone alone, and a rejected one keeps the journal row that says why.
        try:
            pending.outcome = ingest.ingest(self._store, self._chart, self._tz, pending.fields,
                                            method=pending.method, now=now, work=self._work)
        except Exception as exc:  # RejectedNotification, or a bug; the batch goes on
            pending.error = exc

    def statistics(self) -> IntakeStatistics:
        return IntakeStatistics(batches=self._batches, notifications=self._notifications,
                                largest_batch=self._largest, queued=len(self._queue))
