"""The admin API speaks JSON-RPC 2.0: the specification's own examples, batches, notifications
and a JSON-RPC client library from PyPI, against the real daemon.

The examples are those of https://www.jsonrpc.org/specification#examples, sent as the spec
writes them. Where the spec's answer is an error or nothing, tracker must answer exactly that
(code and id; our ``message`` is more precise and ``data`` adds the UIS-style mnemonic). The
spec's methods (``subtract``, ``sum``, ``get_data``, …) are not tracker's: sent verbatim they
are ``Method not found`` with the spec's ids, and the same examples with tracker's methods
put in get results.
"""

from __future__ import annotations

import json
from typing import Any

import jsonrpcclient
import trio

from tests.support import ANNA, Daemon, open_system, start_time
from tests.test_api import SESSION, make_dead_letters, new_key
from tracker.simulators import scenarios
from tracker.web import api


async def exchange(d: Daemon, body: bytes | Any, **headers: str) -> tuple[int, Any]:
    """POST a body (bytes as they are, else as JSON): the HTTP status and the decoded answer
    (None when there is no body)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await d.client.post(f"{d.url}/api/v1", content=content,
                                   headers={"content-type": "application/json", **headers})
    if response.status_code == 204:
        assert response.content == b"", response.content
        return 204, None
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return 200, response.json()


def shape(answer: dict[str, Any]) -> dict[str, Any]:
    """A response object as the spec's examples show it: our message and data set aside (after
    checking they are there)."""
    assert answer["jsonrpc"] == "2.0" and "id" in answer, answer
    assert ("result" in answer) != ("error" in answer), answer
    if "result" in answer:
        return {"jsonrpc": "2.0", "result": "…", "id": answer["id"]}
    error = answer["error"]
    assert isinstance(error["message"], str) and error["message"], answer
    assert set(error["data"]) >= {"mnemonic", "field", "value"}, answer
    return {"jsonrpc": "2.0", "error": {"code": error["code"]}, "id": answer["id"]}


def spec_error(code: int, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code}, "id": request_id}


OK = "…"  # a result, whatever it holds

# (the spec's title, the body sent verbatim, the answer: None for no answer, else its shape)
SPEC_EXAMPLES: list[tuple[str, bytes, Any]] = [
    ("rpc call with positional parameters",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     spec_error(-32601, 1)),
    ("rpc call with positional parameters",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     spec_error(-32601, 2)),
    ("rpc call with named parameters",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42},'
     b' "id": 3}', spec_error(-32601, 3)),
    ("a Notification", b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ("a Notification", b'{"jsonrpc": "2.0", "method": "foobar"}', None),
    ("rpc call of non-existent method", b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     spec_error(-32601, "1")),
    ("rpc call with invalid JSON",
     b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]', spec_error(-32700, None)),
    ("rpc call with invalid Request object", b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     spec_error(-32600, None)),
    ("rpc call Batch, invalid JSON",
     b'[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
     b'  {"jsonrpc": "2.0", "method"\n]', spec_error(-32700, None)),
    ("rpc call with an empty Array", b"[]", spec_error(-32600, None)),
    ("rpc call with an invalid Batch (but not empty)", b"[1]", [spec_error(-32600, None)]),
    ("rpc call with invalid Batch", b"[1,2,3]", [spec_error(-32600, None)] * 3),
    ("rpc call Batch",
     b'[\n'
     b'  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
     b'  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},\n'
     b'  {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},\n'
     b'  {"foo": "boo"},\n'
     b'  {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},\n'
     b'  {"jsonrpc": "2.0", "method": "get_data", "id": "9"}\n'
     b']', [spec_error(-32601, "1"), spec_error(-32601, "2"), spec_error(-32600, None),
            spec_error(-32601, "5"), spec_error(-32601, "9")]),
    ("rpc call Batch (all notifications)",
     b'[\n  {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},\n'
     b'  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}\n]', None),
]

# the same examples with tracker's methods in place of the spec's: the answers the spec gives
OURS: list[tuple[str, bytes, Any]] = [
    ("rpc call with positional parameters (tracker takes named ones only: Invalid params)",
     b'{"jsonrpc": "2.0", "method": "get.calls", "params": [42, 23], "id": 1}',
     spec_error(-32602, 1)),
    ("rpc call with named parameters",
     b'{"jsonrpc": "2.0", "method": "get.calls", "params": {"limit": 23, "offset": 42},'
     b' "id": 3}', {"jsonrpc": "2.0", "result": OK, "id": 3}),
    ("a Notification", b'{"jsonrpc": "2.0", "method": "get.statistics"}', None),
    ("a Notification with invalid params is not answered either",
     b'{"jsonrpc": "2.0", "method": "get.calls", "params": [1,2,3,4,5]}', None),
    ("rpc call Batch",
     b'[\n'
     b'  {"jsonrpc": "2.0", "method": "get.statistics", "params": {}, "id": "1"},\n'
     b'  {"jsonrpc": "2.0", "method": "get.statistics"},\n'
     b'  {"jsonrpc": "2.0", "method": "get.calls", "params": {"limit": 19}, "id": "2"},\n'
     b'  {"foo": "boo"},\n'
     b'  {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},\n'
     b'  {"jsonrpc": "2.0", "method": "get.employees", "id": "9"}\n'
     b']', [{"jsonrpc": "2.0", "result": OK, "id": "1"},
            {"jsonrpc": "2.0", "result": OK, "id": "2"}, spec_error(-32600, None),
            spec_error(-32601, "5"), {"jsonrpc": "2.0", "result": OK, "id": "9"}]),
    ("rpc call Batch (all notifications)",
     b'[{"jsonrpc": "2.0", "method": "get.statistics"},'
     b' {"jsonrpc": "2.0", "method": "get.calls", "params": {"limit": 7}}]', None),
]


def by_id(answers: list[dict[str, Any]]) -> list[str]:
    """A batch's answers in a stable order (the spec lets them come in any order)."""
    return sorted(json.dumps(a, sort_keys=True) for a in answers)


async def test_the_specifications_examples_get_the_specifications_answers(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = new_key(d, "root", "admin")
            for title, body, expected in SPEC_EXAMPLES + OURS:
                status, answer = await exchange(d, body, Authorization=f"Bearer {token}")
                if expected is None:
                    assert (status, answer) == (204, None), (title, answer)
                elif isinstance(expected, list):
                    assert isinstance(answer, list), (title, answer)
                    assert by_id([shape(a) for a in answer]) == by_id(expected), (title, answer)
                else:
                    assert isinstance(answer, dict), (title, answer)
                    assert shape(answer) == expected, (title, answer)


async def test_a_batch_answers_each_call_as_alone_and_logs_each(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            [dead] = await make_dead_letters(d, SESSION)
            reader = new_key(d, "reader", "calls:read")
            operator = new_key(d, "operator", "outbox:write")
            d.ctx.store.conn.execute("DELETE FROM api_requests")
            batch = [
                {"jsonrpc": "2.0", "id": 1, "method": "get.calls",
                 "params": {"access_token": reader, "fields": ["id", "state"]}},
                {"jsonrpc": "2.0", "id": 2, "method": "retry.outbox",
                 "params": {"access_token": reader, "ids": [dead]}},  # lacks the right
                {"jsonrpc": "2.0", "id": 3, "method": "get.calls",
                 "params": {"limit": 0, "access_token": reader}},
                {"jsonrpc": "2.0", "id": 4, "method": "get.statistics"},  # no key at all
                {"jsonrpc": "2.0", "method": "retry.outbox",  # a notification: done, unanswered
                 "params": {"access_token": operator, "ids": [dead]}},
                {"jsonrpc": "2.0", "id": None, "method": "get.statistics",
                 "params": {"access_token": reader}},  # a null id is a request, not a notification
            ]
            status, answer = await exchange(d, batch)
            assert status == 200 and isinstance(answer, list) and len(answer) == 5, answer
            got = {json.dumps(a["id"]): a for a in answer}
            assert got["1"]["result"]["data"] == [{"id": SESSION, "state": "lost"}]
            assert got["2"]["error"]["data"]["mnemonic"] == "forbidden"
            assert got["3"]["error"]["data"] == {"mnemonic": "invalid_parameter_value",
                                                 "field": "limit", "value": 0}
            assert got["4"]["error"]["data"]["mnemonic"] == "access_token_invalid"
            # the calls run one after another in the batch's order: the retry came before
            assert got["null"]["result"]["data"]["outbox"]["dead"] == 0
            await d.settle()
            assert d.ctx.store.outbox_for(SESSION)[0]["status"] == "delivered"
            rows = [tuple(r) for r in d.ctx.store.conn.execute(
                "SELECT key_name, method, outcome, status FROM api_requests ORDER BY id")]
            # a call refused for its key is logged as a fixed-size summary once the body is
            # answered (web/failures.py bounds those rows), so it comes last
            assert rows == [
                ("reader", "get.calls", "ok", 200),
                ("reader", "retry.outbox", "forbidden", 200),
                ("reader", "get.calls", "invalid_parameter_value", 200),
                ("operator", "retry.outbox", "ok", 200),
                ("reader", "get.statistics", "ok", 200),
                (None, "get.statistics", "access_token_invalid", 200),
            ]


async def test_notifications_are_executed_logged_and_not_answered(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            [dead] = await make_dead_letters(d, SESSION)
            token = new_key(d, "root", "admin")
            d.ctx.store.conn.execute("DELETE FROM api_requests")
            notifications = [
                {"jsonrpc": "2.0", "method": "retry.outbox",
                 "params": {"access_token": token, "ids": [dead]}},
                {"jsonrpc": "2.0", "method": "update.employees",
                 "params": {"access_token": token, "id": ANNA[0], "full_name": "Анна"}},
                {"jsonrpc": "2.0", "method": "update.employees",  # refused, silently
                 "params": {"access_token": token, "id": ANNA[0], "code": "102"}},
                {"jsonrpc": "2.0", "method": "get.statistics", "params": {"access_token": "x"}},
            ]
            for body in notifications:
                assert await exchange(d, body) == (204, None), body
            assert await exchange(d, notifications) == (204, None)
            await d.settle()
            assert d.ctx.store.outbox_for(SESSION)[0]["status"] == "delivered"
            assert d.ctx.store.employee_by_uis_id(ANNA[0]).code == "101"
            name = d.ctx.store.conn.execute("SELECT full_name FROM employees WHERE id = ?",
                                            (ANNA[0],)).fetchone()[0]
            assert name == "Анна"
            outcomes = [tuple(r) for r in d.ctx.store.conn.execute(
                "SELECT method, outcome, status FROM api_requests ORDER BY id")]
            once = [("retry.outbox", "ok", 204), ("update.employees", "ok", 204),
                    ("update.employees", "duplicate_value", 204),
                    ("get.statistics", "access_token_invalid", 204)]
            # the second time the dead letter is already delivered
            assert outcomes == once + [("retry.outbox", "invalid_state", 204), *once[1:]]


async def test_a_batch_is_bounded_and_an_empty_one_refused(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            token = new_key(d, "root", "admin")
            call = {"jsonrpc": "2.0", "method": "get.statistics",
                    "params": {"access_token": token}}
            full = [{**call, "id": n} for n in range(api.MAX_BATCH)]
            status, answer = await exchange(d, full)
            assert status == 200 and sorted(a["id"] for a in answer) == list(range(api.MAX_BATCH))
            assert all("result" in a for a in answer)
            before = d.count("api_requests")
            status, answer = await exchange(d, [*full, {**call, "id": "one too many"}])
            assert status == 200 and isinstance(answer, dict), answer
            assert answer["id"] is None and answer["error"]["code"] == -32600
            assert answer["error"]["data"] == {"mnemonic": "batch_too_large", "field": None,
                                               "value": api.MAX_BATCH + 1}
            assert str(api.MAX_BATCH) in answer["error"]["message"]
            assert d.count("api_requests") == before + 1  # nothing ran; the refusal is logged
            status, answer = await exchange(d, [])
            assert answer["error"]["data"]["mnemonic"] == "invalid_request"
            assert answer["id"] is None
            # a batch inside a batch is one invalid request, not a second level
            status, answer = await exchange(d, [[{**call, "id": 1}]])
            assert [shape(a) for a in answer] == [spec_error(-32600, None)]


async def test_a_json_rpc_client_library_talks_to_the_daemon(tmp_path):
    """jsonrpcclient (PyPI) builds the requests and parses the answers."""
    with trio.fail_after(30):
        async with open_system(tmp_path) as d:
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA))
            [dead] = await make_dead_letters(d, SESSION + 1)
            headers = {"Authorization": f"Bearer {new_key(d, 'root', 'admin')}"}

            async def send(request: Any) -> Any:
                response = await d.client.post(f"{d.url}/api/v1", json=request, headers=headers)
                return None if response.status_code == 204 else response.json()

            answer = jsonrpcclient.parse(await send(jsonrpcclient.request(
                "get.calls", params={"ids": [SESSION], "fields": ["id", "state"]})))
            assert isinstance(answer, jsonrpcclient.Ok), answer
            assert answer.result["data"] == [{"id": SESSION, "state": "ended"}]
            error = jsonrpcclient.parse(await send(jsonrpcclient.request("get.passwords")))
            assert isinstance(error, jsonrpcclient.Error), error
            assert (error.code, error.data["mnemonic"]) == (-32601, "method_not_found")
            assert await send(jsonrpcclient.notification(
                "retry.outbox", params={"ids": [dead]})) is None
            batch = [jsonrpcclient.request("get.statistics"),
                     jsonrpcclient.request("get.employees", params={"fields": ["id"]}),
                     jsonrpcclient.notification("get.statistics"),
                     jsonrpcclient.request("get.calls", params={"limit": 0})]
            answers = {r.id: r for r in jsonrpcclient.parse(await send(batch))}
            assert set(answers) == {batch[0]["id"], batch[1]["id"], batch[3]["id"]}
            assert isinstance(answers[batch[0]["id"]], jsonrpcclient.Ok)
            assert answers[batch[1]["id"]].result["data"][0] == {"id": ANNA[0]}
            refused = answers[batch[3]["id"]]
            assert isinstance(refused, jsonrpcclient.Error)
            assert (refused.code, refused.data["mnemonic"]) == (-32602, "invalid_parameter_value")
            await d.settle()
            assert d.ctx.store.outbox_for(SESSION + 1)[0]["status"] == "delivered"


async def test_a_batch_lets_the_webhook_run_between_its_calls(tmp_path):
    """Each call runs on the event loop: a batch of 100 must yield between its calls, or it
    would hold up pop-ups for the time of all 100."""
    with trio.fail_after(30):
        async with open_system(tmp_path) as d, trio.open_nursery() as nursery:
            token = new_key(d, "root", "admin")
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            batch = json.dumps([{"jsonrpc": "2.0", "id": n, "method": "get.calls",
                                 "params": {"access_token": token}}
                                for n in range(api.MAX_BATCH)]).encode()
            before = ticks
            answer = await api.handle(d.ctx, batch)
            assert isinstance(answer, list) and len(answer) == api.MAX_BATCH
            # trio runs each ready task once per scheduling batch, in a random order: about one
            # tick per call (0 when the batch never yields)
            assert ticks - before >= api.MAX_BATCH // 2
            nursery.cancel_scope.cancel()
