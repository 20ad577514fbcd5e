"""The admin API: JSON-RPC 2.0 at ``POST /api/v1``, in the style of the UIS Data API.

``handle`` takes the raw body and answers a JSON-RPC response object, an array of them for a
batch, or nothing for notifications; it does the SQLite work synchronously (each method is a few
indexed queries, a batch at most ``MAX_BATCH`` calls, with a checkpoint between them: that is
why it is async) and writes one request-log row per call.
Errors are ``ApiError``: ``code`` is the group, ``data.mnemonic`` the reason, ``data.field`` the
dot path of the culprit. docs/api.md is the reference, with every mnemonic in one table.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import trio

from tracker.config import dial_string
from tracker.core import bodies, querylang
from tracker.core.querylang import Column, Table, json_column, problem
from tracker.db import keys, querysql, requestlog
from tracker.errors import ApiError, BodyError

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from tracker.context import Context

log = logging.getLogger(__name__)

PATH = "/api/v1"

# JSON-RPC error groups, numbered as the UIS Data API numbers them
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = querylang.INVALID_PARAMS
INTERNAL_ERROR = -32603
AUTH_ERROR = -32001
FORBIDDEN = -32003
INVALID_STATE = -32004

CALLS = Table("calls", (
    Column("id", "int"), Column("state", "str"), Column("direction", "str"),
    Column("contact_phone", "str"), Column("contact_name", "str"),
    Column("virtual_phone", "str"), Column("started_at", "float"),
    Column("finished_at", "float"), Column("updated_at", "float"), Column("talked", "bool"),
    Column("talk_seconds", "int"), Column("wait_seconds", "int"),
    Column("total_seconds", "int"), Column("talked_employee_id", "int"),
    Column("external_id", "str"), Column("file_link", "str"), Column("record_url", "str"),
    json_column("rang"), json_column("carded"), json_column("closed"),
    json_column("cards_open"),
), default_sort=(("updated_at", "desc"),))

CALL_EVENTS = Table("events", (
    Column("id", "int"), Column("received_at", "float"), Column("call_id", "int"),
    Column("event", "str"), Column("outcome", "str"), Column("duplicates", "int"),
    Column("state_before", "str"), Column("state_after", "str"), Column("error", "str"),
    Column("method", "str"), Column("body", "str", sortable=False),
), default_sort=(("id", "asc"),))

OUTBOX = Table("outbox", (
    Column("id", "int"), Column("call_id", "int"), Column("lane", "str"), Column("kind", "str"),
    Column("status", "str"), Column("priority", "int"), Column("attempts", "int"),
    Column("next_at", "float"), Column("created_at", "float"), Column("updated_at", "float"),
    Column("last_error", "str"), json_column("payload"), json_column("request"),
    Column("response", "str", sortable=False),
))

API_REQUESTS = Table("api_requests", (
    Column("id", "int"), Column("at", "float"), Column("source", "str"),
    Column("key_name", "str"), Column("method", "str"), Column("outcome", "str"),
    Column("status", "int"), Column("duration_ms", "float"), json_column("params"),
))

EMPLOYEES = Table("employees", (
    Column("id", "int"), Column("crm_user_id", "int"), Column("code", "str"),
    Column("phone", "str"), Column("full_name", "str"), json_column("tags"),
    Column("updated_at", "float"),
), default_sort=(("id", "asc"),))

MAX_TAGS = 50
AUTH_REFUSALS = frozenset({"access_token_invalid", "access_token_blocked"})


@dataclass(frozen=True)
class Method:
    """One API method: the right it needs, the params it takes, and what it does."""

    right: str
    params: frozenset[str]
    run: Callable[[Context, dict[str, Any], querylang.Limits, keys.KeyInfo], dict[str, Any]]


def limits_of(ctx: Context) -> querylang.Limits:
    admin = ctx.settings.admin
    return querylang.Limits(default_limit=admin.default_limit, max_limit=admin.max_limit,
                          max_offset=admin.max_offset)


# -- the methods ---------------------------------------------------------------------------------


def _getter(table: Table) -> Callable[..., dict[str, Any]]:
    def run(ctx: Context, params: dict[str, Any], limits: querylang.Limits,
            key: keys.KeyInfo) -> dict[str, Any]:
        return querysql.run_select(ctx.store, table, params, limits)

    return run


def _statistics(ctx: Context, params: dict[str, Any], limits: querylang.Limits,
                key: keys.KeyInfo) -> dict[str, Any]:
    by_state = ctx.store.count_by_state()
    return {"data": {
        "uptime_seconds": round(time.time() - ctx.lifecycle.started_at, 1),
        "calls": {"total": sum(by_state.values()),
                  "by_state": {s: by_state.get(s, 0) for s in ctx.chart.states}},
        "outbox": asdict(ctx.outbox.statistics()),
        "warnings": ctx.store.count_warnings(),
        "employees": ctx.store.count_employees(),
        "api_keys_active": keys.count_active(ctx.store),
    }}


def _retry_outbox(ctx: Context, params: dict[str, Any], limits: querylang.Limits,
                  key: keys.KeyInfo) -> dict[str, Any]:
    """Queue dead letters again (``Store.retry_dead``), all or none: the first id that is not a
    dead letter is named and the transaction undone. The outbox delivers them in their lanes'
    order."""
    if params.get("ids") is None:
        raise problem("required_parameter_missing", "give the ids of the dead letters", "ids")
    ids = querylang.parse_ids(params["ids"], limits, "ids")
    with ctx.store.transaction():
        refused = ctx.store.retry_dead(ids, time.time()).refused
        for index, row_id in enumerate(params["ids"]):
            status = refused.get(row_id)
            if status == "unknown":
                raise problem("entity_not_found", f"no outbox row {row_id}", f"ids[{index}]",
                              row_id)
            if status is not None:
                raise ApiError(INVALID_STATE, "invalid_state",
                               f"outbox row {row_id} is {status}, not a dead letter",
                               field=f"ids[{index}]", value=row_id)
    ctx.outbox.wake()
    log.info("retry.outbox by key %r: dead letters %s queued again", key.name, ids)
    return {}


def _update_employees(ctx: Context, params: dict[str, Any], limits: querylang.Limits,
                      key: keys.KeyInfo) -> dict[str, Any]:
    """Partial update: only the fields sent change; an array replaces the old one whole; null
    clears an optional field."""
    if "id" not in params:
        raise problem("required_parameter_missing", "give the UIS employee id", "id")
    uis_id = params["id"]
    if not querylang.is_int(uis_id):
        raise problem("invalid_parameter_value", "must be an integer", "id",
                      querylang.short(uis_id))
    changes = {name: _employee_value(name, value) for name, value in params.items()
               if name not in ("id", "access_token")}
    if not changes:
        raise problem("required_parameter_missing",
                      "give at least one field to change: " + ", ".join(_EMPLOYEE_FIELDS),
                      None)
    with ctx.store.transaction():
        if not ctx.store.employee_exists(uis_id):
            raise problem("entity_not_found", f"no employee {uis_id} in the mapping", "id",
                          uis_id)
        if "code" in changes:
            taken = ctx.store.employee_with_code(changes["code"], other_than=uis_id)
            if taken is not None:
                raise problem("duplicate_value", f"employee {taken} already has this code",
                              "code", changes["code"])
        ctx.store.update_employee(uis_id, changes, time.time())
    log.info("update.employees by key %r: employee %s: %s", key.name, uis_id,
             ", ".join(sorted(changes)))
    return {}


def _employee_value(name: str, value: Any) -> Any:
    """The column value for one field of ``update.employees`` (None stores NULL)."""
    if name == "crm_user_id":
        if not querylang.is_int(value) or value <= 0:
            raise problem("invalid_parameter_value", "must be a positive integer (it cannot be "
                          "cleared)", name, querylang.short(value))
        return value
    if name == "code":
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            raise problem("invalid_parameter_value", "must be a non-empty string of at most 64 "
                          "characters (it cannot be cleared)", name, querylang.short(value))
        return value
    if value is None:
        return None
    if name == "phone":
        digits = dial_string(value) if isinstance(value, str) else ""
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
            raise problem("invalid_parameter_value", "must be a phone number or extension",
                          name, querylang.short(value))
        return digits
    if name == "full_name":
        if not isinstance(value, str) or len(value) > 200:
            raise problem("invalid_parameter_value", "must be a string of at most 200 characters",
                          name, querylang.short(value))
        return value
    if name == "tags":
        if not isinstance(value, list) or len(value) > MAX_TAGS:
            raise problem("invalid_parameter_value", f"must be an array of at most {MAX_TAGS} "
                          "strings, or null", name, querylang.short(value))
        for index, tag in enumerate(value):
            if not isinstance(tag, str) or not tag.strip() or len(tag) > 64:
                raise problem("invalid_parameter_value", "a tag is a non-empty string of at "
                              "most 64 characters", f"tags[{index}]", querylang.short(tag))
        return json.dumps(value, ensure_ascii=False)
    raise AssertionError(name)  # the dispatcher refuses unexpected params first


_EMPLOYEE_FIELDS = ("crm_user_id", "code", "phone", "full_name", "tags")
_GET = querylang.QUERY_PARAMS

METHODS: dict[str, Method] = {
    "get.calls": Method("calls:read", _GET, _getter(CALLS)),
    "get.call_events": Method("calls:read", _GET, _getter(CALL_EVENTS)),
    "get.outbox": Method("calls:read", _GET, _getter(OUTBOX)),
    "retry.outbox": Method("outbox:write", frozenset({"ids"}), _retry_outbox),
    "get.employees": Method("calls:read", _GET, _getter(EMPLOYEES)),
    "update.employees": Method("employees:write", frozenset({"id", *_EMPLOYEE_FIELDS}),
                               _update_employees),
    "get.api_requests": Method("log:read", _GET, _getter(API_REQUESTS)),
    "get.statistics": Method("calls:read", frozenset(), _statistics),
}


# -- the dispatcher ------------------------------------------------------------------------------

MAX_BATCH = 100  # calls in one batch: a caller cannot make one POST do unbounded work


@dataclass
class _Call:
    """What one call leaves for the request log and the metrics."""

    method: str = ""
    params: Any = None
    key: keys.KeyInfo | None = None
    outcome: str = "ok"
    duration_ms: float = 0.0


async def handle(ctx: Context, raw: bytes, *, bearer: str | None = None,
                 remote_addr: str | None = None, caller: str | None = None,
                 on_refusal: Callable[..., None] | None = None,
                 ) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Answer one request body as JSON-RPC 2.0 does: a response object for a request, an array
    of them for a batch, None when nothing is to be answered (notifications only); log each
    call. Between the calls of a batch it lets other tasks run (a batch must not hold up the
    webhook for the time of all its calls)."""
    calls: list[_Call] = []
    answer: dict[str, Any] | list[dict[str, Any]] | None
    try:
        body = _decode(raw)
    except ApiError as exc:
        calls.append(_Call(outcome=exc.mnemonic))
        answer = _error_answer(None, exc)
    else:
        if isinstance(body, list) and 0 < len(body) <= MAX_BATCH:
            answers = []
            for index, item in enumerate(body):
                if index:
                    await trio.lowlevel.checkpoint()
                answers.append(_answer(ctx, item, calls, bearer, remote_addr))
            answer = [a for a in answers if a is not None] or None
        elif isinstance(body, list):
            refusal = (ApiError(INVALID_REQUEST, "invalid_request", "an empty batch")
                       if not body else
                       ApiError(INVALID_REQUEST, "batch_too_large",
                                f"a batch holds at most {MAX_BATCH} calls", value=len(body)))
            calls.append(_Call(outcome=refusal.mnemonic))
            answer = _error_answer(None, refusal)
        else:
            answer = _answer(ctx, body, calls, bearer, remote_addr)
    _log_calls(ctx, calls, status=200 if answer is not None else 204, size=len(raw),
               caller=caller or remote_addr, on_refusal=on_refusal)
    return answer


def _answer(ctx: Context, item: Any, calls: list[_Call], bearer: str | None,
            remote_addr: str | None) -> dict[str, Any] | None:
    """Run one call of a body; its response object, or None for a notification."""
    started = time.perf_counter()
    call = _Call(params={})
    calls.append(call)
    request_id: Any = None
    if isinstance(item, dict) and _valid_id(item.get("id")):
        request_id = item["id"]  # echoed even when the rest of the request is refused
    # a valid request object without an id: run it, answer nothing (not even an error)
    notification = isinstance(item, dict) and "id" not in item
    try:
        call.method, call.params = _envelope(item)
    except ApiError as exc:  # not a request object at all: always answered
        call.outcome, notification = exc.mnemonic, False
        answer = _error_answer(request_id, exc)
    else:
        answer = _run(ctx, call, request_id, bearer, remote_addr)
    call.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    return None if notification else answer


def _run(ctx: Context, call: _Call, request_id: Any, bearer: str | None,
         remote_addr: str | None) -> dict[str, Any]:
    """Run a well-formed request object; its response object (``call`` learns the key and the
    outcome)."""
    method_name, params = call.method, call.params
    try:
        method = METHODS.get(method_name)
        if method is None:
            raise ApiError(METHOD_NOT_FOUND, "method_not_found",
                           f"no method {querylang.short(method_name)!r}; see docs/api.md",
                           field="method", value=querylang.short(method_name))
        if not isinstance(params, dict):  # an array: by position, which no method takes
            raise ApiError(INVALID_PARAMS, "invalid_parameter_value", "params must be an "
                           "object (named parameters)", field="params",
                           value=querylang.short(params))
        call.key = key = _authenticate(ctx, params, bearer, remote_addr)
        if not key.allows(method.right):
            raise ApiError(FORBIDDEN, "forbidden",
                           f"key {key.name!r} lacks the right {method.right} that "
                           f"{method_name} needs", field="method", value=method_name)
        unexpected = sorted(set(params) - method.params - {"access_token"})
        if unexpected:
            raise problem("unexpected_parameters",
                          f"{method_name} takes no parameter {unexpected[0]!r}",
                          querylang.short(unexpected[0]))
        result = method.run(ctx, params, limits_of(ctx), key)
        return {"jsonrpc": "2.0", "id": request_id, "result": result}
    except ApiError as exc:
        call.outcome = exc.mnemonic
        return _error_answer(request_id, exc)
    except sqlite3.Error as exc:  # the database, not the request, is at fault
        log.exception("admin API %s: database error", method_name)
        call.outcome = "internal_error"
        return _error_answer(request_id, ApiError(
            INTERNAL_ERROR, "internal_error", f"the database failed: {exc}"))


def _log_calls(ctx: Context, calls: list[_Call], *, status: int, size: int, caller: str | None,
               on_refusal: Callable[..., None] | None) -> None:
    """One request-log row and one metrics count per call; ``status`` is the HTTP status the
    whole body is answered with. A call refused for its key is logged as a fixed-size summary
    (whatever else it sent is not ours to keep), by ``on_refusal`` when given (web/failures.py
    bounds how many such rows a flood writes)."""
    for call in calls:
        known = call.method if call.method in METHODS else "other"
        ctx.metrics.observe_api(known, call.outcome)
        if call.outcome in AUTH_REFUSALS and on_refusal is not None:
            on_refusal(source="admin", method=call.method[:100], outcome=call.outcome,
                       status=status, size=size, duration_ms=call.duration_ms)
            continue
        logged = (requestlog.refused(size, caller) if call.outcome in AUTH_REFUSALS
                  else requestlog.mask(call.params or {}))
        try:
            ctx.store.log_request(
                source="admin", key_name=None if call.key is None else call.key.name,
                method=call.method[:100], params=logged,
                outcome=call.outcome, status=status, duration_ms=call.duration_ms)
        except sqlite3.Error:
            log.exception("could not write the request log")


def _decode(raw: bytes) -> Any:
    try:
        return bodies.decode_json(raw)
    except BodyError as exc:  # a parse error names no field (JSON-RPC): the message names the key
        raise ApiError(PARSE_ERROR, "parse_error", str(exc)) from None


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= 100) or querylang.is_int(value)


def _envelope(body: Any) -> tuple[str, Any]:
    """The method name and params (an object or an array) of a valid request object; anything
    else is ``invalid_request``."""
    if not isinstance(body, dict):
        raise ApiError(INVALID_REQUEST, "invalid_request", "a call must be a JSON-RPC 2.0 "
                       "request object")
    if body.get("jsonrpc") != "2.0":
        raise ApiError(INVALID_REQUEST, "invalid_request", 'jsonrpc must be "2.0"',
                       field="jsonrpc", value=querylang.short(body.get("jsonrpc")))
    if "id" in body and body["id"] is not None and not _valid_id(body["id"]):
        raise ApiError(INVALID_REQUEST, "invalid_request", "id must be a string, an integer "
                       "or null", field="id", value=querylang.short(body["id"]))
    extra = sorted(set(body) - {"jsonrpc", "id", "method", "params"})
    if extra:
        raise ApiError(INVALID_REQUEST, "invalid_request", "unexpected member of the request",
                       field=querylang.short(extra[0]))
    method = body.get("method")
    if not isinstance(method, str):
        raise ApiError(INVALID_REQUEST, "invalid_request", "method must be a string",
                       field="method", value=querylang.short(method))
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict | list):
        raise ApiError(INVALID_REQUEST, "invalid_request", "params must be an object or an "
                       "array", field="params", value=querylang.short(params))
    return method, params


def _authenticate(ctx: Context, params: dict[str, Any], bearer: str | None,
                  remote_addr: str | None) -> keys.KeyInfo:
    """The key of this request: ``params.access_token`` (as UIS does), else the bearer token,
    else loopback access when allowed."""
    token = params.get("access_token")
    if token is not None and not isinstance(token, str):
        raise ApiError(AUTH_ERROR, "access_token_invalid", "access_token must be a string",
                       field="access_token")
    token = token or bearer
    if not token:
        if keys.loopback_allowed(ctx.settings.admin.allow_loopback_without_key, remote_addr):
            return keys.LOOPBACK
        raise ApiError(AUTH_ERROR, "access_token_invalid", "an API key is required: "
                       "params.access_token or Authorization: Bearer", field="access_token")
    key = keys.find(ctx.store, token)
    if key is None:
        raise ApiError(AUTH_ERROR, "access_token_invalid", "no such API key",
                       field="access_token")
    if not key.active:
        raise ApiError(AUTH_ERROR, "access_token_blocked", f"the key {key.name!r} was revoked",
                       field="access_token")
    return key


def _error_answer(request_id: Any, exc: ApiError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {
        "code": exc.code, "message": exc.message,
        "data": {"mnemonic": exc.mnemonic, "field": exc.field, "value": exc.value},
    }}


def register(app: QuartTrio, ctx: Context) -> None:
    """Add ``POST /api/v1`` to ``app``."""
    from quart import Response, request  # quart is heavy: imported only by a serving daemon

    from tracker.web import failures

    @app.route(PATH, methods=["POST"])
    async def admin_api() -> Any:
        if request.mimetype != "application/json":
            # A browser sends text/plain, forms and multipart cross-site without asking first
            # (no CORS preflight): only JSON, which it must ask for, is taken.
            refusal = _error_answer(None, ApiError(
                INVALID_REQUEST, "unsupported_content_type",
                "send the request with the header Content-Type: application/json",
                field="Content-Type", value=querylang.short(request.mimetype)))
            ctx.metrics.observe_api("other", "unsupported_content_type")
            return Response(json.dumps(refusal), status=415,
                            content_type="application/json; charset=utf-8",
                            headers={"Cache-Control": "no-store"})
        raw = await request.get_data(cache=False)
        raw = raw.encode() if isinstance(raw, str) else raw
        # Loopback access follows the page's rule: a request through a proxy is remote.
        local = keys.loopback_allowed(True, request.remote_addr, request.headers.keys())
        answer = await handle(ctx, raw, bearer=keys.bearer(request.headers.get("Authorization")),
                              remote_addr=request.remote_addr if local else None,
                              caller=failures.caller(), on_refusal=failures.note_refusal)
        answers = answer if isinstance(answer, list) else [] if answer is None else [answer]
        if any(a.get("error", {}).get("data", {}).get("mnemonic") in AUTH_REFUSALS
               for a in answers):
            failures.note_failure()
        if answer is None:  # notifications only: JSON-RPC answers nothing
            return Response("", status=204, headers={"Cache-Control": "no-store"})
        return Response(json.dumps(answer, ensure_ascii=False, default=str),
                        content_type="application/json; charset=utf-8",
                        headers={"Cache-Control": "no-store"})
