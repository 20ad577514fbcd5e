"""The fake retailCRM's orders, their history and the references a deal needs (issue 15).

Routes (v5): ``GET orders/history`` (``filter[sinceId]``, ``filter[startDate]``,
``filter[endDate]``, ``limit`` 20/50/100, ``page``; entries oldest first with ``pagination``
the way retailCRM pages it), ``GET orders`` (``filter[ids][]``, ``limit``, ``page``),
``GET reference/statuses``, ``GET reference/status-groups``, ``GET users`` (``limit``,
``page``). A deleted order is gone from ``orders``; its history keeps the entries, plus one with
``deleted: true``. Tests drive it with ``create_order``, ``set_status``, ``set_field`` and
``delete_order``; ``rewind_next`` makes the next history answer ignore ``sinceId`` (entries the
client has seen come again).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from quart import request

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
LIMITS = (20, 50, 100)
DEFAULT_GROUPS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("new", "Новый", [("new", "Новый")]),
    ("approval", "Согласование", [("availability-confirmed", "Наличие подтверждено")]),
    ("assembling", "Комплектация", [("assembling", "Комплектуется")]),
    ("delivery", "Доставка", [("send-to-delivery", "Передан в доставку")]),
    ("complete", "Выполнен", [("complete", "Выполнен")]),
    ("cancel", "Отменен", [("cancel-other", "Отменен"), ("no-call", "Недозвон")]),
]
# History field names of the order properties a test may change (retailCRM's snake_case).
FIELD_NAMES = {"totalSumm": "total_summ", "managerId": "manager", "phone": "phone",
               "email": "email", "firstName": "first_name", "site": "site"}

Answer = tuple[int, dict[str, Any]]
Error = Callable[[int, str, dict[str, str] | None], Exception]


class OrdersBook:
    """Orders, history, statuses and users of the fake account."""

    def __init__(self, error: Error, *, timezone: str = "Europe/Moscow",
                 user_ids: set[int] | None = None) -> None:
        self._error = error
        self.zone = ZoneInfo(timezone)
        self.orders: dict[int, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        for rank, (code, name, statuses) in enumerate(DEFAULT_GROUPS, start=1):
            self.add_group(code, name, [s for s, _ in statuses], ordering=rank * 10)
            for order, (status, status_name) in enumerate(statuses, start=1):
                self.add_status(status, status_name, code, ordering=order * 10)
        self.users: dict[int, dict[str, Any]] = {
            uid: {"id": uid, "firstName": f"Manager{uid}", "lastName": "Test", "active": True,
                  "email": f"user{uid}@shop.test"} for uid in sorted(user_ids or {1, 2, 3})}
        self.rewind_next = False  # the next history answer ignores sinceId (a fault)
        self._next_order = 1001
        self._next_history = 1

    def routes(self) -> list[tuple[str, str, Callable[..., Answer]]]:
        """(method, endpoint regex, handler) for the simulator's route table."""
        return [("GET", r"orders/history", self._history),
                ("GET", r"orders", self._orders),
                ("GET", r"reference/statuses", self._statuses),
                ("GET", r"reference/status-groups", self._groups),
                ("GET", r"users", self._users)]

    # -- test controls ---------------------------------------------------------------------

    def now(self) -> str:
        return datetime.now(self.zone).strftime(TIME_FORMAT)

    def add_group(self, code: str, name: str, statuses: list[str], *, ordering: int) -> None:
        self.groups[code] = {"code": code, "name": name, "ordering": ordering, "active": True,
                             "process": code not in ("complete", "cancel"),
                             "statuses": list(statuses)}

    def add_status(self, code: str, name: str, group: str, *, ordering: int) -> None:
        self.statuses[code] = {"code": code, "name": name, "active": True, "ordering": ordering,
                               "group": group}
        if group in self.groups and code not in self.groups[group]["statuses"]:
            self.groups[group]["statuses"].append(code)

    def create_order(self, *, phone: str | None = "+79991234567", email: str | None = None,
                     status: str = "new", total: float = 1000.0, customer_id: int | None = None,
                     manager_id: int | None = 1, site: str = "shop",
                     created_at: str | None = None, first_name: str = "Покупатель") -> int:
        """A new order and its creation entry (which carries the whole order)."""
        order_id = self._next_order
        self._next_order += 1
        created = created_at or self.now()
        customer: dict[str, Any] = {"id": customer_id if customer_id is not None
                                    else 5000 + order_id, "type": "customer",
                                    "firstName": first_name,
                                    "phones": [{"number": phone}] if phone else []}
        if email:
            customer["email"] = email
        order: dict[str, Any] = {
            "id": order_id, "number": f"{order_id}A", "site": site, "status": status,
            "createdAt": created, "statusUpdatedAt": created, "totalSumm": total, "summ": total,
            "firstName": first_name, "customer": customer, "orderMethod": "phone",
        }
        if phone:
            order["phone"] = phone
        if email:
            order["email"] = email
        if manager_id is not None:
            order["managerId"] = manager_id
        self.orders[order_id] = order
        self._entry(order_id, created, created=True, order=copy.deepcopy(order))
        return order_id

    def set_status(self, order_id: int, status: str, at: str | None = None) -> None:
        order = self.orders[order_id]
        old, order["status"] = order["status"], status
        self._entry(order_id, at or self.now(), field="status", oldValue={"code": old},
                    newValue={"code": status})

    def set_field(self, order_id: int, name: str, value: Any, at: str | None = None) -> None:
        order = self.orders[order_id]
        old, order[name] = order.get(name), value
        if name == "totalSumm":
            order["summ"] = value
        self._entry(order_id, at or self.now(), field=FIELD_NAMES.get(name, name),
                    oldValue=old, newValue=value)

    def delete_order(self, order_id: int) -> None:
        self.orders.pop(order_id)
        self._entry(order_id, self.now(), deleted=True)

    def _entry(self, order_id: int, at: str, order: dict[str, Any] | None = None,
               **fields: Any) -> None:
        self.history.append({"id": self._next_history, "createdAt": at, "source": "user",
                             "user": {"id": 1}, **fields,
                             "order": order or {"id": order_id, "site": "shop"}})
        self._next_history += 1

    # -- routes ----------------------------------------------------------------------------

    def _page(self, query: dict[str, str]) -> tuple[int, int]:
        problems = {}
        limit = query.get("limit", "20")
        if not limit.isdigit() or int(limit) not in LIMITS:
            problems["limit"] = "The value you selected is not a valid choice."
        page = query.get("page", "1")
        if not page.isdigit() or int(page) < 1:
            problems["page"] = "This value should be greater than or equal to 1."
        if problems:
            raise self._error(400, "Errors in the input parameters", problems)
        return int(limit), int(page)

    def _paged(self, rows: list[dict[str, Any]], limit: int, page: int) -> dict[str, Any]:
        total = len(rows)
        return {"rows": rows[(page - 1) * limit: page * limit],
                "pagination": {"limit": limit, "totalCount": total, "currentPage": page,
                               "totalPageCount": max(1, -(-total // limit)) if total else 0}}

    def _history(self, form: dict[str, str], query: dict[str, str],
                 data: dict[str, Any]) -> Answer:
        limit, page = self._page(query)
        rows = list(self.history)
        problems = {}
        since = query.get("filter[sinceId]")
        if self.rewind_next:
            self.rewind_next, since = False, None
        if since is not None:
            if not since.isdigit():
                problems["sinceId"] = "This value should be of type integer."
            else:
                rows = [e for e in rows if e["id"] > int(since)]
        for name, after in (("startDate", True), ("endDate", False)):
            bound = query.get(f"filter[{name}]")
            if bound is None:
                continue
            try:
                datetime.strptime(bound, TIME_FORMAT)
            except ValueError:
                problems[name] = "This value is not a valid datetime."
                continue
            rows = [e for e in rows if (e["createdAt"] >= bound if after
                                        else e["createdAt"] <= bound)]
        if problems:
            raise self._error(400, "Errors in the filter", problems)
        paged = self._paged(rows, limit, page)
        return 200, {"success": True, "generatedAt": self.now(),
                     "history": copy.deepcopy(paged["rows"]), "pagination": paged["pagination"]}

    def orders_answer(self, form: dict[str, str], query: dict[str, str],
                      data: dict[str, Any]) -> Answer:
        """``GET orders`` with ``filter[ids][]``: full orders of the book."""
        return self._orders(form, query, data)

    def _orders(self, form: dict[str, str], query: dict[str, str],
                data: dict[str, Any]) -> Answer:
        limit, page = self._page(query)
        ids: list[str] = list(request.args.getlist("filter[ids][]"))
        if any(not i.isdigit() for i in ids):
            raise self._error(400, "Errors in the filter",
                              {"ids": "This value should be of type integer."})
        rows = [self.orders[int(i)] for i in dict.fromkeys(ids) if int(i) in self.orders] \
            if ids else list(self.orders.values())
        paged = self._paged(rows, limit, page)
        return 200, {"success": True, "orders": copy.deepcopy(paged["rows"]),
                     "pagination": paged["pagination"]}

    def _statuses(self, form: dict[str, str], query: dict[str, str],
                  data: dict[str, Any]) -> Answer:
        return 200, {"success": True, "statuses": copy.deepcopy(self.statuses)}

    def _groups(self, form: dict[str, str], query: dict[str, str],
                data: dict[str, Any]) -> Answer:
        return 200, {"success": True, "statusGroups": copy.deepcopy(self.groups)}

    def _users(self, form: dict[str, str], query: dict[str, str],
               data: dict[str, Any]) -> Answer:
        limit, page = self._page(query)
        paged = self._paged(list(self.users.values()), limit, page)
        return 200, {"success": True, "users": copy.deepcopy(paged["rows"]),
                     "pagination": paged["pagination"]}
