"""The stale-call sweeper: asks the Data API what became of calls whose notifications stopped.

A call in a non-final state that has had no notification for ``sweeper.stale_after_seconds``
is looked up with ``get.calls_report`` (that session, ``include_ongoing_calls``):

- finished: its missing end is synthesised from the report row (``tracker.core.synthesis``) and goes
  through ``ingest`` like a real notification, so cards close and the call is uploaded exactly
  once (the synthesised notification has a deterministic dedupe key, and a call that ended
  meanwhile is left alone);
- still in progress: asked again after another ``stale_after_seconds``;
- unknown to UIS: asked again with growing pauses; after ``sweeper.max_attempts`` such lookups
  the call is closed (lost without a talk, ended after one) with the reason on the call.

A failed lookup (transport, internal error, ``limit_exceeded``, a refused key) ends the pass
without counting against the call; the next pass comes ``interval_seconds`` later, and a
minute budget about to run out ends a pass early. The task never dies of an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import trio

from tracker.context import Context
from tracker.core import crmwork, synthesis
from tracker.core.payloads import uis_date
from tracker.errors import DeliveryError, RejectedNotification
from tracker.intake import ingest
from tracker.logs import call_id_var

log = logging.getLogger(__name__)

SOURCE = "sweeper"
_LOOKUP_SPAN = timedelta(days=1)  # either side of the call's start: survives a wrong time zone
_KEEP_PER_MINUTE = 2  # Data API points of each minute left for the outbox's recording lookups
_BATCH = 100  # calls looked at per pass, at most


@dataclass(frozen=True)
class SweeperStatistics:
    passes: int
    lookups: int
    finished: int  # ends synthesised from the report
    waiting: int  # lookups that found the call still in progress
    closed_unknown: int  # calls closed because UIS did not know them
    failed_lookups: int
    last_error: str | None
    last_pass_at: float | None


class Sweeper:
    """Finds stale calls and settles them from the Data API report. ``run()`` owns the loop."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._settings = ctx.settings.sweeper
        self._live_states = tuple(s for s in ctx.chart.states if not ctx.chart.is_final(s))
        self._passes = self._lookups = self._finished = self._waiting = 0
        self._closed_unknown = self._failed = 0
        self._last_error: str | None = None
        self._last_pass_at: float | None = None

    def statistics(self) -> SweeperStatistics:
        return SweeperStatistics(self._passes, self._lookups, self._finished, self._waiting,
                                 self._closed_unknown, self._failed, self._last_error,
                                 self._last_pass_at)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``interval_seconds`` until cancelled (returns at once when disabled)."""
        task_status.started()
        if not self._settings.enabled:
            return
        while True:
            try:
                await self.sweep_once()
            except Exception:  # a bug or a database hiccup must not stop the next passes
                log.exception("sweeper pass failed")
            await trio.sleep(self._settings.interval_seconds)

    async def sweep_once(self) -> int:
        """Look up the calls that are stale now; returns how many were looked up."""
        now = time.time()
        self._passes += 1
        self._last_pass_at = now
        looked = 0
        for row in self._due(now):
            if self._budget_low():
                log.info("sweeper: the Data API minute budget is nearly spent; next pass later")
                break
            token = call_id_var.set(row["id"])
            try:
                try:
                    report = await self._look_up(row)
                except DeliveryError as exc:
                    self._failed += 1
                    self._last_error = str(exc)
                    self._note(row["id"], f"lookup failed: {exc}", next_at=None)
                    log.warning("sweeper: lookup of call %s failed, next pass later: %s",
                                row["id"], exc)
                    break  # UIS is down, refusing or out of budget: the others would fail too
                looked += 1
                self._settle(row, report, time.time())
            finally:
                call_id_var.reset(token)
        return looked

    # -- steps --------------------------------------------------------------------------------

    def _due(self, now: float) -> list[dict[str, Any]]:
        return self._ctx.store.stale_calls(self._live_states,
                                           now - self._settings.stale_after_seconds, now, _BATCH)

    def _budget_low(self) -> bool:
        remaining = self._ctx.uis.last_limits.get("minute_remaining")
        return isinstance(remaining, int) and remaining < _KEEP_PER_MINUTE

    async def _look_up(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The session's report row (ongoing included), or None when UIS does not know it."""
        tz = self._ctx.tz
        started = row["started_at"] or row["updated_at"] or time.time()
        span = _LOOKUP_SPAN.total_seconds()
        till = max(started + 60, min(started + span, time.time()))  # never before date_from
        self._lookups += 1
        result = await self._ctx.uis.data("get.calls_report", {
            "date_from": uis_date(started - span, tz),
            "date_till": uis_date(till, tz),
            "filter": {"field": "id", "operator": "=", "value": row["id"]},
            "include_ongoing_calls": True,
            "fields": synthesis.REPORT_FIELDS,
        })
        found = [r for r in result.get("data") or [] if r.get("id") == row["id"]]
        return found[0] if found else None

    def _settle(self, row: dict[str, Any], report: dict[str, Any] | None, now: float) -> None:
        store = self._ctx.store
        current = store.call_row(row["id"])
        if current is None or self._ctx.chart.is_final(current["state"]):
            return  # its own end arrived while we asked
        if report is None:
            self._unknown(row, current, now)
        elif not synthesis.is_finished(report):
            self._waiting += 1
            asked = uis_date(now, self._ctx.tz)
            self._note(row["id"], f"UIS reports the call in progress (asked {asked})",
                       next_at=now + self._settings.stale_after_seconds, attempts=0)
        else:
            fields = synthesis.ending(report, state=current["state"], source=SOURCE)
            stale = round(now - (current["updated_at"] or now))
            reason = (f"no end notification for {stale} s: the sweeper took the end from the Data "
                      f"API report ({'lost' if synthesis.is_lost(report) else 'answered'})")
            if self._end(row["id"], fields, reason, now):
                self._finished += 1

    def _unknown(self, row: dict[str, Any], current: dict[str, Any], now: float) -> None:
        attempts = (row["sweep_attempts"] or 0) + 1
        limit = self._settings.max_attempts
        if attempts < limit:
            pause = self._settings.interval_seconds * 2 ** (attempts - 1)
            self._note(row["id"], f"UIS does not know this session (lookup {attempts} of {limit})",
                       next_at=now + pause, attempts=attempts)
            return
        outcome = "ended after the talk tracker saw" if current["talked"] else "lost, no talk"
        reason = (f"UIS does not know this session after {limit} lookups: closed by the sweeper "
                  f"({outcome})")
        at = uis_date(current["updated_at"] or now, self._ctx.tz)
        fields = synthesis.unknown_end(row["id"], at, reason, source=SOURCE)
        if self._end(row["id"], fields, reason, now, attempts=attempts):
            self._closed_unknown += 1
            log.warning("call %s: %s", row["id"], reason)

    def _end(self, call_id: int, fields: dict[str, Any], reason: str, now: float,
             attempts: int | None = None) -> bool:
        """Feed a synthesised end through ingest and keep the reason; True when it acted."""
        store = self._ctx.store
        try:
            with store.transaction():
                outcome = ingest.ingest(store, self._ctx.chart, self._ctx.tz, fields,
                                        method="SWEEP", now=now,
                                        work=crmwork.switches(self._ctx.settings))
                final = outcome.state is not None and self._ctx.chart.is_final(outcome.state)
                if final and outcome.status == "accepted":
                    # Many of these point at a notification type missing in UIS's settings.
                    store.warn("sweeper", "calls without an end notification",
                               f"the sweeper ended call {call_id} without its own end "
                               "notification; check that UIS sends 'Call finished' and 'Lost "
                               "call' to tracker", now)
                store.end_sweep(
                    call_id, end_reason=reason if final and outcome.status == "accepted" else None,
                    note=f"{outcome.status}: {reason}", attempts=attempts)
        except RejectedNotification as exc:  # a report row we cannot read; try again later
            self._note(call_id, f"cannot use the report row: {exc}",
                       next_at=now + self._settings.stale_after_seconds)
            log.error("call %s: the sweeper cannot use the report row: %s", call_id, exc)
            return False
        if outcome.actions:
            self._ctx.outbox.wake()
        if outcome.status == "accepted":
            log.info("call %s: %s -> %s", call_id, reason, outcome.state)
        return outcome.status == "accepted"

    def _note(self, call_id: int, note: str, *, next_at: float | None,
              attempts: int | None = None) -> None:
        with self._ctx.store.transaction():
            self._ctx.store.note_sweep(call_id, note, next_at=next_at, attempts=attempts)
