"""Request guards: who may send UIS notifications, and how long any request may take.

Sender allow-list: ``uis.allowed_ips`` (addresses or CIDR networks; empty lets anyone through,
the secret in the URL still guards). Behind a reverse proxy every peer is the proxy: list it in
``server.trusted_proxies`` and the sender is read from ``X-Forwarded-For``, right to left,
skipping trusted hops. The header is ignored when the peer is not a trusted proxy, since anyone
can write one. A refused sender gets 403 and nothing is stored.

Size and time: before any route runs, the body is read in full, up to ``server.max_body_bytes``
(more: 413) within ``server.request_timeout_seconds`` (slower: 408). The route then has that long
again to start its answer (503 otherwise) and that long to send it; an idle or half-sent
connection is closed after it too (hypercorn's keep-alive timeout, set by the service). Reading
the body first is also a workaround: quart-trio sometimes never sends an answer that a route
gave before the request body had arrived (seen with hypercorn 0.18, quart-trio 0.12: about one
POST in ten whose route does not read the body, such as a 404 for a wrong secret).

Host names: only a ``Host`` naming the host of ``server.listen`` or ``server.public_url``, one of
``server.allowed_hosts``, ``localhost`` or an IP address is answered (421 otherwise): a page of
another site whose name was made to point at this machine (DNS rebinding) sends its own name.
Every answer carries ``X-Content-Type-Options: nosniff``.
Failed attempts (wrong keys, clientIds, logins) are throttled per address in failures.py.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import trio
from quart import Response, request
from quart_trio import QuartTrio

from tracker.context import Context
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.web import responses

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Parse addresses and CIDRs (validated by the config already)."""
    return tuple(ipaddress.ip_network(text.strip(), strict=False) for text in texts)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:8080"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5060"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(address: Any, nets: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in nets)


def sender(peer: str | None, forwarded_for: Sequence[str],
           trusted: Sequence[Network]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address that sent a request: the peer, or when the peer is a trusted proxy, the first
    untrusted hop of ``X-Forwarded-For`` counted from the right. None when it cannot be told."""
    address = _address(peer or "")
    if not _inside(address, trusted):
        return address
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return None  # a garbled chain proves nothing
        if not _inside(address, trusted):
            return address
    return address  # every hop is trusted: the request came from the proxies themselves


def allowed(peer: str | None, forwarded_for: Sequence[str], allow: Sequence[Network],
            trusted: Sequence[Network]) -> bool:
    """Whether a notification from this peer (and forwarding chain) may be accepted."""
    return not allow or _inside(sender(peer, forwarded_for, trusted), allow)


def register(app: QuartTrio, ctx: Context) -> None:
    """Install the size and time limits and the sender allow-list on ``app``."""
    server = ctx.settings.server
    # quart's own limits, set here only: they back the middleware up (a route that reads the
    # request again, the sending of an answer).
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.config["BODY_TIMEOUT"] = server.request_timeout_seconds
    app.config["RESPONSE_TIMEOUT"] = server.request_timeout_seconds
    # The Host check comes first: a misdirected request is answered before its body is read.
    hosts = allowed_host_names(server.listen, server.public_url, server.allowed_hosts)
    wrap_asgi(app, lambda inner: with_host_check(
        with_limits(inner, max_body_bytes=server.max_body_bytes,
                    timeout_seconds=server.request_timeout_seconds), hosts))
    allow = networks(ctx.settings.uis.allowed_ips)
    trusted = networks(server.trusted_proxies)
    if not allow:
        return

    @app.before_request
    async def check_sender() -> Response | None:
        if not request.path.startswith(WEBHOOK_PREFIX):
            return None
        refusal = sender_refusal(request.scope, allow, trusted)
        if refusal is None:
            return None
        return responses.json_response(refusal, 403)


def wrap_asgi(app: QuartTrio, middleware: Callable[[Any], Any]) -> None:
    """Put an ASGI ``middleware`` in front of ``app`` (quart's documented way to add one)."""
    app.asgi_app = middleware(app.asgi_app)  # type: ignore[method-assign]  # quart's own advice


def allowed_host_names(listen: str, public_url: str, extra: Iterable[str]) -> frozenset[str]:
    """The host names (lower case, no port) that ``Host`` may carry besides IP addresses."""
    names = {"localhost"}
    listen_host = listen.rsplit(":", 1)[0].strip("[]") if ":" in listen else listen
    public_host = urlsplit(public_url).hostname or ""
    for name in (listen_host, public_host, *extra):
        name = name.strip().lower().rstrip(".")
        if name:
            names.add(name)
    return frozenset(names)


def host_allowed(value: str | None, names: frozenset[str]) -> bool:
    """Whether a ``Host`` header value names this daemon. No header (HTTP/1.0, not a browser)
    passes; an IP address passes (it cannot be made to point elsewhere); ``*.example.com`` in
    ``names`` allows the names under example.com."""
    if value is None:
        return True
    host = value.strip().lower()
    if host.startswith("["):
        return host.find("]") > 0  # an IPv6 literal
    if host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return False
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if host in names:
        return True
    return any(name.startswith("*.") and host.endswith(name[1:]) for name in names)


def with_host_check(asgi_app: Any, names: frozenset[str]) -> Any:
    """ASGI middleware: 421 for a ``Host`` that is not ours; ``nosniff`` on every answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await asgi_app(scope, receive, send)
            return
        hosts = header_values(scope, b"host")
        if not host_allowed(hosts[0].decode("latin-1") if hosts else None, names):
            await _refuse(send, 421, "misdirected_request",
                          "this Host is not served here: it is not the host of server.listen "
                          "or server.public_url, nor in server.allowed_hosts")
            return

        async def nosniff_send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(bytes(name).lower() == b"x-content-type-options"
                           for name, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await asgi_app(scope, receive, nosniff_send)

    return app


def sender_refusal(scope: Any, allow: Sequence[Network],
                   trusted: Sequence[Network]) -> dict[str, str] | None:
    """The 403 body (logged) when the sender of this ASGI request may not send notifications."""
    if not allow:
        return None
    client = scope.get("client")
    peer = client[0] if client else None
    chain = [value.decode("latin-1") for value in header_values(scope, b"x-forwarded-for")]
    if allowed(peer, chain, allow, trusted):
        return None
    # Never log the path: it holds the webhook secret.
    log.warning("refused a UIS notification from %s (not in uis.allowed_ips)",
                sender(peer, chain, trusted) or peer)
    return responses.problem("forbidden", "this sender is not in uis.allowed_ips")


def with_limits(asgi_app: Any, *, max_body_bytes: int, timeout_seconds: float) -> Any:
    """ASGI middleware: read the whole body first (413 over ``max_body_bytes``, 408 when it takes
    over ``timeout_seconds``), then give the app ``timeout_seconds`` to start its answer (503)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await asgi_app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > max_body_bytes:
            await _refuse(send, 413, "body_too_large", f"body over {max_body_bytes} bytes")
            return
        messages: list[dict[str, Any]] = []
        size = 0
        started = False
        # One cancel scope for both limits (this runs for every request): its deadline is moved
        # once the body is in, and lifted once the answer starts.
        deadline = trio.CancelScope(deadline=trio.current_time() + timeout_seconds)

        async def replay() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            message: dict[str, Any] = await receive()  # http.disconnect, eventually
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message.get("type") == "http.response.start" and not started:
                started = True
                # From here quart's RESPONSE_TIMEOUT (or the response's own) bounds the sending:
                # a server-sent-events stream answers at once and then runs for long.
                deadline.deadline = math.inf
            await send(message)

        body_read = False
        with deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                size += len(message.get("body", b""))
                if size > max_body_bytes:
                    await _refuse(send, 413, "body_too_large", f"body over {max_body_bytes} bytes")
                    return
                messages.append(message)
                if not message.get("more_body", False):
                    break
            body_read = True
            deadline.deadline = trio.current_time() + timeout_seconds
            await asgi_app(scope, replay, tracking_send)
        if not deadline.cancelled_caught:
            return
        if not body_read:
            await _refuse(send, 408, "request_timeout",
                          f"the body did not arrive within {timeout_seconds:g} s")
        elif not started:
            log.warning("a %s request took over %g s: answered 503", scope.get("method"),
                        timeout_seconds)
            await _refuse(send, 503, "timeout", f"no answer within {timeout_seconds:g} s")

    return app


def header_values(scope: Any, wanted: bytes) -> list[bytes]:
    """Every value of the (lower-case) header ``wanted`` in an ASGI request, in order."""
    return [bytes(value) for name, value in scope.get("headers") or []
            if name.lower() == wanted]


def _content_length(scope: dict[str, Any]) -> int | None:
    values = header_values(scope, b"content-length")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


async def _refuse(send: Any, status: int, error: str, message: str) -> None:
    await responses.send_json(send, status, responses.problem(error, message),
                              [(b"x-content-type-options", b"nosniff"), (b"connection", b"close")])
