"""``session_data_column``: the whole ``_pgnt.variables()`` object in one JSON column.

First the transform on hand-made chunks (exact events, visit ids and reject
reasons for each way a warehouse returns the column: dicts, JSON text, bytes,
NULL), then end to end: the real ``ConversionsOperator`` (and once the
command-line tool) reading real SQLite, PostgreSQL (JSONB), MariaDB (JSON),
DuckDB (JSON) and Snowflake (VARIANT and OBJECT, through fakesnow) tables,
uploading through v2 to the emulator, whose stored events must be exactly the
expected ones, the malformed rows being rejects with their reasons in the
ledger's rejects table. A second run through v1 on the same ledger sends
nothing: visit_id is not part of the content hash.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.transform import RowReject, TransformConfig, check_columns, transform_chunk
from pagent_provider.core.transform.chunk import _CONVERSION_ID_NULL
from pagent_provider.exceptions import PagentConfigError
from pagent_provider.testing.dag_runs import sql_connection

NOW_MS = 1_800_000_000_000  # 2027-01-15: a fixed "now" for the transform tests
TIME_MS = 1_794_300_000_000  # 2026-11-10: in the past for the emulator too
GOAL = "5f1c2a4e-8d3b-4c6a-9e7f-0a1b2c3d4e5f"
HINT = 'it must hold the whole _pgnt.variables() object, such as {"session_id": "...", "user_id": "...", "conversion_id": "..."}'
NULL_OBJECT = (
    "column 'pagent' is NULL; it must hold the _pgnt.variables() object (session_id, user_id, conversion_id): "
    "store the object with the order, or filter such rows out in the query"
)
NULL_SESSION = (
    "column 'pagent': session_id is NULL; pagent cannot attribute the conversion to a browser session without it: "
    "store the session_id from _pgnt.variables() with the order, or filter such rows out in the query"
)
NULL_GOAL = "column 'pagent': " + _CONVERSION_ID_NULL


def no_key(key: str, column: str = "pagent") -> str:
    also = "; or set conversion_id in the transform config to the goal's UUID" if key == "conversion_id" else ""
    return (
        f'column {column!r} has no "{key}" key: {HINT}, or map {key} to a column of its own '
        f'with columns={{"{key}": "<column>"}}{also}'
    )


def variables(i: int, **changes: Any) -> dict[str, Any]:
    """What ``_pgnt.variables("purchase")`` returned for order ``i``."""
    obj = {"session_id": f"sess-{i}", "user_id": f"user-{i}", "visit_id": f"v-{i}", "conversion_id": GOAL}
    obj.update(changes)
    return {name: value for name, value in obj.items() if value is not DROP}


DROP = object()  # variables(i, visit_id=DROP): the object has no such key


def event(i: int, **changes: Any) -> dict[str, Any]:
    """The v1 event of order ``i`` (never with visit_id)."""
    base = {"session_id": f"sess-{i}", "user_id": f"user-{i}", "conversion_id": GOAL, "time": TIME_MS}
    base.update(changes)
    return base


def chunk(objects: list[Any], **columns: list[Any]) -> pd.DataFrame:
    """Orders o0, o1, ... whose ``pagent`` column holds ``objects`` (an ``object`` column)."""
    size = len(objects)
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(size)],
            "pagent": pd.Series(objects, dtype=object),
            "time": [TIME_MS] * size,
            **columns,
        }
    )


def text_chunk(texts: list[str | None]) -> pd.DataFrame:
    """The same with the column as pandas text, as the reader builds it from SQLite TEXT or MariaDB JSON."""
    frame = chunk(texts)
    frame["pagent"] = pd.Series(texts, dtype=pd.StringDtype("python"))
    return frame


def run(frame: pd.DataFrame, **config: Any):
    return transform_chunk(
        frame, TransformConfig(key_column="order_id", session_data_column="pagent", **config), now_ms=NOW_MS
    )


# --------------------------------------------------------------------------- the transform


def test_dict_objects_become_events_and_visit_ids():
    objects = [
        variables(0),
        variables(1, visit_id=DROP),
        variables(2, user_id=123, session_id=456, experiment={"id": 3}, extra="ignored"),
        variables(3, visit_id=789),
    ]
    result = run(chunk(objects))
    assert result.events == [event(0), event(1), event(2, session_id="456", user_id="123"), event(3)]
    assert result.visit_ids == ["v-0", None, "v-2", "789"]
    assert result.keys == ["o0", "o1", "o2", "o3"] and result.rejects == []
    assert all("visit_id" not in e for e in result.events)


def test_json_text_and_bytes_give_the_same_events_as_dicts():
    objects = [variables(0), variables(1, visit_id=DROP), variables(2, user_id=7)]
    texts = [json.dumps(o) for o in objects]
    from_dicts = run(chunk(objects))
    for frame in (
        text_chunk(texts),
        chunk(texts),
        chunk([t.encode() for t in texts]),
        chunk([bytearray(t.encode()) for t in texts]),
    ):
        result = run(frame)
        assert result.events == from_dicts.events == [event(0), event(1), event(2, user_id="7")]
        assert result.visit_ids == from_dicts.visit_ids == ["v-0", None, "v-2"]
        assert result.rejects == []


def test_text_with_whitespace_or_one_bad_row_is_parsed_row_by_row():
    texts = ["  " + json.dumps(variables(0)) + "\n", json.dumps(variables(1)), "{oops", json.dumps(variables(3))]
    result = run(text_chunk(texts))
    assert result.events == [event(0), event(1), event(3)]
    assert result.visit_ids == ["v-0", "v-1", "v-3"]
    assert result.rejects == [
        RowReject(
            "o2",
            "session_data",
            "column 'pagent' is not valid JSON (Expecting property name enclosed in double quotes: "
            f"line 1 column 2 (char 1)): '{{oops'; {HINT}",
        )
    ]


def test_the_same_events_as_four_separate_columns():
    objects = [variables(i, user_id=i * 1000) for i in range(5)]
    separate = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(5)],
            "session_id": [o["session_id"] for o in objects],
            "user_id": [o["user_id"] for o in objects],
            "conversion_id": [o["conversion_id"] for o in objects],
            "time": [TIME_MS] * 5,
        }
    )
    plain = transform_chunk(separate, TransformConfig(key_column="order_id"), now_ms=NOW_MS)
    assert run(chunk(objects)).events == plain.events
    assert plain.visit_ids is None


def test_malformed_objects_are_rejects_naming_the_column():
    objects = [
        None,
        "not json",
        "[1, 2]",
        [1, 2],
        '"sess-4"',
        42,
        "NaN",
        b"\xff\xfe",
        "null",
        variables(9),
    ]
    result = run(chunk(objects))
    assert result.events == [event(9)]
    assert result.visit_ids == ["v-9"]
    assert [(r.row, r.field) for r in result.rejects] == [(f"o{i}", "session_data") for i in range(9)]
    assert [r.reason for r in result.rejects] == [
        NULL_OBJECT,
        f"column 'pagent' is not valid JSON (Expecting value: line 1 column 1 (char 0)): 'not json'; {HINT}",
        f"column 'pagent' is not a JSON object (got a list): [1, 2]; {HINT}",
        f"column 'pagent' is not a JSON object (got a list): [1, 2]; {HINT}",
        f"column 'pagent' is not a JSON object (got a string): 'sess-4'; {HINT}",
        f"column 'pagent' is not a JSON object (got a number): 42; {HINT}",
        f"column 'pagent' is not valid JSON (NaN is not valid JSON): 'NaN'; {HINT}",
        f"column 'pagent' is binary data that is not UTF-8 text (b'\\xff\\xfe'); {HINT}",
        f"column 'pagent' is not a JSON object (got null): None; {HINT}",
    ]


def test_null_in_a_text_column_and_pandas_missing_values_are_null_objects():
    result = run(text_chunk([json.dumps(variables(0)), None]))
    assert result.events == [event(0)]
    assert result.rejects == [RowReject("o1", "session_data", NULL_OBJECT)]
    result = run(chunk([np.nan, pd.NA, variables(2)]))
    assert result.rejects == [
        RowReject("o0", "session_data", NULL_OBJECT),
        RowReject("o1", "session_data", NULL_OBJECT),
    ]


def test_missing_keys_are_rejects_of_their_field():
    objects = [
        variables(0, session_id=DROP),
        variables(1, user_id=DROP),
        variables(2, conversion_id=DROP),
        variables(3, session_id=DROP, user_id=DROP),
        {},
        variables(5, visit_id=DROP),
    ]
    result = run(chunk(objects))
    assert result.events == [event(5)]
    assert result.visit_ids == [None]
    assert result.rejects == [
        RowReject("o0", "session_id", no_key("session_id")),
        RowReject("o1", "user_id", no_key("user_id")),
        RowReject("o2", "conversion_id", no_key("conversion_id")),
        RowReject("o3", "session_id", no_key("session_id")),
        RowReject("o4", "session_id", no_key("session_id")),
    ]


def test_null_and_invalid_values_follow_the_rules_of_the_separate_columns():
    objects = [
        variables(0, conversion_id=None),
        variables(1, session_id=None),
        variables(2, user_id=None),
        variables(3, session_id="   "),
        variables(4, user_id=True),
        variables(5, session_id=["a"]),
        variables(6, conversion_id=""),
        variables(7, user_id=12.0, session_id=2**60),
        variables(8, visit_id=None),
    ]
    result = run(chunk(objects))
    assert result.events == [event(7, user_id="12", session_id=str(2**60)), event(8)]
    assert result.visit_ids == ["v-7", None]
    assert result.rejects == [
        RowReject("o0", "conversion_id", NULL_GOAL),
        RowReject("o1", "session_id", NULL_SESSION),
        RowReject(
            "o2",
            "user_id",
            "column 'pagent': user_id is NULL; pagent requires it: store the user_id from _pgnt.variables() "
            "with the order, or filter such rows out in the query",
        ),
        RowReject(
            "o3",
            "session_id",
            "column 'pagent': session_id is whitespace only ('   '); "
            "select the column holding the session_id captured with _pgnt.variables()",
        ),
        RowReject("o4", "user_id", "column 'pagent': user_id True is a boolean, not an id; select the user_id column"),
        RowReject(
            "o5",
            "session_id",
            "column 'pagent': session_id ['a'] is a list, not a string id; select the session_id column",
        ),
        RowReject(
            "o6",
            "conversion_id",
            "column 'pagent': conversion_id is an empty string; "
            "select the column holding the conversion_id captured with _pgnt.variables()",
        ),
    ]


def test_invalid_visit_ids_are_rejects_naming_visit_id():
    objects = [variables(0, visit_id=""), variables(1, visit_id={"v": 1}), variables(2, visit_id=False), variables(3)]
    result = run(chunk(objects))
    assert result.events == [event(3)] and result.visit_ids == ["v-3"]
    assert result.rejects == [
        RowReject(
            "o0",
            "visit_id",
            "column 'pagent': visit_id is an empty string; "
            "select the column holding the visit_id captured with _pgnt.variables()",
        ),
        RowReject(
            "o1",
            "visit_id",
            "column 'pagent': visit_id {'v': 1} is a dict, not a string id; select the visit_id column",
        ),
        RowReject(
            "o2", "visit_id", "column 'pagent': visit_id False is a boolean, not an id; select the visit_id column"
        ),
    ]


def test_the_first_problem_of_a_row_wins_in_the_documented_order():
    objects = [variables(0, session_id=DROP, visit_id=""), variables(1, user_id=None, conversion_id=None)]
    result = run(chunk(objects))
    assert [(r.field, r.reason) for r in result.rejects] == [
        ("session_id", no_key("session_id")),
        (
            "user_id",
            "column 'pagent': user_id is NULL; pagent requires it: store the user_id from _pgnt.variables() "
            "with the order, or filter such rows out in the query",
        ),
    ]


def test_constants_override_the_object():
    objects = [variables(0, conversion_id=DROP), variables(1, conversion_id=None), variables(2, conversion_id="other")]
    result = run(chunk(objects), conversion_id="goal-constant", label="purchase")
    assert result.events == [event(i, conversion_id="goal-constant", label="purchase") for i in range(3)]
    assert result.rejects == []


def test_columns_mappings_override_the_object_and_plain_columns_do_not():
    objects = [variables(0, session_id=DROP), variables(1, session_id="ignored", user_id=None)]
    frame = chunk(objects, sid=["from-column-0", "from-column-1"], user_id=["plain-0", "plain-1"])
    result = run(frame, columns={"session_id": "sid"})
    # session_id from the mapped column; user_id from the object, not from the column named user_id
    assert result.events == [event(0, session_id="from-column-0")]
    assert result.rejects == [
        RowReject(
            "o1",
            "user_id",
            "column 'pagent': user_id is NULL; pagent requires it: store the user_id from _pgnt.variables() "
            "with the order, or filter such rows out in the query",
        )
    ]


def test_when_every_required_field_is_overridden_a_null_object_only_means_no_visit_id():
    objects = [variables(0), None, variables(2, session_id=DROP, user_id=DROP, conversion_id=DROP), "[1]"]
    frame = chunk(objects, sid=["s0", "s1", "s2", "s3"], uid=["u0", "u1", "u2", "u3"])
    result = run(frame, columns={"session_id": "sid", "user_id": "uid"}, conversion_id=GOAL)
    assert result.events == [event(i, session_id=f"s{i}", user_id=f"u{i}") for i in (0, 1, 2)]
    assert result.visit_ids == ["v-0", None, "v-2"]
    assert result.rejects == [
        RowReject("o3", "session_data", f"column 'pagent' is not a JSON object (got a list): [1]; {HINT}")
    ]


def test_visit_id_from_a_mapped_column_overrides_the_object():
    frame = chunk([variables(0), variables(1), variables(2)], vid=["col-0", None, " "])
    result = run(frame, columns={"visit_id": "vid"})
    assert result.events == [event(0), event(1)]
    assert result.visit_ids == ["col-0", None]
    assert result.rejects == [
        RowReject(
            "o2",
            "visit_id",
            "column 'vid': visit_id is whitespace only (' '); "
            "select the column holding the visit_id captured with _pgnt.variables()",
        )
    ]


def test_visit_id_from_a_mapped_column_without_session_data():
    frame = pd.DataFrame(
        {"session_id": ["s0", "s1"], "user_id": ["u0", "u1"], "conversion_id": [GOAL, GOAL], "vid": [17, None]}
    )
    result = transform_chunk(frame, TransformConfig(columns={"visit_id": "vid"}, require_time=False), now_ms=NOW_MS)
    assert result.events == [{"session_id": f"s{i}", "user_id": f"u{i}", "conversion_id": GOAL} for i in (0, 1)]
    assert result.visit_ids == ["17", None]


def test_a_column_merely_named_visit_id_is_not_read():
    frame = pd.DataFrame({"session_id": ["s0"], "user_id": ["u0"], "conversion_id": [GOAL], "visit_id": [""]})
    result = transform_chunk(frame, TransformConfig(require_time=False), now_ms=NOW_MS)
    assert result.events == [{"session_id": "s0", "user_id": "u0", "conversion_id": GOAL}]
    assert result.visit_ids is None and result.rejects == []


def test_column_names_in_another_case_as_snowflake_returns_them():
    frame = chunk([json.dumps(variables(0)), "[]"]).rename(columns=str.upper)
    result = run(frame)
    assert result.events == [event(0)] and result.visit_ids == ["v-0"]
    assert result.rejects == [
        RowReject("o1", "session_data", f"column 'pagent' is not a JSON object (got a list): []; {HINT}")
    ]


def test_unkeyed_rejects_name_their_row_across_chunks():
    frame = chunk([variables(0), None]).drop(columns="order_id")
    result = transform_chunk(frame, TransformConfig(session_data_column="pagent"), row_offset=100, now_ms=NOW_MS)
    assert result.events == [event(0)] and result.keys is None
    assert result.rejects == [RowReject("row 101", "session_data", NULL_OBJECT)]


def test_an_empty_chunk():
    result = run(chunk([]))
    assert result.events == [] and result.visit_ids == [] and result.rejects == []


def test_check_columns_needs_the_session_data_column_instead_of_the_id_columns():
    config = TransformConfig(session_data_column="pagent", require_time=False)
    check_columns(["pagent"], config)
    check_columns(["PAGENT"], config)
    with pytest.raises(PagentConfigError) as raised:
        check_columns(["session_id", "user_id", "conversion_id"], config)
    assert "'pagent' (for session_data_column, the _pgnt.variables() object)" in str(raised.value)
    mapped = TransformConfig(session_data_column="pagent", columns={"session_id": "sid", "visit_id": "vid"})
    with pytest.raises(PagentConfigError) as raised:
        check_columns(["pagent", "time"], mapped)
    assert "'sid' (for event field session_id); 'vid' (for visit_id)" in str(raised.value)


@pytest.mark.parametrize("value", ["", 3, ["pagent"]])
def test_session_data_column_must_be_a_column_name(value):
    with pytest.raises(PagentConfigError, match="session_data_column must be a non-empty column name"):
        TransformConfig(session_data_column=value)


def test_visit_id_may_be_mapped_but_is_no_v1_event_field():
    assert TransformConfig(columns={"visit_id": "vid"}).columns == {"visit_id": "vid"}
    with pytest.raises(PagentConfigError, match=r"columns\['visit_id'\] must be a non-empty column name"):
        TransformConfig(columns={"visit_id": ""})
    with pytest.raises(PagentConfigError, match=r"unknown event field.*'session_data'"):
        TransformConfig(columns={"session_data": "pagent"})


# --------------------------------------------------------------------------- end to end

N_GOOD = 40
BAD_COMMON = {
    # order id -> (the stored object, the field of the reject, its reason)
    "o900": (variables(900, conversion_id=None), "conversion_id", NULL_GOAL),
    "o901": (variables(901, session_id=DROP), "session_id", no_key("session_id")),
    "o902": (None, "session_data", NULL_OBJECT),
    "o903": (
        variables(903, visit_id="  "),
        "visit_id",
        "column 'pagent': visit_id is whitespace only ('  '); "
        "select the column holding the visit_id captured with _pgnt.variables()",
    ),
}
BAD_NOT_OBJECT = {
    "o904": ([{"session_id": "sess-904"}], "session_data", "column 'pagent' is not a JSON object (got a list): "),
}
BAD_NOT_JSON = {
    "o905": ("{'session_id': 'sess-905'}", "session_data", "column 'pagent' is not valid JSON ("),
}


def good_orders() -> dict[str, dict[str, Any]]:
    """The valid orders: ids as strings and numbers, with and without visit_id, with extra keys."""
    orders = {}
    for i in range(N_GOOD):
        changes: dict[str, Any] = {}
        if i % 5 == 0:
            changes["user_id"] = 10_000 + i
        if i % 3 == 0:
            changes["visit_id"] = DROP
        if i % 4 == 0:
            changes["experiment"] = {"id": i, "arm": "b"}
        orders[f"o{i:03d}"] = variables(i, **changes)
    return orders


def expected_events(orders: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the emulator must store for each valid order (v2: with visit_id when the object has one)."""
    expected = {}
    for order_id, obj in orders.items():
        number = int(order_id[1:])
        stored = {
            "session_id": obj["session_id"],
            "user_id": str(obj["user_id"]),
            "conversion_id": obj["conversion_id"],
            "label": "purchase",
            "revenue": revenue_of(number),
            "time": TIME_MS + number,
        }
        if "visit_id" in obj:
            stored["visit_id"] = obj["visit_id"]
        expected[obj["session_id"]] = stored
    return expected


def revenue_of(number: int) -> int:
    return 1999 + number


def table_rows(bad: dict[str, tuple[Any, str, str]]) -> list[tuple[str, str | None, int, int]]:
    """(order_id, the object as JSON text or NULL, revenue_cents, time_ms) of every order."""
    stored = {order_id: obj for order_id, obj in good_orders().items()}
    stored.update({order_id: obj for order_id, (obj, _, _) in bad.items()})
    rows = []
    for order_id, obj in sorted(stored.items()):
        number = int(order_id[1:])
        text = obj if obj is None or isinstance(obj, str) else json.dumps(obj)
        rows.append((order_id, text, revenue_of(number), TIME_MS + number))
    return rows


SQL = "SELECT order_id, pagent, revenue_cents, time_ms FROM orders ORDER BY order_id"


def run_operator(api: str, *, ledger_conn_id: str | None = None, max_invalid_rows: int) -> dict[str, Any]:
    """The real operator, executed in this process against connections ``warehouse`` (and ``ledger``)."""
    from pagent_provider.operators.conversions import ConversionsOperator

    operator = ConversionsOperator(
        task_id=f"sync_{api}",
        conn_id="warehouse",
        ledger_conn_id=ledger_conn_id,
        sql=SQL,
        key_column="order_id",
        session_data_column="pagent",
        columns={"time": "time_ms", "revenue": "revenue_cents"},
        revenue_unit="cents",
        label="purchase",
        api=api,
        max_invalid_rows=max_invalid_rows,
        chunksize=16,
    )
    return operator.execute({})


def check_delivery(emulator, bad: dict[str, tuple[Any, str, str]], ledger_url: str, *, ledger_conn_id=None) -> None:
    """Run v2, check the stored events and the rejects; run v1 on the same ledger: nothing is sent again."""
    first = run_operator("v2", ledger_conn_id=ledger_conn_id, max_invalid_rows=len(bad))
    assert (first["rows"], first["valid"], first["sent"], first["accepted"]) == (
        N_GOOD + len(bad),
        N_GOOD,
        N_GOOD,
        N_GOOD,
    )
    assert first["invalid"] == len(bad)
    stored = {e["session_id"]: e for e in emulator.events()}
    assert len(stored) == len(emulator.events()) == N_GOOD
    assert stored == expected_events(good_orders())
    assert {r.path for r in emulator.requests()} == {"/v2/conversions/bulk"}

    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            rejects = conn.execute(sa.text("SELECT row_ref, field, reason FROM pagent_ledger_rejects")).all()
    finally:
        engine.dispose()
    assert {ref: field for ref, field, _ in rejects} == {order_id: field for order_id, (_, field, _) in bad.items()}
    for ref, _, reason in rejects:
        assert reason.startswith(bad[ref][2]), (ref, reason)

    again = run_operator("v1", ledger_conn_id=ledger_conn_id, max_invalid_rows=len(bad))
    assert again["sent"] == 0 and again["already_sent"] == N_GOOD and again["changed_after_send"] == 0
    assert len(emulator.events()) == N_GOOD


def write_sqlalchemy(url: str, column_type: str, bad: dict[str, tuple[Any, str, str]], value_sql: str = ":p") -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE orders (order_id VARCHAR(16) PRIMARY KEY, pagent {column_type}, "
                "revenue_cents BIGINT, time_ms BIGINT)"
            )
            conn.execute(
                sa.text(f"INSERT INTO orders VALUES (:o, {value_sql}, :r, :t)"),
                [{"o": o, "p": p, "r": r, "t": t} for o, p, r, t in table_rows(bad)],
            )
    finally:
        engine.dispose()


def test_sqlite_text_json_through_the_operator(tmp_path, pagent_connection, monkeypatch):
    bad = {**BAD_COMMON, **BAD_NOT_OBJECT, **BAD_NOT_JSON}
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    write_sqlalchemy(url, "TEXT", bad)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(sql_connection(url)))
    check_delivery(pagent_connection, bad, url)


def test_postgres_jsonb_through_the_operator(postgres_url, pagent_connection, monkeypatch):
    bad = {**BAD_COMMON, **BAD_NOT_OBJECT}
    write_sqlalchemy(postgres_url, "JSONB", bad, value_sql="CAST(:p AS JSONB)")
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(sql_connection(postgres_url)))
    check_delivery(pagent_connection, bad, postgres_url)


def test_mariadb_json_through_the_operator(mariadb_url, pagent_connection, monkeypatch):
    bad = {**BAD_COMMON, **BAD_NOT_OBJECT}
    write_sqlalchemy(mariadb_url, "JSON", bad)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(sql_connection(mariadb_url)))
    check_delivery(pagent_connection, bad, mariadb_url)


def test_duckdb_json_through_the_operator(tmp_path, pagent_connection, monkeypatch):
    duckdb = pytest.importorskip("duckdb")

    bad = {**BAD_COMMON, **BAD_NOT_OBJECT}
    warehouse = tmp_path / "shop.duckdb"
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute(
            "CREATE TABLE orders (order_id VARCHAR PRIMARY KEY, pagent JSON, revenue_cents BIGINT, time_ms BIGINT)"
        )
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", table_rows(bad))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "duckdb", "host": str(warehouse)}))
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER", json.dumps(sql_connection(ledger_url)))
    check_delivery(pagent_connection, bad, ledger_url, ledger_conn_id="ledger")


@pytest.mark.parametrize("column_type", ["VARIANT", "OBJECT"])
def test_snowflake_through_the_snowflake_hook_on_fakesnow(
    column_type, tmp_path, pagent_connection, monkeypatch, snowflake_connection
):
    """Unquoted identifiers come back upper-case (ORDER_ID, PAGENT); VARIANT and OBJECT as JSON text."""
    fakesnow = pytest.importorskip("fakesnow")
    bad = dict(BAD_COMMON) if column_type == "OBJECT" else {**BAD_COMMON, **BAD_NOT_OBJECT}
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", snowflake_connection)
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER", json.dumps(sql_connection(ledger_url)))
    with fakesnow.patch():  # the operator runs in this process, so its hook sees the patch
        import snowflake.connector

        conn = snowflake.connector.connect(database="SHOP", schema="PUBLIC")
        cursor = conn.cursor()
        cursor.execute(
            f"CREATE TABLE orders (order_id VARCHAR, pagent {column_type}, revenue_cents NUMBER(38, 0), "
            "time_ms NUMBER(38, 0))"
        )
        for order_id, text, cents, when in table_rows(bad):
            cursor.execute(
                "INSERT INTO orders SELECT %(o)s, PARSE_JSON(%(p)s), %(r)s, %(t)s",
                {"o": order_id, "p": text, "r": cents, "t": when},
            )
        conn.close()
        check_delivery(pagent_connection, bad, ledger_url, ledger_conn_id="ledger")


def test_command_line_tool_on_sqlite(tmp_path, pagent_emulator):
    bad = {**BAD_COMMON, **BAD_NOT_OBJECT, **BAD_NOT_JSON}
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    write_sqlalchemy(url, "TEXT", bad)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PAGENT_")}
    env["PAGENT_API_KEY"] = "test-key"
    args = [
        *("sync", "--base-url", pagent_emulator.url, "--source-url", url, "--sql", SQL),
        *("--key-column", "order_id", "--session-data-column", "pagent", "--label", "purchase"),
        *("--columns", "time=time_ms", "revenue=revenue_cents", "--revenue-unit", "cents"),
        *("--api", "v2", "--max-invalid-rows", str(len(bad)), "--json"),
    ]
    completed = subprocess.run(
        [sys.executable, "-m", "pagent_provider.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert (summary["rows"], summary["sent"], summary["invalid"]) == (N_GOOD + len(bad), N_GOOD, len(bad))
    assert {e["session_id"]: e for e in pagent_emulator.events()} == expected_events(good_orders())
    with sqlite3.connect(tmp_path / "shop.db") as db:
        rejects = dict(db.execute("SELECT row_ref, reason FROM pagent_ledger_rejects").fetchall())
    assert set(rejects) == set(bad)
    assert all(rejects[ref].startswith(reason) for ref, (_, _, reason) in bad.items())


def test_help_lists_the_option(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "pagent_provider.cli", "sync", "--help"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0 and "--session-data-column COLUMN" in completed.stdout


def test_the_operator_passes_session_data_column_on():
    from pagent_provider.operators.conversions import ConversionsOperator

    operator = ConversionsOperator(
        task_id="t", conn_id="w", sql="SELECT 1", key_column="k", session_data_column="pagent"
    )
    assert operator._transform_config().session_data_column == "pagent"
    with pytest.raises(PagentConfigError, match="session_data_column"):
        ConversionsOperator(task_id="u", conn_id="w", sql="SELECT 1", key_column="k", session_data_column="")
