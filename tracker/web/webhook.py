"""UIS notifications over HTTP: ``/webhooks/uis/<secret>``, GET or POST, as plain ASGI.

The busiest route is served in front of quart: quart's request machinery costs more CPU than
everything else a notification does (README, "Performance"). The guard's body limits and
timeouts still wrap it, and it checks the same sender allow-list. Any other path goes on to
quart, ``/webhooks/uis/<secret>/route`` included.

Answers: 404 for a wrong secret, 405 for other methods, 403 for a refused sender, 400 naming the
problem (the body is journaled), 503 when the database refuses, 200 with ``status`` accepted,
duplicate or ignored once the notification is committed.
"""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
from typing import Any
from urllib.parse import parse_qsl

from tracker.context import Context
from tracker.core import notifications
from tracker.errors import RejectedNotification
from tracker.intake import ingest
from tracker.web import guard

log = logging.getLogger(__name__)

PREFIX = "/webhooks/uis/"
METHODS = ("GET", "POST")
_MAX_DEPTH = 32

Answer = tuple[int, dict[str, Any]]


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
        data = _with_bare_placeholders(text, exc)
    except RecursionError:
        raise RejectedNotification("body is nested too deeply") from None
    except ValueError as exc:  # CPython refuses integers of over 4300 digits
        raise RejectedNotification(f"body is not usable JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise RejectedNotification(f"body must be a JSON object, got {type(data).__name__}")
    # Nesting needs brackets, and a lone surrogate an escape: skip the walks when neither is there.
    if text.count("[") + text.count("{") > _MAX_DEPTH and _depth(data) > _MAX_DEPTH:
        raise RejectedNotification("body is nested too deeply")
    if "\\u" in text:
        try:  # "\ud800" is valid JSON but no text: SQLite (and retailCRM) could not store it
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RejectedNotification("body holds a lone surrogate escape (\\ud800-\\udfff)"
                                       ) from None
    return data


def _with_bare_placeholders(text: str, exc: json.JSONDecodeError) -> Any:
    """A body that is JSON once the bare ``{{name}}`` placeholders UIS left are null; the names
    ride along in ``notifications.UNFILLED``. Anything else wrong is refused as before."""
    filled, names = notifications.fill_bare_placeholders(text)
    try:
        data = json.loads(filled, object_pairs_hook=_reject_duplicates) if names else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise RejectedNotification(f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from None
    data[notifications.UNFILLED] = names
    return data


def decode_form(raw: bytes) -> dict[str, Any]:
    """Fields of an ``application/x-www-form-urlencoded`` body (the last of repeated names)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedNotification("body is not valid UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def decode_query(query: bytes) -> dict[str, Any]:
    """Fields of a GET notification (the first of repeated names)."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def with_notifications(ctx: Context, inner: Any) -> Any:
    """ASGI: answer notification requests here, hand everything else to ``inner`` (quart)."""
    secret = ctx.settings.uis.webhook_secret.reveal().encode()
    allow = guard.networks(ctx.settings.uis.allowed_ips)
    trusted = guard.networks(ctx.settings.server.trusted_proxies)

    async def notification(scope: dict[str, Any], body: bytes) -> Answer:
        refusal = guard.sender_refusal(scope, allow, trusted)
        if refusal is not None:
            return 403, refusal
        given = scope["path"][len(PREFIX):]
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret):
            return 404, {"error": "not_found", "message": "no such page"}
        method = scope["method"]
        if method not in METHODS:
            return 405, {"error": "method_not_allowed",
                         "message": f"{method} is not allowed here: use GET or POST"}
        fields: dict[str, Any] = {}
        try:
            if method == "GET":
                fields = decode_query(scope.get("query_string", b""))
            else:
                [content_type, *_] = guard.header_values(scope, b"content-type") or [b""]
                mimetype = content_type.split(b";")[0].strip().lower()
                try:
                    if mimetype == b"application/x-www-form-urlencoded":
                        fields = decode_form(body)
                    else:
                        fields = decode_body(body)
                except RejectedNotification as exc:
                    ingest.journal_rejected(ctx.store, str(exc),
                                            body[:16384].decode("utf-8", "replace"), method)
                    raise
            outcome = await ctx.intake.submit(fields, method)
        except RejectedNotification as exc:
            log.warning("rejected a notification: %s", exc)
            ctx.metrics.observe_notification(fields.get("event"), "rejected")
            problem = {"error": "invalid_notification", "message": exc.message}
            if exc.field is not None:
                problem["field"] = exc.field
            return 400, problem
        except sqlite3.Error as exc:
            log.error("could not store a notification: %r", exc)
            return 503, {"error": "storage_unavailable",
                         "message": f"the notification was not stored: {exc}"}
        ctx.metrics.observe_notification(outcome.event, outcome.status, outcome.state_before,
                                         outcome.state)
        if outcome.actions:
            ctx.outbox.wake()  # its listeners include the status page's live feed
        else:
            ctx.live.poke()  # a change without actions is still news for the status page
        answer: dict[str, Any] = {"status": outcome.status}
        if outcome.call_id is not None:
            answer["call_session_id"] = outcome.call_id
        if outcome.state is not None:
            answer["state"] = outcome.state
        return 200, answer

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not path.startswith(PREFIX)
                or "/" in path[len(PREFIX):] or len(path) == len(PREFIX)):
            await inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, answer = await notification(scope, b"".join(chunks))
        except Exception as exc:
            # logged without the request path: it holds the webhook secret
            log.error("internal error answering %s: %r", scope.get("method"), exc, exc_info=exc)
            status, answer = 500, {"error": "internal_error",
                                   "message": "tracker failed to handle this request; see its log"}
        data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        headers = [(b"content-type", b"application/json; charset=utf-8"),
                   (b"content-length", str(len(data)).encode())]
        if status == 405:
            headers.append((b"allow", ", ".join(METHODS).encode()))
        if ctx.lifecycle.draining:
            # hypercorn waits for kept-alive connections on shutdown; tell clients to go now.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app
