"""A fake UIS: the JSON-RPC Data and Call APIs over registered scenarios, and a notification player.

Routes: ``POST /dataapi/v2.0`` (Data API), ``POST /callapi/v4.0`` (Call API) and
``GET /system/media/talk/{communication_id}/{record_id}/`` (record files, when ``media_url``
points here). Errors use the UIS envelope, always with HTTP 200::

    {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "...", "data":
     {"mnemonic": "access_token_invalid", "field": "access_token", "value": null,
      "params": {}, "extended_helper": null}}}

Deal loading (``upload.deals_history`` and the structure methods): see ``uis_deals``
(``self.deals``).

Check order: JSON (-32700), batch (-32099), envelope (-32600), injected fault (``fail_next``),
method (-32601), token (-32001), minute/day budget (-32029), then the method's own checks.

``start.employee_call`` plays its outbound scenario to ``webhook_url`` only while :meth:`run`
is running (it owns the HTTP client and the playing tasks)::

    async with trio.open_nursery() as nursery:
        await nursery.start(uis.run)
        url = await nursery.start(serve_app, uis.app)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

from tracker.simulators.jsonrpc import RpcError, bad_param, field_names, select
from tracker.simulators.scenarios import (
    DEFAULT_MEDIA_URL,
    Leg,
    Scenario,
    Sent,
    outbound,
    query_values,
    render_notification,
)
from tracker.simulators.server import Changes
from tracker.simulators.uis_deals import DealsBook

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_EMPLOYEES: list[dict[str, Any]] = [
    {"id": 101, "full_name": "Анна Иванова"},
    {"id": 102, "full_name": "Борис Петров"},
    {"id": 103, "full_name": "Вера Смирнова"},
]
CALL_FIELDS = ["id", "start_time", "finish_time", "direction", "is_lost", "contact_phone_number",
               "virtual_phone_number", "communication_id", "wait_duration", "talk_duration",
               "total_duration", "call_records", "employees", "last_talked_employee_id",
               "call_api_external_id", "finish_reason",
               # where the call came from (a scenario's report holds them when it was tracked)
               "campaign_name", "utm_source", "utm_medium", "utm_campaign", "utm_term",
               "utm_content", "search_query", "ua_client_id", "ym_client_id"]

# The field tables of the Data API method pages (the "Фильтрация" and "Сортировка" columns;
# docs/reference-notes.md, "Report sorting and filtering"): a sort or filter naming any other
# column is refused with -32602 sort_prohibited / filter_prohibited. start_time may be sorted
# by, not filtered on (date_from/date_till select by it); id the other way round.
CALLS_SORTABLE = frozenset(
    "start_time finish_reason direction cpn_region_id cpn_region_name cpn_country_name "
    "cpn_country_id source is_lost communication_number lost_call_processing_duration "
    "virtual_phone_number sale_date sale_cost is_transfer scenario_id site_id campaign_id "
    "auto_call_campaign_name visitor_id visitor_type visitor_device source_id source_name "
    "source_new channel_new channel_code ext_id".split())
CALLS_UNFILTERABLE = frozenset(
    "start_time finish_time properties communication_page_url communication_type call_records "
    "wav_call_records full_record_file_link voice_mail_records ua_client_id ym_client_id "
    "ymclid visit_other_campaign".split())
LEGS_SORTABLE = frozenset(
    "call_session_id start_time duration total_duration finish_reason "
    "finish_reason_description virtual_phone_number calling_phone_number called_phone_number "
    "direction is_transfered is_operator employee_id employee_full_name employee_phone_number "
    "employee_rating scenario_id scenario_name is_coach release_cause_code "
    "release_cause_description is_failed is_talked".split())
LEGS_UNFILTERABLE = frozenset(
    "call_records wav_call_records start_time connect_time contact_id contact_full_name "
    "contact_phone_number".split())
# get.calls_report's documented finish_reason values (its "Причины окончания сессии звонка").
FINISH_REASONS = frozenset(
    "numb_not_exists incorrect_input numb_is_inactive sitephone_is_not_configured "
    "app_is_inactive numa_in_black_list no_active_scenario simple_forwarding_is_not_configured "
    "site_not_exists call_generator_is_not_configured add_cdr_timeout success_finish "
    "api_permission_denied api_ip_now_allowed component_is_inactive employee_not_exists "
    "not_enough_money platform_not_found internal_error incorrect_config "
    "communication_unavailable subscriber_disconnects no_operation scenario_not_found "
    "transfer_disconnects scenario_disconnects fax_session_done no_resources "
    "another_operator_answer subscriber_busy subscriber_not_responsible "
    "subscriber_number_problems operator_answer locked_numb call_not_allowed_on_tp "
    "account_not_found contract_not_found operator_busy operator_not_responsible "
    "operator_disconnects operator_number_problems timeout operator_channels_busy locked_phone "
    "max_in_call_reached max_out_call_reached employee_busy employee_busy_after_call "
    "phone_group_inactive_by_schedule sip_offline employee_inactive "
    "employee_inactive_by_schedule employee_phone_inactive employee_phone_inactive_by_schedule "
    "action_interval_exceeded group_phone_inactive no_operator_confirmation "
    "max_transition_count_exceeded disconnect_before_call_processing "
    "no_success_subscriber_call no_success_operator_call group_inactive_by_schedule net_lock "
    "fmc_is_disabled fmc_is_locked processing_method_not_found employee_without_phones "
    "group_without_phones no_operator_cdr_found in_call_not_allowed "
    "phone_protocol_not_allowed_by_status employee_status_break "
    "employee_status_do_not_disturb employee_status_not_at_workplace "
    "employee_status_not_at_work sip_trunk_is_locked numa_in_spam_list numa_dnd_interval "
    "limit_exceeded no_money out_call_not_allowed out_call_not_allowed_by_status "
    "external_call_not_allowed external_call_not_allowed_by_status internal_call_not_allowed "
    "internal_call_not_allowed_by_status call_enqueued employee_status_auto_out_call "
    "employee_status_available too_many_identical_incoming_calls "
    "employee_auto_status_do_not_disturb auto_out_calls_not_allowed_by_status".split())
STATUSES = {1: "available", 2: "break", 3: "do_not_disturb", 4: "not_at_workplace",
            5: "not_at_work"}


@dataclass(frozen=True)
class Delivery:
    """One notification sent to a webhook; ``status`` is None when the request failed."""

    session_id: int
    event: str
    status: int | None


class UisSimulator:
    """Fake UIS account. All state lives on the instance; see the module docstring for routes."""

    def __init__(self, access_token: str, *, employees: list[dict[str, Any]] | None = None,
                 timezone: str = "Europe/Moscow", media_url: str = DEFAULT_MEDIA_URL,
                 minute_limit: int = 1000, day_limit: int = 100_000, app_id: int = 12345,
                 first_session_id: int = 3_000_000_001) -> None:
        self.access_token = access_token
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self.media_url = media_url
        self.minute_limit, self.day_limit, self.app_id = minute_limit, day_limit, app_id
        self.minute_seconds = 60.0  # how long a budget minute lasts (tests shorten it)
        self.employees: dict[int, dict[str, Any]] = {}
        for entry in DEFAULT_EMPLOYEES if employees is None else employees:
            employee = _employee(entry)
            self.employees[employee["id"]] = employee
        self.rpc_requests: list[dict[str, Any]] = []
        self.sessions: dict[int, Scenario] = {}
        self.finished: set[int] = set()
        self.released: list[int] = []
        self.deliveries: list[Delivery] = []
        self.blacklist: set[str] = set()
        self.virtual_numbers: set[str] | None = None  # None accepts any virtual number
        self.webhook_url: str | None = None
        self.autoplay_outbound = True
        self.outbound_answered = True
        # overrides the report's, e.g. "subscriber_busy" (only values UIS documents)
        self.outbound_finish_reason: str | None = None
        self.autoplay_gap_seconds = 0.01
        self.changes = Changes()
        self.statuses = dict(STATUSES)  # get.statuses: id -> mnemonic (tests may edit them)
        self._records_ready_at: dict[int, float] = {}
        # Rows tying on every sort key come in a new order per request (UIS promises none).
        self._ties = random.Random(first_session_id)
        self._faults: dict[str, list[RpcError]] = {}
        self._next_session_id = first_session_id
        self._minute_start, self._minute_used, self._day_used = time.monotonic(), 0, 0
        self._autoplay: trio.MemorySendChannel[Scenario] | None = None
        self._methods: dict[str, dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
            "data": {"get.calls_report": self._get_calls_report,
                     "get.call_legs_report": self._get_call_legs_report,
                     "get.employees": self._get_employees,
                     "update.employees": self._update_employees,
                     "get.statuses": self._get_statuses,
                     "get.account": self._get_account},
            "call": {"start.employee_call": self._start_employee_call,
                     "release.call": self._release_call},
        }
        # End-to-end analytics: funnels, deal contacts, responsibles, deal history (issue 15).
        self.deals = DealsBook()
        self._methods["data"].update(self.deals.methods())
        self.rpc_times: list[float] = []  # time.monotonic() of each request, for rate checks
        self.app = self._build_app()

    # -- scenarios -------------------------------------------------------------------------

    def now(self) -> datetime:
        """The account-local wall-clock time (naive), as UIS writes times."""
        return datetime.now(self.zone).replace(tzinfo=None)

    def register(self, scenario: Scenario, *, finished: bool = True,
                 records_after_seconds: float | None = None) -> None:
        """Make the Data API report ``scenario``; an unfinished one only with
        ``include_ongoing_calls``. Records stay empty until ``records_after_seconds`` passed."""
        self.sessions[scenario.session_id] = scenario
        if finished:
            self.finished.add(scenario.session_id)
        else:
            self.finished.discard(scenario.session_id)
        if records_after_seconds is not None:
            self._records_ready_at[scenario.session_id] = time.monotonic() + records_after_seconds

    def mark_finished(self, session_id: int) -> None:
        self.finished.add(session_id)
        self.changes.poke()

    def fail_next(self, method: str, mnemonic: str, code: int, count: int = 1) -> None:
        """Answer the next ``count`` calls of ``method`` with this error."""
        self._faults.setdefault(method, []).extend(RpcError(code, mnemonic) for _ in range(count))

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy (re-checked on every request and delivery);
        trio.TooSlowError after ``timeout`` seconds."""
        return await self.changes.wait_until(predicate, timeout)

    async def wait_for_rpc(self, method: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first recorded request calling ``method``, waiting for it if needed."""

        def first() -> dict[str, Any] | None:
            return next((r for r in self.rpc_requests if r.get("method") == method), None)

        found = await self.wait_for(first, timeout)
        assert found is not None
        return found

    # -- notifications ---------------------------------------------------------------------

    async def send_notification(self, notification: Sent, webhook_url: str,
                                client: httpx.AsyncClient, *, method: str = "POST"
                                ) -> httpx.Response:
        """Send one notification as UIS does (POST JSON body, or GET query parameters)."""
        session_id = notification.values["call_session_id"]
        try:
            if method == "GET":
                response = await client.get(webhook_url, params=query_values(notification))
            else:
                response = await client.post(webhook_url, content=render_notification(notification),
                                             headers={"content-type": "application/json"})
        except httpx.HTTPError:
            self.deliveries.append(Delivery(session_id, notification.event, None))
            self.changes.poke()
            raise
        self.deliveries.append(Delivery(session_id, notification.event, response.status_code))
        self.changes.poke()
        return response

    async def play(self, scenario: Scenario, webhook_url: str, client: httpx.AsyncClient, *,
                   gap_seconds: float = 0.0, between: Callable[[], Awaitable[Any]] | None = None,
                   method: str = "POST", records_after_seconds: float | None = None
                   ) -> list[httpx.Response]:
        """Register ``scenario`` (ongoing until its call_finished is sent) and send each of its
        notifications in order; ``between`` is awaited after each one. Transport errors raise."""
        self.register(scenario, finished=False, records_after_seconds=records_after_seconds)
        return await self._send_all(scenario, webhook_url, client, gap_seconds, between, method)

    async def _send_all(self, scenario: Scenario, webhook_url: str, client: httpx.AsyncClient,
                        gap_seconds: float, between: Callable[[], Awaitable[Any]] | None,
                        method: str) -> list[httpx.Response]:
        responses = []
        try:
            for notification in scenario.notifications:
                if notification.event == "call_finished":
                    self.mark_finished(scenario.session_id)
                responses.append(await self.send_notification(notification, webhook_url, client,
                                                              method=method))
                if between is not None:
                    await between()
                if gap_seconds:
                    await trio.sleep(gap_seconds)
        finally:
            self.mark_finished(scenario.session_id)
        return responses

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Play outbound calls started through the Call API to ``webhook_url``; never returns."""
        send, receive = trio.open_memory_channel[Scenario](100)
        async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
            self._autoplay = send
            try:
                task_status.started()
                async with receive:
                    async for scenario in receive:
                        nursery.start_soon(self._autoplay_one, scenario, client)
            finally:
                self._autoplay = None

    async def _autoplay_one(self, scenario: Scenario, client: httpx.AsyncClient) -> None:
        if self.webhook_url is None:
            self.mark_finished(scenario.session_id)
            return
        try:
            await self._send_all(scenario, self.webhook_url, client, self.autoplay_gap_seconds,
                                 None, "POST")
        except httpx.HTTPError as exc:
            log.warning("UIS simulator: notification for %s failed: %r", scenario.session_id, exc)

    # -- HTTP ------------------------------------------------------------------------------

    def _build_app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        @app.post("/dataapi/v2.0")
        async def data_api() -> Response:
            return self._json(self._answer("data", await request.get_data(True, False, False)))

        @app.post("/callapi/v4.0")
        async def call_api() -> Response:
            return self._json(self._answer("call", await request.get_data(True, False, False)))

        @app.get("/system/media/talk/<int:communication_id>/<record>/")
        async def media(communication_id: int, record: str) -> Response:
            scenario = self.sessions.get(communication_id)
            if scenario is None or record not in self._records(scenario):
                return Response("Not found", status=404)
            return Response(_SILENCE, content_type="audio/wav")

        return app

    def _json(self, answer: dict[str, Any]) -> Response:
        self.changes.poke()
        return Response(json.dumps(answer, ensure_ascii=False),
                        content_type="application/json; charset=UTF-8")

    def _answer(self, api: str, raw: bytes) -> dict[str, Any]:
        self.rpc_times.append(time.monotonic())
        try:
            body = json.loads(raw)
        except ValueError:
            self.rpc_requests.append({"_api": api, "_raw": raw.decode(errors="replace")})
            return _error(None, RpcError(-32700, "parse_error"))
        if not isinstance(body, dict):
            self.rpc_requests.append({"_api": api, "_batch": body})
            return _error(None, RpcError(-32099, "batch_not_supported"))
        self.rpc_requests.append({**body, "_api": api})
        try:
            result = self._call(api, body)
        except RpcError as exc:
            return _error(body.get("id"), exc)
        return {"jsonrpc": "2.0", "id": body["id"], "result": result}

    def _call(self, api: str, body: dict[str, Any]) -> dict[str, Any]:
        method, params = body.get("method"), body.get("params")
        if body.get("jsonrpc") != "2.0" or body.get("id") is None or not isinstance(method, str) \
                or not isinstance(params, dict):
            raise RpcError(-32600, "invalid_request")
        if self._faults.get(method):
            raise self._faults[method].pop(0)
        handler = self._methods[api].get(method)
        if handler is None:
            raise RpcError(-32601, "method_not_found", "method", method)
        if "access_token" not in params:
            raise bad_param("access_token", mnemonic="required_parameter_missed")
        if params["access_token"] != self.access_token:
            raise RpcError(-32001, "access_token_invalid", "access_token")
        limits = self._spend()
        result = handler(params)
        result.setdefault("metadata", {})["limits"] = limits
        return result

    def _spend(self) -> dict[str, int]:
        now = time.monotonic()
        if now - self._minute_start >= self.minute_seconds:
            self._minute_start, self._minute_used = now, 0
        if self._minute_used >= self.minute_limit or self._day_used >= self.day_limit:
            # UIS's refusal carries the budgets too, in error.data.metadata.limits
            kind, limit = ("day", self.day_limit) if self._day_used >= self.day_limit \
                else ("minute", self.minute_limit)
            raise RpcError(-32029, "limit_exceeded", metadata={"limits": self._limits(now)},
                           message=f"Limit per {kind} has been exceeded. Value of current "
                                   f"limit per {kind} is {limit}")
        self._minute_used += 1
        self._day_used += 1
        return self._limits(now)

    def _limits(self, now: float) -> dict[str, int]:
        local = self.now()
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time())
        return {"day_limit": self.day_limit, "day_remaining": self.day_limit - self._day_used,
                "day_reset": int((midnight - local).total_seconds()),
                "minute_limit": self.minute_limit,
                "minute_remaining": self.minute_limit - self._minute_used,
                "minute_reset": max(0, math.ceil(self.minute_seconds - (now - self._minute_start)))}

    # -- Data API --------------------------------------------------------------------------

    def _records(self, scenario: Scenario) -> list[str]:
        return [r for leg in scenario.legs for r in leg.call_records] \
            if self._records_ready(scenario.session_id) else []

    def _records_ready(self, session_id: int) -> bool:
        return time.monotonic() >= self._records_ready_at.get(session_id, 0.0)

    def _visible(self, params: dict[str, Any]) -> list[Scenario]:
        ongoing = bool(params.get("include_ongoing_calls"))
        return [s for sid, s in self.sessions.items() if ongoing or sid in self.finished]

    def _get_calls_report(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for scenario in self._visible(params):
            row = copy.deepcopy(scenario.report)
            row["call_records"] = row["call_records"] if self._records_ready(scenario.session_id) \
                else []
            if scenario.session_id not in self.finished:
                row["finish_time"] = row["finish_reason"] = None
            rows.append(row)
        allowed = field_names(CALL_FIELDS, rows)
        return select(rows, params, allowed=allowed, hidden=(), dated=True,
                      sortable=CALLS_SORTABLE,
                      filterable=[f for f in allowed if f not in CALLS_UNFILTERABLE],
                      shuffle=self._ties)

    def _get_call_legs_report(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for scenario in self._visible(params):
            ready = self._records_ready(scenario.session_id)
            for leg in scenario.legs:
                row = asdict(leg)
                row["call_records"] = row["call_records"] if ready else []
                rows.append(row)
        allowed = [f.name for f in fields(Leg)]
        return select(rows, params, allowed=allowed, hidden=("is_talked",), dated=True,
                      sortable=LEGS_SORTABLE,
                      filterable=[f for f in allowed if f not in LEGS_UNFILTERABLE],
                      shuffle=self._ties)

    def _get_employees(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [copy.deepcopy(e) for e in self.employees.values()]
        return select(rows, params, allowed=field_names(list(_employee({"id": 0})), rows),
                      hidden=(), dated=False)

    def _update_employees(self, params: dict[str, Any]) -> dict[str, Any]:
        if "id" not in params:
            raise bad_param("id", mnemonic="required_parameter_missed")
        employee = self.employees.get(params["id"])
        if employee is None:  # update.* names an unknown id with entity_not_found
            raise bad_param("id", params["id"], mnemonic="entity_not_found")
        changes = {k: v for k, v in params.items() if k not in ("access_token", "id")}
        for name in changes:
            if name not in employee:
                raise bad_param(name, changes[name])
        if "status_id" in changes and changes["status_id"] not in self.statuses:
            raise bad_param("status_id", changes["status_id"], mnemonic="entity_not_found")
        employee.update(copy.deepcopy(changes))
        if "status_id" in changes:
            employee["status"] = self.statuses[changes["status_id"]]
        return {}

    def _get_statuses(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = [{"id": k, "mnemonic": v, "name": v.replace("_", " ")}
                for k, v in self.statuses.items()]
        return {"data": rows, "metadata": {"total_items": len(rows)}}

    def _get_account(self, params: dict[str, Any]) -> dict[str, Any]:
        data = [{"app_id": self.app_id, "name": "Simulated account", "timezone": self.timezone}]
        return {"data": data, "metadata": {"total_items": 1}}

    # -- Call API --------------------------------------------------------------------------

    def _start_employee_call(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("first_call", "virtual_phone_number", "contact", "employee"):
            if name not in params:
                raise bad_param(name, mnemonic="required_parameter_missed")
        if params["first_call"] not in ("employee", "contact"):
            raise bad_param("first_call", params["first_call"])
        contact, virtual = params["contact"], params["virtual_phone_number"]
        for name, value in (("contact", contact), ("virtual_phone_number", virtual)):
            if not isinstance(value, str) or not value.isdigit():
                raise bad_param(name, value, mnemonic="data_type_error")
        if self.virtual_numbers is not None and virtual not in self.virtual_numbers:
            raise RpcError(-32007, "virtual_phone_number_not_found", "virtual_phone_number",
                           virtual)
        employee_id = params["employee"].get("id") if isinstance(params["employee"], dict) \
            else None
        if employee_id not in self.employees:
            raise bad_param("employee.id", employee_id, mnemonic="employee_not_found")
        if contact in self.blacklist:
            raise RpcError(-32002, "contact_in_blacklist", "contact", contact)
        while self._next_session_id in self.sessions:
            self._next_session_id += 1
        session_id = self._next_session_id
        self._next_session_id += 1
        scenario = outbound(
            session_id, start=self.now(),
            employee=(employee_id, self.employees[employee_id]["full_name"]),
            answered=self.outbound_answered, external_id=params.get("external_id"),
            contact=contact, virtual=virtual, direction=params.get("direction", "in"),
            media_url=self.media_url)
        if self.outbound_finish_reason is not None:
            if self.outbound_finish_reason not in FINISH_REASONS:
                raise ValueError(f"UIS documents no finish_reason {self.outbound_finish_reason!r}")
            scenario.report["finish_reason"] = self.outbound_finish_reason
        autoplay = self._autoplay if self.webhook_url and self.autoplay_outbound else None
        self.register(scenario, finished=autoplay is None)
        if autoplay is not None:
            try:
                autoplay.send_nowait(scenario)
            except (trio.WouldBlock, trio.ClosedResourceError):
                log.warning("UIS simulator: cannot play session %s", session_id)
                self.finished.add(session_id)
        elif self.webhook_url and self.autoplay_outbound:
            log.warning("UIS simulator: webhook_url set but run() is not running; not playing")
        return {"data": {"call_session_id": session_id}}

    def _release_call(self, params: dict[str, Any]) -> dict[str, Any]:
        session_id = params.get("call_session_id")
        if session_id not in self.sessions:
            raise bad_param("call_session_id", session_id, mnemonic="call_not_found")
        self.released.append(session_id)
        return {}


def _employee(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``get.employees`` row: ``entry`` over defaults for every field the tracker reads."""
    eid = int(entry["id"])
    both = ["in", "out"]
    row: dict[str, Any] = {
        "id": eid, "full_name": f"Employee {eid}", "status": "available", "status_id": 1,
        "calls_available": True, "in_external_allowed_call_directions": list(both),
        "in_internal_allowed_call_directions": list(both),
        "out_external_allowed_call_directions": list(both),
        "out_internal_allowed_call_directions": list(both),
        "phone_numbers": [{"phone_number": f"7999{eid % 10_000_000:07d}", "channels_amount": 1}],
        "extension": {"extension_phone_number": str(eid % 10_000)}, "groups": [],
    }
    row.update(copy.deepcopy(entry))
    row["id"] = eid
    return row


def _error(request_id: Any, exc: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.payload()}


def _silent_wav(seconds: float = 2.0, rate: int = 8000) -> bytes:
    """A valid WAV of silence (8-bit mono PCM), so that a browser's player can play it."""
    frames = int(seconds * rate)
    header = b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate, 1, 8) + b"data" + struct.pack("<I", frames)
    return header + b"\x80" * frames


_SILENCE = _silent_wav()
