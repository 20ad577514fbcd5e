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
import logging
import sqlite3
from typing import Any

from tracker.context import Context
from tracker.core import bodies, notifications
from tracker.core.notifications import WEBHOOK_PREFIX as PREFIX
from tracker.errors import BodyError
from tracker.intake import ingest
from tracker.web import guard, responses

log = logging.getLogger(__name__)

METHODS = ("GET", "POST")

Answer = tuple[int, dict[str, Any]]


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
            return 404, responses.problem("not_found", "no such page")
        method = scope["method"]
        if method not in METHODS:
            return 405, responses.problem("method_not_allowed",
                                          f"{method} is not allowed here: use GET or POST")
        fields: dict[str, Any] = {}
        try:
            if method == "GET":
                fields = bodies.decode_query(scope.get("query_string", b""))
            else:
                [content_type, *_] = guard.header_values(scope, b"content-type") or [b""]
                mimetype = content_type.split(b";")[0].strip().lower()
                try:
                    if mimetype == b"application/x-www-form-urlencoded":
                        fields = bodies.decode_form(body)
                    else:
                        fields = notifications.decode_object_with_placeholders(body)
                except BodyError as exc:
                    ingest.journal_rejected(ctx.store, str(exc),
                                            body[:16384].decode("utf-8", "replace"), method)
                    raise
            outcome = await ctx.intake.submit(fields, method)
        except BodyError as exc:  # RejectedNotification included
            log.warning("rejected a notification: %s", exc)
            ctx.metrics.observe_notification(fields.get("event"), "rejected")
            return 400, responses.problem("invalid_notification", exc.message, exc.field)
        except sqlite3.Error as exc:
            log.error("could not store a notification: %r", exc)
            return 503, responses.problem("storage_unavailable",
                                          f"the notification was not stored: {exc}")
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
            status, answer = 500, responses.problem(
                "internal_error", "tracker failed to handle this request; see its log")
        headers = [(b"allow", ", ".join(METHODS).encode())] if status == 405 else []
        await responses.send_json(send, status, answer, headers)

    return app
