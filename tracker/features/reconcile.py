"""Reconciliation: create the finished sessions tracker never heard of, from the Data API report.

UIS notifications get lost (tracker down, a network stretch, a notification type never set up).
The Data API's ``get.calls_report`` is the PBX's own record. A periodic pass in the daemon (every
``reconcile.interval_seconds`` over the last ``reconcile.lookback_hours``) and
``python run.py backfill`` (``tracker.cli.backfill``) page through it and, for each finished
session without a call row, synthesise its opening and its end (``tracker.core.synthesis``)
through ``ingest``: the call is stored and uploaded like any other, with no card (no
``waiting_answer`` is synthesised, and real notifications arriving later meet a final state).
The "known?" check and the creation share one transaction and the synthesised notifications
have deterministic dedupe keys, so running twice changes nothing.

Paging follows the Data API's rules: windows of at most three months, keyset pages on the one
sortable key that fits (``start_time``; see "paging" below), the budgets of
``metadata.limits`` (a pause when the minute's remainder reaches ``minute_reserve``, a stop when
the day's reaches ``day_reserve``), and retries with doubling pauses after ``limit_exceeded``,
internal errors and transport failures.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import trio

from tracker.clients.uis import UisClient
from tracker.config import ReconcileSettings
from tracker.core import synthesis
from tracker.core.crmwork import Switches, switches
from tracker.core.statecharts import Chart
from tracker.core.windows import windows
from tracker.db.store import Store
from tracker.errors import DeliveryError, RejectedNotification, RetryableDelivery
from tracker.intake import ingest

if TYPE_CHECKING:
    from tracker.context import Context

log = logging.getLogger(__name__)

SOURCE = "reconcile"
METHOD = "BACKFILL"
REASON = "created from the Data API report: tracker had no notification of this session"
TIME_FORMAT = synthesis.TIME_FORMAT
_MAX_PAUSE_SECONDS = 600.0
_SECOND = timedelta(seconds=1)


class DayBudgetSpent(RetryableDelivery):
    """The Data API's day budget is down to ``reconcile.day_reserve``: stop until it resets."""


@dataclass
class Tally:
    """What one pass found and did (updated as it goes, for the progress line)."""

    reported: int = 0  # finished sessions in the windows read, as the report counts them
    read: int = 0
    known: int = 0
    created: int = 0
    answered: int = 0
    lost: int = 0
    recent: int = 0  # finished less than grace_seconds ago, or still going: left for later
    rejected: int = 0  # rows that could not be turned into notifications
    requests: int = 0
    window: str = ""
    created_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ReconcileStatistics:
    passes: int
    created_total: int
    requests_total: int
    failed_requests: int
    last_error: str | None
    last_pass_at: float | None


class Reconciler:
    """Reads ``get.calls_report`` and creates the sessions tracker lacks. ``run()`` is the
    daemon's periodic pass; ``reconcile()`` one pass over any period (backfill)."""

    def __init__(self, store: Store, chart: Chart, tz: ZoneInfo, uis: UisClient,
                 settings: ReconcileSettings, *, wake: Callable[[], None] = lambda: None,
                 on_progress: Callable[[Tally], None] = lambda tally: None,
                 work: Switches | None = None) -> None:
        self._store, self._chart, self._tz, self._uis = store, chart, tz, uis
        self._work = work  # the daemon's passes create CRM work; a backfill of the past does not
        self._settings = settings
        self._wake = wake
        self._on_progress = on_progress
        self._limits: dict[str, Any] = {}
        self._limits_at = 0.0
        self._passes = self._created = self._requests = self._failed = 0
        self._last_error: str | None = None
        self._last_pass_at: float | None = None

    @classmethod
    def for_context(cls, ctx: Context) -> Reconciler:
        """The daemon's reconciler: it wakes the daemon's outbox when it creates calls."""
        return cls(ctx.store, ctx.chart, ctx.tz, ctx.uis, ctx.settings.reconcile,
                   wake=ctx.outbox.wake, work=switches(ctx.settings))

    def statistics(self) -> ReconcileStatistics:
        return ReconcileStatistics(self._passes, self._created, self._requests, self._failed,
                                   self._last_error, self._last_pass_at)

    # -- the daemon's periodic pass -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A pass ``start_delay_seconds`` after start, then every ``interval_seconds``."""
        task_status.started()
        if not self._settings.enabled:
            return
        await trio.sleep(self._settings.start_delay_seconds)
        while True:
            await self.pass_once()
            await trio.sleep(self._settings.interval_seconds)

    async def pass_once(self) -> Tally:
        """Reconcile the last ``lookback_hours``; errors are logged, never raised."""
        till = datetime.now(self._tz).replace(tzinfo=None, microsecond=0)
        start = till - timedelta(hours=self._settings.lookback_hours)
        tally = Tally()
        try:
            await self.reconcile(start, till, tally)
        except DeliveryError as exc:
            self._last_error = str(exc)
            log.warning("reconciliation stopped, next pass later: %s", exc)
        except Exception:  # a bug must not end the periodic passes
            log.exception("reconciliation pass failed")
        finally:
            self._wake()
        if tally.created:
            log.info("reconciliation created %d missed sessions (%d answered, %d lost)",
                     tally.created, tally.answered, tally.lost)
        return tally

    # -- one pass -----------------------------------------------------------------------------

    async def reconcile(self, date_from: datetime, date_till: datetime,
                        tally: Tally | None = None) -> Tally:
        """Create every finished session of the period that tracker does not know.

        Times are account-local. Raises ``DeliveryError`` when the Data API refuses for good,
        keeps failing after ``max_retries``, or the day budget runs low; what was created
        until then stays (a rerun continues idempotently)."""
        tally = Tally() if tally is None else tally
        self._passes += 1
        self._last_pass_at = time.time()
        for start, end in windows(date_from, date_till):
            await self._read_window(start, end, tally)
        return tally

    # -- paging ---------------------------------------------------------------------------------
    # get.calls_report may be sorted by start_time but not by id (id is not sortable: UIS
    # answers -32602 sort_prohibited), and nothing promises an order among sessions that share
    # a start second, so offset paging could miss or repeat rows where a page boundary falls
    # among them. Instead: keyset paging on start_time. Each request starts at the last start
    # second read so far (date_from is inclusive): every row before that second was in an
    # earlier page, the rows of that second come again and are de-duplicated by id. A second
    # holding a whole page or more is read on its own, split by id ranges (id is filterable)
    # until each part fits in one page. Offsets stay 0, so the 100 000 ceiling never applies.

    async def _read_window(self, start: datetime, end: datetime, tally: Tally) -> None:
        tally.window = f"{start:%Y-%m-%d %H:%M:%S} … {end:%Y-%m-%d %H:%M:%S}"
        cursor, seen, first = start, set[int](), True
        while cursor <= end:
            result = await self._fetch(cursor, end, tally)
            total = int((result.get("metadata") or {}).get("total_items") or 0)
            if first:
                tally.reported += total
                first = False
            rows = [r for r in result.get("data") or [] if isinstance(r, dict)]
            self._take_page(rows, seen, tally)
            if total <= len(rows) or not rows:
                return  # this page held everything from the cursor on
            last = synthesis.report_time(rows[-1], "start_time")
            if last is None or last < cursor:
                log.warning("get.calls_report page ends in a row without a usable start_time "
                            "(%.200r): the rest of %s is left for the next pass", rows[-1],
                            tally.window)
                return
            if synthesis.report_time(rows[0], "start_time") == last:
                # A whole page in one second: the next page from there could hold nothing
                # new, so read that second on its own, by id ranges.
                await self._read_second(last, None, None, tally, seen)
                cursor, seen = last + _SECOND, set()
                continue
            seen = {r["id"] for r in rows if synthesis.report_time(r, "start_time") == last}
            cursor = last

    async def _read_second(self, second: datetime, low: int | None, high: int | None,
                           tally: Tally, seen: set[int]) -> None:
        """Every session starting in ``second`` with ``low <= id <= high`` (None: unbounded)."""
        bounds = [{"field": "id", "operator": op, "value": v}
                  for op, v in ((">=", low), ("<=", high)) if v is not None]
        query = {"filters": bounds, "condition": "and"} if len(bounds) > 1 else \
            (bounds[0] if bounds else None)
        result = await self._fetch(second, second, tally, query)
        total = int((result.get("metadata") or {}).get("total_items") or 0)
        rows = [r for r in result.get("data") or [] if isinstance(r, dict)]
        self._take_page(rows, seen, tally)
        ids = sorted(r["id"] for r in rows if isinstance(r.get("id"), int))
        if total <= len(rows) or not ids:
            return
        # The page is some of the range: split around its median id, which it already read;
        # both halves exclude that id, so each is smaller and the split ends.
        pivot = ids[len(ids) // 2]
        if low is None or pivot - 1 >= low:
            await self._read_second(second, low, pivot - 1, tally, seen)
        if high is None or pivot + 1 <= high:
            await self._read_second(second, pivot + 1, high, tally, seen)

    def _take_page(self, rows: list[dict[str, Any]], seen: set[int], tally: Tally) -> None:
        now = time.time()
        created = tally.created
        for row in rows:
            session_id = row.get("id")
            if isinstance(session_id, int) and session_id in seen:
                continue  # read again where two requests overlap
            if isinstance(session_id, int):
                seen.add(session_id)
            self._take(row, now, tally)
        if tally.created > created:
            self._wake()
        self._on_progress(tally)

    async def _fetch(self, start: datetime, end: datetime, tally: Tally,
                     query: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "date_from": start.strftime(TIME_FORMAT),
            "date_till": end.strftime(TIME_FORMAT),
            "fields": synthesis.REPORT_FIELDS,
            "sort": [{"field": "start_time", "order": "asc"}],  # the keyset (see above)
            "limit": self._settings.page_size,
            "offset": 0,
        }
        if query is not None:
            params["filter"] = query
        failures = 0
        while True:
            await self._pace()
            try:
                result = await self._uis.data("get.calls_report", params)
            except RetryableDelivery as exc:
                failures += 1
                self._failed += 1
                self._last_error = str(exc)
                if failures > self._settings.max_retries:
                    raise
                pause = min(_MAX_PAUSE_SECONDS,
                            self._settings.retry_seconds * 2 ** (failures - 1))
                log.warning("get.calls_report failed (%s); retrying in %.1f s", exc, pause)
                await trio.sleep(pause)
                continue
            tally.requests += 1
            self._requests += 1
            limits = (result.get("metadata") or {}).get("limits")
            if isinstance(limits, dict):
                self._limits, self._limits_at = limits, trio.current_time()
            return result

    async def _pace(self) -> None:
        """Leave the live work (sweeper, recording lookups) its share of the budgets."""
        day = self._limits.get("day_remaining")
        if isinstance(day, int) and day <= self._settings.day_reserve:
            reset = self._limits.get("day_reset")
            raise DayBudgetSpent(
                f"the Data API day budget is down to {day} (reconcile.day_reserve is "
                f"{self._settings.day_reserve}); it resets in {reset} s")
        minute = self._limits.get("minute_remaining")
        if isinstance(minute, int) and minute <= self._settings.minute_reserve:
            reset = self._limits.get("minute_reset")
            # UIS counts whole seconds: "0" means less than one is left.
            wait = max(1.0, float(reset if isinstance(reset, int | float) else 60))
            wait -= trio.current_time() - self._limits_at
            if wait > 0:
                log.info("Data API minute budget down to %d: pausing %.1f s", minute, wait)
                await trio.sleep(wait)
            self._limits = {}

    def _take(self, row: Any, now: float, tally: Tally) -> None:
        tally.read += 1
        session_id = row.get("id") if isinstance(row, dict) else None
        if not isinstance(session_id, int) or isinstance(session_id, bool):
            tally.rejected += 1
            log.warning("get.calls_report row without a session id: %.200r", row)
            return
        finished = synthesis.report_time(row, "finish_time")
        if not synthesis.is_finished(row) or finished is None or \
                finished.replace(tzinfo=self._tz).timestamp() > now - self._settings.grace_seconds:
            tally.recent += 1  # its own notifications may still be on the way
            return
        try:
            with self._store.transaction():
                if self._store.call_exists(session_id):
                    tally.known += 1
                    return
                for fields in synthesis.session(row, source=SOURCE):
                    ingest.ingest(self._store, self._chart, self._tz, fields, method=METHOD,
                                  now=now, work=self._work)
                self._store.set_end_reason(session_id, REASON)
                self._store.warn("reconcile", "sessions without notifications",
                                 f"session {session_id} reached tracker only through the Data "
                                 "API report; its notifications never arrived", now)
        except RejectedNotification as exc:
            tally.rejected += 1
            log.warning("session %s: cannot use the report row: %s", session_id, exc)
            return
        call = self._store.call_row(session_id)
        tally.created += 1
        self._created += 1
        tally.created_ids.append(session_id)
        if call is not None and call["state"] == "ended":
            tally.answered += 1
        else:
            tally.lost += 1
