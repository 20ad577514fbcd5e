"""HTTP routes (quart-trio): health, metrics, the status page, the APIs; UIS notifications come
first (webhook.py). Status codes live in these modules."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tracker import metrics
from tracker.clients import throttle
from tracker.context import Context
from tracker.db import keys
from tracker.features import clicktocall, routing, status_sync
from tracker.web import api, failures, guard, page, responses, webhook
from tracker.web.responses import error_response, json_response

log = logging.getLogger(__name__)

_LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<rect width="64" height="64" rx="12"'
    ' fill="#1d4ed8"/><path d="M20 16h8l4 10-5 3a24 24 0 0 0 8 8l3-5 10 4v8a4 4 0 0 1-4 4'
    'C28 48 16 36 16 20a4 4 0 0 1 4-4z" fill="#fff"/></svg>'
)


def create_app(ctx: Context) -> QuartTrio:
    """The web application of one daemon; everything it needs comes from ``ctx``."""
    app = QuartTrio(__name__)
    # UIS notifications are answered in front of quart (webhook.py); the guard's size and time
    # limits wrap both, and its sender allow-list covers the other /webhooks/uis/ routes.
    guard.wrap_asgi(app, lambda inner: webhook.with_notifications(ctx, inner))
    guard.register(app, ctx)
    guard.wrap_asgi(app, lambda inner: responses.close_when_draining(inner, ctx.lifecycle))
    failures.register(app, ctx)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return await http_error(exc)
        # logged without the request path: the notification URL holds the webhook secret
        log.error("internal error answering %s: %r", request.method, exc, exc_info=exc)
        return error_response(500, "internal_error",
                              "tracker failed to handle this request; see its log")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        names = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = exc.description or exc.name
        if code == 413:
            message = f"body over {ctx.settings.server.max_body_bytes} bytes"
        return error_response(code, names.get(code, exc.name.lower().replace(" ", "_")), message)

    routing.register(app, ctx)
    clicktocall.register(app, ctx)
    status_sync.register(app, ctx)
    api.register(app, ctx)
    live_states = tuple(s for s in ctx.chart.states if not ctx.chart.is_final(s))

    @app.route("/metrics")
    async def metrics_page() -> Response:
        """Prometheus metrics; with ``admin.metrics_require_key`` only for a ``calls:read``
        key."""
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
        return Response(ctx.metrics.render(), content_type=metrics.CONTENT_TYPE)

    @app.route("/static/logo.svg")
    async def logo() -> Response:
        return Response(_LOGO, content_type="image/svg+xml")

    @app.route("/healthz")
    async def healthz() -> Response:
        problems = []
        unwritable = ctx.store.writable()
        if unwritable is not None:
            problems.append(f"database not writable: {unwritable}")
        if not ctx.outbox.running:
            problems.append("outbox workers are not running")
        if ctx.integrity.problem is not None:
            problems.append(f"database damaged: {ctx.integrity.problem}")
        stats = ctx.outbox.statistics()
        body = {
            "status": "fail" if problems else ("degraded" if stats.consecutive_failures else "ok"),
            "problems": problems,
            "uptime_seconds": round(time.time() - ctx.lifecycle.started_at, 1),
            "outbox": {
                "pending": stats.pending,
                "retrying": stats.retrying,
                "dead": stats.dead,
                "consecutive_failures": stats.consecutive_failures,
                "last_error": stats.last_error if _may_see_details(ctx)
                else _without_addresses(stats.last_error),
            },
            "rate_limits": throttle.describe(ctx.crm.gate, ctx.uis.gate),
            "database": _database_health(ctx),
        }
        return json_response(body, 503 if problems else 200)

    page.register(app, ctx)  # GET /, /calls/<id>, /live, /login, retry of dead letters
    return app


_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+|\[[0-9a-f:.]+\](:\d+)?"
                      r"|\b[\w.-]+:\d{1,5}\b", re.IGNORECASE)


def _may_see_details(ctx: Context) -> bool:
    """A caller with a calls:read key (or let in from loopback) sees upstream addresses."""
    token = keys.bearer(request.headers.get("Authorization"))
    return keys.authorize(ctx.store, token, "calls:read") is not None or keys.loopback_allowed(
        ctx.settings.admin.allow_loopback_without_key, request.remote_addr,
        request.headers.keys())


def _without_addresses(text: str | None) -> str | None:
    """An error message without the URLs and host:port of upstreams, for anonymous eyes."""
    return None if text is None else _ADDRESS.sub("<upstream>", text)


def _database_health(ctx: Context) -> dict[str, Any]:
    """The integrity check's verdict, the background checkpoints and the group commits."""
    check = ctx.integrity
    verdict = "checking" if check.verdict is None else ("ok" if check.problem is None
                                                       else "damaged")
    checkpoints = ctx.checkpointer.statistics()
    intake = ctx.intake.statistics()
    return {
        "integrity": verdict,
        "checkpoints": checkpoints.checkpoints,
        "checkpoint_failures": checkpoints.failures,
        "last_checkpoint_error": checkpoints.last_error,
        "commits": intake.batches,
        "notifications_committed": intake.notifications,
        "largest_commit": intake.largest_batch,
    }
