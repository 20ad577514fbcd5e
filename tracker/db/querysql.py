"""The admin API's query language as SQL: a checked ``Select`` compiled and run.

SQL text is assembled only from the column and table names of a ``querylang.Table`` (constants
of the admin API) and the operator spellings below; every value the request gave is a bound
parameter. ``tracker.core.querylang`` does the parsing and every check before this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracker.core import querylang
from tracker.core.querylang import Column, Condition, Group, Limits, Select, Table
from tracker.db.rows import Rows

# request spelling -> SQL spelling
_SQL = {
    "=": "=", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=",
    "in": "IN", "not_in": "NOT IN", "like": "LIKE",
    "is_null": "IS NULL", "is_not_null": "IS NOT NULL",
}
assert set(_SQL) == set(querylang.OPERATORS)


@dataclass(frozen=True)
class Query:
    """Parameterised SQL for one ``get.*`` request: the page and the total count."""

    sql: str
    args: tuple[Any, ...]
    count_sql: str
    count_args: tuple[Any, ...]
    fields: tuple[Column, ...]
    limit: int
    offset: int


def compile_select(table: Table, params: Mapping[str, Any], limits: Limits) -> Query:
    """SQL for ``params``; ``ApiError`` (from ``querylang.parse_select``) when they are bad."""
    return to_sql(querylang.parse_select(table, params, limits))


def to_sql(select: Select) -> Query:
    where: list[str] = []
    args: list[Any] = []
    if select.ids is not None:
        where.append(f"id IN ({', '.join('?' for _ in select.ids)})")
        args.extend(select.ids)
    if select.filter is not None:
        where.append(_where(select.filter, args))
    order = ", ".join(f"{name} {direction.upper()}" for name, direction in select.sort)
    where_sql = f" WHERE {' AND '.join(where)}" if where else ""
    columns = ", ".join(c.name for c in select.fields)
    table = select.table.name
    return Query(
        sql=f"SELECT {columns} FROM {table}{where_sql} ORDER BY {order} LIMIT ? OFFSET ?",
        args=(*args, select.limit, select.offset),
        count_sql=f"SELECT count(*) FROM {table}{where_sql}",
        count_args=tuple(args),
        fields=select.fields,
        limit=select.limit,
        offset=select.offset,
    )


def run_select(store: Rows, table: Table, params: Mapping[str, Any],
               limits: Limits) -> dict[str, Any]:
    """One ``get.*`` answer: the page of rows (decoded) and the metadata."""
    query = compile_select(table, params, limits)
    rows = store.conn.execute(query.sql, query.args).fetchall()
    total = store.conn.execute(query.count_sql, query.count_args).fetchone()[0]
    return {
        "data": [querylang.decode_row(tuple(row), query.fields) for row in rows],
        "metadata": {"total_items": total, "limit": query.limit, "offset": query.offset},
    }


def _where(node: Condition | Group, args: list[Any]) -> str:
    if isinstance(node, Group):
        parts = [_where(child, args) for child in node.children]
        return "(" + f" {node.condition.upper()} ".join(parts) + ")"
    name, operator = node.column.name, _SQL[node.operator]
    if node.operator in ("is_null", "is_not_null"):
        return f"{name} {operator}"
    args.extend(node.values)
    if node.operator in ("in", "not_in"):
        return f"{name} {operator} ({', '.join('?' for _ in node.values)})"
    if node.operator == "like":
        return f"{name} LIKE ? ESCAPE '\\'"
    return f"{name} {operator} ?"
