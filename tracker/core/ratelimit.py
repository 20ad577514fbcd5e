"""Rate limits of one upstream account, without I/O: token buckets that throttling answers slow.

retailCRM allows 10 requests/s per API key and 40/s on ``/telephony/*`` (the defaults of its
official clients); UIS charges every Data/Call API call to a minute and a day budget and reports
what is left in ``metadata.limits``. A :class:`Limiter` answers "how long must a request on this
route wait?" for a time passed in, so it is tested without clocks or sockets; ``throttle.Gate``
is the thin trio adapter that waits and picks the most urgent waiter.

A throttling answer (HTTP 429 or 503, UIS ``limit_exceeded``) halves the rate (down to
``floor``) and pauses every request for its ``Retry-After`` (one second without one); the rate
then climbs back linearly, reaching the configured one ``recovery_seconds`` after the last
throttling answer. An exhausted UIS budget pauses requests until the budget resets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

DEFAULT_PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Rule:
    """Requests whose route starts with ``prefix`` share one bucket of ``per_second``."""

    prefix: str
    per_second: float


@dataclass(frozen=True)
class LimiterStatistics:
    """What the status page and ``/healthz`` show about one limiter."""

    name: str
    rates: dict[str, float]  # bucket prefix ("" is the default bucket) -> requests/s allowed now
    slowdown: float  # 1.0 = full speed; 0.5 = half the configured rate
    paused_for_seconds: float
    throttled_total: int
    budget: dict[str, Any] | None  # the last UIS metadata.limits seen


class _Bucket:
    __slots__ = ("per_second", "burst", "tokens", "updated_at")

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.tokens = burst
        self.updated_at: float | None = None

    def refill(self, now: float, factor: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            self.tokens = min(self.burst, self.tokens + (now - self.updated_at)
                              * self.per_second * factor)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now


class Limiter:
    """Token buckets for one account: one per ``Rule`` plus a default one, all slowed together.

    ``burst`` is how many requests may go back to back after a quiet spell; the default of one
    spaces requests evenly, which also keeps a sliding one-second window under the limit.
    """

    def __init__(
        self,
        name: str,
        rules: Sequence[Rule],
        *,
        default_per_second: float,
        burst: float = 1.0,
        floor: float = 0.1,
        recovery_seconds: float = 30.0,
    ) -> None:
        if default_per_second <= 0 or any(rule.per_second <= 0 for rule in rules):
            raise ValueError("rates must be positive")
        self.name = name
        # Longest prefix first, so "/telephony/calls" could refine "/telephony".
        self._rules = sorted(rules, key=lambda rule: len(rule.prefix), reverse=True)
        self._buckets = {rule.prefix: _Bucket(rule.per_second, burst) for rule in rules}
        self._buckets[""] = _Bucket(default_per_second, burst)
        self._floor = floor
        self._recovery_seconds = recovery_seconds
        self._slowed_to = 1.0  # the factor right after the last throttling answer
        self._slowed_at: float | None = None
        self._paused_until = 0.0
        self._throttled_total = 0
        self._budget: dict[str, Any] | None = None

    def bucket_for(self, route: str) -> str:
        """The bucket a route draws from (its rule's prefix; "" for the default bucket)."""
        route = route.lstrip("/")
        for rule in self._rules:
            if route.startswith(rule.prefix.lstrip("/")):
                return rule.prefix
        return ""

    def slowdown(self, now: float) -> float:
        """The fraction of the configured rates allowed at ``now`` (1.0 when recovered)."""
        if self._slowed_at is None:
            return 1.0
        climbed = (now - self._slowed_at) / self._recovery_seconds if self._recovery_seconds else 1
        return min(1.0, self._slowed_to + max(0.0, climbed) * (1.0 - self._slowed_to))

    def delay(self, route: str, now: float) -> float:
        """Seconds a request on ``route`` must wait from ``now``; 0 when it may go."""
        factor = self.slowdown(now)
        bucket = self._buckets[self.bucket_for(route)]
        bucket.refill(now, factor)
        wait_token = 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / (
            bucket.per_second * factor)
        return max(wait_token, self._paused_until - now, 0.0)

    def take(self, route: str, now: float) -> None:
        """Spend a token for a request that goes now (after ``delay`` said 0)."""
        bucket = self._buckets[self.bucket_for(route)]
        bucket.refill(now, self.slowdown(now))
        bucket.tokens -= 1.0

    def throttled(self, now: float, retry_after_seconds: float | None = None) -> None:
        """The upstream answered 429/503/limit_exceeded: slow down and pause."""
        self._throttled_total += 1
        self._slowed_to = max(self._floor, self.slowdown(now) / 2)
        self._slowed_at = now
        pause = DEFAULT_PAUSE_SECONDS if retry_after_seconds is None else retry_after_seconds
        self._paused_until = max(self._paused_until, now + max(0.0, pause))

    def observe_budget(self, limits: Mapping[str, Any], now: float) -> None:
        """Take UIS ``metadata.limits`` into account: pause until an exhausted budget resets."""
        self._budget = dict(limits)
        for left, reset in (("minute_remaining", "minute_reset"), ("day_remaining", "day_reset")):
            remaining, seconds = limits.get(left), limits.get(reset)
            if _number(remaining) and remaining <= 0:
                wait = float(seconds) if _number(seconds) and seconds > 0 else 60.0
                self._paused_until = max(self._paused_until, now + wait)

    def statistics(self, now: float) -> LimiterStatistics:
        factor = self.slowdown(now)
        return LimiterStatistics(
            name=self.name,
            rates={prefix: round(b.per_second * factor, 3) for prefix, b in self._buckets.items()},
            slowdown=round(factor, 3),
            paused_for_seconds=round(max(0.0, self._paused_until - now), 3),
            throttled_total=self._throttled_total,
            budget=None if self._budget is None else dict(self._budget),
        )


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def error_limits(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``metadata.limits`` of a UIS error's ``data`` (UIS sends the metadata with errors
    as with results), or None when the error carries none."""
    metadata = data.get("metadata")
    limits = metadata.get("limits") if isinstance(metadata, Mapping) else None
    return limits if isinstance(limits, Mapping) and limits else None


def limit_exceeded_wait(limits: Mapping[str, Any]) -> float:
    """How long to hold off after UIS ``limit_exceeded``, judged by ``metadata.limits``: those
    of the refusal itself (``error_limits``) when it has them, else the last answer's. Until
    the day budget resets when it is spent, else until the minute budget resets (60 s when UIS
    never said)."""
    day_left, day_reset = limits.get("day_remaining"), limits.get("day_reset")
    if _number(day_left) and day_left <= 1 and _number(day_reset) and day_reset > 0:
        return float(day_reset)
    minute_reset = limits.get("minute_reset")
    if _number(minute_reset) and minute_reset > 0:
        return float(minute_reset)
    return 60.0
