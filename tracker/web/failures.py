"""Failed attempts: guessing throttled per caller address, and refusals logged in summary.

Routes mark a failed attempt (a wrong key, clientId or login) with ``note_failure`` and hand
what is to be logged of a refusal to ``note_refusal``; ``register`` does the rest around every
request:

- The caller's address is the peer, or behind ``server.trusted_proxies`` the sender named by
  ``X-Forwarded-For`` (guard.sender, the rule of ``uis.allowed_ips``).
- Each address may fail ``server.failures_per_minute`` times a minute (core/lockout.py); past
  that, every guarded route (all but ``/healthz``, ``/static/`` and UIS notifications) answers
  it 429 with ``Retry-After`` before its attempt is checked, so the budget also hides whether
  a guess was right.
- A refusal is logged as a fixed-size summary (route, outcome, size, address): the first
  ``ROWS_PER_MINUTE`` of each minute one row each, the rest as one row per minute that counts
  them, so that a flood from many addresses costs the request log kilobytes, not gigabytes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from tracker.context import Context
from tracker.core import lockout
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.db import requestlog
from tracker.db.store import Store
from tracker.web import guard

log = logging.getLogger(__name__)

ROWS_PER_MINUTE = 10
_MAX_ADDRESSES_COUNTED = 1000


@dataclass(frozen=True)
class FailureStatistics:
    """What the status page shows: attempts failed, throttled, and refusals only counted."""

    failed: int
    throttled: int
    addresses: int
    refusals_counted_only: int


class RefusalLog:
    """Writes refusal summaries to the request log, at most ``rows_per_minute`` rows a minute
    plus one row counting the others."""

    def __init__(self, store: Store, rows_per_minute: int = ROWS_PER_MINUTE) -> None:
        self._store = store
        self._rows_per_minute = rows_per_minute
        self._minute = -1
        self._written = 0
        self._count = 0
        self._bytes = 0
        self._addresses: set[str] = set()
        self.counted_only = 0

    def record(self, *, source: str, method: str, outcome: str, status: int, size: int,
               address: str, duration_ms: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.flush(now)
        if self._written < self._rows_per_minute:
            self._written += 1
            self._store.log_request(source=source, method=method[:100], outcome=outcome,
                                    status=status, duration_ms=duration_ms, at=now,
                                    params=requestlog.refused(size, address))
            return
        self._count += 1
        self.counted_only += 1
        self._bytes += size
        if len(self._addresses) < _MAX_ADDRESSES_COUNTED:
            self._addresses.add(address)

    def flush(self, now: float | None = None) -> None:
        """Start a new minute when one has passed, writing the count of the last one."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        if minute == self._minute:
            return
        if self._count:
            self._store.log_request(
                source="guard", method="refused", outcome="counted_only", status=0,
                duration_ms=0.0, at=self._minute * 60.0,
                params={"_refused": True, "count": self._count, "bytes": self._bytes,
                        "addresses": len(self._addresses)})
        self._minute, self._written, self._count, self._bytes = minute, 0, 0, 0
        self._addresses = set()


def note_failure() -> None:
    """Mark the current request as a failed attempt (a wrong key, clientId or login)."""
    g.auth_failed = True


def note_refusal(*, source: str, method: str, outcome: str, status: int, size: int,
                 duration_ms: float) -> None:
    """Have the current refused request logged as a summary (after it is answered)."""
    g.refusal = {"source": source, "method": method, "outcome": outcome, "status": status,
                 "size": size, "duration_ms": duration_ms}


def caller() -> str:
    """The address the current request came from, by the ``server.trusted_proxies`` rule."""
    return str(g.get("caller") or request.remote_addr or "?")


def guarded(path: str) -> bool:
    """Whether a path takes a key, clientId or login (and so is throttled after failures)."""
    return not (path == "/healthz" or path.startswith(("/static/", WEBHOOK_PREFIX)))


def register(app: QuartTrio, ctx: Context) -> None:
    """Count failures per address, answer 429 past the budget, log refusals in summary."""
    trusted = guard.networks(ctx.settings.server.trusted_proxies)
    table = lockout.Lockout(ctx.settings.server.failures_per_minute)
    refusals = RefusalLog(ctx.store)

    def statistics() -> FailureStatistics:
        stats = table.statistics()
        return FailureStatistics(stats.failures_total, stats.refused_total, stats.addresses,
                                 refusals.counted_only)

    app.extensions["tracker.failures"] = statistics

    @app.before_request
    async def throttle_failures() -> Response | None:
        address = guard.sender(request.remote_addr, request.headers.getlist("X-Forwarded-For"),
                               trusted)
        g.caller = str(address) if address is not None else (request.remote_addr or "?")
        if not guarded(request.path):
            return None
        wait = table.wait_seconds(g.caller, trio.current_time())
        if wait <= 0:
            return None
        after = lockout.retry_after(wait)
        response = Response(json.dumps({
            "error": "too_many_failures",
            "message": f"too many failed attempts from this address; try again in {after} s"}),
            status=429, content_type="application/json; charset=utf-8")
        response.headers["Retry-After"] = after
        return response

    @app.after_request
    async def count_failures(response: Response) -> Response:
        if g.get("auth_failed"):
            table.fail(caller(), trio.current_time())
        refusal: dict[str, Any] | None = g.get("refusal")
        if refusal is not None:
            try:
                refusals.record(address=caller(), **refusal)
            except sqlite3.Error:
                log.exception("could not write the request log")
        return response
