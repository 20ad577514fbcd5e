"""HTTP routes (quart-trio): UIS notifications, health, the status page. Status codes live here."""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import time
from typing import Any
from urllib.parse import parse_qsl

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from . import api, clicktocall, guard, ingest, metrics, page, routing, status_sync, throttle
from .context import Context
from .errors import RejectedNotification

log = logging.getLogger(__name__)

_MAX_DEPTH = 32
_LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="12"'
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


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RejectedNotification("appears twice in the JSON object", key)
        result[key] = value
    return result


def _depth(value: Any, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def decode_body(raw: bytes) -> dict[str, Any]:
    """A JSON object from a request body; ``RejectedNotification`` saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedNotification(f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise RejectedNotification("body is empty: expected a JSON object")
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise RejectedNotification(f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from None
    except RecursionError:
        raise RejectedNotification("body is nested too deeply") from None
    except ValueError as exc:  # CPython refuses integers of over 4300 digits
        raise RejectedNotification(f"body is not usable JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise RejectedNotification(f"body must be a JSON object, got {type(data).__name__}")
    if _depth(data) > _MAX_DEPTH:
        raise RejectedNotification("body is nested too deeply")
    try:  # "\ud800" is valid JSON but no text: SQLite (and retailCRM) could not store it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RejectedNotification("body holds a lone surrogate escape (\\ud800-\\udfff)"
                                   ) from None
    return data


def create_app(ctx: Context) -> QuartTrio:
    """The web application of one daemon; everything it needs comes from ``ctx``."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.server.max_body_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["RESPONSE_TIMEOUT"] = 30
    guard.register(app, ctx)  # size and time limits from the settings, sender allow-list
    secret = ctx.settings.uis.webhook_secret.reveal().encode()

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

    # One path segment: "<secret>/anything" is no notification (it 404s, or is another route).
    @app.route("/webhooks/uis/<given>", methods=["GET", "POST"])
    async def uis_notification(given: str) -> Response:
        if not hmac.compare_digest(given.encode(), secret):
            return _error(404, "not_found", "no such page")
        method = request.method
        fields: dict[str, Any] = {}
        try:
            if method == "GET":
                fields = {k: v for k, v in request.args.items()}
            else:
                raw = await request.get_data(cache=False)
                try:
                    if request.mimetype == "application/x-www-form-urlencoded":
                        fields = _form(raw)
                    else:
                        fields = decode_body(raw)
                except RejectedNotification as exc:
                    ingest.journal_rejected(ctx.store, str(exc),
                                            raw[:16384].decode("utf-8", "replace"), method)
                    raise
            outcome = ingest.ingest(ctx.store, ctx.chart, ctx.tz, fields, method=method)
        except RejectedNotification as exc:
            log.warning("rejected a notification: %s", exc)
            ctx.metrics.observe_notification(fields.get("event"), "rejected")
            return _error(400, "invalid_notification", exc.message, exc.field)
        except sqlite3.Error as exc:
            log.exception("could not store a notification")
            return _error(503, "storage_unavailable", f"the notification was not stored: {exc}")
        ctx.metrics.observe_notification(outcome.event, outcome.status, outcome.state_before,
                                         outcome.state)
        if outcome.actions:
            ctx.outbox.wake()  # its listeners include the status page's live feed
        else:
            ctx.live.poke()  # a change without actions is still news for the status page
        body: dict[str, Any] = {"status": outcome.status}
        if outcome.call_id is not None:
            body["call_session_id"] = outcome.call_id
        if outcome.state is not None:
            body["state"] = outcome.state
        return _json(body)

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
                "last_error": stats.last_error,
            },
            "rate_limits": throttle.describe(ctx.crm.gate, ctx.uis.gate),
        }
        return _json(body, 503 if problems else 200)

    page.register(app, ctx)  # GET /, /calls/<id>, /live, /login, retry of dead letters
    return app


def _form(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedNotification("body is not valid UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))
