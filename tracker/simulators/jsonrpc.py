"""UIS JSON-RPC pieces without I/O: the error type and the report query language.

The Data API's ``get.*`` methods share one query shape, applied here to plain rows: a date
window on ``start_time`` (``date_from``/``date_till``, at most 3 months), a ``filter`` tree,
``sort``, ``limit``/``offset`` and ``fields``.
"""

from __future__ import annotations

import calendar
import random
import re
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# The texts UIS's error tables give (data_api "Список ошибок"); others read as the mnemonic.
MESSAGES = {
    "sort_prohibited": "Sort by parameter is prohibited",
    "filter_prohibited": "Filter by parameter is prohibited",
    "entity_not_found": "Entity not found",
    "required_parameter_missed": "The required parameter has been missed",
}


class RpcError(Exception):
    """A JSON-RPC error answer: ``code`` is the group, ``mnemonic`` the reason; ``metadata``
    (``limits`` of the budgets, for one) rides in ``error.data.metadata`` as UIS puts it."""

    def __init__(self, code: int, mnemonic: str, field: str | None = None,
                 value: Any = None, *, message: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(mnemonic)
        self.code, self.mnemonic, self.field, self.value = code, mnemonic, field, value
        self.message = message or MESSAGES.get(mnemonic) or \
            mnemonic.replace("_", " ").capitalize()
        self.metadata = metadata

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mnemonic": self.mnemonic, "field": self.field,
                                "value": self.value, "params": {}, "extended_helper": None}
        if self.metadata is not None:
            data["metadata"] = self.metadata
        return {"code": self.code, "message": self.message, "data": data}


def bad_param(field: str, value: Any = None, mnemonic: str = "invalid_parameter_value") -> RpcError:
    return RpcError(-32602, mnemonic, field, value)


def field_names(base: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """``base`` followed by any other key a row has, in first-seen order."""
    return list(dict.fromkeys([*base, *(k for row in rows for k in row)]))


def _months_later(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(year=year, month=month,
                          day=min(moment.day, calendar.monthrange(year, month)[1]))


def _parse_time(params: dict[str, Any], name: str) -> datetime:
    if name not in params:
        raise bad_param(name, mnemonic="required_parameter_missed")
    try:
        return datetime.strptime(params[name], TIME_FORMAT)
    except (TypeError, ValueError):
        raise bad_param(name, params[name]) from None


def select(rows: list[dict[str, Any]], params: dict[str, Any], *, allowed: list[str],
            hidden: tuple[str, ...], dated: bool, sortable: Collection[str] | None = None,
            filterable: Collection[str] | None = None,
            shuffle: random.Random | None = None) -> dict[str, Any]:
    """Apply a report's date window, filter, sort, paging and field list; a get.* result.

    ``sortable`` and ``filterable`` are the method's field table ("Сортировка" and
    "Фильтрация" columns; default: every field): anything else is refused the way UIS refuses
    it, ``-32602`` ``sort_prohibited`` / ``filter_prohibited``. With ``shuffle``, rows that tie
    on every sort key come in a different order each time: UIS promises no order among them.
    """
    sortable = allowed if sortable is None else sortable
    filterable = allowed if filterable is None else filterable
    if dated:
        date_from, date_till = _parse_time(params, "date_from"), _parse_time(params, "date_till")
        if date_till < date_from:
            raise bad_param("date_till", params["date_till"])
        if date_till > _months_later(date_from, 3):
            raise bad_param("date_till", params["date_till"],
                            mnemonic="date_interval_limit_reached")
        rows = [r for r in rows
                if date_from <= datetime.strptime(r["start_time"], TIME_FORMAT) <= date_till]
    if params.get("filter"):
        _check_filter(params["filter"], "filter", filterable)
        rows = [r for r in rows if _matches(r, params["filter"], "filter", allowed)]
    orders = params.get("sort") or []
    if not isinstance(orders, list):
        raise bad_param("sort", orders, mnemonic="data_type_error")
    for order in orders:
        if not isinstance(order, dict) or order.get("field") not in sortable:
            value = order.get("field") if isinstance(order, dict) else order
            raise bad_param("sort.field", value, mnemonic="sort_prohibited")
    if orders and shuffle is not None:
        rows = list(rows)
        shuffle.shuffle(rows)
    for order in reversed(orders):
        rows.sort(key=_sort_key(order["field"]), reverse=order.get("order") == "desc")
    limit, offset = params.get("limit", 1000), params.get("offset", 0)
    if not isinstance(limit, int) or not 0 < limit <= 10_000:
        raise bad_param("limit", limit)
    if not isinstance(offset, int) or not 0 <= offset <= 100_000:
        raise bad_param("offset", offset)
    names = params.get("fields") or [n for n in allowed if n not in hidden]
    for name in names:
        if name not in allowed:
            raise bad_param("fields", name)
    page = [{n: r.get(n) for n in names} for r in rows[offset:offset + limit]]
    return {"data": page, "metadata": {"total_items": len(rows)}}


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda row: (row.get(name) is not None, row.get(name))


def _like(pattern: str, text: str, flags: int = 0) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, flags) is not None


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, v: a == v,
    "!=": lambda a, v: a != v,
    "<": lambda a, v: a is not None and a < v,
    ">": lambda a, v: a is not None and a > v,
    "<=": lambda a, v: a is not None and a <= v,
    ">=": lambda a, v: a is not None and a >= v,
    "in": lambda a, v: a in v,
    "not_in": lambda a, v: a not in v,
    "is_null": lambda a, v: a is None,
    "is_not_null": lambda a, v: a is not None,
    "like": lambda a, v: isinstance(a, str) and _like(v, a),
    "ilike": lambda a, v: isinstance(a, str) and _like(v, a, re.IGNORECASE),
    "not_like": lambda a, v: not (isinstance(a, str) and _like(v, a)),
    "overlap": lambda a, v: bool(set(a or ()) & set(v)),
    "not_overlap": lambda a, v: not set(a or ()) & set(v),
}


def _check_filter(node: Any, path: str, filterable: Collection[str]) -> None:
    """Refuse a filter naming a field the method does not let you filter by, before any row
    is looked at (an empty report must be refused too)."""
    if not isinstance(node, dict):
        return  # _matches names the type error
    if "filters" in node:
        for child in node["filters"] if isinstance(node["filters"], list) else []:
            _check_filter(child, f"{path}.filters", filterable)
        return
    if node.get("field") not in filterable:
        raise bad_param(f"{path}.field", node.get("field"), mnemonic="filter_prohibited")


def _matches(row: dict[str, Any], node: Any, path: str, allowed: list[str]) -> bool:
    """Evaluate a Data API filter: ``{field, operator, value}`` or ``{filters, condition}``."""
    if not isinstance(node, dict):
        raise bad_param(path, node, mnemonic="data_type_error")
    if "filters" in node:
        condition = node.get("condition", "and")
        if condition not in ("and", "or") or not isinstance(node["filters"], list):
            raise bad_param(f"{path}.condition", condition)
        results = [_matches(row, child, f"{path}.filters", allowed)
                   for child in node["filters"]]
        return all(results) if condition == "and" else any(results)
    name, operator = node.get("field"), node.get("operator")
    if name not in allowed:
        raise bad_param(f"{path}.field", name, mnemonic="filter_prohibited")
    if operator not in _OPERATORS:
        raise bad_param(f"{path}.operator", operator)
    try:
        return _OPERATORS[operator](row.get(name), node.get("value"))
    except TypeError:
        raise bad_param(f"{path}.value", node.get("value"), mnemonic="data_type_error") from None
