"""The admin API's query language (filter, fields, ids, sort, limit, offset): parsed and checked.

No I/O. A request names columns, operators and values; ``parse_select`` checks each against a
``Table``'s allow-list and the ``Limits`` and returns a ``Select`` of plain data, which
``tracker.db.querysql`` turns into SQL (column names and operators from the allow-lists only,
every value a bound parameter). Anything else is refused with an ``ApiError`` whose ``field``
is the dot path of the culprit (``filter.filters[1].field``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tracker.errors import ApiError

INVALID_PARAMS = -32602
QUERY_PARAMS = frozenset({"filter", "fields", "ids", "sort", "limit", "offset"})

# as a request spells them (db/querysql.py has their SQL)
OPERATORS = ("=", "!=", "<", ">", "<=", ">=", "in", "not_in", "like", "is_null", "is_not_null")
_ORDERED = frozenset({"=", "!=", "<", ">", "<=", ">=", "in", "not_in", "is_null", "is_not_null"})
_BY_KIND = {
    "int": _ORDERED,
    "float": _ORDERED,
    "str": frozenset(OPERATORS),
    "bool": frozenset({"=", "!=", "is_null", "is_not_null"}),
    "json": frozenset(),
}
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_INT_RANGE = 2**63  # SQLite integers are signed 64-bit


def problem(mnemonic: str, message: str, field: str | None, value: Any = None) -> ApiError:
    """An invalid-parameters (-32602) error."""
    return ApiError(INVALID_PARAMS, mnemonic, message, field=field, value=value)


@dataclass(frozen=True)
class Column:
    """One column a method exposes. ``json`` columns hold JSON text: returned decoded, never
    filtered or sorted."""

    name: str
    kind: str  # "int" | "float" | "str" | "bool" | "json"
    filterable: bool = True
    sortable: bool = True

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name) or self.kind not in _BY_KIND:
            raise ValueError(f"bad column definition {self.name!r} ({self.kind!r})")
        if self.kind == "json" and (self.filterable or self.sortable):
            raise ValueError(f"JSON column {self.name!r} cannot be filtered or sorted")


def json_column(name: str) -> Column:
    return Column(name, "json", filterable=False, sortable=False)


@dataclass(frozen=True)
class Table:
    """A table as a method exposes it: the allow-list of columns, in output order."""

    name: str
    columns: tuple[Column, ...]
    default_sort: tuple[tuple[str, str], ...] = (("id", "desc"),)

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name) or self.column("id") is None:
            raise ValueError(f"bad table definition {self.name!r}")

    def column(self, name: Any) -> Column | None:
        if not isinstance(name, str):
            return None
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for."""

    default_limit: int = 100
    max_limit: int = 1000
    max_offset: int = 100_000
    max_ids: int = 1000
    max_values: int = 1000  # items of one in / not_in list
    max_conditions: int = 50
    max_depth: int = 6
    max_sort: int = 5
    max_text: int = 1000  # characters of one string value


@dataclass(frozen=True)
class Condition:
    """``column operator values``: no value for ``is_null``/``is_not_null``, one for the
    comparisons and ``like``, one or more for ``in``/``not_in``."""

    column: Column
    operator: str  # one of OPERATORS
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Group:
    """Conditions joined by ``and`` or ``or``."""

    condition: str  # "and" | "or"
    children: tuple[Condition | Group, ...]


@dataclass(frozen=True)
class Select:
    """One checked ``get.*`` request: what to return, which rows, in which order."""

    table: Table
    fields: tuple[Column, ...]
    ids: tuple[int, ...] | None
    filter: Condition | Group | None
    sort: tuple[tuple[str, str], ...]  # (column, "asc" | "desc"), ending in a total order
    limit: int
    offset: int


def parse_select(table: Table, params: Mapping[str, Any], limits: Limits) -> Select:
    """Check ``params`` (only the keys in ``QUERY_PARAMS`` are read; null means absent)."""
    fields = _fields(table, params.get("fields"))
    ids = None
    if params.get("ids") is not None:
        ids = tuple(parse_ids(params["ids"], limits, "ids"))
    where = None
    if params.get("filter") is not None:
        where = _node(table, params["filter"], "filter", 1, _State(limits))
    order = _sort(table, params.get("sort"), limits)
    limit = _count_param(params.get("limit"), "limit", limits.default_limit, 1, limits.max_limit)
    offset = _count_param(params.get("offset"), "offset", 0, 0, limits.max_offset)
    return Select(table, fields, ids, where, order, limit, offset)


def decode_row(row: Sequence[Any], fields: Sequence[Column]) -> dict[str, Any]:
    """A result row as the API returns it: JSON columns decoded, booleans as booleans."""
    result: dict[str, Any] = {}
    for column, value in zip(fields, row, strict=True):
        if value is not None and column.kind == "json":
            try:
                value = json.loads(value)
            except ValueError:
                pass  # text that is not JSON (an old or a rejected body) is returned as it is
        elif value is not None and column.kind == "bool":
            value = bool(value)
        result[column.name] = value
    return result


def parse_ids(raw: Any, limits: Limits, field: str) -> list[int]:
    """A non-empty array of distinct integer ids, at most ``limits.max_ids``."""
    if not isinstance(raw, list) or not raw:
        raise problem("invalid_parameter_value", "must be a non-empty array of integer ids",
                      field, short(raw))
    if len(raw) > limits.max_ids:
        raise problem("limit_exceeded", f"at most {limits.max_ids} ids in one request",
                      field, len(raw))
    for index, item in enumerate(raw):
        if not is_int(item):
            raise problem("invalid_parameter_value", "must be an integer id",
                          f"{field}[{index}]", short(item))
    return list(dict.fromkeys(raw))


# -- pieces --------------------------------------------------------------------------------------


class _State:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conditions = 0


def _node(table: Table, node: Any, path: str, depth: int, state: _State) -> Condition | Group:
    if not isinstance(node, dict):
        raise problem("invalid_parameter_value",
                      "a filter is {field, operator, value} or {filters: [...], condition}",
                      path, short(node))
    if depth > state.limits.max_depth:
        raise problem("limit_exceeded", f"filters nest at most {state.limits.max_depth} deep",
                      path)
    if "filters" in node:
        return _group(table, node, path, depth, state)
    return _condition(table, node, path, state)


def _group(table: Table, node: dict[str, Any], path: str, depth: int, state: _State) -> Group:
    _no_extra(node, {"filters", "condition"}, path)
    condition = node.get("condition", "and")
    if condition not in ("and", "or"):
        raise problem("invalid_parameter_value", "condition must be 'and' or 'or'",
                      f"{path}.condition", short(condition))
    children = node["filters"]
    if not isinstance(children, list) or not children:
        raise problem("invalid_parameter_value", "filters must be a non-empty array",
                      f"{path}.filters", short(children))
    return Group(condition, tuple(_node(table, child, f"{path}.filters[{i}]", depth + 1, state)
                                  for i, child in enumerate(children)))


def _condition(table: Table, node: dict[str, Any], path: str, state: _State) -> Condition:
    _no_extra(node, {"field", "operator", "value"}, path)
    state.conditions += 1
    if state.conditions > state.limits.max_conditions:
        raise problem("limit_exceeded",
                      f"at most {state.limits.max_conditions} conditions in one filter", path)
    if "field" not in node:
        raise problem("required_parameter_missing", "a condition needs a field",
                      f"{path}.field")
    column = table.column(node["field"])
    if column is None or not column.filterable:
        raise problem("filter_prohibited", "this field cannot be filtered on",
                      f"{path}.field", short(node["field"]))
    if "operator" not in node:
        raise problem("required_parameter_missing", "a condition needs an operator",
                      f"{path}.operator")
    operator = node["operator"]
    if not isinstance(operator, str) or operator not in OPERATORS:
        raise problem("invalid_parameter_value",
                      f"operator must be one of {' '.join(OPERATORS)}", f"{path}.operator",
                      short(operator))
    if operator not in _BY_KIND[column.kind]:
        raise problem("invalid_parameter_value",
                      f"{operator} does not apply to {column.name} ({column.kind})",
                      f"{path}.operator", operator)
    if operator in ("is_null", "is_not_null"):
        if node.get("value") is not None:
            raise problem("invalid_parameter_value", f"{operator} takes no value",
                          f"{path}.value", short(node["value"]))
        return Condition(column, operator, ())
    if "value" not in node:
        raise problem("required_parameter_missing", "a condition needs a value",
                      f"{path}.value")
    value = node["value"]
    if operator in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise problem("invalid_parameter_value", f"{operator} takes a non-empty array",
                          f"{path}.value", short(value))
        if len(value) > state.limits.max_values:
            raise problem("limit_exceeded", f"at most {state.limits.max_values} values",
                          f"{path}.value", len(value))
        return Condition(column, operator, tuple(
            _value(column, v, f"{path}.value[{i}]", state.limits) for i, v in enumerate(value)))
    return Condition(column, operator, (_value(column, value, f"{path}.value", state.limits),))


def _value(column: Column, value: Any, path: str, limits: Limits) -> Any:
    kind = column.kind
    if kind == "int" and is_int(value):
        return value
    if kind == "float" and (is_int(value) or (isinstance(value, float) and math.isfinite(value))):
        return value
    if kind == "bool" and isinstance(value, bool):
        return int(value)
    if kind == "str" and isinstance(value, str):
        if len(value) > limits.max_text:
            raise problem("invalid_parameter_value",
                          f"at most {limits.max_text} characters", path, short(value))
        return value
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    raise problem("invalid_parameter_value", f"{column.name} takes {names[kind]}", path,
                  short(value))


def _fields(table: Table, raw: Any) -> tuple[Column, ...]:
    if raw is None:
        return table.columns
    if not isinstance(raw, list) or not raw:
        raise problem("invalid_parameter_value", "fields must be a non-empty array of names",
                      "fields", short(raw))
    chosen: list[Column] = []
    for index, name in enumerate(raw):
        column = table.column(name)
        if column is None:
            raise problem("invalid_parameter_value", "no such field", f"fields[{index}]",
                          short(name))
        if column in chosen:
            raise problem("invalid_parameter_value", "named twice", f"fields[{index}]", name)
        chosen.append(column)
    return tuple(chosen)


def _sort(table: Table, raw: Any, limits: Limits) -> tuple[tuple[str, str], ...]:
    items = [{"field": f, "order": o} for f, o in table.default_sort] if raw is None else raw
    if not isinstance(items, list) or not items:
        raise problem("invalid_parameter_value",
                      "sort must be a non-empty array of {field, order}", "sort", short(raw))
    if len(items) > limits.max_sort:
        raise problem("limit_exceeded", f"at most {limits.max_sort} sort fields", "sort",
                      len(items))
    parts: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        path = f"sort[{index}]"
        if not isinstance(item, dict):
            raise problem("invalid_parameter_value", "a sort item is {field, order}", path,
                          short(item))
        _no_extra(item, {"field", "order"}, path)
        column = table.column(item.get("field"))
        if column is None or not column.sortable:
            raise problem("sort_prohibited", "this field cannot be sorted on", f"{path}.field",
                          short(item.get("field")))
        order = item.get("order", "asc")
        if order not in ("asc", "desc"):
            raise problem("invalid_parameter_value", "order must be 'asc' or 'desc'",
                          f"{path}.order", short(order))
        if column.name in seen:
            raise problem("invalid_parameter_value", "sorted on twice", f"{path}.field",
                          column.name)
        seen.add(column.name)
        parts.append((column.name, order))
    if "id" not in seen:
        parts.append(("id", "asc"))  # a total order, so that pages never overlap or skip rows
    return tuple(parts)


def _count_param(raw: Any, field: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not is_int(raw) or raw < low:
        raise problem("invalid_parameter_value", f"{field} must be an integer >= {low}", field,
                      short(raw))
    if raw > high:
        raise problem("limit_exceeded", f"{field} may be at most {high}", field, raw)
    return int(raw)


def _no_extra(node: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(node) - allowed)
    if extra:
        raise problem("unexpected_parameters",
                      f"unexpected key; allowed: {', '.join(sorted(allowed))}",
                      short(f"{path}.{extra[0]}"))


def is_int(value: Any) -> bool:
    """An integer SQLite can hold (``bool`` is not one here)."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and -_INT_RANGE < value < _INT_RANGE)


def short(value: Any) -> Any:
    """``value`` to echo in an error: long strings cut, big structures summarised."""
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return value if len(text) <= 200 else text[:200] + "…"
    return value
