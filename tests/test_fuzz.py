"""Bad input, generated: every endpoint that takes outside input answers it without a 5xx, writes
nothing for what it refuses, and leaves the daemon healthy.

"Nothing written" has two exceptions that other issues require, made explicit here: a webhook
body refused with 400 is kept as one ``rejected`` journal row (issue 2: for diagnosis), and the
retailCRM callbacks and the admin API append one row to the request log (``api_requests``,
issue 4) for every request, refused ones included. Past the clientId check, a click refused for
its content is kept in the ``clicks`` journal (issue 3), and a callback naming a retailCRM user
with no employee mapping (422) counts a mapping warning, which is its purpose. A wrong clientId
or API key writes nothing but the request log, and there only a summary, ten a minute, the rest
counted in one row a minute (issue 17).

One daemon (with both simulators) serves the whole module from a thread of its own, so that
hypothesis can drive it with plain HTTP requests; the database is watched through a second,
read-only connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import CLIENT_ID, SECRET, open_daemon, open_sims, settings_for, start_time
from tracker.core.catalogue import EVENTS
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.db import keys
from tracker.simulators import scenarios

MAX_BODY = 16384  # room for a number of over 4300 digits, past CPython's int parsing limit
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
AUDIT_TABLES = ("api_requests",)  # the request log: one row per callback/API request, by design
# ... except a wrong clientId: a summary row, ten a minute, the rest counted (web/failures.py)
WRONG_CLIENT_ROWS = range(0, 3)  # a summary, and the count of the minute before
# The outbox works on what earlier examples were allowed to write while later ones run: in these
# tables a refusal is checked by rows added or removed, not by content.
BACKGROUND_TABLES = ("outbox", "calls", "warnings")


@dataclass
class Running:
    url: str
    db: str
    token: trio.lowlevel.TrioToken
    ctx: Any
    sims: Any
    admin_key: str = ""

    @property
    def webhook(self) -> str:
        return f"{self.url}/webhooks/uis/{SECRET}"

    def in_daemon(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the daemon's trio thread (its SQLite connection lives there)."""
        return trio.from_thread.run_sync(fn, trio_token=self.token)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("fuzz")
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        async with open_sims() as sims:
            config = settings_for(tmp, sims.uis_url, sims.crm_url,
                                  # thousands of wrong clientIds: no 429s here (test_security)
                                  server={"max_body_bytes": MAX_BODY, "failures_per_minute": 0},
                                  sweeper={"enabled": False}, reconcile={"enabled": False})
            async with open_daemon(sims, config) as d:
                box["running"] = Running(d.url, str(config.database.path),
                                         trio.lowlevel.current_trio_token(), d.ctx, sims)
                box["stop"] = stop
                ready.set()
                await stop.wait()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, name="fuzzed-daemon", daemon=True)
    thread.start()
    assert ready.wait(30), "the daemon did not start"
    if "error" in box:
        raise box["error"]
    run: Running = box["running"]
    key, token = run.in_daemon(lambda: keys.create(run.ctx.store, "fuzz", "admin"))
    run.admin_key = token
    yield run
    trio.from_thread.run_sync(box["stop"].set, trio_token=run.token)
    thread.join(30)
    assert "error" not in box, box.get("error")


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def db(running: Running) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{running.db}?mode=ro", uri=True, check_same_thread=False)
    yield conn
    conn.close()


def snapshot(db: sqlite3.Connection) -> dict[str, Any]:
    """A digest of every table's content (rejected journal rows and the request log counted)."""
    out: dict[str, Any] = {}
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                       " AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        if table in AUDIT_TABLES:
            out[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            continue
        if table in BACKGROUND_TABLES:
            out[table] = db.execute(f"SELECT count(*), max(rowid) FROM {table}").fetchone()
            continue
        query = f"SELECT * FROM {table} ORDER BY rowid"
        if table == "events":
            query = "SELECT * FROM events WHERE outcome IS NOT 'rejected' ORDER BY rowid"
            out["events:rejected"] = db.execute(
                "SELECT count(*) FROM events WHERE outcome = 'rejected'").fetchone()[0]
        out[table] = hashlib.sha256(repr(db.execute(query).fetchall()).encode()).hexdigest()
    return out


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
            if before.get(k) != after.get(k)}


def check_refusal(before: dict[str, Any], after: dict[str, Any], *, rejected_rows: int = 0,
                  audit_rows: int | range = 0, may_change: tuple[str, ...] = ()) -> None:
    """Only the rows the module docstring allows were written."""
    assert after["events:rejected"] - before["events:rejected"] == rejected_rows
    allowed = audit_rows if isinstance(audit_rows, range) else range(audit_rows, audit_rows + 1)
    for table in AUDIT_TABLES:
        assert after[table] - before[table] in allowed, table
    diff = changed(before, after)
    for table in ("events:rejected", *AUDIT_TABLES, *may_change):
        diff.pop(table, None)
    assert diff == {}, f"refused input changed {sorted(diff)}"


# -- strategies --------------------------------------------------------------------------------

text = st.text(max_size=40) | st.sampled_from(["", " ", "{{employee_id}}", "null", "0", "-1",
                                               "NaN", "1e999", "٣", "²", "\u0000", "<script>"])
numbers = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True)
           | st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 10**30]))
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(text, children, max_size=4), max_leaves=12)
FIELDS = ["call_session_id", "notification_time", "contact_phone_number", "virtual_phone_number",
          "employee_id", "employee_full_name", "direction", "talk_time_duration",
          "total_time_duration", "wait_time_duration", "leg_id", "leg_ids", "employee_ids",
          "external_id", "file_link", "last_talked_employee_id", "contact_full_name"]
notifications = st.fixed_dictionaries(
    {"event": st.sampled_from(list(EVENTS)) | text},
    optional={name: json_values for name in FIELDS})


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def post_webhook(client: httpx.Client, running: Running, body: bytes,
                 content_type: str = "application/json") -> httpx.Response:
    return client.post(running.webhook, content=body, headers={"content-type": content_type})


def check_webhook_answer(response: httpx.Response, before: dict[str, Any],
                         after: dict[str, Any]) -> None:
    assert response.status_code in (200, 400, 413), (response.status_code, response.text)
    answer = response.json()
    if response.status_code == 200:
        assert answer["status"] in ("accepted", "duplicate", "ignored")
    elif response.status_code == 400:
        assert answer["error"] == "invalid_notification" and answer["message"]
        check_refusal(before, after, rejected_rows=1)
    else:
        check_refusal(before, after)


# -- the UIS webhook ---------------------------------------------------------------------------


@FUZZ
@given(value=json_values)
def test_webhook_any_json_value(running, client, db, value):
    before = snapshot(db)
    response = post_webhook(client, running, encode(value))
    check_webhook_answer(response, before, snapshot(db))


@FUZZ
@given(fields=notifications)
def test_webhook_notification_shaped_bodies_with_wrong_types(running, client, db, fields):
    before = snapshot(db)
    response = post_webhook(client, running, encode(fields))
    check_webhook_answer(response, before, snapshot(db))


@FUZZ
@given(fields=st.fixed_dictionaries({"event": st.sampled_from(list(EVENTS))},
                                    optional={name: text | numbers for name in FIELDS}),
       form=st.booleans())
def test_webhook_query_and_form_notifications(running, client, db, fields, form):
    params = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in fields.items()}
    before = snapshot(db)
    if form:
        response = client.post(running.webhook, data=params)
    else:
        response = client.get(running.webhook, params=params)
    check_webhook_answer(response, before, snapshot(db))


@FUZZ
@given(body=st.binary(max_size=300)
       | st.builds(lambda b: b'{"event": "incoming_call", "x": "' + b + b'"}',
                   st.binary(max_size=20))
       | st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 2000))
       | st.builds(lambda n: b'{"a":' * n + b"1" + b"}" * n, st.integers(1, 800))
       | st.builds(lambda n: b'{"event": "lost_call", "call_session_id": ' + b"9" * n + b"}",
                   st.integers(1, 6000))
       | st.builds(lambda k, a, b: b'{"event": "lost_call", "%s": %s, "%s": %s}'
                   % (k.encode(), encode(a), k.encode(), encode(b)),
                   st.sampled_from(FIELDS + ["event"]), scalars, scalars))
@example(body=b'{"event": "lost_call", "call_session_id": ' + b"9" * 5000 + b"}")
@example(body=b'{"event": "lost_call", "call_session_id": 1, "contact_phone_number": "\\ud800"}')
@example(body=b'{"event": "incoming_call", "call_session_id": 1, "contact_full_name": "\\udfff"}')
@example(body=b'{"event": "\\ud800", "call_session_id": 1}')
@example(body=b'{"\\ud800": 1, "event": "incoming_call", "call_session_id": 2}')
@example(body=b'{"event": "lost_call", "call_session_id": 1e999}')
@example(body=b'{"event": "lost_call", "call_session_id": NaN}')
@example(body=b'{"event": "lost_call", "call_session_id": 3, "wait_time_duration": -1e308}')
@example(body=b"[" * 100_00 + b"]" * 100_00)
def test_webhook_raw_bytes_nesting_huge_numbers_and_duplicate_keys(running, client, db, body):
    before = snapshot(db)
    response = post_webhook(client, running, body)
    check_webhook_answer(response, before, snapshot(db))
    if response.status_code == 200:
        assert body.count(b'"call_session_id"') <= 1  # a duplicate key is never accepted


@FUZZ
@given(size=st.integers(MAX_BODY + 1, MAX_BODY * 4), chunked=st.booleans())
def test_webhook_bodies_over_the_limit_are_413_and_stored_nowhere(running, client, db, size,
                                                                  chunked):
    body = b'{"event": "incoming_call", "call_session_id": 1, "pad": "' + b"x" * size + b'"}'
    before = snapshot(db)
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body
    response = client.post(running.webhook, content=content,
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    check_refusal(before, snapshot(db))


@FUZZ
@given(segment=st.text(min_size=1, max_size=60).filter(lambda s: s != SECRET))
def test_webhook_wrong_secrets_are_404_and_store_nothing(running, client, db, segment):
    before = snapshot(db)
    response = client.post(f"{running.url}/webhooks/uis/" + urllib.parse.quote(segment, safe=""),
                           content=b'{"event": "incoming_call", "call_session_id": 1}')
    assert response.status_code in (308, 404, 405), response.text  # 308: a trailing "/"
    check_refusal(before, snapshot(db))


# -- retailCRM callbacks -----------------------------------------------------------------------

CALLBACK_NAMES = ["clientId", "code", "userId", "phone", "status", "externalPhone", "site",
                  "apiKey", "externalId"]
callback_params = st.dictionaries(st.sampled_from(CALLBACK_NAMES) | text,
                                  text | numbers.map(str), max_size=6)


def call_callback(client: httpx.Client, url: str, params: dict[str, str], how: str
                  ) -> httpx.Response:
    if how == "get":
        return client.get(url, params=params)
    if how == "form":
        return client.post(url, data=params)
    return client.post(url, content=json.dumps(params).encode(),
                       headers={"content-type": "application/json"})


@FUZZ
@given(route=st.sampled_from(["/crm/make-call", "/crm/user-status"]), params=callback_params,
       how=st.sampled_from(["get", "form", "json"]), right_client=st.booleans())
def test_retailcrm_callbacks_never_fail_and_refusals_write_only_the_request_log(
        running, client, db, route, params, how, right_client):
    if right_client:
        params = {**params, "clientId": CLIENT_ID}
        if route == "/crm/make-call":
            params.pop("phone", None)  # no real click-to-call: UIS would dial (not retried)
    before = snapshot(db)
    response = call_callback(client, running.url + route, params, how)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        journals = ("clicks",) if route == "/crm/make-call" and response.status_code != 403 \
            else ()
        check_refusal(before, snapshot(db), audit_rows=WRONG_CLIENT_ROWS
                      if response.status_code == 403 else 1,
                      may_change=journals + (("warnings",) if response.status_code == 422 else ()))
    if not right_client or not params.get("clientId"):
        assert response.status_code == 403 or params.get("clientId") == CLIENT_ID


@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(encode),
       route=st.sampled_from(["/crm/make-call", "/crm/user-status"]))
@example(body=b'{"clientId": "\\ud800"}', route="/crm/make-call")
@example(body=b'{"clientId": "\\ud800", "status": "free"}', route="/crm/user-status")
@example(body=b'{"clientId": 1e999}', route="/crm/user-status")
@example(body=b'{"clientId": ' + b"1" * 5000 + b"}", route="/crm/make-call")
def test_retailcrm_callbacks_survive_raw_json_bodies(running, client, db, body, route):
    before = snapshot(db)
    response = client.post(running.url + route, content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code in (400, 403), (response.status_code, response.text)
    check_refusal(before, snapshot(db),
                  audit_rows=WRONG_CLIENT_ROWS if response.status_code == 403 else 1)


# -- the admin API -----------------------------------------------------------------------------

methods = st.sampled_from(["get.calls", "get.call", "get.outbox", "retry.outbox",
                           "get.employees", "update.employees", "get.api_requests",
                           "get.statistics", "nope"]) | text
envelopes = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "1.0"]) | scalars,
    "id": scalars,
    "method": methods | scalars,
    "params": st.dictionaries(text, json_values, max_size=5) | json_values,
})


@FUZZ
@given(envelope=envelopes | json_values, authorised=st.booleans())
@example(envelope=[None, float("inf")], authorised=False)  # one parse error, not two calls
@example(envelope={"jsonrpc": "2.0", "method": "get.calls"}, authorised=True)  # notification
@example(envelope={"jsonrpc": "2.0", "method": "get.calls", "params": {}},
         authorised=False)  # an anonymous notification: refused, a summary at most, no answer
@example(envelope=[{"jsonrpc": "2.0", "method": "retry.outbox", "params": {"ids": [1]}},
                   {"jsonrpc": "2.0", "method": "get.calls", "id": 1, "params": {"x": 1}}, 5],
         authorised=False)
def test_admin_api_answers_garbage_with_errors_not_failures(running, client, db, envelope,
                                                            authorised):
    headers = {"content-type": "application/json"}
    if authorised:
        headers["Authorization"] = f"Bearer {running.admin_key}"
    before = snapshot(db)
    last_row = db.execute("SELECT coalesce(max(id), 0) FROM api_requests").fetchone()[0]
    response = client.post(f"{running.url}/api/v1", content=encode(envelope), headers=headers)
    assert response.status_code < 500, (response.status_code, response.text)
    # a batch is answered as an array, notifications not at all (204): one log row per call
    answer = None if response.status_code == 204 else response.json()
    answers = answer if isinstance(answer, list) else [] if answer is None else [answer]
    unparsed = isinstance(answer, dict) and answer.get("error", {}).get("code") == -32700
    calls = (len(envelope) if isinstance(envelope, list) and 0 < len(envelope) <= 100
             and not unparsed else 1)  # e.g. [null, Infinity] is one parse error
    assert len(answers) <= calls
    for answer in answers:
        assert ("error" in answer) != ("result" in answer)
        if "error" in answer:
            assert answer["error"]["code"] != -32603, answer  # an internal error is a failure
    outcomes = [r[0] for r in db.execute(  # this request's rows only
        "SELECT outcome FROM api_requests WHERE id > ? ORDER BY id", (last_row,))]
    assert "internal_error" not in outcomes
    wrong_key = any(a.get("error", {}).get("data", {}).get("mnemonic") in (
        "access_token_invalid", "access_token_blocked") for a in answers)
    if "ok" not in outcomes:
        # a refused key is a summary row, a bounded number a minute (web/failures.py)
        check_refusal(before, snapshot(db),
                      # (an anonymous notification's refusal is such a summary too, unanswered)
                      audit_rows=range(0, calls + 3) if wrong_key or not authorised else calls,
                      may_change=("api_keys",) if authorised else ())
    elif not authorised:
        pytest.fail(f"an anonymous request was answered: {answers}")


@FUZZ
@given(body=st.binary(max_size=200))
@example(body=b'{"jsonrpc": "2.0", "id": 1, "method": "get.calls", "params": {"x": "\\ud800"}}')
@example(body=b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "\\ud800", "params": {}}')
@example(body=b'{"jsonrpc": "2.0", "id": ' + b"1" * 5000 + b', "method": "get.calls"}')
@example(body=b'{"jsonrpc": "2.0", "id": 1, "method": "get.calls", "params": {"limit": 1e999}}')
def test_admin_api_survives_raw_bytes(running, client, db, body):
    before = snapshot(db)
    response = client.post(f"{running.url}/api/v1", content=body,
                           headers={"Authorization": f"Bearer {running.admin_key}",
                                    "content-type": "application/json"})
    assert response.status_code < 500
    answer = response.json()
    assert all("error" in a for a in (answer if isinstance(answer, list) else [answer]))
    calls = len(answer) if isinstance(answer, list) else 1  # b"[1, 2]": one refusal each
    check_refusal(before, snapshot(db), audit_rows=calls, may_change=("api_keys",))


# -- every route -------------------------------------------------------------------------------


def _routes(running: Running) -> list[tuple[str, str]]:
    """Every route of the daemon's app and its methods, with path variables filled in: quart's
    rules, and the notification endpoint answered in front of quart (with a method it refuses)."""
    from tracker.web import webhook
    from tracker.web.app import create_app

    app = running.in_daemon(lambda: create_app(running.ctx))
    found = [(method, WEBHOOK_PREFIX + SECRET) for method in (*webhook.METHODS, "PUT")]
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for name, value in (("<given>", SECRET), ("<int:call_id>", "1"), ("<int:row_id>", "1")):
            path = path.replace(name, value)
        path = re.sub(r"<[^>]+>", "x", path)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, path))
    return found


@pytest.fixture(scope="module")
def routes(running: Running) -> list[tuple[str, str]]:
    found = _routes(running)
    assert ("POST", "/api/v1") in found and ("POST", f"/webhooks/uis/{SECRET}") in found
    return found


@FUZZ
@given(data=st.data())
def test_every_route_survives_garbage(running, client, routes, data):
    method, path = data.draw(st.sampled_from(routes))
    query = data.draw(st.dictionaries(text, text, max_size=3))
    body = data.draw(st.binary(max_size=200) | json_values.map(encode))
    content_type = data.draw(st.sampled_from(["application/json",
                                              "application/x-www-form-urlencoded",
                                              "multipart/form-data; boundary=x", "text/plain",
                                              "application/json; charset=latin-1"]))
    kwargs: dict[str, Any] = {"params": query}
    if method != "GET":
        kwargs.update(content=body, headers={"content-type": content_type})
    response = client.request(method, running.url + path, **kwargs)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])


def test_the_daemon_is_healthy_and_delivers_after_the_fuzzing(running, client):
    assert client.get(f"{running.url}/healthz").status_code == 200
    session = 990_000_001
    for notification in scenarios.lost_in_ivr(session, start=start_time()).notifications:
        response = client.post(running.webhook,
                               content=scenarios.render_notification(notification),
                               headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while str(session) not in running.sims.crm.uploaded:
        assert time.monotonic() < deadline, "the call was not delivered"
        time.sleep(0.05)
    assert client.get(f"{running.url}/healthz").status_code == 200
