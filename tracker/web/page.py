"""The status page: live calls, recent calls with filters, call timelines, outbox health.

``register(app, ctx)`` adds the routes. Pages are rendered by Jinja with autoescape (phone
numbers, names and upstream answers come from outside) from ``tracker/assets``; the browser's
script only swaps in fragments the server rendered, pushed as server-sent events from ``/live``
whenever ``ctx.live`` reports a change. Reading needs a key with ``calls:read`` (the login form
keeps it in an HttpOnly, SameSite cookie) unless ``admin.allow_loopback_without_key`` lets a
local browser in. Retrying a dead letter needs ``outbox:write`` and a same-origin ``POST`` with
the ``X-Requested-By`` header, which no cross-site form can send.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import trio
from quart import Response, request
from quart_trio import QuartTrio

from tracker.context import Context
from tracker.core import statecharts
from tracker.db import keys, pagedata
from tracker.delivery.outbox import OutboxStatistics

log = logging.getLogger(__name__)

COOKIE = "tracker_key"
ACTION_HEADER = "X-Requested-By"  # value "tracker"; a cross-site form cannot set a header
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 2000  # how soon a browser reconnects a stream that ended
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-Ip")
_ASSETS = resources.files("tracker") / "assets"
_STATIC = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
_BROWSER_ENDPOINTS = {"status_page", "call_timeline", "live_stream", "retry_dead_letter",
                      "login_form", "login", "logout", "static_file", "logo"}


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and what they may do besides reading calls."""

    name: str
    token: str | None  # None: a loopback browser let in without a key
    can_retry: bool
    can_read_log: bool


def _environment(ctx: Context) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_ASSETS)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = partial(pagedata.when, tz=ctx.tz)
    env.filters["ago"] = pagedata.ago
    env.filters["pretty"] = pagedata.pretty
    env.filters["ids"] = pagedata.id_list
    env.globals["employee"] = pagedata.employee_label
    env.globals["transitions"] = _transition_rows(ctx.chart)
    env.globals["chart_text"] = statecharts.mermaid(ctx.chart)
    return env


def _transition_rows(chart: statecharts.Chart) -> list[dict[str, str]]:
    def names(value: Any) -> str:
        items = value if isinstance(value, list) else [] if value is None else [value]
        return ", ".join(str(i) for i in items)

    return [{"source": names(t["source"]), "trigger": t["trigger"],
             "dest": t.get("dest") or "(stays)", "conditions": names(t.get("conditions")),
             "unless": names(t.get("unless")), "after": names(t.get("after"))}
            for t in chart.transitions]


def register(app: QuartTrio, ctx: Context) -> None:
    """Add the status page's routes to ``app``."""
    env = _environment(ctx)
    static = {name: (_ASSETS / name).read_bytes() for name in _STATIC}
    outbox_stats = _PerVersion(ctx.outbox.statistics, lambda: ctx.live.version)

    def authorize(token: str | None, right: str) -> str | None:
        info = keys.authorize(ctx.store, token, right)
        return None if info is None else info.name

    def current_viewer() -> Viewer | None:
        token = request.cookies.get(COOKIE) or keys.bearer(request.headers.get("Authorization"))
        if token:
            name = authorize(token, "calls:read")
            if name is not None:
                return Viewer(name, token, can_retry=authorize(token, "outbox:write") is not None,
                              can_read_log=authorize(token, "log:read") is not None)
        # Behind a reverse proxy every request comes from 127.0.0.1: a forwarded one is remote.
        if keys.loopback_allowed(ctx.settings.admin.allow_loopback_without_key,
                                 request.remote_addr) \
                and not any(name in request.headers for name in _PROXY_HEADERS):
            return Viewer(keys.LOOPBACK.name, None, can_retry=True, can_read_log=True)
        return None

    def still_allowed(viewer: Viewer) -> bool:
        return viewer.token is None or authorize(viewer.token, "calls:read") is not None

    async def overview(viewer: Viewer, filters: pagedata.Filters) -> dict[str, Any]:
        now = time.time()
        data = await pagedata.read(ctx.settings.database.path, partial(
            pagedata.read_overview, filters=filters, states=ctx.chart.states,
            final_states=ctx.chart.final_states, tz=ctx.tz, now=now,
            with_log=viewer.can_read_log,
            callback_target_minutes=ctx.settings.tasks.callback_target_minutes))
        data.update(viewer=viewer, filters=filters, outbox=outbox_stats.get(),
                    live=ctx.live.statistics(), uptime=now - ctx.lifecycle.started_at)
        return data

    async def status_parts(viewer: Viewer, filters: pagedata.Filters) -> dict[str, str]:
        data = await overview(viewer, filters)
        return {part: env.get_template(f"parts/{part}.html").render(data)
                for part in pagedata.STATUS_PARTS if part != "requests" or viewer.can_read_log}

    async def call_data(viewer: Viewer, call_id: int) -> dict[str, Any] | None:
        data = await pagedata.read(ctx.settings.database.path,
                                   partial(pagedata.read_call, call_id=call_id))
        if data is not None:
            data.update(viewer=viewer, now=time.time())
        return data

    async def call_parts(viewer: Viewer, call_id: int) -> dict[str, str]:
        data = await call_data(viewer, call_id)
        if data is None:
            return {}
        return {part: env.get_template(f"parts/{part}.html").render(data)
                for part in pagedata.CALL_PARTS}

    @app.after_request
    async def close_browser_connections(response: Response) -> Response:
        # hypercorn (0.18, trio) loses track of a kept-alive connection once it has served a
        # response and then waits its whole graceful timeout for it on shutdown; a browser
        # keeps several open. Pages are cheap to reconnect for, shutdown must be quick.
        if request.endpoint in _BROWSER_ENDPOINTS:
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(pagedata.QueryTooSlow)
    async def too_slow(exc: pagedata.QueryTooSlow) -> Response:
        return _html(env.get_template("busy.html").render(message=str(exc), viewer=None), 503)

    @app.route("/")
    async def status_page() -> Response:
        viewer = current_viewer()
        if viewer is None:
            return _login_redirect()
        filters = pagedata.parse_filters(request.args, ctx.chart.states, ctx.tz,
                                         ctx.settings.crm.phone_region)
        data = await overview(viewer, filters)
        query = urlencode({k: v for k, v in filters.given.items() if v})
        data["live_url"] = "/live?" + query if query else "/live"
        return _html(env.get_template("status.html").render(data))

    @app.route("/calls/<int:call_id>")
    async def call_timeline(call_id: int) -> Response:
        wants_json = (request.args.get("format") == "json"
                      or request.accept_mimetypes.best == "application/json")
        viewer = current_viewer()
        if viewer is None:
            return _json_error(401, "unauthorized", "log in with a key") if wants_json \
                else _login_redirect()
        data = await call_data(viewer, call_id)
        if data is None:
            if wants_json:
                return _json_error(404, "not_found", f"no call {call_id}")
            return _html(env.get_template("missing.html").render(call_id=call_id,
                                                                 viewer=viewer), 404)
        if wants_json:
            return _json({"call": data["call"], "events": data["events"],
                          "outbox": data["outbox"]})
        return _html(env.get_template("call.html").render(data))

    @app.route("/live")
    async def live_stream() -> Response:
        viewer = current_viewer()
        if viewer is None:
            return _json_error(401, "unauthorized", "log in with a key")
        call_id = request.args.get("call", type=int)
        render: Callable[[], Awaitable[dict[str, str]]]
        if call_id is not None:
            render = partial(call_parts, viewer, call_id)
        else:
            filters = pagedata.parse_filters(request.args, ctx.chart.states, ctx.tz,
                                             ctx.settings.crm.phone_region)
            render = partial(status_parts, viewer, filters)
        response = Response(_stream(ctx, render, partial(still_allowed, viewer)),
                            content_type="text/event-stream; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
        response.timeout = None  # the stream lasts as long as the page is open
        return response

    @app.route("/outbox/<int:row_id>/retry", methods=["POST"])
    async def retry_dead_letter(row_id: int) -> Response:
        started = time.perf_counter()
        viewer = current_viewer()
        if viewer is None:
            return _json_error(401, "unauthorized", "log in with a key")
        if not viewer.can_retry:
            return _json_error(403, "forbidden", "this key lacks outbox:write")
        if request.headers.get(ACTION_HEADER) != "tracker" or not _same_origin():
            return _json_error(403, "cross_site", f"send the {ACTION_HEADER} header from the "
                               "status page")
        with ctx.store.transaction():
            done = ctx.store.requeue_dead([row_id], time.time())
            ctx.store.log_request(
                source="page", method="retry.outbox", params={"ids": [row_id]},
                outcome="ok" if done else "not_dead", status=200 if done else 409,
                key_name=viewer.name, duration_ms=(time.perf_counter() - started) * 1000)
        if not done:
            return _json_error(409, "not_dead", f"outbox row {row_id} is not a dead letter")
        log.info("outbox #%d re-queued from the status page by %s", row_id, viewer.name)
        ctx.outbox.wake()
        ctx.live.poke()
        return _json({"status": "pending", "id": row_id})

    @app.route("/login", methods=["GET"])
    async def login_form() -> Response:
        return _html(env.get_template("login.html").render(
            next=_local_path(request.args.get("next")), error=None, viewer=None))

    @app.route("/login", methods=["POST"])
    async def login() -> Response:
        form = await request.form
        token = (form.get("key") or "").strip()
        target = _local_path(form.get("next"))
        if authorize(token, "calls:read") is None:
            log.warning("status page: refused a login from %s", request.remote_addr)
            return _html(env.get_template("login.html").render(
                next=target, error="This key is unknown, revoked, or lacks calls:read.",
                viewer=None), 403)
        response = _redirect(target)
        response.set_cookie(COOKIE, token, httponly=True, samesite="Lax", path="/",
                            secure=request.scheme == "https"
                            or request.headers.get("X-Forwarded-Proto") == "https")
        return response

    @app.route("/logout", methods=["POST"])
    async def logout() -> Response:
        response = _redirect("/login")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Lax")
        return response

    @app.route("/static/<name>")
    async def static_file(name: str) -> Response:
        if name not in static:
            return _json_error(404, "not_found", "no such file")
        response = Response(static[name], content_type=_STATIC[name])
        response.headers["Cache-Control"] = "no-cache"
        return response


class _PerVersion:
    """The outbox's statistics computed once per published change, however many pages are
    open (they count rows in SQLite on the trio thread)."""

    def __init__(self, compute: Callable[[], OutboxStatistics],
                 version: Callable[[], int]) -> None:
        self._compute = compute
        self._version = version
        self._value: OutboxStatistics | None = None
        self._at_version = -1

    def get(self) -> OutboxStatistics:
        version = self._version()
        if self._value is None or version != self._at_version:
            self._value, self._at_version = self._compute(), version
        return self._value


async def _stream(ctx: Context, render: Callable[[], Awaitable[dict[str, str]]],
                  allowed: Callable[[], bool]) -> AsyncIterator[str]:
    """Server-sent events: the fragments now, then after each change, until the daemon stops,
    the subscriber falls behind (the browser reconnects) or its key is revoked."""
    with ctx.live.subscribe() as updates:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        yield await _update(render)
        while True:
            changed = False
            try:
                with trio.move_on_after(KEEPALIVE_SECONDS):
                    await updates.receive()
                    changed = True
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            if not changed:
                yield ": keep-alive\n\n"
            elif not allowed():
                yield _event("denied", {})
                return
            else:
                yield await _update(render)


async def _update(render: Callable[[], Awaitable[dict[str, str]]]) -> str:
    try:
        return _event("update", await render())
    except pagedata.QueryTooSlow as exc:
        return _event("problem", {"message": str(exc)})


def _event(name: str, data: dict[str, str]) -> str:
    # json.dumps escapes newlines, so the payload is always a single "data:" line.
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _html(text: str, status: int = 200) -> Response:
    response = Response(text, status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status,
                    content_type="application/json; charset=utf-8")


def _json_error(status: int, error: str, message: str) -> Response:
    return _json({"error": error, "message": message}, status)


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def _login_redirect() -> Response:
    return _redirect("/login?next=" + quote(request.full_path.rstrip("?"), safe=""))


def _same_origin() -> bool:
    """The browser says the request comes from a page of this site (or says nothing)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _local_path(target: str | None) -> str:
    """Only a path on this site may follow a login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
