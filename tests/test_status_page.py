"""The status page over HTTP against the real daemon: access, login, escaping, filters, the live
stream, the call timeline, retrying dead letters; and the sans-I/O parts (filters, broadcaster)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import trio

from tests.support import ANNA, BORIS, CRM_KEY, VERA, Daemon, open_system, start_time
from tracker.db import keys, pagedata, sessions
from tracker.live import Live
from tracker.simulators import scenarios

SESSION = 998677427
TZ = ZoneInfo("Europe/Moscow")
STATES = ("ringing", "waiting_answer", "talking", "ended", "lost")


# A key's status-page session (made with the key): the cookie holds the session id, never the key.
_SESSIONS: dict[str, str] = {}


def _key(d: Daemon, *rights: str, name: str = "ops") -> str:
    info, token = keys.create(d.ctx.store, name, rights)
    _SESSIONS[token] = sessions.open_session(d.ctx.store, info)
    return token


def _ids(html: str, part: str = "recent") -> list[int]:
    """The call ids listed in one part of the page, in order."""
    start = html.index(f'data-part="{part}"') if f'data-part="{part}"' in html else 0
    return [int(i) for i in re.findall(r'<tr data-call="(\d+)"', html[start:])]


def _cookie(token: str | None) -> dict[str, str]:
    """The login cookie as a header (httpx deprecates per-request cookies)."""
    return {"Cookie": f"tracker_session={_SESSIONS.get(token, token)}"} if token else {}


class EventStream:
    """A bare HTTP/1.1 client for ``/live`` (httpx's nested stream generators cannot be closed
    early without ResourceWarnings): the response head, then one server-sent event at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _fill(self) -> None:
        data = await self._stream.receive_some(65536)
        if not data:
            raise EOFError
        self._buffer += data

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            await self._fill()
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    async def read_head(self) -> None:
        lines = (await self._until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in lines[1:])}

    async def next_chunk(self) -> str:
        """One chunk of the chunked body: the server writes one event per chunk."""
        size = int(await self._until(b"\r\n"), 16)
        if size == 0:
            raise EOFError
        while len(self._buffer) < size + 2:
            await self._fill()
        chunk, self._buffer = self._buffer[:size], self._buffer[size + 2:]
        return chunk.decode("utf-8")

    async def next_event(self) -> tuple[str, dict[str, str]]:
        """The next named event and its JSON data (comments and ``retry:`` are skipped)."""
        while True:
            fields = dict(line.split(": ", 1) for line in (await self.next_chunk()).splitlines()
                          if ": " in line and not line.startswith(":"))
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])

    async def events_until_end(self) -> list[str]:
        names = []
        try:
            while True:
                names.append((await self.next_event())[0])
        except EOFError:
            return names


@asynccontextmanager
async def open_live(d: Daemon, token: str | None, query: str = "") -> AsyncIterator[EventStream]:
    host, port = d.url.removeprefix("http://").split(":")
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        cookie = f"Cookie: {_cookie(token)['Cookie']}\r\n" if token else ""
        await stream.send_all(f"GET /live{query} HTTP/1.1\r\nHost: {host}:{port}\r\n{cookie}"
                              "Accept: text/event-stream\r\n\r\n".encode())
        events = EventStream(stream)
        await events.read_head()
        yield events


async def _get(d: Daemon, path: str, token: str | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await d.client.get(d.url + path, headers={**(headers or {}), **_cookie(token)})


# -- access -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case, rights, send, loopback, headers, expected", [
    ("no key", None, None, False, {}, 303),
    ("cookie with calls:read", ("calls:read",), "cookie", False, {}, 200),
    ("bearer header", ("calls:read",), "bearer", False, {}, 200),
    ("admin implies calls:read", ("admin",), "cookie", False, {}, 200),
    ("key without calls:read", ("log:read",), "cookie", False, {}, 303),
    ("revoked key", ("calls:read",), "revoked", False, {}, 303),
    ("made-up key", None, "garbage", False, {}, 303),
    ("loopback allowed by setting", None, None, True, {}, 200),
    ("loopback through a proxy is remote", None, None, True, {"X-Forwarded-For": "203.0.113.9"},
     303),
])
async def test_the_page_needs_a_key_with_calls_read(tmp_path, case, rights, send, loopback,
                                                     headers, expected):
    with trio.fail_after(20):
        async with open_system(tmp_path, admin={"allow_loopback_without_key": loopback}) as d:
            token = _key(d, *rights) if rights else None
            if send == "revoked":
                keys.revoke(d.ctx.store, "ops")
            if send == "garbage":
                token = "trk_" + "x" * 43
            if send == "bearer":
                headers = {**headers, "Authorization": f"Bearer {token}"}
                token = None
            page = await _get(d, "/", token, headers=headers)
            assert page.status_code == expected, case
            async with d.client.stream("GET", d.url + "/live",
                                       headers={**headers, **_cookie(token)}) as live:
                pass  # an allowed stream would go on for ever: its status is enough
            timeline = await _get(d, f"/calls/{SESSION}?format=json", token, headers=headers)
            if expected == 303:
                assert page.headers["location"] == "/login?next=%2F"
                assert live.status_code == 401 and timeline.status_code == 401
            else:
                assert "<h2>In progress</h2>" in page.text
                assert live.status_code == 200
                assert timeline.status_code == 404  # allowed in, but there is no such call


async def test_login_sets_an_httponly_cookie_and_goes_back_only_to_a_local_page(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            url = d.url + "/login"
            wrong = await d.client.post(url, data={"key": "trk_wrong", "next": "/"})
            assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
            assert "This key is unknown" in wrong.text
            for target, expected in [("/", "/"), ("/calls/5?format=json", "/calls/5?format=json"),
                                     ("//evil.example/", "/"), ("https://evil.example/", "/"),
                                     ("/\\evil.example", "/")]:
                response = await d.client.post(url, data={"key": token, "next": target})
                assert response.status_code == 303
                assert response.headers["location"] == expected
                cookie = response.headers["set-cookie"]
                assert cookie.startswith("tracker_session=trs_") and token not in cookie
                assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
            session = cookie.split(";")[0].split("=", 1)[1]
            d.client.cookies.clear()
            d.client.cookies.set("tracker_session", session)
            assert (await d.client.get(d.url + "/")).status_code == 200
            out = await d.client.post(d.url + "/logout")
            assert out.status_code == 303 and "tracker_session=;" in out.headers["set-cookie"]
            d.client.cookies.clear()
            assert (await d.client.get(d.url + "/")).status_code == 303


async def test_pages_allow_no_inline_script_and_serve_their_assets(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            page = await _get(d, "/", token)
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
            assert not re.search(r"<[^>]+\son[a-z]+=", page.text)  # no inline handlers either
            for name, kind in (("page.css", "text/css"), ("page.js", "text/javascript")):
                asset = await d.client.get(f"{d.url}/static/{name}")
                assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
            assert (await d.client.get(f"{d.url}/static/../web.py")).status_code == 404


# -- everything from outside is escaped --------------------------------------------------------

HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_PHONE = "\"><img src=x onerror=alert(1)>"


async def test_phone_numbers_names_and_answers_from_outside_are_escaped_everywhere(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read", "log:read")
            response = await d.post({
                "event": "incoming_call", "call_session_id": SESSION,
                "contact_phone_number": HOSTILE_PHONE, "contact_full_name": HOSTILE_NAME,
                "virtual_phone_number": "74950000000"})
            assert response.status_code == 200
            await d.post({"event": "waiting_answer", "call_session_id": SESSION,
                          "employee_id": 999, "employee_full_name": "<b>Eve</b>"})
            await d.settle()
            d.ctx.store.warn("unmapped_employee", "<i>999</i>", "<u>not mapped</u>")
            pages = [(await _get(d, "/", token)).text,
                     (await _get(d, f"/calls/{SESSION}", token)).text]
            async with open_live(d, token) as live:
                name, parts = await live.next_event()
                assert name == "update"
                pages += parts.values()
            html = "\n".join(pages)
            for raw in (HOSTILE_NAME, HOSTILE_PHONE, "<b>Eve</b>", "<i>999</i>", "<u>",
                        "<img src=x"):
                assert raw not in html
            assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html
            assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
            assert "&lt;b&gt;Eve&lt;/b&gt;" in html  # the name UIS sent, in the timeline


# -- recent calls and their filters -------------------------------------------------------------

A, B, C, D = 901, 902, 903, 904  # answered in (Anna), lost (Boris), outbound (Boris), ongoing


async def _four_calls(d: Daemon) -> None:
    t0 = start_time()
    await d.play(scenarios.answered(A, start=t0, employee=ANNA))
    await d.play(scenarios.ring_group_lost(B, start=t0 + timedelta(hours=1), ringing=[BORIS],
                                           contact="79990000001"))
    await d.play(scenarios.outbound(C, start=t0 + timedelta(hours=2), employee=BORIS,
                                    contact="79995550000"))
    ongoing = scenarios.ring_group_lost(D, start=t0 + timedelta(hours=3), ringing=[VERA],
                                        contact="74951112233")
    await d.play(scenarios.Scenario(**{**ongoing.__dict__, "notifications": [
        n for n in ongoing.notifications if n.event in ("incoming_call", "waiting_answer")]}))


FILTERS = [
    ("", [D, C, B, A], []),
    ("?state=lost", [B], []),
    ("?state=waiting_answer", [D], []),
    ("?direction=out", [C], []),
    ("?state=ended&direction=in", [A], []),
    ("?employee=101", [A], []),
    ("?employee=102", [C, B], []),
    ("?phone=99900000", [B], []),
    ("?phone=8+(999)+000-00-01", [B], []),
    ("?phone=%2B7+495+111-22-33", [D], []),
    ("?since=2024-05-17T15:00&until=2024-05-17T17:00", [C, B], []),
    ("?until=2024-05-17T15:00", [A], []),
    ("?limit=2", [D, C], []),
    # attempts at SQL: refused with a reason, never run
    ("?state=ended'%20OR%201=1--", [D, C, B, A], ["state: unknown state"]),
    ("?employee=101%20OR%201=1", [D, C, B, A], ["employee: must be"]),
    ("?direction=in'--", [D, C, B, A], ["direction: must be"]),
    ("?since=1);DROP%20TABLE%20calls;--", [D, C, B, A], ["since: expected"]),
    ("?phone=%25'%20OR%20''='", [D, C, B, A], ["phone: give some digits"]),
    ("?limit=-1", [D, C, B, A], ["limit: must be"]),
]


async def test_recent_calls_filter_by_state_direction_employee_phone_and_time(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            await _four_calls(d)
            for query, expected, problems in FILTERS:
                page = await _get(d, "/" + query, token)
                assert page.status_code == 200, query
                assert _ids(page.text) == expected, query
                shown = [f"{name}: {re.sub(r'<[^>]+>', '', text)}" for name, text in re.findall(
                    r'<p class="error" data-field="(\w+)">Ignored [^:]*: (.*?)</p>', page.text)]
                assert len(shown) == len(problems), (query, shown)
                for text, problem in zip(shown, problems, strict=True):
                    assert text.startswith(problem), (query, text)
            assert d.count("calls") == 4  # the attempts changed nothing
            board = (await _get(d, "/", token)).text
            assert f'data-call="{D}" data-state="waiting_answer"' in board


@pytest.mark.parametrize("args, expected", [
    ({}, pagedata.Filters()),
    ({"state": "talking", "direction": "in"}, pagedata.Filters(state="talking", direction="in")),
    ({"employee": "13421"}, pagedata.Filters(employee=13421)),
    ({"employee": "١٢"}, pagedata.Filters(problems=("employee",))),  # Arabic-Indic digits
    ({"phone": "8 (999) 123-45-67"}, pagedata.Filters(phone="79991234567")),
    ({"phone": "12-34"}, pagedata.Filters(phone="1234")),
    ({"since": "2024-05-17 14:00"},
     pagedata.Filters(since=1715943600.0)),  # 14:00 in Moscow is 11:00 UTC
    ({"since": "2024-05-17T14:00+00:00"}, pagedata.Filters(since=1715954400.0)),
    ({"limit": "100000"}, pagedata.Filters(limit=pagedata.MAX_LIMIT)),
    ({"state": "ended", "direction": "sideways"},
     pagedata.Filters(state="ended", problems=("direction",))),
])
def test_filters_are_validated_before_they_reach_sql(args, expected):
    parsed = pagedata.parse_filters(args, STATES, TZ, "RU")
    for name in ("state", "direction", "employee", "phone", "since", "until", "limit"):
        assert getattr(parsed, name) == getattr(expected, name), name
    assert [p.name for p in parsed.problems] == [str(p) for p in expected.problems]
    sql, params = pagedata.recent_calls_query(parsed)
    for value in args.values():
        assert value not in sql or value in ("in", "ended", "talking")  # only fixed text
    assert sql.count("?") == len(params)


async def test_a_search_that_runs_too_long_is_stopped(tmp_path, monkeypatch):
    db = tmp_path / "slow.db"
    sqlite3.connect(db).close()
    monkeypatch.setattr(pagedata, "QUERY_SECONDS", 0.2)
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(pagedata.QueryTooSlow):
        await pagedata.read(db, lambda conn: conn.execute(endless).fetchone())
    assert time.monotonic() - started < 2


# -- the live stream ----------------------------------------------------------------------------

async def test_the_live_stream_pushes_each_change_and_ends_when_the_daemon_stops(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            d.sims.uis.register(scenario, finished=False)
            async with open_live(d, token) as live:
                assert live.status == 200
                assert live.headers["content-type"].startswith("text/event-stream")
                assert live.headers["connection"] == "close"
                name, first = await live.next_event()
                assert name == "update"
                # deals are off in this config: their part is not sent
                assert set(first) == set(pagedata.STATUS_PARTS) - {"requests", "deals"}
                assert f'data-call="{SESSION}"' not in first["board"]
                seen = []
                for notification in scenario.notifications[:3]:  # ringing, waiting, talking
                    state = (await d.sims.uis.send_notification(
                        notification, d.webhook, d.client)).json()["state"]
                    with trio.fail_after(2):
                        while f'data-call="{SESSION}" data-state="{state}"' not in (
                                await live.next_event())[1]["board"]:
                            pass
                    seen.append(state)
                assert seen == ["ringing", "waiting_answer", "talking"]
                stopped_at = time.monotonic()
                d.stop.set()  # what SIGTERM does
                with trio.fail_after(1):
                    await live.events_until_end()
                assert time.monotonic() - stopped_at < 0.5


async def test_a_revoked_key_ends_its_stream(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            async with open_live(d, token) as live:
                await live.next_event()
                keys.revoke(d.ctx.store, "ops")
                await d.post({"event": "incoming_call", "call_session_id": SESSION})
                with trio.fail_after(5):
                    assert await live.events_until_end() == ["denied"]


async def test_the_timeline_streams_its_own_call(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            await d.post({"event": "incoming_call", "call_session_id": SESSION})
            async with open_live(d, token, f"?call={SESSION}") as live:
                name, parts = await live.next_event()
                assert set(parts) == set(pagedata.CALL_PARTS)
                assert parts["timeline"].count('<li class="note') == 1
                await d.post({"event": "lost_call", "call_session_id": SESSION})
                with trio.fail_after(2):
                    while "ringing &rarr; lost" not in (await live.next_event())[1]["timeline"]:
                        pass


async def test_pokes_are_coalesced_into_few_updates(autojump_clock):
    live = Live(min_interval_seconds=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(live.run)
        with live.subscribe() as updates:
            for _ in range(1000):
                live.poke()
                await trio.sleep(0.001)  # a notification every millisecond for a second
            await trio.sleep(0.5)
            versions = []
            while True:
                try:
                    versions.append(updates.receive_nowait())
                except trio.WouldBlock:
                    break
        nursery.cancel_scope.cancel()
    assert 4 <= len(versions) <= 7  # ~1.2 s of pokes at most 5 per second, not 1000
    assert versions == sorted(versions) and versions[-1] == live.version


async def test_a_subscriber_that_falls_behind_is_dropped_and_others_keep_theirs():
    live = Live(capacity=2)
    with live.subscribe() as slow, live.subscribe() as fast:
        for _ in range(3):
            live.publish_nowait()
            fast.receive_nowait()
        assert [slow.receive_nowait(), slow.receive_nowait()] == [1, 2]
        with pytest.raises(trio.EndOfChannel):
            slow.receive_nowait()
        live.publish_nowait()
        assert fast.receive_nowait() == 4
        assert live.statistics().dropped_total == 1
        assert live.statistics().subscribers == 1


async def test_closing_ends_every_subscription_and_refuses_new_ones():
    live = Live()
    with live.subscribe() as before:
        live.close()
        with pytest.raises(trio.EndOfChannel):
            await before.receive()
        with live.subscribe() as after:
            with pytest.raises(trio.EndOfChannel):
                await after.receive()
    assert live.statistics().subscribers == 0 and live.statistics().closed


# -- the call timeline --------------------------------------------------------------------------

async def test_the_timeline_shows_every_notification_transition_and_action_with_its_exchange(
        tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            token = _key(d, "calls:read")
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            await d.play(scenario)
            html = (await _get(d, f"/calls/{SESSION}", token)).text
            notes = re.findall(r'<li class="note outcome-accepted" data-event="\d+" '
                               r'data-name="([a-z_]+)">', html)
            assert notes == [n.event for n in scenario.notifications]
            for before, after in [("ringing", "waiting_answer"), ("waiting_answer", "talking"),
                                  ("talking", "ended")]:
                assert f'data-before="{before}" data-after="{after}"' in html
            actions = re.findall(r'<li class="action status-(\w+)" data-outbox="\d+" '
                                 r'data-kind="(\w+)".*?>(.*?)</li>', html, re.S)
            assert [(kind, status) for status, kind, _ in actions] == [
                ("popup", "delivered"), ("hangup", "delivered"), ("upload", "delivered")]
            for _, _, body in actions:
                assert "request sent" in body and "upstream answer" in body
                assert "&#34;success&#34;: true" in body
            assert "telephony/call/event" in html and "telephony/calls/upload" in html
            assert "Анна Иванова · 101" in html  # the name UIS sent, the mapped extension
            missing = await _get(d, "/calls/1", token)
            assert missing.status_code == 404 and "No call 1" in missing.text


# -- retrying dead letters ----------------------------------------------------------------------

async def _dead_upload(d: Daemon) -> int:
    """A lost call whose upload retailCRM refused for good (the key was rotated)."""
    d.sims.crm.api_key = "rotated"
    await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
    d.sims.crm.api_key = CRM_KEY
    [row] = d.ctx.store.dead_letters()
    return int(row["id"])


@pytest.mark.parametrize("case, rights, headers, status, error", [
    ("no key", None, {"X-Requested-By": "tracker"}, 401, "unauthorized"),
    ("read-only key", ("calls:read",), {"X-Requested-By": "tracker"}, 403, "forbidden"),
    ("no custom header (a cross-site form)", ("calls:read", "outbox:write"), {}, 403,
     "cross_site"),
    ("another site's origin", ("calls:read", "outbox:write"),
     {"X-Requested-By": "tracker", "Origin": "https://evil.example"}, 403, "cross_site"),
    ("browser says cross-site", ("calls:read", "outbox:write"),
     {"X-Requested-By": "tracker", "Sec-Fetch-Site": "cross-site"}, 403, "cross_site"),
])
async def test_retry_is_refused_without_the_right_or_from_another_site(tmp_path, case, rights,
                                                                        headers, status, error):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            row_id = await _dead_upload(d)
            token = _key(d, *rights) if rights else None
            response = await d.client.post(f"{d.url}/outbox/{row_id}/retry",
                                           headers={**headers, **_cookie(token)})
            assert (response.status_code, response.json()["error"]) == (status, error), case
            assert d.count("outbox", "id = ? AND status = 'dead'", row_id) == 1
            assert len(d.uploads_for(SESSION)) == 0


async def test_retry_requeues_a_dead_letter_which_is_then_delivered_once(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path) as d:
            row_id = await _dead_upload(d)
            dead = d.ctx.store.outbox_for(SESSION)[0]
            # the failed attempt's request and retailCRM's refusal are kept for the timeline
            assert json.loads(dead["request"])["endpoint"] == "telephony/calls/upload"
            assert "Wrong" in dead["response"]
            token = _key(d, "calls:read", "outbox:write", name="night shift")
            headers = {"X-Requested-By": "tracker", "Origin": d.url}
            headers.update(_cookie(token))
            response = await d.client.post(f"{d.url}/outbox/{row_id}/retry", headers=headers)
            assert response.status_code == 200
            assert response.json() == {"status": "pending", "id": row_id}
            await d.sims.crm.wait_for(lambda: d.uploads_for(SESSION))
            await d.settle()
            assert d.count("outbox", "id = ? AND status = 'delivered'", row_id) == 1
            assert [u["result"] for u in d.uploads_for(SESSION)] == ["no answer"]
            again = await d.client.post(f"{d.url}/outbox/{row_id}/retry", headers=headers)
            assert (again.status_code, again.json()["error"]) == (409, "not_dead")
            logged = d.ctx.store.conn.execute(
                "SELECT key_name, method, outcome, status FROM api_requests WHERE source = 'page'"
                " ORDER BY id").fetchall()
            assert [tuple(r) for r in logged] == [("night shift", "retry.outbox", "ok", 200),
                                                  ("night shift", "retry.outbox", "not_dead", 409)]
