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
import re
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
from tracker.core import formatting, statecharts
from tracker.core.formatting import N_
from tracker.db import keys, pagedata, sessions
from tracker.delivery.dispatcher import OutboxStatistics
from tracker.web import failures, i18n, labels, pictures
from tracker.web.responses import error_response, json_response

log = logging.getLogger(__name__)

COOKIE = "tracker_session"  # a session id (db/sessions.py), never the key itself
ACTION_HEADER = "X-Requested-By"  # value "tracker"; a cross-site form cannot set a header
KEEPALIVE_SECONDS = 15.0
PICTURE_SECONDS = 5.0  # how stale the pictures of the day may be
RETRY_MILLISECONDS = 2000  # how soon a browser reconnects a stream that ended
# Recordings play from UIS's servers (media-src: any https origin, and the origin of
# ``uis.media_url`` even over http, as in the demo); the page itself loads nothing else.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' https: {media}; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_ASSETS = resources.files("tracker") / "assets"
_STATIC = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
LANGUAGE_NAMES = {"ru": "Русский", "en": "English"}  # each in its own language
_BROWSER_ENDPOINTS = {"status_page", "call_timeline", "live_stream", "retry_dead_letter",
                      "login_form", "login", "logout", "static_file", "logo"}


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and what they may do besides reading calls."""

    name: str
    token: str | None  # None: a loopback browser let in without a key
    can_retry: bool
    can_read_log: bool
    session: bool = False  # token is a session id (the cookie), not a key


def _environment(ctx: Context, lang: str) -> jinja2.Environment:
    """The templates in one language: each language has its own environment, because Jinja's
    i18n extension installs the translations on the environment."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_ASSETS)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    tz, region = ctx.tz, ctx.settings.crm.phone_region
    env.filters["when"] = partial(formatting.moment, tz=tz, lang=lang)
    env.filters["clock"] = partial(formatting.clock, tz=tz, lang=lang)
    env.filters["ago"] = partial(formatting.duration, lang=lang)
    env.filters["num"] = partial(formatting.number, lang=lang)
    env.filters["pct"] = partial(formatting.percent, lang=lang)
    env.filters["phone"] = partial(formatting.phone, region=region)
    env.filters["pretty"] = pagedata.pretty
    env.filters["ids"] = pagedata.id_list
    env.filters["event_employee"] = pagedata.event_employee
    env.globals["lang"] = lang
    env.globals["languages"] = LANGUAGE_NAMES
    env.globals["employee"] = partial(labels.employee, lang)
    env.globals["person"] = partial(labels.person, lang)
    env.globals["label"] = partial(labels.label, lang)
    env.globals["raw"] = labels.raw
    env.globals["transitions"] = _transition_rows(ctx.chart)
    env.globals["chart_text"] = statecharts.mermaid(ctx.chart)
    env.globals["chart_svg"] = partial(pictures.statechart, ctx.chart, lang)
    env.globals["picture"] = partial(pictures.render, lang)
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
    envs = {lang: _environment(ctx, lang) for lang in formatting.LANGUAGES}
    csp = _csp(ctx.settings.uis.media_url)
    static = {name: (_ASSETS / name).read_bytes() for name in _STATIC}
    outbox_stats = _PerVersion(ctx.outbox.statistics, lambda: ctx.live.version)

    def same_origin() -> bool:
        return _same_origin(ctx.settings.server.public_url)

    def current_viewer() -> Viewer | None:
        session = request.cookies.get(COOKIE)
        bearer = keys.bearer(request.headers.get("Authorization"))
        key = sessions.find(ctx.store, session)
        if key is not None and key.allows("calls:read"):
            return Viewer(key.name, session, can_retry=key.allows("outbox:write"),
                          can_read_log=key.allows("log:read"), session=True)
        key = keys.authorize(ctx.store, bearer, "calls:read")
        if key is not None:
            return Viewer(key.name, bearer, can_retry=key.allows("outbox:write"),
                          can_read_log=key.allows("log:read"))
        if bearer:
            # A wrong key is a guess like a wrong login. A stale session id is not counted: it
            # cannot be guessed, and an open tab whose session ended would lock its user out.
            failures.note_failure()
        if keys.loopback_allowed(ctx.settings.admin.allow_loopback_without_key,
                                 request.remote_addr, request.headers.keys()):
            return Viewer(keys.LOOPBACK.name, None, can_retry=True, can_read_log=True)
        return None

    def language() -> tuple[str, bool]:
        """This request's language, and whether ``?lang`` chose it (then it is remembered)."""
        return i18n.from_request(ctx.settings.ui.language, request.args, request.cookies,
                                 request.headers.get("Accept-Language"))

    def page(template: str, data: dict[str, Any], status: int = 200) -> Response:
        lang, chosen = language()
        response = _html(envs[lang].get_template(template).render(data), status)
        response.headers["Content-Security-Policy"] = csp
        response.headers["Content-Language"] = lang
        response.headers["Vary"] = "Accept-Language, Cookie"
        if chosen:
            response.set_cookie(i18n.COOKIE, lang, max_age=i18n.COOKIE_SECONDS, path="/",
                                samesite="Lax", httponly=True)
        return response

    def error(status: int, code: str, message: str, **params: object) -> Response:
        return error_response(status, code, i18n.text(language()[0], message, **params))

    def still_allowed(viewer: Viewer) -> bool:
        if viewer.token is None:
            return True
        key = sessions.find(ctx.store, viewer.token) if viewer.session \
            else keys.authorize(ctx.store, viewer.token, "calls:read")
        return key is not None and key.allows("calls:read")

    async def overview(viewer: Viewer, filters: pagedata.Filters) -> dict[str, Any]:
        now = time.time()
        data = await pagedata.read(ctx.settings.database.path, partial(
            pagedata.read_overview, filters=filters, states=ctx.chart.states,
            final_states=ctx.chart.final_states, tz=ctx.tz, now=now,
            with_log=viewer.can_read_log,
            callback_target_minutes=ctx.settings.tasks.callback_target_minutes))
        counts = app.extensions.get("tracker.failures")  # web/failures.py
        data.update(viewer=viewer, filters=filters, outbox=outbox_stats.get(),
                    live=ctx.live.statistics(), uptime=now - ctx.lifecycle.started_at,
                    failures=counts() if counts is not None else None,
                    day=await day_pictures(now), deals_enabled=ctx.settings.deals.enabled)
        return data

    day_cache: dict[str, Any] = {"at": None, "value": None}

    async def day_pictures(now: float) -> dict[str, Any]:
        """Today's pictures are computed at most every ``PICTURE_SECONDS``, however many
        changes are pushed (they read the whole day's calls)."""
        if day_cache["at"] is None or now - day_cache["at"] >= PICTURE_SECONDS \
                or now < day_cache["at"]:
            day_cache["value"] = await pagedata.read(ctx.settings.database.path, partial(
                pagedata.read_day, tz=ctx.tz, now=now))
            day_cache["at"] = now
        value: dict[str, Any] = day_cache["value"]
        return value

    async def status_parts(viewer: Viewer, filters: pagedata.Filters,
                           env: jinja2.Environment) -> dict[str, str]:
        data = await overview(viewer, filters)
        return {part: env.get_template(f"parts/{part}.html").render(data)
                for part in pagedata.STATUS_PARTS
                if (part != "requests" or viewer.can_read_log)
                and (part != "deals" or ctx.settings.deals.enabled)}

    async def call_data(viewer: Viewer, call_id: int) -> dict[str, Any] | None:
        data = await pagedata.read(ctx.settings.database.path,
                                   partial(pagedata.read_call, call_id=call_id))
        if data is not None:
            data.update(viewer=viewer, now=time.time())
        return data

    async def call_parts(viewer: Viewer, call_id: int,
                         env: jinja2.Environment) -> dict[str, str]:
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
        return page("busy.html", {"seconds": pagedata.QUERY_SECONDS, "viewer": None}, 503)

    @app.route("/")
    async def status_page() -> Response:
        viewer = current_viewer()
        if viewer is None:
            return _login_redirect()
        filters = pagedata.parse_filters(request.args, ctx.chart.states, ctx.tz,
                                         ctx.settings.crm.phone_region)
        data = await overview(viewer, filters)
        query = urlencode({k: v for k, v in filters.given.items() if v})
        data["live_url"] = "/live?" + urlencode({**{k: v for k, v in filters.given.items()
                                                     if v}, "lang": language()[0]})
        data["page_url"] = "/?" + query + "&" if query else "/?"
        return page("status.html", data)

    @app.route("/calls/<int:call_id>")
    async def call_timeline(call_id: int) -> Response:
        wants_json = (request.args.get("format") == "json"
                      or request.accept_mimetypes.best == "application/json")
        viewer = current_viewer()
        if viewer is None:
            return error(401, "unauthorized", N_("log in with a key")) if wants_json \
                else _login_redirect()
        data = await call_data(viewer, call_id) if _fits(call_id) else None
        if data is None:
            if wants_json:
                return error(404, "not_found", N_("no call %(id)s"), id=call_id)
            return page("missing.html", {"call_id": call_id, "viewer": viewer}, 404)
        if wants_json:
            return json_response({"call": data["call"], "events": data["events"],
                          "outbox": data["outbox"]})
        data["page_url"] = f"/calls/{call_id}?"
        return page("call.html", data)

    @app.route("/live")
    async def live_stream() -> Response:
        viewer = current_viewer()
        if viewer is None:
            return error(401, "unauthorized", N_("log in with a key"))
        env = envs[language()[0]]
        call_id = request.args.get("call", type=int)
        render: Callable[[], Awaitable[dict[str, str]]]
        if call_id is not None and not _fits(call_id):
            return error_response(404, "not_found", "no such call")
        if call_id is not None:
            render = partial(call_parts, viewer, call_id, env)
        else:
            filters = pagedata.parse_filters(request.args, ctx.chart.states, ctx.tz,
                                             ctx.settings.crm.phone_region)
            render = partial(status_parts, viewer, filters, env)
        busy = i18n.text(language()[0], N_("the query took over %(seconds)s s"),
                         seconds=formatting.number(pagedata.QUERY_SECONDS, language()[0]))
        response = Response(_stream(ctx, render, partial(still_allowed, viewer), busy),
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
            return error(401, "unauthorized", N_("log in with a key"))
        if not viewer.can_retry:
            return error(403, "forbidden", N_("this key lacks outbox:write"))
        if request.headers.get(ACTION_HEADER) != "tracker" or not same_origin():
            return error(403, "cross_site", N_("send the %(header)s header from the status page"),
                         header=ACTION_HEADER)
        if not _fits(row_id):
            return error(404, "not_found", N_("no outbox row %(id)s"), id=row_id)
        with ctx.store.transaction():
            done = ctx.store.retry_dead([row_id], time.time()).requeued
            ctx.store.log_request(
                source="page", method="retry.outbox", params={"ids": [row_id]},
                outcome="ok" if done else "not_dead", status=200 if done else 409,
                key_name=viewer.name, duration_ms=(time.perf_counter() - started) * 1000)
        if not done:
            return error(409, "not_dead", N_("outbox row %(id)s is not a dead letter"), id=row_id)
        log.info("outbox #%d re-queued from the status page by %s", row_id, viewer.name)
        ctx.outbox.wake()
        ctx.live.poke()
        return json_response({"status": "pending", "id": row_id})

    @app.route("/login", methods=["GET"])
    async def login_form() -> Response:
        return page("login.html", {"next": _local_path(request.args.get("next")),
                                   "error": None, "viewer": None})

    @app.route("/login", methods=["POST"])
    async def login() -> Response:
        form = await request.form
        target = _local_path(form.get("next"))
        if not same_origin():
            return page("login.html", {"next": target, "viewer": None, "error": N_(
                "Log in from this site's own login page.")}, 403)
        token = (form.get("key") or "").strip()
        key = keys.authorize(ctx.store, token, "calls:read")
        if key is None:
            failures.note_failure()
            log.warning("status page: refused a login from %s", failures.caller())
            return page("login.html", {"next": target, "viewer": None, "error": N_(
                "This key is unknown, revoked, or lacks calls:read.")}, 403)
        sessions.close(ctx.store, request.cookies.get(COOKIE))  # a new login, a new id
        response = _redirect(target)
        response.set_cookie(COOKIE, sessions.open_session(ctx.store, key), httponly=True,
                            samesite="Lax", path="/", max_age=int(sessions.LIFETIME_SECONDS),
                            secure=request.scheme == "https"
                            or request.headers.get("X-Forwarded-Proto") == "https")
        return response

    @app.route("/logout", methods=["POST"])
    async def logout() -> Response:
        if not same_origin():
            return error(403, "cross_site", N_("log out from the status page"))
        sessions.close(ctx.store, request.cookies.get(COOKIE))
        response = _redirect("/login")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Lax")
        return response

    @app.route("/static/<name>")
    async def static_file(name: str) -> Response:
        if name not in static:
            return error(404, "not_found", N_("no such file"))
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
                  allowed: Callable[[], bool], busy: str) -> AsyncIterator[str]:
    """Server-sent events: the fragments now, then after each change, until the daemon stops,
    the subscriber falls behind (the browser reconnects) or its key is revoked."""
    with ctx.live.subscribe() as updates:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        yield await _update(render, busy)
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
                yield await _update(render, busy)


async def _update(render: Callable[[], Awaitable[dict[str, str]]], busy: str) -> str:
    try:
        return _event("update", await render())
    except pagedata.QueryTooSlow:
        return _event("problem", {"message": busy})


def _event(name: str, data: dict[str, str]) -> str:
    # json.dumps escapes newlines, so the payload is always a single "data:" line.
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _csp(media_url: str) -> str:
    """The page's Content-Security-Policy, letting recordings play from ``media_url``'s origin."""
    parts = urlsplit(media_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    safe = parts.scheme in ("http", "https") and re.fullmatch(r"[A-Za-z0-9.:\[\]-]+",
                                                               parts.netloc or "")
    return _CSP.format(media=origin if safe else "").replace(" ;", ";")


def _html(text: str, status: int = 200) -> Response:
    response = Response(text, status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = _csp("")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def _login_redirect() -> Response:
    return _redirect("/login?next=" + quote(request.full_path.rstrip("?"), safe=""))


def _same_origin(public_url: str) -> bool:
    """The browser says the request comes from a page of this site (or says nothing). The site
    is the ``Host`` asked for or, behind a proxy that rewrites ``Host``, ``server.public_url``."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc in (request.host,
                                                         urlsplit(public_url).netloc)


def _local_path(target: str | None) -> str:
    """Only a path on this site may follow a login (no open redirect). Control characters and
    whitespace are dropped first: browsers ignore them, so ``/<TAB>/evil.example`` is
    ``//evil.example`` to them (and CR/LF could not go into a header)."""
    target = "".join(ch for ch in target or "" if ch.isprintable() and not ch.isspace())
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _fits(number: int) -> bool:
    """An id SQLite can hold (larger ones name nothing, and would overflow a query)."""
    return 0 <= number < 2**63
