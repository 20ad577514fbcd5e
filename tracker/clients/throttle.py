"""The trio side of rate limiting: a ``Gate`` per upstream account that requests wait at.

The clients (``crm``, ``uis``) call :meth:`Gate.wait_turn` before each request and
:meth:`Gate.note_answer` after it. Waiters of one bucket leave in priority order (lowest
``priority_var`` first, then arrival), so a pop-up queued behind a backlog of history uploads goes
next. The outbox sets ``priority_var`` to the row's priority while it delivers; requests made
elsewhere (click-to-call, the status sync) keep the default 0, the most urgent.

A request that would have to wait longer than ``max_wait_seconds`` (a long ``Retry-After``, a UIS
budget spent until midnight) is not held: ``wait_turn`` raises ``RetryableDelivery`` with the
wait as ``retry_after_seconds``, so an outbox worker is freed and the row comes back later.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
from collections.abc import Mapping
from typing import Any

import trio

from tracker.config import RateLimitSettings
from tracker.core.ratelimit import Limiter, LimiterStatistics, Rule
from tracker.errors import RetryableDelivery

priority_var: contextvars.ContextVar[int] = contextvars.ContextVar("delivery_priority", default=0)
MAX_WAIT_SECONDS = 5.0


class Gate:
    """Where the requests of one account wait for their turn. Not thread-safe (trio only)."""

    def __init__(self, limiter: Limiter, *, max_wait_seconds: float = MAX_WAIT_SECONDS) -> None:
        self.limiter = limiter
        self.max_wait_seconds = max_wait_seconds
        self._queues: dict[str, list[tuple[int, int]]] = {}
        self._tickets = itertools.count()
        self._changed = trio.Event()
        self.waited_seconds_total = 0.0

    async def wait_turn(self, route: str) -> None:
        """Block until a request on ``route`` may be sent, then count it as sent."""
        bucket = self.limiter.bucket_for(route)
        queue = self._queues.setdefault(bucket, [])
        ticket = (priority_var.get(), next(self._tickets))
        heapq.heappush(queue, ticket)
        started = trio.current_time()
        self._poke()  # a more urgent arrival must become the one that waits on the clock
        try:
            while True:
                changed = self._changed
                if queue[0] == ticket:
                    now = trio.current_time()
                    delay = self.limiter.delay(route, now)
                    if delay <= 0:
                        self.limiter.take(route, now)
                        return
                    if delay > self.max_wait_seconds:
                        raise RetryableDelivery(
                            f"{self.limiter.name} {route}: held back by the rate limit for "
                            f"{delay:.0f}s", retry_after_seconds=delay)
                    with trio.move_on_after(delay):
                        await changed.wait()
                else:
                    await changed.wait()
        finally:
            queue.remove(ticket)
            heapq.heapify(queue)
            self.waited_seconds_total += trio.current_time() - started
            self._poke()

    def note_answer(self, *, throttled: bool, retry_after_seconds: float | None = None,
                    limits: Mapping[str, Any] | None = None) -> None:
        """Report an answer: ``throttled`` for 429/503/limit_exceeded; UIS budgets in ``limits``."""
        now = trio.current_time()
        if throttled:
            self.limiter.throttled(now, retry_after_seconds)
        if limits is not None:
            self.limiter.observe_budget(limits, now)
        if throttled or limits is not None:
            self._poke()

    def waiting(self) -> int:
        """Requests waiting for their turn now."""
        return sum(len(queue) for queue in self._queues.values())

    def statistics(self) -> LimiterStatistics:
        return self.limiter.statistics(trio.current_time())

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def crm_gate(settings: RateLimitSettings) -> Gate:
    """The gate of the retailCRM account: ``telephony/*`` has its own, larger budget."""
    return Gate(Limiter("retailCRM", [Rule("telephony/", settings.crm_telephony_per_second)],
                        default_per_second=settings.crm_per_second,
                        recovery_seconds=settings.recovery_seconds))


def uis_gate(settings: RateLimitSettings) -> Gate:
    """The gate of the UIS account (Data API and Call API share the key's budgets)."""
    return Gate(Limiter("UIS", [], default_per_second=settings.uis_per_second,
                        recovery_seconds=settings.recovery_seconds))


def describe(*gates: Gate | None) -> dict[str, dict[str, Any]]:
    """The gates' state for ``/healthz`` and the status page, by account name."""
    out: dict[str, dict[str, Any]] = {}
    for gate in gates:
        if gate is None:
            continue
        stats = gate.statistics()
        out[stats.name] = {"slowdown": stats.slowdown,
                           "paused_for_seconds": stats.paused_for_seconds,
                           "throttled_total": stats.throttled_total,
                           "waiting": gate.waiting()}
    return out
