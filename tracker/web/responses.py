"""JSON answers for quart routes and plain-ASGI endpoints alike, and the close while draining."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from quart import Response

from tracker.context import Lifecycle

CONTENT_TYPE = "application/json; charset=utf-8"


def json_bytes(body: Any) -> bytes:
    """``body`` as UTF-8 JSON (not ASCII-escaped: Russian names stay readable)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def json_response(body: Any, status: int = 200, *,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A quart JSON response."""
    return Response(json_bytes(body), status=status, content_type=CONTENT_TYPE,
                    headers=dict(headers or {}))


def problem(error: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The body of every refusal: ``{"error": mnemonic, "message": ..., "field": ...}``."""
    body: dict[str, Any] = {"error": error, "message": message}
    if field is not None:
        body["field"] = field
    return body


def error_response(status: int, error: str, message: str, field: str | None = None) -> Response:
    """A quart JSON refusal (see ``problem``)."""
    return json_response(problem(error, message, field), status)


async def send_json(send: Any, status: int, body: Any,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer a plain-ASGI request with ``body`` as JSON, plus ``headers``."""
    data = json_bytes(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", CONTENT_TYPE.encode()),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


def close_when_draining(asgi_app: Any, lifecycle: Lifecycle) -> Any:
    """ASGI middleware: once the daemon drains, every answer says ``Connection: close``.

    hypercorn waits for kept-alive connections on shutdown; this tells clients to go now. It wraps
    the whole app, so the notification endpoint in front of quart and quart's routes share it.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await asgi_app(scope, receive, send)
            return

        async def closing_send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start" and lifecycle.draining:
                headers = list(message.get("headers") or [])
                if not any(bytes(name).lower() == b"connection" for name, _ in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await asgi_app(scope, receive, closing_send)

    return app
