"""The one body decoder, the one JSON answer, the one masker, the one way to open the store:
each rule pinned once, and every endpoint seen to follow it."""

from __future__ import annotations

import json
import stat

import pytest
import trio

from tests.support import CLIENT_ID, SECRET, open_system
from tracker.core import bodies
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.db import requestlog
from tracker.db.store import open_store
from tracker.errors import BodyError, RejectedNotification, StoreError

# (body, words the message holds, field): the rules every endpoint shares.
REFUSED = [
    (b"", "empty", None),
    (b"  \n", "empty", None),
    (b"\xff\xfe{}", "UTF-8", None),
    (b"{not json", "not valid JSON", None),
    (b'{"a": 1, "a": 1}', "twice", "a"),
    (b'{"x": {"b": 1, "b": 2}}', "twice", "b"),
    (b'{"a": NaN}', "NaN", None),
    (b'{"a": Infinity}', "Infinity", None),
    (b'{"a": -Infinity}', "Infinity", None),
    (b'{"a": ' + b"9" * 5000 + b"}", "usable", None),
    (b'{"a": "\\ud800"}', "surrogate", None),
    (b'{"\\udfff": 1}', "surrogate", None),
    (b'{"a": ' + b"[" * bodies.MAX_DEPTH + b"]" * bodies.MAX_DEPTH + b"}", "nested", None),
    (b"[" * 100_000 + b"]" * 100_000, "nested", None),
]


@pytest.mark.parametrize("raw,words,field", REFUSED)
def test_the_decoder_refuses_naming_the_problem(raw: bytes, words: str, field: str | None) -> None:
    with pytest.raises(BodyError) as caught:
        bodies.decode_json(raw)
    assert words in caught.value.message
    assert caught.value.field == field


def test_the_decoder_accepts_what_is_json() -> None:
    deep = b'{"a": ' + b"[" * (bodies.MAX_DEPTH - 1) + b"]" * (bodies.MAX_DEPTH - 1) + b"}"
    assert bodies.decode_object(deep)["a"]
    assert bodies.decode_object('{"имя": "Анна", "n": 1e3, "s": "\\ud83d\\ude00"}'.encode()) == {
        "имя": "Анна", "n": 1000.0, "s": "😀"}
    assert bodies.decode_json(b"[1, 2]") == [1, 2]
    with pytest.raises(BodyError, match="JSON object, got list"):
        bodies.decode_object(b"[1, 2]")


def test_form_and_query_fields() -> None:
    assert bodies.decode_form(b"a=1&a=2&b=") == {"a": "2", "b": ""}  # the last one wins
    assert bodies.decode_query(b"a=1&a=2&b=") == {"a": "1", "b": ""}  # the first one wins
    assert bodies.decode_query(b"a=%FF") == {"a": "\ufffd"}
    with pytest.raises(BodyError, match="UTF-8"):
        bodies.decode_form(b"a=\xff")


def test_a_rejected_notification_is_a_body_error() -> None:
    assert issubclass(RejectedNotification, BodyError)


def test_one_masker_for_the_request_log() -> None:
    """The admin API and the retailCRM callbacks share ``requestlog.mask``: the callbacks'
    ``clientId`` and ``apiKey`` are among the names it hides."""
    assert requestlog.mask({"clientId": "c", "apiKey": "k", "code": "101", "userId": "1"}) == {
        "clientId": "***", "apiKey": "***", "code": "101", "userId": "1"}
    assert requestlog.mask({"clientId": ""}) == {"clientId": ""}  # nothing given: nothing hidden


DUPLICATE = b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "get.calls"}'
NAN = b'{"event": "incoming_call", "call_session_id": 1, "x": NaN}'


async def test_every_endpoint_follows_the_decoder(tmp_path) -> None:
    """The webhook, the admin API, the routing request and the retailCRM callbacks refuse the
    same bodies, each in its own answer."""
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            json_header = {"content-type": "application/json"}
            # The notification endpoint: 400 naming the problem (NaN used to pass the decoder).
            answer = await d.post(NAN)
            assert answer.status_code == 400
            assert "NaN" in answer.json()["message"]
            # The admin API: a JSON-RPC parse error, its message naming the key.
            answer = await d.client.post(f"{d.url}/api/v1", content=DUPLICATE,
                                         headers=json_header)
            error = answer.json()["error"]
            assert error["data"]["mnemonic"] == "parse_error"
            assert error["message"] == "id: appears twice in the JSON object"
            assert error["data"]["field"] is None
            # The retailCRM callbacks: 400 invalid_body naming the problem (a duplicate clientId
            # used to be decided by the parser: the last one won).
            twice = json.dumps({"clientId": CLIENT_ID}).encode()[:-1] + b', "clientId": "x"}'
            for route in ("/crm/make-call", "/crm/user-status"):
                answer = await d.client.post(d.url + route, content=twice, headers=json_header)
                assert answer.status_code == 400, route
                assert answer.json()["error"] == "invalid_body"
                assert "clientId: appears twice" in answer.json()["message"]
            # The routing request: the fallback, recorded as a bad request.
            deep = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"
            answer = await d.client.post(f"{d.url}{WEBHOOK_PREFIX}{SECRET}/route",
                                         params={"call_session_id": "5"}, content=deep,
                                         headers=json_header)
            assert answer.status_code == 200
            [row] = [r for r in d.ctx.store.events_for(5) if r["event"] == "route"]
            assert json.loads(row["body"])["decision"] == "bad_request"


async def test_answers_say_connection_close_while_draining(tmp_path) -> None:
    """Set once, around the whole app: the notification endpoint in front of quart and quart's
    routes alike."""
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            before = await d.client.get(f"{d.url}/healthz")
            assert "connection" not in before.headers or before.headers["connection"] != "close"
            d.ctx.lifecycle.draining = True
            try:
                for answer in (await d.client.get(f"{d.url}/healthz"),
                               await d.post({"event": "incoming_call", "call_session_id": 1}),
                               await d.post(b"{"),
                               await d.client.get(f"{d.url}/nowhere")):
                    assert answer.headers["connection"] == "close", answer.request.url
                    assert answer.headers["content-type"] == "application/json; charset=utf-8"
            finally:
                d.ctx.lifecycle.draining = False


def test_open_store_is_the_one_way_in(tmp_path) -> None:
    from tests.support import settings_for

    settings = settings_for(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    with pytest.raises(StoreError, match="no database here"):
        open_store(settings, must_exist=True)
    assert not settings.database.path.exists()
    store = open_store(settings)
    assert store.conn.execute("SELECT count(*) FROM employees").fetchone()[0] == 3
    store.close()
    settings.database.path.chmod(0o644)
    store = open_store(settings, check=False, seed_employees=False, must_exist=True)
    store.close()
    assert stat.S_IMODE(settings.database.path.stat().st_mode) == 0o600


async def test_quart_limits_come_from_the_settings_once(tmp_path) -> None:
    """web/app.py no longer sets its own 30 s first: the guard sets quart's limits from the
    settings, and nothing else does."""
    from tracker.web.app import create_app

    with trio.fail_after(30):
        async with open_system(tmp_path, server={"request_timeout_seconds": 7,
                                                 "max_body_bytes": 4096}) as d:
            app = create_app(d.ctx)
            assert app.config["BODY_TIMEOUT"] == app.config["RESPONSE_TIMEOUT"] == 7
            assert app.config["MAX_CONTENT_LENGTH"] == 4096
