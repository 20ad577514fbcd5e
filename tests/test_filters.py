"""The query language (checked in core, compiled in db) against a real, migrated SQLite file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.core import querylang
from tracker.db import querysql
from tracker.db.store import Store
from tracker.errors import ApiError
from tracker.web import api

LIMITS = querylang.Limits()

# id, state, direction, contact_phone, contact_name, started_at, talked, talk_seconds, rang
ROWS = [
    (1, "ringing", "in", "+79990000001", "Анна", 100.0, 0, None, "[101]"),
    (2, "ended", "in", "+79990000002", None, 200.0, 1, 30, "[101, 102]"),
    (3, "lost", "out", "+74950000003", "100% sure", 300.0, 0, 0, "[]"),
    (4, "talking", "out", "+79990000004", "O'Brien; DROP TABLE calls; --", 400.0, 1, None, None),
    (5, "ended", "in", None, "1_0", 500.0, 1, 95, "[103]"),
]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "filters.db")
    store.migrate()
    with store.transaction():
        for row in ROWS:
            store.conn.execute(
                "INSERT INTO calls (id, state, direction, contact_phone, contact_name, started_at,"
                " updated_at, talked, talk_seconds, rang) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row[:6], row[5], *row[6:]))
    return store


def run(store: Store, params: dict[str, Any], table: querylang.Table = api.CALLS
        ) -> tuple[list[dict[str, Any]], int]:
    query = querysql.compile_select(table, params, LIMITS)
    rows = store.conn.execute(query.sql, query.args).fetchall()
    total = store.conn.execute(query.count_sql, query.count_args).fetchone()[0]
    return [querylang.decode_row(tuple(r), query.fields) for r in rows], total


def ids_of(store: Store, params: dict[str, Any]) -> list[int]:
    rows, total = run(store, {**params, "fields": ["id"], "sort": [{"field": "id"}]})
    assert total == len(rows)
    return [r["id"] for r in rows]


def cond(field: str, operator: str, value: Any = ...) -> dict[str, Any]:
    node = {"field": field, "operator": operator}
    return node if value is ... else {**node, "value": value}


@pytest.mark.parametrize(("condition", "expected"), [
    (cond("state", "=", "ended"), [2, 5]),
    (cond("state", "!=", "ended"), [1, 3, 4]),
    (cond("started_at", "<", 300), [1, 2]),
    (cond("started_at", ">", 300), [4, 5]),
    (cond("started_at", "<=", 300), [1, 2, 3]),
    (cond("started_at", ">=", 300.0), [3, 4, 5]),
    (cond("direction", "in", ["out"]), [3, 4]),
    (cond("id", "in", [1, 5, 77]), [1, 5]),
    (cond("state", "not_in", ["ended", "lost"]), [1, 4]),
    (cond("contact_phone", "like", "+7999%"), [1, 2, 4]),
    (cond("contact_phone", "like", "%0003"), [3]),
    (cond("contact_name", "like", "100\\%%"), [3]),
    (cond("contact_name", "like", "1\\_0"), [5]),
    (cond("contact_name", "like", "1_0%"), [3, 5]),
    (cond("talk_seconds", "is_null"), [1, 4]),
    (cond("talk_seconds", "is_null", None), [1, 4]),
    (cond("talk_seconds", "is_not_null"), [2, 3, 5]),
    (cond("contact_phone", "is_null"), [5]),
    (cond("talked", "=", True), [2, 4, 5]),
    (cond("talked", "!=", True), [1, 3]),
    (cond("talk_seconds", "!=", 30), [3, 5]),  # null matches no comparison
    (cond("talk_seconds", "not_in", [30]), [3, 5]),
    (cond("contact_name", "=", "O'Brien; DROP TABLE calls; --"), [4]),
])
def test_each_operator_selects_the_right_rows(store: Store, condition: dict[str, Any],
                                               expected: list[int]) -> None:
    assert ids_of(store, {"filter": condition}) == expected


@pytest.mark.parametrize(("tree", "expected"), [
    # in AND (talk > 50 OR phone like %0001)
    ({"filters": [cond("direction", "=", "in"),
                  {"filters": [cond("talk_seconds", ">", 50),
                               cond("contact_phone", "like", "%0001")], "condition": "or"}],
      "condition": "and"}, [1, 5]),
    # (lost AND out) OR (talking AND talked)
    ({"filters": [{"filters": [cond("state", "=", "lost"), cond("direction", "=", "out")]},
                  {"filters": [cond("state", "=", "talking"), cond("talked", "=", True)],
                   "condition": "and"}], "condition": "or"}, [3, 4]),
    # the condition defaults to and
    ({"filters": [cond("direction", "=", "in"), cond("talked", "=", True)]}, [2, 5]),
    # a one-item group, three levels deep
    ({"filters": [{"filters": [{"filters": [cond("id", "=", 3)]}]}]}, [3]),
    # or binds inside its group only: in AND (ended OR ringing) excludes the out calls
    ({"filters": [cond("direction", "=", "in"),
                  {"filters": [cond("state", "=", "ended"), cond("state", "=", "talking")],
                   "condition": "or"}]}, [2, 5]),
])
def test_nested_and_or_trees(store: Store, tree: dict[str, Any], expected: list[int]) -> None:
    assert ids_of(store, {"filter": tree}) == expected


def test_fields_choose_and_order_the_columns_and_json_is_decoded(store: Store) -> None:
    rows, total = run(store, {"fields": ["rang", "id", "talked"], "ids": [2, 4]})
    assert total == 2
    assert [list(r) for r in rows] == [["rang", "id", "talked"]] * 2
    assert rows == [{"rang": None, "id": 4, "talked": True},
                    {"rang": [101, 102], "id": 2, "talked": True}]  # default: updated_at desc


def test_all_columns_by_default(store: Store) -> None:
    rows, _ = run(store, {"ids": [1]})
    assert list(rows[0]) == [c.name for c in api.CALLS.columns]
    assert rows[0]["contact_name"] == "Анна" and rows[0]["talked"] is False


@pytest.mark.parametrize(("sort", "expected"), [
    ([{"field": "started_at", "order": "desc"}], [5, 4, 3, 2, 1]),
    ([{"field": "direction", "order": "asc"}, {"field": "started_at", "order": "desc"}],
     [5, 2, 1, 4, 3]),
    ([{"field": "talked"}], [1, 3, 2, 4, 5]),  # ties broken by id
    ([{"field": "talk_seconds", "order": "desc"}, {"field": "id", "order": "desc"}],
     [5, 2, 3, 4, 1]),  # nulls last when descending
])
def test_sort(store: Store, sort: list[dict[str, str]], expected: list[int]) -> None:
    rows, _ = run(store, {"sort": sort, "fields": ["id"]})
    assert [r["id"] for r in rows] == expected


def test_ids_filter_limit_offset_and_total(store: Store) -> None:
    params = {"ids": [1, 2, 3, 4, 99, 2], "filter": cond("direction", "=", "in"),
              "sort": [{"field": "id"}], "fields": ["id"]}
    assert run(store, params) == ([{"id": 1}, {"id": 2}], 2)
    page, total = run(store, {"sort": [{"field": "id"}], "fields": ["id"], "limit": 2,
                              "offset": 1})
    assert (page, total) == ([{"id": 2}, {"id": 3}], 5)
    assert run(store, {"fields": ["id"], "offset": 5}) == ([], 5)


def test_nulls_mean_not_given(store: Store) -> None:
    rows, total = run(store, {"filter": None, "fields": None, "ids": None, "sort": None,
                              "limit": None, "offset": None})
    assert total == 5 and len(rows) == 5


def test_default_limit_applies(store: Store) -> None:
    query = querysql.compile_select(api.CALLS, {}, querylang.Limits(default_limit=2))
    assert len(store.conn.execute(query.sql, query.args).fetchall()) == 2


DEEP: dict[str, Any] = cond("id", "=", 1)
for _ in range(LIMITS.max_depth):
    DEEP = {"filters": [DEEP]}


@pytest.mark.parametrize(("params", "mnemonic", "field"), [
    ({"filter": cond("nope", "=", 1)}, "filter_prohibited", "filter.field"),
    ({"filter": cond("rang", "is_null")}, "filter_prohibited", "filter.field"),
    ({"filter": cond(5, "=", 1)}, "filter_prohibited", "filter.field"),
    ({"filter": cond("state", "~", "x")}, "invalid_parameter_value", "filter.operator"),
    ({"filter": cond("state", "ilike", "x")}, "invalid_parameter_value", "filter.operator"),
    ({"filter": cond("talk_seconds", "like", "1%")}, "invalid_parameter_value",
     "filter.operator"),
    ({"filter": cond("talked", "<", True)}, "invalid_parameter_value", "filter.operator"),
    ({"filter": cond("talk_seconds", "=", "30")}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("talk_seconds", "=", True)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("talk_seconds", "=", 1.5)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("talk_seconds", "=", 2**70)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("started_at", "=", float("inf"))}, "invalid_parameter_value",
     "filter.value"),
    ({"filter": cond("state", "=", 5)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("state", "=", "x" * 1001)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("talked", "=", 1)}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("state", "in", "ended")}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("state", "in", [])}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("state", "in", ["a", 1])}, "invalid_parameter_value", "filter.value[1]"),
    ({"filter": cond("id", "in", list(range(1001)))}, "limit_exceeded", "filter.value"),
    ({"filter": cond("state", "is_null", "x")}, "invalid_parameter_value", "filter.value"),
    ({"filter": cond("state", "=")}, "required_parameter_missing", "filter.value"),
    ({"filter": {"field": "state", "value": 1}}, "required_parameter_missing",
     "filter.operator"),
    ({"filter": {"operator": "=", "value": 1}}, "required_parameter_missing", "filter.field"),
    ({"filter": {**cond("id", "=", 1), "sql": "1=1"}}, "unexpected_parameters", "filter.sql"),
    ({"filter": {"filters": [cond("id", "=", 1)], "condition": "xor"}},
     "invalid_parameter_value", "filter.condition"),
    ({"filter": {"filters": []}}, "invalid_parameter_value", "filter.filters"),
    ({"filter": {"filters": cond("id", "=", 1)}}, "invalid_parameter_value", "filter.filters"),
    ({"filter": {"filters": [cond("id", "=", 1)], "extra": 1}}, "unexpected_parameters",
     "filter.extra"),
    ({"filter": {"filters": [cond("id", "=", 1), {"filters": [cond("x", "=", 1)]}]}},
     "filter_prohibited", "filter.filters[1].filters[0].field"),
    ({"filter": {"filters": [DEEP]}}, "limit_exceeded",
     "filter" + ".filters[0]" * (LIMITS.max_depth)),
    ({"filter": {"filters": [cond("id", "=", i) for i in range(51)], "condition": "or"}},
     "limit_exceeded", "filter.filters[50]"),
    ({"filter": "state = 'ended'"}, "invalid_parameter_value", "filter"),
    ({"filter": ["state", "=", "ended"]}, "invalid_parameter_value", "filter"),
    ({"fields": "id"}, "invalid_parameter_value", "fields"),
    ({"fields": []}, "invalid_parameter_value", "fields"),
    ({"fields": ["id", "password"]}, "invalid_parameter_value", "fields[1]"),
    ({"fields": ["id", "id"]}, "invalid_parameter_value", "fields[1]"),
    ({"fields": [["id"]]}, "invalid_parameter_value", "fields[0]"),
    ({"sort": [{"field": "nope"}]}, "sort_prohibited", "sort[0].field"),
    ({"sort": [{"field": "rang"}]}, "sort_prohibited", "sort[0].field"),
    ({"sort": [{"order": "asc"}]}, "sort_prohibited", "sort[0].field"),
    ({"sort": [{"field": "id", "order": "up"}]}, "invalid_parameter_value", "sort[0].order"),
    ({"sort": [{"field": "id", "nulls": "first"}]}, "unexpected_parameters", "sort[0].nulls"),
    ({"sort": [{"field": "id"}, {"field": "id"}]}, "invalid_parameter_value", "sort[1].field"),
    ({"sort": {"field": "id"}}, "invalid_parameter_value", "sort"),
    ({"sort": ["id"]}, "invalid_parameter_value", "sort[0]"),
    ({"sort": [{"field": c.name} for c in api.CALLS.columns[:6]]}, "limit_exceeded", "sort"),
    ({"limit": 0}, "invalid_parameter_value", "limit"),
    ({"limit": "10"}, "invalid_parameter_value", "limit"),
    ({"limit": True}, "invalid_parameter_value", "limit"),
    ({"limit": 1001}, "limit_exceeded", "limit"),
    ({"offset": -1}, "invalid_parameter_value", "offset"),
    ({"offset": 100_001}, "limit_exceeded", "offset"),
    ({"ids": []}, "invalid_parameter_value", "ids"),
    ({"ids": 5}, "invalid_parameter_value", "ids"),
    ({"ids": [1, "2"]}, "invalid_parameter_value", "ids[1]"),
    ({"ids": [1, None]}, "invalid_parameter_value", "ids[1]"),
    ({"ids": list(range(1001))}, "limit_exceeded", "ids"),
])
def test_refusals_name_the_mnemonic_and_the_field(params: dict[str, Any], mnemonic: str,
                                                  field: str) -> None:
    with pytest.raises(ApiError) as caught:
        querysql.compile_select(api.CALLS, params, LIMITS)
    assert (caught.value.code, caught.value.mnemonic, caught.value.field) == (-32602, mnemonic,
                                                                            field)


def test_long_values_are_cut_in_errors() -> None:
    with pytest.raises(ApiError) as caught:
        querysql.compile_select(api.CALLS, {"filter": cond("x" * 5000, "=", 1)}, LIMITS)
    assert len(caught.value.value) < 300


# -- no user text ever reaches SQL text ----------------------------------------------------------

_ALLOWED_WORDS = {c.name for c in api.CALLS.columns} | {
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ESCAPE", "IS", "NULL",
    "ORDER", "BY", "ASC", "DESC", "LIMIT", "OFFSET", "count", "calls"}
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|'\\'|\S")
_ALLOWED_SYMBOLS = set("()?,*=<>!") | {"'\\'"}

_names = st.sampled_from([c.name for c in api.CALLS.columns]) | st.text(max_size=30)
_operators = st.sampled_from(list(querylang.OPERATORS)) | st.text(max_size=10)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_values = _scalars | st.lists(_scalars, max_size=4)
_conditions = st.fixed_dictionaries({"field": _names, "operator": _operators},
                                    optional={"value": _values})
_trees = st.recursive(_conditions, lambda inner: st.fixed_dictionaries(
    {"filters": st.lists(inner, max_size=3)},
    optional={"condition": st.sampled_from(["and", "or"]) | st.text(max_size=5)}), max_leaves=8)
_params = st.fixed_dictionaries({}, optional={
    "filter": _trees,
    "fields": st.lists(_names, max_size=4),
    "sort": st.lists(st.fixed_dictionaries({"field": _names}, optional={
        "order": st.sampled_from(["asc", "desc"]) | st.text(max_size=5)}), max_size=3),
    "ids": st.lists(st.integers() | st.text(max_size=5), max_size=4),
    "limit": st.integers() | st.text(max_size=5),
    "offset": st.integers() | st.text(max_size=5),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_params)
def test_compiled_sql_holds_only_allow_listed_words(params: dict[str, Any]) -> None:
    try:
        query = querysql.compile_select(api.CALLS, params, LIMITS)
    except ApiError as exc:
        assert exc.code == -32602
        json.dumps({"field": exc.field, "value": exc.value})  # the error is always serialisable
        return
    for sql in (query.sql, query.count_sql):
        for token in _TOKEN.findall(sql):
            assert token in _ALLOWED_WORDS or token in _ALLOWED_SYMBOLS, (token, sql)
    assert query.sql.count("?") == len(query.args)


def test_table_definitions_refuse_unsafe_names() -> None:
    with pytest.raises(ValueError):
        querylang.Column("id; DROP TABLE calls", "int")
    with pytest.raises(ValueError):
        querylang.Table("calls where 1", (querylang.Column("id", "int"),))
    with pytest.raises(ValueError):
        querylang.Column("payload", "json")  # JSON text cannot be filtered
