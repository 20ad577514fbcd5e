"""HTTP routes (quart-trio): health, the status page, the APIs; UIS notifications come first
(webhook.py). Status codes live in these modules."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tracker import metrics
from tracker.clients import throttle
from tracker.context import Context
from tracker.db import keys
from tracker.features import clicktocall, routing, status_sync
from tracker.web import api, failures, guard, page, webhook

log = logging.getLogger(__name__)

_LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<rect width="64" height="64" rx="12"'
    ' fill="#1d4ed8"/><path d="M20 16h8l4 10-5 3a24 24 0 0 0 8 8l3-5 10 4v8a4 4 0 0 1-4 4'
    'C28 48 16 36 16 20a4 4 0 0 1 4-4z" fill="#fff"/></svg>'
)


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status,
                    content_type="application/json; charset=utf-8")


def _error(status: int, error: str, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": error, "message": message}
    if field is not None:
        body["field"] = field
    return _json(body, status)


def create_app(ctx: Context) -> QuartTrio:
    """The web application of one daemon; everything it needs comes from ``ctx``."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.server.max_body_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = 30
    # UIS notifications are answered in front of quart (webhook.py); the guard's size and time
    # limits wrap both, and its sender allow-list covers the other /webhooks/uis/ routes.
    app.asgi_app = webhook.with_notifications(ctx, app.asgi_app)
    guard.register(app, ctx)
    failures.register(app, ctx)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return await http_error(exc)
        # logged without the request path: the notification URL holds the webhook secret
        log.error("internal error answering %s: %r", request.method, exc, exc_info=exc)
        return _error(500, "internal_error", "tracker failed to handle this request; see its log")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        names = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = exc.description or exc.name
        if code == 413:
            message = f"body over {ctx.settings.server.max_body_bytes} bytes"
        return _error(code, names.get(code, exc.name.lower().replace(" ", "_")), message)

    @app.after_request
    async def close_when_draining(response: Response) -> Response:
        if ctx.lifecycle.draining:
            # hypercorn waits for kept-alive connections on shutdown; tell clients to go now.
            response.headers["Connection"] = "close"
        return response

    routing.register(app, ctx)
    clicktocall.register(app, ctx)
    status_sync.register(app, ctx)
    api.register(app, ctx)
    metrics.register(app, ctx)

    @app.route("/static/logo.svg")
    async def logo() -> Response:
        return Response(_LOGO, content_type="image/svg+xml")

    @app.route("/healthz")
    async def healthz() -> Response:
        problems = []
        try:
            ctx.store.conn.execute("BEGIN IMMEDIATE")
            ctx.store.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            problems.append(f"database not writable: {exc}")
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
        return _json(body, 503 if problems else 200)

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
