"""The admin API over HTTP: the real daemon, real keys, real SQLite, the simulators."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import trio

from tests.support import (
    ANNA,
    BORIS,
    CRM_KEY,
    Daemon,
    open_daemon,
    open_sims,
    open_system,
    settings_for,
    start_time,
)
from tracker.db import keys
from tracker.db.store import Store
from tracker.simulators import scenarios
from tracker.web import api

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
SESSION = 998677427
OTHER = 998677500


async def post(d: Daemon, body: Any, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST a body (bytes as they are, anything else as JSON); the JSON-RPC answer."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await d.client.post(f"{d.url}/api/v1", content=content,
                                   headers={"content-type": "application/json", **(headers or {})})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["jsonrpc"] == "2.0"
    assert ("result" in answer) != ("error" in answer), answer
    return answer


async def rpc(d: Daemon, method: str, params: dict[str, Any] | None = None, *,
              token: str | None = None, request_id: Any = 1, **kwargs: Any) -> dict[str, Any]:
    body_params = dict(params or {})
    if token is not None:
        body_params["access_token"] = token
    return await post(d, {"jsonrpc": "2.0", "id": request_id, "method": method,
                          "params": body_params}, **kwargs)


def mnemonic(answer: dict[str, Any]) -> str | None:
    return answer["error"]["data"]["mnemonic"] if "error" in answer else None


def new_key(d: Daemon, name: str, *rights: str) -> str:
    return keys.create(d.ctx.store, name, rights)[1]


async def make_dead_letters(d: Daemon, *sessions: int) -> list[int]:
    """Lost calls whose uploads retailCRM refuses for good (a wrong key), then a good key again."""
    d.sims.crm.api_key = "rotated-key"
    for session in sessions:
        await d.play(scenarios.lost_in_ivr(session, start=start_time()))
    d.sims.crm.api_key = CRM_KEY
    dead = [r["id"] for r in d.ctx.store.dead_letters()]
    assert len(dead) == len(sessions)
    return sorted(dead)


# -- methods and rights --------------------------------------------------------------------------


async def test_every_method_answers_only_keys_holding_its_right(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            dead = await make_dead_letters(d, SESSION, OTHER)
            tokens = {right: new_key(d, f"only {right}", right) for right in keys.RIGHTS}
            calls = {
                "get.calls": {},
                "get.call_events": {},
                "get.outbox": {},
                "retry.outbox": None,  # one dead letter per key allowed to retry it
                "get.employees": {},
                "update.employees": {"id": ANNA[0], "full_name": "Анна"},
                "get.api_requests": {},
                "get.statistics": {},
            }
            assert set(calls) == set(api.METHODS)
            spare = iter(dead)
            for method, params in calls.items():
                needed = api.METHODS[method].right
                for right, token in tokens.items():
                    allowed = right in (needed, "admin")
                    if params is None:
                        params_now = {"ids": [next(spare)]} if allowed else {"ids": dead}
                    else:
                        params_now = params
                    answer = await rpc(d, method, params_now, token=token)
                    if allowed:
                        assert "result" in answer, (method, right, answer)
                    else:
                        assert answer["error"]["code"] == -32003, (method, right, answer)
                        assert answer["error"]["data"] == {"mnemonic": "forbidden",
                                                           "field": "method", "value": method}
            assert d.count("outbox", "status = 'dead'") == 0  # both retried, by the two allowed


async def test_get_calls_filters_selects_fields_sorts_and_counts(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA,
                                            talk_seconds=40))
            await d.play(scenarios.ring_group_lost(OTHER, start=start_time(),
                                                   ringing=[ANNA, BORIS]))
            await d.play(scenarios.lost_in_ivr(OTHER + 1, start=start_time()))
            token = new_key(d, "reader", "calls:read")
            answer = await rpc(d, "get.calls", {
                "filter": {"filters": [
                    {"field": "state", "operator": "=", "value": "lost"},
                    {"filters": [{"field": "talk_seconds", "operator": ">=", "value": 40},
                                 {"field": "talked", "operator": "=", "value": True}],
                     "condition": "and"}], "condition": "or"},
                "fields": ["id", "state", "talk_seconds"],
                "sort": [{"field": "id", "order": "desc"}],
                "limit": 2,
            }, token=token)
            assert answer["result"] == {
                "data": [{"id": OTHER + 1, "state": "lost", "talk_seconds": 0},
                         {"id": OTHER, "state": "lost", "talk_seconds": 0}],
                "metadata": {"total_items": 3, "limit": 2, "offset": 0},
            }
            rest = await rpc(d, "get.calls", {"ids": [SESSION, OTHER, 5], "fields": ["id", "rang"],
                                              "sort": [{"field": "id"}], "offset": 1},
                             headers={"Authorization": f"Bearer {token}"})
            assert rest["result"]["data"] == [{"id": OTHER, "rang": [ANNA[0], BORIS[0]]}]
            assert rest["result"]["metadata"]["total_items"] == 2


async def test_call_events_and_outbox_give_a_calls_timeline(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            scenario = scenarios.answered(SESSION, start=start_time(), employee=ANNA)
            await d.play(scenario)
            token = new_key(d, "reader", "calls:read")
            by_call = {"field": "call_id", "operator": "=", "value": SESSION}
            events = await rpc(d, "get.call_events", {
                "filter": by_call, "fields": ["event", "outcome", "state_before", "state_after"]},
                token=token)
            assert [e["event"] for e in events["result"]["data"]] == [
                n.event for n in scenario.notifications]
            assert events["result"]["data"][0] == {"event": "incoming_call", "outcome": "accepted",
                                                   "state_before": "ringing",
                                                   "state_after": "ringing"}
            outbox = await rpc(d, "get.outbox", {"filter": by_call, "sort": [{"field": "id"}],
                                                 "fields": ["kind", "status", "request"]},
                               token=token)
            rows = outbox["result"]["data"]
            assert [(r["kind"], r["status"]) for r in rows] == [
                ("popup", "delivered"), ("hangup", "delivered"), ("upload", "delivered")]
            assert rows[0]["request"]["endpoint"] == "telephony/call/event"  # decoded JSON
            assert rows[0]["request"]["form"]["event"]["codes"] == ["101"]


async def test_retry_outbox_requeues_dead_letters_all_or_none(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            [dead] = await make_dead_letters(d, SESSION)
            await d.play(scenarios.lost_in_ivr(OTHER, start=start_time()))
            [delivered] = [r["id"] for r in d.ctx.store.outbox_for(OTHER)]
            token = new_key(d, "operator", "outbox:write")
            refused = [
                ({"ids": [dead, 424242]}, "entity_not_found", "ids[1]", -32602),
                ({"ids": [dead, delivered]}, "invalid_state", "ids[1]", -32004),
                ({}, "required_parameter_missing", "ids", -32602),
                ({"ids": []}, "invalid_parameter_value", "ids", -32602),
            ]
            for params, expected, field, code in refused:
                answer = await rpc(d, "retry.outbox", params, token=token)
                assert (mnemonic(answer), answer["error"]["data"]["field"],
                        answer["error"]["code"]) == (expected, field, code)
                assert d.ctx.store.outbox_for(SESSION)[0]["status"] == "dead"  # nothing changed
            uploads_before = len(d.uploads_for(SESSION))
            assert (await rpc(d, "retry.outbox", {"ids": [dead]}, token=token))["result"] == {}
            await d.settle()
            assert d.ctx.store.outbox_for(SESSION)[0]["status"] == "delivered"
            assert len(d.uploads_for(SESSION)) == uploads_before + 1 == 1


# -- employees -----------------------------------------------------------------------------------


async def employee(d: Daemon, token: str, uis_id: int) -> dict[str, Any]:
    answer = await rpc(d, "get.employees", {"ids": [uis_id]}, token=token)
    [row] = answer["result"]["data"]
    del row["updated_at"]
    return row


async def test_update_employees_changes_only_the_fields_sent(tmp_path):
    steps = [
        ({"full_name": "Анна Иванова", "tags": ["sales", "night"]},
         {"full_name": "Анна Иванова", "tags": ["sales", "night"]}),
        ({"tags": ["day"]}, {"full_name": "Анна Иванова", "tags": ["day"]}),  # replaced whole
        ({"full_name": None}, {"full_name": None, "tags": ["day"]}),  # null clears
        ({"tags": []}, {"full_name": None, "tags": []}),
        ({"tags": None, "full_name": "A"}, {"full_name": "A", "tags": None}),
        ({"phone": "+7 (999) 000-11-22"}, {"full_name": "A", "tags": None,
                                           "phone": "79990001122"}),
        ({"phone": None}, {"full_name": "A", "tags": None, "phone": None}),
        ({"crm_user_id": 7, "code": "107"}, {"full_name": "A", "tags": None, "phone": None,
                                             "crm_user_id": 7, "code": "107"}),
    ]
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = new_key(d, "hr", "employees:write", "calls:read")
            expected = {"id": ANNA[0], "crm_user_id": 1, "code": "101", "phone": "",
                        "full_name": None, "tags": None}
            assert await employee(d, token, ANNA[0]) == expected
            boris = await employee(d, token, BORIS[0])
            for params, changed in steps:
                answer = await rpc(d, "update.employees", {"id": ANNA[0], **params}, token=token)
                assert answer["result"] == {}, answer
                expected.update(changed)
                assert await employee(d, token, ANNA[0]) == expected, params
            assert await employee(d, token, BORIS[0]) == boris  # nobody else changed
            refused = [
                ({"id": ANNA[0], "crm_user_id": None}, "invalid_parameter_value", "crm_user_id"),
                ({"id": ANNA[0], "code": None}, "invalid_parameter_value", "code"),
                ({"id": ANNA[0], "code": "  "}, "invalid_parameter_value", "code"),
                ({"id": ANNA[0], "code": "102"}, "duplicate_value", "code"),
                ({"id": ANNA[0], "crm_user_id": 0}, "invalid_parameter_value", "crm_user_id"),
                ({"id": ANNA[0], "phone": "call me"}, "invalid_parameter_value", "phone"),
                ({"id": ANNA[0], "tags": "sales"}, "invalid_parameter_value", "tags"),
                ({"id": ANNA[0], "tags": ["ok", 5]}, "invalid_parameter_value", "tags[1]"),
                ({"id": ANNA[0], "full_name": 5, "code": "x"}, "invalid_parameter_value",
                 "full_name"),
                ({"id": ANNA[0], "surname": "x"}, "unexpected_parameters", "surname"),
                ({"id": 999, "full_name": "x"}, "entity_not_found", "id"),
                ({"id": "101", "full_name": "x"}, "invalid_parameter_value", "id"),
                ({"id": ANNA[0]}, "required_parameter_missing", None),
                ({"full_name": "x"}, "required_parameter_missing", "id"),
            ]
            for params, expected_error, field in refused:
                answer = await rpc(d, "update.employees", params, token=token)
                assert (mnemonic(answer), answer["error"]["data"]["field"]) == (
                    expected_error, field), params
            assert await employee(d, token, ANNA[0]) == expected  # refusals changed nothing
            # the outbox reads the live mapping: Anna's next card goes to her new code and user
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA))
            first = d.events_for(SESSION)[0]
            assert (first["codes"], first["userIds"]) == (["107"], [7])
            assert d.uploads_for(SESSION)[0]["code"] == "107"


async def test_config_wins_at_start_up_and_api_only_fields_survive(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            async with open_daemon(sims, settings) as d:
                token = new_key(d, "hr", "employees:write", "calls:read")
                answer = await rpc(d, "update.employees", {
                    "id": ANNA[0], "code": "555", "full_name": "Анна", "tags": ["vip"]},
                    token=token)
                assert answer["result"] == {}
            fewer = settings_for(tmp_path, sims.uis_url, sims.crm_url, employees=[
                {"uis_id": ANNA[0], "crm_user_id": 1, "code": "101", "phone": "201"},
                {"uis_id": BORIS[0], "crm_user_id": 2, "code": "102"}])
            async with open_daemon(sims, fewer) as d:
                rows = (await rpc(d, "get.employees", {"fields": ["id", "code", "phone",
                                                                  "full_name", "tags"]},
                                  token=token))["result"]["data"]
                assert rows == [
                    {"id": ANNA[0], "code": "101", "phone": "201", "full_name": "Анна",
                     "tags": ["vip"]},
                    {"id": BORIS[0], "code": "102", "phone": "", "full_name": None, "tags": None},
                ]
                assert d.ctx.store.employee_by_uis_id(103) is None  # gone from the file


# -- the request log -----------------------------------------------------------------------------


async def test_every_call_is_in_the_request_log_with_secrets_masked(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            reader = new_key(d, "reader", "calls:read")
            auditor = new_key(d, "auditor", "log:read")
            await rpc(d, "get.calls", {"limit": 5}, token=reader)
            await rpc(d, "get.calls", {"limit": 0}, token=reader)
            await rpc(d, "get.api_requests", {}, token=reader)
            await rpc(d, "get.statistics", {}, token="trk_not-a-key")
            await post(d, b"{broken")
            answer = await rpc(d, "get.api_requests", {
                "filter": {"field": "source", "operator": "=", "value": "admin"},
                "sort": [{"field": "id"}], "fields": ["key_name", "method", "params", "outcome",
                                                      "status"]},
                headers={"Authorization": f"Bearer {auditor}"})
            assert answer["result"]["data"] == [
                {"key_name": "reader", "method": "get.calls",
                 "params": {"limit": 5, "access_token": "***"}, "outcome": "ok", "status": 200},
                {"key_name": "reader", "method": "get.calls",
                 "params": {"limit": 0, "access_token": "***"},
                 "outcome": "invalid_parameter_value", "status": 200},
                {"key_name": "reader", "method": "get.api_requests",
                 "params": {"access_token": "***"}, "outcome": "forbidden", "status": 200},
                {"key_name": None, "method": "get.statistics",  # refused: a summary only
                 "params": {"_refused": True, "bytes": 100, "from": "127.0.0.1"},
                 "outcome": "access_token_invalid", "status": 200},
                {"key_name": None, "method": "", "params": {}, "outcome": "parse_error",
                 "status": 200},
            ]
            durations = d.ctx.store.conn.execute("SELECT duration_ms FROM api_requests").fetchall()
            assert all(row[0] >= 0 for row in durations)
            everything = json.dumps([dict(r) for r in d.ctx.store.conn.execute(
                "SELECT * FROM api_requests").fetchall()])
            assert reader not in everything and auditor not in everything


async def test_old_request_log_rows_are_pruned_at_start_up(tmp_path):
    now = time.time()
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    admin={"request_log_retention_days": 30})
            store = Store(settings.database.path)
            store.migrate()
            for age_days in (45, 31, 29, 1):
                store.log_request(source="crm", method="make-call", params={}, outcome="ok",
                                  status=200, duration_ms=1.0, at=now - age_days * 86400)
            store.close()
            async with open_daemon(sims, settings) as d:
                ages = [round((now - r[0]) / 86400) for r in d.ctx.store.conn.execute(
                    "SELECT at FROM api_requests ORDER BY at")]
                assert ages == [29, 1]


# -- errors --------------------------------------------------------------------------------------

REQUEST = {"jsonrpc": "2.0", "id": 1, "method": "get.calls", "params": {}}


def documented_mnemonics() -> dict[str, int]:
    return {m: int(code) for m, code in re.findall(r"^\| `([a-z_]+)` \| (-\d+) \|", DOCS,
                                                   flags=re.MULTILINE)}


async def test_each_error_mnemonic_is_answered_as_documented(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
            [delivered] = [r["id"] for r in d.ctx.store.outbox_for(SESSION)]
            admin = new_key(d, "root", "admin")
            reader = new_key(d, "reader", "calls:read")
            revoked = new_key(d, "old", "admin")
            keys.revoke(d.ctx.store, "old")

            def req(method: str = "get.calls", token: str | None = admin, **params: Any) -> dict:
                if token is not None:
                    params["access_token"] = token
                return {**REQUEST, "method": method, "params": params}

            cases: list[tuple[Any, str, str | None]] = [
                (b"{not json", "parse_error", None),
                (b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "get.calls"}', "parse_error",
                 None),
                (b'{"jsonrpc": "2.0", "id": 1, "method": "get.calls", "params": {"limit": NaN}}',
                 "parse_error", None),
                (b"\xff\xfe", "parse_error", None),
                (b"[" * 100_00 + b"]" * 100_00, "parse_error", None),
                ({**REQUEST, "jsonrpc": "1.0"}, "invalid_request", "jsonrpc"),
                ({**REQUEST, "id": 1.5}, "invalid_request", "id"),
                ({**REQUEST, "id": {"a": 1}}, "invalid_request", "id"),
                ({**REQUEST, "method": 5}, "invalid_request", "method"),
                ({**REQUEST, "extra": 1}, "invalid_request", "extra"),
                ("a string", "invalid_request", None),
                ({**REQUEST, "params": "bar"}, "invalid_request", "params"),
                ([], "invalid_request", None),
                ([REQUEST] * (api.MAX_BATCH + 1), "batch_too_large", None),
                (req("get.passwords"), "method_not_found", "method"),
                (req(token=None), "access_token_invalid", "access_token"),
                (req(token="trk_" + "x" * 43), "access_token_invalid", "access_token"),
                (req(token=5), "access_token_invalid", "access_token"),  # type: ignore[arg-type]
                (req(token=revoked), "access_token_blocked", "access_token"),
                (req("get.api_requests", token=reader), "forbidden", "method"),
                (req(where="1=1"), "unexpected_parameters", "where"),
                (req("get.statistics", limit=1), "unexpected_parameters", "limit"),
                (req("retry.outbox"), "required_parameter_missing", "ids"),
                ({**REQUEST, "params": [admin]}, "invalid_parameter_value", "params"),
                (req(limit=0), "invalid_parameter_value", "limit"),
                (req(filter={"field": "rang", "operator": "is_null"}), "filter_prohibited",
                 "filter.field"),
                (req(sort=[{"field": "cards_open"}]), "sort_prohibited", "sort[0].field"),
                (req(limit=100_000), "limit_exceeded", "limit"),
                (req("retry.outbox", ids=[424242]), "entity_not_found", "ids[0]"),
                (req("update.employees", id=ANNA[0], code="102"), "duplicate_value", "code"),
                (req("retry.outbox", ids=[delivered]), "invalid_state", "ids[0]"),
            ]
            documented = documented_mnemonics()
            for body, expected, field in cases:
                answer = await post(d, body)
                error = answer["error"]
                assert error["data"]["mnemonic"] == expected, (body, answer)
                assert error["data"]["field"] == field, (body, answer)
                assert error["code"] == documented[expected], (body, answer)
                assert isinstance(error["message"], str) and error["message"]
            # the database failing is internal_error (and the daemon keeps answering)
            d.ctx.store.conn.execute("ALTER TABLE outbox RENAME TO outbox_away")
            try:
                answer = await post(d, req("get.outbox"))
            finally:
                d.ctx.store.conn.execute("ALTER TABLE outbox_away RENAME TO outbox")
            assert (mnemonic(answer), answer["error"]["code"]) == ("internal_error", -32603)
            # a body a browser may send across sites without asking first (HTTP 415)
            plain = await d.client.post(f"{d.url}/api/v1", content=json.dumps(req()),
                                        headers={"content-type": "text/plain"})
            assert plain.status_code == 415 and mnemonic(plain.json()) == "unsupported_content_type"
            assert plain.json()["error"]["code"] == documented["unsupported_content_type"]
            covered = {expected for _, expected, _ in cases} | {"internal_error",
                                                                "unsupported_content_type"}
            assert covered == set(documented)
            # the id is echoed, even on refusals
            assert (await post(d, {**req(), "id": "abc"}))["id"] == "abc"
            assert (await post(d, {**req(limit=0), "id": 77}))["id"] == 77
            assert (await post(d, {**req(), "jsonrpc": "1.0", "id": 9}))["id"] == 9
            # a null id is a request like any other (answered with id null); no id at all is a
            # notification, and a batch is answered as an array (tests/test_jsonrpc.py)
            assert (await post(d, {**req(), "id": None}))["result"]["data"] is not None


def test_every_mnemonic_in_the_code_is_in_the_one_table_with_its_code() -> None:
    source = "\n".join((ROOT / "tracker" / name).read_text(encoding="utf-8")
                       for name in ("web/api.py", "core/querylang.py"))
    used: dict[str, int] = {}
    for constant, name in re.findall(r'ApiError\(\s*([A-Z_]+),\s*"([a-z_]+)"', source):
        used[name] = getattr(api, constant)
    for name in re.findall(r'problem\(\s*"([a-z_]+)"', source):
        used[name] = -32602
    assert used == documented_mnemonics()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/api.md)" in readme


# -- keys on the wire ----------------------------------------------------------------------------


async def test_bearer_header_and_loopback_access(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = new_key(d, "reader", "calls:read")
            assert "result" in await rpc(d, "get.statistics",
                                         headers={"Authorization": f"Bearer {token}"})
            for header in (f"Basic {token}", "Bearer", f"Token {token}"):
                answer = await rpc(d, "get.statistics", headers={"Authorization": header})
                assert mnemonic(answer) == "access_token_invalid", header
            # the key in params wins over the header, as UIS reads it there
            answer = await rpc(d, "get.statistics", token="trk_wrong",
                               headers={"Authorization": f"Bearer {token}"})
            assert mnemonic(answer) == "access_token_invalid"
        async with open_system(tmp_path / "2", admin={"allow_loopback_without_key": True}) as d:
            answer = await rpc(d, "get.statistics")
            assert answer["result"]["data"]["calls"]["total"] == 0
            last = d.ctx.store.conn.execute(
                "SELECT key_name, outcome FROM api_requests ORDER BY id DESC").fetchone()
            assert tuple(last) == ("loopback", "ok")
            # a key given is still checked
            assert mnemonic(await rpc(d, "get.statistics", token="trk_wrong")) == \
                "access_token_invalid"


async def test_statistics_report_calls_outbox_and_counts(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            await make_dead_letters(d, SESSION)
            await d.play(scenarios.answered(OTHER, start=start_time(), employee=ANNA))
            token = new_key(d, "reader", "calls:read")
            data = (await rpc(d, "get.statistics", token=token))["result"]["data"]
            assert data["calls"] == {"total": 2, "by_state": {
                **{s: 0 for s in d.ctx.chart.states}, "ended": 1, "lost": 1}}
            assert data["outbox"]["dead"] == 1 and data["outbox"]["pending"] == 0
            assert data["outbox"]["delivered_total"] == 3
            assert (data["employees"], data["api_keys_active"]) == (3, 1)


# -- SQL injection in every parameter ------------------------------------------------------------

INJECTIONS = [
    "1; DROP TABLE calls; --",
    "' OR '1'='1",
    "id) OR (1=1",
    "state = 'x' UNION SELECT token_hash, 1, 1 FROM api_keys --",
    '" OR 1=1 --',
    "calls; DELETE FROM api_keys",
]


def snapshot(d: Daemon) -> dict[str, Any]:
    conn = d.ctx.store.conn
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    counts = {t: d.count(t) for t in ("calls", "events", "outbox", "api_keys", "employees",
                                      "warnings")}
    return {"schema": [tuple(r) for r in schema], "counts": counts,
            "keys": [tuple(r) for r in conn.execute("SELECT * FROM api_keys")]}


async def test_sql_injection_in_every_parameter_is_refused_cleanly_or_taken_literally(tmp_path):
    with trio.fail_after(60):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA))
            token = new_key(d, "root", "admin")
            before = snapshot(d)
            documented = documented_mnemonics()
            for evil in INJECTIONS:
                refused = [
                    {**REQUEST, "method": evil, "params": {"access_token": token}},
                    {**REQUEST, "params": {"access_token": evil}},
                    {**REQUEST, "params": {"access_token": token, evil: 1}},
                    {**REQUEST, evil: 1},
                    {**REQUEST, "id": {"x": evil}},
                ]
                get_params: list[dict[str, Any]] = [
                    {"filter": {"field": evil, "operator": "=", "value": 1}},
                    {"filter": {"field": "state", "operator": evil, "value": 1}},
                    {"filter": {"field": "id", "operator": "=", "value": evil}},
                    {"filter": {"field": "id", "operator": "in", "value": [1, evil]}},
                    {"filter": {"filters": [{"field": "id", "operator": "=", "value": 1}],
                                "condition": evil}},
                    {"filter": {"field": "state", "operator": "=", "value": 1, evil: 1}},
                    {"sort": [{"field": evil}]},
                    {"sort": [{"field": "id", "order": evil}]},
                    {"fields": ["id", evil]},
                    {"ids": [evil]},
                    {"limit": evil},
                    {"offset": evil},
                ]
                for method in ("get.calls", "get.call_events", "get.outbox", "get.employees",
                               "get.api_requests"):
                    refused += [{**REQUEST, "method": method,
                                 "params": {"access_token": token, **p}} for p in get_params]
                refused += [
                    {**REQUEST, "method": "retry.outbox",
                     "params": {"access_token": token, "ids": [evil]}},
                    {**REQUEST, "method": "update.employees",
                     "params": {"access_token": token, "id": evil, "code": "x"}},
                    {**REQUEST, "method": "update.employees",
                     "params": {"access_token": token, "id": ANNA[0], "crm_user_id": evil}},
                    {**REQUEST, "method": "update.employees",
                     "params": {"access_token": token, "id": ANNA[0], "phone": evil}},
                ]
                for body in refused:
                    answer = await post(d, body)
                    assert "error" in answer, body
                    error = answer["error"]
                    assert error["data"]["mnemonic"] in documented, answer
                    assert error["data"]["mnemonic"] != "internal_error", (body, answer)
                    assert error["code"] == documented[error["data"]["mnemonic"]]
                # values of the right type are data: they match nothing and change nothing
                for field in ("state", "contact_phone", "contact_name", "external_id"):
                    for operator in ("=", "like", "<"):
                        answer = await post(d, {**REQUEST, "params": {
                            "access_token": token,
                            "filter": {"field": field, "operator": operator, "value": evil}}})
                        assert answer["result"]["metadata"]["total_items"] == 0 or (
                            operator == "<"), answer
                answer = await post(d, {**REQUEST, "method": "get.api_requests", "params": {
                    "access_token": token,
                    "filter": {"field": "method", "operator": "=", "value": evil}}})
                assert answer["result"]["metadata"]["total_items"] >= 1  # the method refusal
                # and strings an update stores are stored as they are
                answer = await post(d, {**REQUEST, "method": "update.employees", "params": {
                    "access_token": token, "id": ANNA[0], "code": evil[:64], "full_name": evil,
                    "tags": [evil]}})
                assert answer["result"] == {}
                row = d.ctx.store.conn.execute(
                    "SELECT code, full_name, tags FROM employees WHERE id = ?",
                    (ANNA[0],)).fetchone()
                assert tuple(row) == (evil[:64], evil, json.dumps([evil]))
            after = snapshot(d)
            assert after["schema"] == before["schema"]
            assert after["counts"] == before["counts"]
            assert after["keys"][0][:4] == before["keys"][0][:4]
            assert d.ctx.store.integrity_ok() == "ok"
            # and the daemon still works end to end
            await d.play(scenarios.lost_in_ivr(OTHER, start=start_time()))
            assert len(d.uploads_for(OTHER)) == 1


def test_request_log_masks_secrets_at_any_depth_and_cuts_huge_params() -> None:
    from tracker.db import requestlog

    assert requestlog.mask({"access_token": "trk_x", "clientId": "c", "filter": {
        "field": "state", "api_key": "k", "items": [{"webhook_secret": "s", "ok": 1}]},
        "password": "", "token": None}) == {
        "access_token": "***", "clientId": "***", "filter": {
            "field": "state", "api_key": "***", "items": [{"webhook_secret": "***", "ok": 1}]},
        "password": "", "token": None}
    assert requestlog.mask(["not", "an", "object"]) == {"_params": ["not", "an", "object"]}
    huge = requestlog.mask({"filter": "x" * 100_000})
    assert list(huge) == ["_truncated"] and len(huge["_truncated"]) == 8192


def test_pruning_keeps_everything_when_retention_is_zero(tmp_path) -> None:
    from tracker.db import requestlog

    store = Store(tmp_path / "log.db")
    store.migrate()
    for age_days in (400, 2):
        store.log_request(source="admin", method="get.calls", params={}, outcome="ok",
                          status=200, duration_ms=1.0, at=1e9 - age_days * 86400)
    assert requestlog.prune(store, 0, now=1e9) == 0
    assert requestlog.prune(store, 7, now=1e9) == 1
    assert store.conn.execute("SELECT count(*) FROM api_requests").fetchone()[0] == 1


def test_the_live_mapping_lookups(tmp_path) -> None:
    from tracker.config import Employee

    store = Store(tmp_path / "map.db")
    store.migrate()
    anna, boris = Employee(101, 1, "101", "201"), Employee(102, 1, "102")
    store.sync_employees([anna, boris, Employee(103, 3, "103")])
    store.sync_employees([anna, boris])  # 103 left the file
    assert store.all_employees() == (anna, boris)
    assert store.employee_by_uis_id(101) == anna and store.employee_by_uis_id(None) is None
    assert store.employee_by_code("102") == boris and store.employee_by_code("") is None
    assert store.employee_by_crm_user_id(1) == anna  # the lowest UIS id of a shared user
    for huge in (2**63, -(2**63) - 1, 2**80):
        assert store.employee_by_uis_id(huge) is None
        assert store.employee_by_crm_user_id(huge) is None
