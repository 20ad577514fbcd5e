"""Prometheus metrics of one daemon, served at ``GET /metrics``.

Each daemon owns its ``CollectorRegistry`` (never the global one: tests run several daemons in
one process). Counters are fed where things happen (the webhook route, the outbox, the admin
API); gauges are read from the store when scraped, so they are right after a restart too.
Every label value comes from a closed set (known events, chart states, outbox kinds, error
kinds, API methods), so no outside input can grow the number of series.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tracker.core.catalogue import EVENTS
from tracker.errors import PermanentDelivery, RetryableDelivery

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from tracker.context import Context
    from tracker.db.store import Store

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
OUTBOX_STATUSES = ("pending", "retrying", "dead")


def error_kind(exc: BaseException) -> str:
    """A failed delivery attempt as a label: timeout, transport, rate_limited, server_error,
    bad_answer (retryable, other), rejected (permanent) or internal (a bug of ours)."""
    if isinstance(exc, RetryableDelivery):
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return "timeout"
        if isinstance(exc.__cause__, httpx.HTTPError):
            return "transport"
        if exc.status == 429 or exc.detail == "limit_exceeded":
            return "rate_limited"
        if exc.status is not None and exc.status >= 500:
            return "server_error"
        return "bad_answer"
    if isinstance(exc, PermanentDelivery):
        return "rejected"
    return "internal"


class Metrics:
    """The counters, histogram and gauges of one daemon, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.notifications = Counter(
            "tracker_notifications", "UIS notifications received, by event and outcome",
            ["event", "outcome"], registry=r)
        self.transitions = Counter(
            "tracker_transitions", "Call state changes", ["from_state", "to_state"], registry=r)
        self.finished = Counter(
            "tracker_outbox_finished", "Outbox actions finished, by action and status "
            "(delivered, dropped, dead)", ["action", "status"], registry=r)
        self.latency = Histogram(
            "tracker_delivery_latency_seconds",
            "From the moment an action was stored to its delivery upstream", ["action"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "tracker_upstream_errors", "Failed delivery attempts, by action and kind of error",
            ["action", "kind"], registry=r)
        self.api_requests = Counter(
            "tracker_api_requests", "Admin API requests, by method and outcome (ok or the "
            "error mnemonic)", ["method", "outcome"], registry=r)
        self.outbox_rows = Gauge(
            "tracker_outbox_rows", "Outbox rows waiting (pending; retrying is the part of "
            "pending that failed before) and dead letters", ["status"], registry=r)
        self.outbox_oldest = Gauge(
            "tracker_outbox_oldest_pending_age_seconds",
            "Age of the oldest action still waiting for delivery (0 when none)", registry=r)
        self.calls_in_progress = Gauge(
            "tracker_calls_in_progress", "Calls not yet ended or lost, by state", ["state"],
            registry=r)
        self.intake_batch = Histogram(
            "tracker_intake_batch_size", "Notifications written by one commit (group commit);"
            " _count is the number of commits", buckets=BATCH_BUCKETS, registry=r)
        self.checkpoints = Counter(
            "tracker_wal_checkpoints", "WAL checkpoints run in the background, by outcome "
            "(ok, failed)", ["outcome"], registry=r)
        self.database_ok = Gauge(
            "tracker_database_integrity_ok", "0 once an integrity check found the database "
            "damaged, else 1", registry=r)
        self.start_time = Gauge(
            "tracker_start_time_seconds", "When this daemon started (Unix time)", registry=r)

    # -- feeding --------------------------------------------------------------------------------

    def observe_notification(self, event: Any, outcome: str, state_before: str | None = None,
                             state_after: str | None = None) -> None:
        """One notification answered: ``outcome`` accepted, duplicate, ignored or rejected."""
        label = event if isinstance(event, str) and event in EVENTS else "other"
        self.notifications.labels(label, outcome).inc()
        if state_before is not None and state_after is not None and state_before != state_after:
            self.transitions.labels(state_before, state_after).inc()

    def observe_delivery(self, action: str, status: str, created_at: float | None,
                         now: float | None = None) -> None:
        """An outbox row finished (delivered, dropped or dead)."""
        self.finished.labels(action, status).inc()
        if status == "delivered" and created_at is not None:
            now = time.time() if now is None else now
            self.latency.labels(action).observe(max(0.0, now - created_at))

    def observe_failure(self, action: str, exc: BaseException) -> None:
        """A delivery attempt failed (retried later, or a dead letter)."""
        self.upstream_errors.labels(action, error_kind(exc)).inc()

    def observe_batch(self, size: int) -> None:
        """One group commit of ``size`` notifications."""
        self.intake_batch.observe(size)

    def observe_checkpoint(self, ok: bool) -> None:
        """A background WAL checkpoint ran (from its thread: prometheus_client is thread-safe)."""
        self.checkpoints.labels("ok" if ok else "failed").inc()

    def observe_api(self, method: str, outcome: str) -> None:
        self.api_requests.labels(method, outcome).inc()

    # -- scraping -------------------------------------------------------------------------------

    def refresh(self, store: Store, live_states: tuple[str, ...], started_at: float,
                now: float | None = None, *, database_damaged: bool = False) -> None:
        """Read the gauges from the store (indexed queries only: cheap on a big database)."""
        now = time.time() if now is None else now
        self.database_ok.set(0 if database_damaged else 1)
        conn = store.conn
        pending = conn.execute("SELECT count(*), min(created_at), sum(attempts > 0) FROM outbox"
                               " WHERE status = 'pending'").fetchone()
        dead = conn.execute("SELECT count(*) FROM outbox WHERE status = 'dead'").fetchone()[0]
        self.outbox_rows.labels("pending").set(pending[0])
        self.outbox_rows.labels("retrying").set(pending[2] or 0)
        self.outbox_rows.labels("dead").set(dead)
        self.outbox_oldest.set(max(0.0, now - pending[1]) if pending[1] is not None else 0.0)
        marks = ", ".join("?" for _ in live_states)
        counts = dict(conn.execute(
            f"SELECT state, count(*) FROM calls WHERE state IN ({marks}) GROUP BY state",
            live_states).fetchall()) if live_states else {}
        for state in live_states:
            self.calls_in_progress.labels(state).set(counts.get(state, 0))
        self.start_time.set(started_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def register(app: QuartTrio, ctx: Context) -> None:
    """Add ``GET /metrics``; with ``admin.metrics_require_key`` it needs a ``calls:read`` key."""
    from quart import Response, g, request  # quart is heavy: imported only by a serving daemon

    from tracker.db import keys

    live_states = tuple(s for s in ctx.chart.states if not ctx.chart.is_final(s))

    @app.route("/metrics")
    async def metrics() -> Any:
        if ctx.settings.admin.metrics_require_key:
            token = keys.bearer(request.headers.get("Authorization"))
            allowed = keys.authorize(ctx.store, token, "calls:read") is not None or (
                token is None and keys.loopback_allowed(
                    ctx.settings.admin.allow_loopback_without_key, request.remote_addr,
                    request.headers.keys()))
            if not allowed:
                if token is not None:
                    g.auth_failed = True  # a wrong key: web/failures.py counts it for the address
                response = Response('{"error": "forbidden", "message": "a key with calls:read is '
                                    'required (Authorization: Bearer)"}', status=401,
                                    content_type="application/json")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        ctx.metrics.refresh(ctx.store, live_states, ctx.lifecycle.started_at,
                            database_damaged=ctx.integrity.problem is not None)
        return Response(ctx.metrics.render(), content_type=CONTENT_TYPE_LATEST)
