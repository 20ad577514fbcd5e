"""A fake retailCRM: the telephony routes the tracker calls, with its auth, validation and faults.

Routes under ``/api/v5/`` and ``/api/v4/`` (``*`` = both versions):

- ``POST */telephony/call/event`` (form ``event``), ``POST */telephony/calls/upload`` (``calls``)
- ``POST v5/integration-modules/{code}/edit`` (``integrationModule``), ``GET`` the same without
  ``/edit``; ``POST v4/telephony/setting/{code}/edit`` (``configuration``), ``GET`` likewise
- ``POST v5/users/{id}/status`` (``status``), ``GET */users/{id}`` (404 for an id outside
  ``known_user_ids``), ``GET */telephony/manager?phone=``
- customers, tasks, orders (``v5/customers``, ``customers/create``, ``tasks``, ``tasks/create``,
  ``tasks/{id}/edit``, ``orders``, ``orders/create``): see the block above ``CrmSimulator``
- orders and their history, ``reference/statuses``, ``reference/status-groups``, ``users``:
  see ``crm_orders`` (``self.order_book``; ``GET orders`` by ``filter[ids][]`` is answered
  from it, by ``filter[externalIds][]`` from the orders created through ``orders/create``)

With ``account_exists`` False every request is answered as retailCRM answers a URL whose
account does not exist: 405 ``text/html`` to a POST, 404 ``Account does not exist.`` to a GET.
Otherwise checks, in order: fault (``fault`` or ``fail_next``), rate limit (503), route (404
``API method not found``), key (401 ``"apiKey" is missing.``, 403 ``Wrong "apiKey" value.``),
body shape (400 ``Errors in the entity format`` with ``errors``: a JSON body, a missing field,
a field that is not JSON of the right type, an invalid value). A whole upload is refused if one
item is invalid.

``telephony/manager`` with ``details=1`` adds ``customer`` and ``links`` for a number in
``phone_customers``.
``telephony/manager`` for an unknown phone answers ``{"success": true}`` without ``manager``; so
does it for a manager whose ``user_statuses`` entry is not ``free`` unless ``ignoreStatus`` is
true (``1`` or ``True``, as the official clients send it; the likely reading of
``ignoreStatus``; unconfirmed).
Every request is recorded in ``requests`` with the status answered, rejected ones included; a
request held by the ``"hang"`` fault is recorded once it is answered (``hanging`` counts them).

Two faults act after the work is done: ``answer_delay_seconds`` holds every answer that long
after recording it (retailCRM stored the call, the answer is slow or never arrives), and upload
items whose ``externalId`` is in ``ignore_external_ids`` are silently skipped (neither counted in
``processedCallsCount`` nor reported as duplicates).
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import trio
from quart import Response, request
from quart_trio import QuartTrio

from tracker.simulators.crm_orders import OrdersBook
from tracker.simulators.server import Changes

T = TypeVar("T")

FAULTS = (None, "503", "429", "500", "hang")
JSON_FIELDS = ("event", "calls", "integrationModule", "configuration", "customer", "task",
               "order")
HANGUP_STATUSES = ("answered", "no answered", "busy", "cancel", "failed")
CALL_RESULTS = ("answered", "no answer", "busy", "failed", "not allowed", "unknown")
USER_STATUSES = ("free", "busy", "dinner", "break")
HTML_503 = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
HTML_405 = "<html><body><h1>405 Not Allowed</h1></body></html>"
_PATH = re.compile(r"api/(v\d+)/(.*?)/?")

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class CrmRequest:
    """One request the simulator received, as parsed, with the HTTP status it answered."""

    method: str
    path: str
    api_version: str  # "v4", "v5", or "" outside /api/
    endpoint: str  # the path after the version, e.g. "telephony/call/event"
    api_key: str | None
    form: dict[str, str]
    query: dict[str, str]
    data: dict[str, Any]  # the form fields holding JSON, decoded (when they parse)
    status: int


class CrmError(Exception):
    """An error answer: ``{"success": false, "errorMsg": ..., "errors": ...}``."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors

    def answer(self) -> Answer:
        body: dict[str, Any] = {"success": False, "errorMsg": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return self.status, body


def _invalid(errors: dict[str, str]) -> CrmError:
    return CrmError(400, "Errors in the entity format", errors)


# -- customers, tasks, orders (issue 14: calls become CRM work) --------------------------------
#
# ``GET v5/customers`` (``filter[name]`` matches name, phone digits and email as a substring;
# ``filter[externalIds][]`` exact; ``limit`` 20, 50 or 100), ``POST v5/customers/create``
# (``customer``, ``site``), ``POST v5/tasks/create`` (``task``), ``GET v5/tasks``
# (``filter[text]`` substring), ``POST v5/tasks/{id}/edit`` (``task``), ``POST v5/orders/create``
# (``order``, ``site``), ``GET v5/orders`` (``filter[externalIds][]``). Creates answer 201
# ``{"success": true, "id": N}``; a repeated ``externalId`` is refused with 400 (the message is
# the simulator's reading: retailCRM's exact text is unconfirmed). ``refuse_customers`` makes
# every customer create a validation error; a performer outside ``known_user_ids`` or in
# ``inactive_user_ids`` is refused.

LIMITS = ("20", "50", "100")


class _CrmWork:
    """The customer/task/order routes, mixed into :class:`CrmSimulator`."""

    known_user_ids: set[int] | None
    sites: set[str] | None
    _routes: list[tuple[str, re.Pattern[str], tuple[str, ...], Callable[..., Answer]]]
    _json_field: Callable[..., Any]
    order_book: OrdersBook

    def _init_crm_work(self) -> None:
        self.customers: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self.inactive_user_ids: set[int] = set()
        self.refuse_customers: dict[str, str] | None = None
        self._next_ids = {"customer": 1001, "task": 5001, "order": 9001}
        self._routes += [
            ("GET", re.compile(r"customers"), ("v5",), self._customers_list),
            ("POST", re.compile(r"customers/create"), ("v5",), self._customers_create),
            ("GET", re.compile(r"tasks"), ("v5",), self._tasks_list),
            ("POST", re.compile(r"tasks/create"), ("v5",), self._tasks_create),
            ("POST", re.compile(r"tasks/(?P<task_id>\d+)/edit"), ("v5",), self._tasks_edit),
            ("GET", re.compile(r"orders"), ("v5",), self._orders_list),
            ("POST", re.compile(r"orders/create"), ("v5",), self._orders_create),
        ]

    def _new_id(self, kind: str) -> int:
        self._next_ids[kind] += 1
        return self._next_ids[kind] - 1

    @staticmethod
    def _limit(query: dict[str, str]) -> None:
        if query.get("limit", "20") not in LIMITS:
            raise _invalid({"limit": "The value you selected is not a valid choice."})

    def _check_site(self, form: dict[str, str]) -> None:
        if self.sites is not None and "site" in form and form["site"] not in self.sites:
            raise _invalid({"site": "Site not found."})

    def _customers_list(self, form: dict[str, str], query: dict[str, str],
                        data: dict[str, Any]) -> Answer:
        self._limit(query)
        found = list(self.customers.values())
        name = query.get("filter[name]")
        if name:
            digits = "".join(c for c in name if c.isdigit())

            def matches(c: dict[str, Any]) -> bool:
                text = " ".join(str(c.get(k) or "") for k in ("firstName", "lastName", "email"))
                if name.lower() in text.lower():
                    return True
                return bool(digits) and any(
                    digits in "".join(ch for ch in str(p.get("number")) if ch.isdigit())
                    for p in c.get("phones") or [])
            found = [c for c in found if matches(c)]
        external = query.get("filter[externalIds][]")
        if external is not None:
            found = [c for c in found if c.get("externalId") == external]
        limit = int(query.get("limit", "20"))
        return 200, {"success": True, "pagination": {"limit": limit, "totalCount": len(found),
                                                     "currentPage": 1, "totalPageCount": 1},
                     "customers": found[:limit]}

    def _customers_create(self, form: dict[str, str], query: dict[str, str],
                          data: dict[str, Any]) -> Answer:
        customer = self._json_field(form, data, "customer", dict)
        self._check_site(form)
        if self.refuse_customers is not None:
            raise _invalid(dict(self.refuse_customers))
        errors = {}
        phones = customer.get("phones", [])
        if not isinstance(phones, list) or not all(isinstance(p, dict) and
                                                   isinstance(p.get("number"), str)
                                                   for p in phones):
            errors["phones"] = "Expected a list of {number}"
        manager = customer.get("managerId")
        if manager is not None and self.known_user_ids is not None \
                and manager not in self.known_user_ids:
            errors["managerId"] = "Manager not found."
        if errors:
            raise _invalid(errors)
        external = customer.get("externalId")
        if external is not None and any(c.get("externalId") == external
                                        for c in self.customers.values()):
            raise CrmError(400, "Customer already exists.")
        customer_id = self._new_id("customer")
        self.customers[customer_id] = {**customer, "id": customer_id, "site": form.get("site")}
        return 201, {"success": True, "id": customer_id}

    def _tasks_list(self, form: dict[str, str], query: dict[str, str],
                    data: dict[str, Any]) -> Answer:
        self._limit(query)
        found = list(self.tasks.values())
        text = query.get("filter[text]")
        if text:
            found = [t for t in found if text.lower() in str(t.get("text")).lower()]
        return 200, {"success": True, "tasks": found[:int(query.get("limit", "20"))]}

    def _performer_problem(self, performer: Any) -> str | None:
        if not isinstance(performer, int) or isinstance(performer, bool):
            return "This value should not be blank."
        if performer in self.inactive_user_ids or (
                self.known_user_ids is not None and performer not in self.known_user_ids):
            return "Performer not found or is not active."
        return None

    def _tasks_create(self, form: dict[str, str], query: dict[str, str],
                      data: dict[str, Any]) -> Answer:
        task = self._json_field(form, data, "task", dict)
        errors = {}
        if not isinstance(task.get("text"), str) or not task["text"].strip():
            errors["text"] = "This value should not be blank."
        problem = self._performer_problem(task.get("performerId"))
        if problem:
            errors["performerId"] = problem
        if "datetime" in task:
            try:
                datetime.strptime(str(task["datetime"]), "%Y-%m-%d %H:%M")
            except ValueError:
                errors["datetime"] = "Expected Y-m-d H:i"
        customer = task.get("customer")
        if customer is not None and (not isinstance(customer, dict)
                                     or customer.get("id") not in self.customers):
            errors["customer"] = "Customer not found."
        if errors:
            raise _invalid(errors)
        task_id = self._new_id("task")
        self.tasks[task_id] = {**task, "id": task_id, "complete": bool(task.get("complete"))}
        return 201, {"success": True, "id": task_id}

    def _tasks_edit(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                    task_id: str) -> Answer:
        task = self._json_field(form, data, "task", dict)
        stored = self.tasks.get(int(task_id))
        if stored is None:
            raise CrmError(404, "Not found")
        if "performerId" in task:
            problem = self._performer_problem(task["performerId"])
            if problem:
                raise _invalid({"performerId": problem})
        stored.update({k: v for k, v in task.items() if k != "id"})
        return 200, {"success": True}

    def _orders_list(self, form: dict[str, str], query: dict[str, str],
                     data: dict[str, Any]) -> Answer:
        if "filter[ids][]" in query:  # the deals loop reads its orders from the order book
            return self.order_book.orders_answer(form, query, data)
        self._limit(query)
        found = list(self.orders.values())
        external = query.get("filter[externalIds][]")
        if external is not None:
            found = [o for o in found if o.get("externalId") == external]
        return 200, {"success": True, "orders": found[:int(query.get("limit", "20"))]}

    def _orders_create(self, form: dict[str, str], query: dict[str, str],
                       data: dict[str, Any]) -> Answer:
        order = self._json_field(form, data, "order", dict)
        self._check_site(form)
        customer = order.get("customer")
        if customer is not None and (not isinstance(customer, dict)
                                     or customer.get("id") not in self.customers):
            raise _invalid({"customer": "Customer not found."})
        external = order.get("externalId")
        if external is not None and any(o.get("externalId") == external
                                        for o in self.orders.values()):
            raise CrmError(400, "Order already exists.")
        order_id = self._new_id("order")
        stored = {**order, "id": order_id, "site": form.get("site")}
        self.orders[order_id] = stored
        return 201, {"success": True, "id": order_id, "order": stored}


class CrmSimulator(_CrmWork):
    """Fake retailCRM account; see the module docstring for routes and checks.

    ``known_codes``/``known_user_ids``/``sites``: when given, events naming others get
    ``notExistCodes``/``notExistUsers``, and an unknown ``site`` is a 400.
    """

    def __init__(self, api_key: str, *, known_codes: set[str] | None = None,
                 known_user_ids: set[int] | None = None, sites: set[str] | None = None,
                 rate_limit_per_second: float | None = None) -> None:
        self.api_key = api_key
        self.known_codes, self.known_user_ids, self.sites = known_codes, known_user_ids, sites
        self.rate_limit_per_second = rate_limit_per_second
        self.requests: list[CrmRequest] = []
        self.uploaded: dict[str, dict[str, Any]] = {}  # externalId -> first call stored
        self.calls: list[dict[str, Any]] = []  # every call stored, with or without externalId
        self.events: list[dict[str, Any]] = []
        # callExternalId -> perf_counter when its first event reached the simulator
        self.arrivals: dict[str, float] = {}
        self.modules: dict[str, dict[str, Any]] = {}
        self.telephony_settings: dict[str, dict[str, Any]] = {}
        self.user_statuses: dict[int, str] = {}
        self.managers: dict[str, dict[str, Any]] = {}  # "+79991234567" -> manager object
        # "+79991234567" -> the customer object ``telephony/manager`` returns with ``details``
        self.phone_customers: dict[str, dict[str, Any]] = {}
        self.hanging = 0
        self.answer_delay_seconds = 0.0
        self.delay_only: set[str] | None = None  # endpoints answer_delay_seconds holds (None: all)
        self.ignore_external_ids: set[str] = set()
        self.account_exists = True  # False: answer like the URL of an account that does not exist
        self.changes = Changes()
        self._fault: str | None = None
        self._next_faults: list[str] = []
        self._unhang = trio.Event()
        self._recent: deque[float] = deque()
        self._routes: list[tuple[str, re.Pattern[str], tuple[str, ...], Callable[..., Answer]]] = [
            ("POST", re.compile(r"telephony/call/event"), ("v4", "v5"), self._call_event),
            ("POST", re.compile(r"telephony/calls/upload"), ("v4", "v5"), self._calls_upload),
            ("POST", re.compile(r"integration-modules/(?P<code>[^/]+)/edit"), ("v5",),
             self._module_edit),
            ("GET", re.compile(r"integration-modules/(?P<code>[^/]+)"), ("v5",),
             self._module_get),
            ("POST", re.compile(r"telephony/setting/(?P<code>[^/]+)/edit"), ("v4",),
             self._setting_edit),
            ("GET", re.compile(r"telephony/setting/(?P<code>[^/]+)"), ("v4",),
             self._setting_get),
            ("POST", re.compile(r"users/(?P<user_id>\d+)/status"), ("v5",), self._user_status),
            ("GET", re.compile(r"users/(?P<user_id>\d+)"), ("v4", "v5"), self._user_get),
            ("GET", re.compile(r"telephony/manager"), ("v4", "v5"), self._manager),
        ]
        self._init_crm_work()
        # -- orders, their history, statuses and users (issue 15: deals) -------------------
        self.order_book = OrdersBook(CrmError, user_ids=known_user_ids)
        self._routes += [(method, re.compile(pattern), ("v5",), handler)
                         for method, pattern, handler in self.order_book.routes()]
        # -- end of the deals block ---------------------------------------------------------
        self.app = self._build_app()

    # -- test controls ---------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """The fault every request gets: None, "503", "429", "500" or "hang"."""
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        self._fault = value
        if value != "hang":  # release held requests
            self._unhang.set()
            self._unhang = trio.Event()

    def fail_next(self, fault: str, count: int = 1) -> None:
        """The next ``count`` requests get ``fault`` (a "hang" holds until ``fault`` is set)."""
        if fault not in FAULTS or fault is None:
            raise ValueError(f"fault must be one of {FAULTS[1:]}")
        self._next_faults.extend([fault] * count)

    def calls_for(self, external_id: str) -> list[dict[str, Any]]:
        """Every call item sent in an accepted upload with this externalId (duplicates too)."""
        return [item for r in self.requests
                if r.endpoint == "telephony/calls/upload" and r.status == 200
                for item in r.data["calls"] if str(item.get("externalId")) == str(external_id)]

    def events_for(self, call_external_id: str) -> list[dict[str, Any]]:
        """Accepted call events with this callExternalId, in arrival order."""
        return [e for e in self.events if str(e.get("callExternalId")) == str(call_external_id)]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy (re-checked on every request recorded);
        trio.TooSlowError after ``timeout`` seconds."""
        return await self.changes.wait_until(predicate, timeout)

    # -- HTTP ------------------------------------------------------------------------------

    def _build_app(self) -> QuartTrio:
        app = QuartTrio(__name__)
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

        @app.route("/", defaults={"path": ""}, methods=methods)
        @app.route("/<path:path>", methods=methods)
        async def anything(path: str) -> Response:
            return await self._dispatch(path)

        routes = app.asgi_app

        async def stamped(scope: Any, receive: Any, send: Any) -> None:
            # when the request reached the simulator, before quart's own work (``arrivals``)
            scope["arrived_at"] = time.perf_counter()
            await routes(scope, receive, send)

        app.asgi_app = stamped  # type: ignore[method-assign]  # quart's way to add middleware
        return app

    async def _dispatch(self, path: str) -> Response:
        form = (await request.form).to_dict()
        query = request.args.to_dict()
        match = _PATH.fullmatch(path)
        version, endpoint = (match.group(1), match.group(2)) if match else ("", path)
        api_key = request.headers.get("X-API-KEY") or query.get("apiKey") or form.get("apiKey")
        data = {}
        for name in JSON_FIELDS:
            if name in form:
                try:
                    data[name] = json.loads(form[name])
                except ValueError:
                    pass
        status, body, headers = await self._outcome(version, endpoint, api_key, form, query, data)
        self.requests.append(CrmRequest(request.method, "/" + path, version, endpoint, api_key,
                                        form, query, data, status))
        self.changes.poke()
        if self.answer_delay_seconds and (self.delay_only is None or endpoint in self.delay_only):
            await trio.sleep(self.answer_delay_seconds)
        if isinstance(body, str):
            return Response(body, status=status, headers=headers, content_type="text/html")
        return Response(json.dumps(body, ensure_ascii=False), status=status, headers=headers,
                        content_type="application/json; charset=UTF-8")

    async def _outcome(self, version: str, endpoint: str, api_key: str | None,
                       form: dict[str, str], query: dict[str, str], data: dict[str, Any]
                       ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        fault = self._next_faults.pop(0) if self._next_faults else self._fault
        if fault == "hang":
            self.hanging += 1
            self.changes.poke()
            try:
                await self._unhang.wait()
            finally:
                self.hanging -= 1
            fault = self._fault
        if not self.account_exists:
            # What a URL of a non-existent account answers: an HTML 405 page to a POST (the
            # official PHP client's AccountNotFoundHandler), a JSON 404 to a GET.
            if request.method != "GET":
                return 405, HTML_405, {}
            return 404, {"success": False, "errorMsg": "Account does not exist."}, {}
        if fault == "503" or self._over_rate_limit():
            return 503, HTML_503, {}
        if fault == "429":
            return 429, {"success": False, "errorMsg": "Too Many Requests"}, {"Retry-After": "1"}
        if fault == "500":
            return 500, {"success": False, "errorMsg": "Internal Server Error"}, {}
        try:
            status, body = self._route(version, endpoint, api_key, form, query, data)
        except CrmError as exc:
            status, body = exc.answer()
        return status, body, {}

    def _over_rate_limit(self) -> bool:
        if self.rate_limit_per_second is None:
            return False
        now = trio.current_time()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.rate_limit_per_second:
            return True
        self._recent.append(now)
        return False

    def _route(self, version: str, endpoint: str, api_key: str | None, form: dict[str, str],
               query: dict[str, str], data: dict[str, Any]) -> Answer:
        found = next(((handler, match) for method, pattern, versions, handler in self._routes
                      if method == request.method and version in versions
                      and (match := pattern.fullmatch(endpoint))), None)
        if found is None:
            raise CrmError(404, "API method not found")
        handler, match = found
        if api_key is None:
            raise CrmError(401, '"apiKey" is missing.')
        if api_key != self.api_key:
            raise CrmError(403, 'Wrong "apiKey" value.')
        if request.method == "POST" and request.mimetype == "application/json":
            raise _invalid({"body": "Expected application/x-www-form-urlencoded, not JSON"})
        return handler(form, query, data, **match.groupdict())

    @staticmethod
    def _json_field(form: dict[str, str], data: dict[str, Any], name: str, kind: type[T]) -> T:
        if name not in form:
            raise _invalid({name: f"Parameter '{name}' is missing"})
        value = data.get(name)
        if not isinstance(value, kind):
            expected = "an array" if kind is list else "an object"
            raise _invalid({name: f"Expected {expected} in JSON"})
        return value

    # -- endpoints -------------------------------------------------------------------------

    def _call_event(self, form: dict[str, str], query: dict[str, str],
                    data: dict[str, Any]) -> Answer:
        event = self._json_field(form, data, "event", dict)
        errors = {}
        if not isinstance(event.get("phone"), str) or not event["phone"].strip():
            errors["phone"] = "This value should not be blank."
        if event.get("type") not in ("in", "out", "hangup"):
            errors["type"] = "The value you selected is not a valid choice."
        elif event["type"] == "hangup" and event.get("hangupStatus") not in HANGUP_STATUSES:
            errors["hangupStatus"] = "The value you selected is not a valid choice."
        for name, kind in (("codes", str), ("userIds", int)):
            value = event.get(name)
            if value is not None and not (isinstance(value, list)
                                          and all(isinstance(v, kind) for v in value)):
                errors[name] = f"Expected a list of {kind.__name__}"
        if self.sites is not None and "site" in event and event["site"] not in self.sites:
            errors["site"] = "Site not found."
        if errors:
            raise _invalid(errors)
        self.events.append(event)
        arrived = request.scope.get("arrived_at")
        self.arrivals.setdefault(str(event.get("callExternalId")),
                                 arrived if isinstance(arrived, float) else time.perf_counter())
        answer: dict[str, Any] = {"success": True}
        if self.known_codes is not None:
            missing = [c for c in event.get("codes") or [] if c not in self.known_codes]
            if missing:
                answer["notExistCodes"] = missing
        if self.known_user_ids is not None:
            unknown = [u for u in event.get("userIds") or [] if u not in self.known_user_ids]
            if unknown:
                answer["notExistUsers"] = unknown
        return 200, answer

    def _calls_upload(self, form: dict[str, str], query: dict[str, str],
                      data: dict[str, Any]) -> Answer:
        calls = self._json_field(form, data, "calls", list)
        if not 1 <= len(calls) <= 50:
            raise _invalid({"calls": "Between 1 and 50 calls are expected."})
        errors = {}
        for i, item in enumerate(calls):
            for name, problem in _call_problems(item, self.sites).items():
                errors[f"calls[{i}].{name}"] = problem
        if errors:
            raise _invalid(errors)
        duplicates, processed = [], 0
        for item in calls:
            external_id = None if item.get("externalId") is None else str(item["externalId"])
            if external_id in self.ignore_external_ids:
                continue
            if external_id is not None and external_id in self.uploaded:
                duplicates.append(external_id)
                continue
            if external_id is not None:
                self.uploaded[external_id] = item
            self.calls.append(item)
            processed += 1
        return 200, {"success": True, "processedCallsCount": processed,
                     "duplicateCalls": duplicates}

    def _module_edit(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                     code: str) -> Answer:
        module = self._json_field(form, data, "integrationModule", dict)
        if module.get("code", code) != code:
            raise _invalid({"code": "The code does not match the URL."})
        created = code not in self.modules
        self.modules[code] = {**self.modules.get(code, {}), **module}
        integrations = module.get("integrations")
        telephony = (integrations.get("telephony") or {}) if isinstance(integrations, dict) else {}
        info: dict[str, list[Any]] = {}
        if self.known_user_ids is not None:
            info["notExistUsersIds"] = [c.get("userId") for c in telephony.get("additionalCodes")
                                        or [] if c.get("userId") not in self.known_user_ids]
        if self.sites is not None:
            info["notExistSiteCodes"] = [p.get("siteCode") for p in telephony.get("externalPhones")
                                         or [] if p.get("siteCode") not in self.sites]
        return (201 if created else 200), {"success": True, "info": {k: v for k, v in
                                                                      info.items() if v}}

    def _module_get(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                    code: str) -> Answer:
        if code not in self.modules:
            raise CrmError(404, "Not found")
        return 200, {"success": True, "integrationModule": self.modules[code]}

    def _setting_edit(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                      code: str) -> Answer:
        configuration = self._json_field(form, data, "configuration", dict)
        created = code not in self.telephony_settings
        self.telephony_settings[code] = configuration
        return (201 if created else 200), {"success": True}

    def _setting_get(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                     code: str) -> Answer:
        if code not in self.telephony_settings:
            raise CrmError(404, "Not found")
        return 200, {"success": True, "configuration": self.telephony_settings[code]}

    def _user_status(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                     user_id: str) -> Answer:
        status = form.get("status")
        if status is None:
            raise _invalid({"status": "Parameter 'status' is missing"})
        if status not in USER_STATUSES:
            raise _invalid({"status": "The value you selected is not a valid choice."})
        if self.known_user_ids is not None and int(user_id) not in self.known_user_ids:
            raise CrmError(404, "Not found")
        self.user_statuses[int(user_id)] = status
        return 200, {"success": True}

    def _user_get(self, form: dict[str, str], query: dict[str, str], data: dict[str, Any],
                  user_id: str) -> Answer:
        uid = int(user_id)
        if self.known_user_ids is not None and uid not in self.known_user_ids:
            raise CrmError(404, "Not found")
        return 200, {"success": True, "user": {"id": uid, "active": True,
                                               "status": self.user_statuses.get(uid, "free")}}

    def _manager(self, form: dict[str, str], query: dict[str, str],
                 data: dict[str, Any]) -> Answer:
        digits = "".join(c for c in query.get("phone", "") if c.isdigit())
        if not digits:
            raise _invalid({"phone": "Parameter 'phone' is missing"})
        manager = self.managers.get("+" + digits)
        if manager is not None and not _flag(query.get("ignoreStatus")) \
                and self.user_statuses.get(int(manager.get("id") or 0), "free") != "free":
            manager = None  # retailCRM names a manager who is not free only with ignoreStatus
        answer: dict[str, Any] = {"success": True}
        if manager is not None:
            answer["manager"] = manager
        customer = self.phone_customers.get("+" + digits)
        if customer is not None and _flag(query.get("details")):
            # retailCRM adds the caller's card and links to it (whether customerLink is
            # absolute is unconfirmed: the simulator gives a path, tracker accepts either).
            answer["customer"] = customer
            answer["links"] = {"customerLink": f"/customers/{customer.get('id')}",
                               "newOrderLink": f"/orders/add?customerId={customer.get('id')}"}
        return 200, answer


def _flag(value: str | None) -> bool:
    """A boolean query parameter as retailCRM's clients send it: ``1``/``0`` (PHP, ours) or
    ``True``/``False`` (the official Python client passes Python booleans to the query)."""
    return value is not None and value.strip().lower() in ("1", "true")


def _call_problems(item: Any, sites: set[str] | None) -> dict[str, str]:
    """What is wrong with one uploaded call item (empty when it is valid)."""
    if not isinstance(item, dict):
        return {"": "Expected an object"}
    problems = {}
    try:
        datetime.strptime(str(item.get("date")), "%Y-%m-%d %H:%M:%S")  # None: "None"
    except (TypeError, ValueError):
        problems["date"] = "Expected Y-m-d H:i:s"
    if item.get("type") not in ("in", "out"):
        problems["type"] = "The value you selected is not a valid choice."
    if not isinstance(item.get("phone"), str) or not item["phone"].strip():
        problems["phone"] = "This value should not be blank."
    if item.get("result") not in CALL_RESULTS:
        problems["result"] = "The value you selected is not a valid choice."
    if sites is not None and "site" in item and item["site"] not in sites:
        problems["site"] = "Site not found."
    return problems
