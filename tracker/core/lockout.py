"""Failed attempts per caller address, without I/O: who has guessed too often to be heard now.

Each address has a bucket of ``per_minute`` failures that refills at ``per_minute`` a minute; a
failure (a wrong key, clientId or login) takes one, and an address whose bucket is empty is
refused (429) until one has grown back. Successes cost nothing, so a working client is never
slowed. The table is bounded: full buckets are forgotten, and past ``max_addresses`` the address
seen least recently goes, so an attacker rotating addresses cannot grow it without bound (it can
only push its own older entries out, each of which still had to fail ``per_minute`` times).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

MAX_ADDRESSES = 10_000


@dataclass(frozen=True)
class LockoutStatistics:
    """What the status page shows: addresses tracked and requests refused so far."""

    addresses: int
    refused_total: int
    failures_total: int


class Lockout:
    """The failure buckets of one daemon; time is passed in (seconds, any monotonic clock)."""

    def __init__(self, per_minute: float, *, max_addresses: int = MAX_ADDRESSES) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._refused = 0
        self._failures = 0

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def _tokens(self, address: str, now: float) -> float:
        entry = self._buckets.get(address)
        if entry is None:
            return self.per_minute
        tokens, at = entry
        return min(self.per_minute, tokens + max(0.0, now - at) * self.per_minute / 60.0)

    def wait_seconds(self, address: str, now: float) -> float:
        """0 when ``address`` may be heard; else the seconds until it may (for Retry-After).
        A positive answer counts as a refused request."""
        if not self.enabled:
            return 0.0
        tokens = self._tokens(address, now)
        if tokens >= 1.0:
            return 0.0
        self._refused += 1
        return (1.0 - tokens) * 60.0 / self.per_minute

    def fail(self, address: str, now: float) -> None:
        """Note one failed attempt from ``address``."""
        self._failures += 1
        if not self.enabled:
            return
        tokens = max(0.0, self._tokens(address, now) - 1.0)
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        # Entries that have grown full again say nothing: drop a few of the oldest each time.
        for _ in range(2):
            oldest = next(iter(self._buckets))
            if oldest == address or self._tokens(oldest, now) < self.per_minute:
                break
            del self._buckets[oldest]

    def statistics(self) -> LockoutStatistics:
        return LockoutStatistics(len(self._buckets), self._refused, self._failures)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
