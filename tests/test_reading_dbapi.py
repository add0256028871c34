"""The DB-API read path: placeholders per paramstyle, the same frames as the SQLAlchemy path, column case."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.frames import frame_from_rows
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.reading_dbapi import driver_paramstyle, read_dbapi_chunks, to_paramstyle
from pagent_provider.core.transform import TransformConfig, check_columns, transform_chunk
from pagent_provider.exceptions import PagentConfigError

QUERY = "SELECT '50%' AS pct, '\\:kept' AS colon, x FROM t WHERE x >= :low AND x < :high OR x = :low"


@pytest.mark.parametrize(
    ("style", "statement", "params"),
    [
        ("qmark", "x >= ? AND x < ? OR x = ?", [1, 9, 1]),
        ("numeric", "x >= :1 AND x < :2 OR x = :1", [1, 9]),
        ("numeric_dollar", "x >= $1 AND x < $2 OR x = $1", [1, 9]),
        ("named", "x >= :low AND x < :high OR x = :low", {"low": 1, "high": 9}),
        ("format", "x >= %s AND x < %s OR x = %s", [1, 9, 1]),
        ("pyformat", "x >= %(low)s AND x < %(high)s OR x = %(low)s", {"low": 1, "high": 9}),
    ],
)
def test_placeholders_compile_to_each_paramstyle(style, statement, params):
    sql, bound = to_paramstyle(QUERY, {"low": 1, "high": 9}, style)
    assert sql.endswith(statement)
    assert bound == params
    percent = "'50%%'" if style in ("format", "pyformat") else "'50%'"  # the driver turns %% back into %
    assert sql.startswith(f"SELECT {percent} AS pct, ':kept' AS colon")


def test_a_query_without_placeholders_is_sent_as_written_without_parameters():
    # Drivers interpolate "%" only when given parameters: doubling it here would reach the server.
    assert to_paramstyle("SELECT x::int FROM t WHERE s LIKE 'a%'", None, "pyformat") == (
        "SELECT x::int FROM t WHERE s LIKE 'a%'",
        None,
    )


def test_a_missing_parameter_and_an_unknown_paramstyle_are_refused():
    with pytest.raises(sa.exc.InvalidRequestError, match="high"):
        to_paramstyle(QUERY, {"low": 1}, "qmark")
    with pytest.raises(ValueError, match="paramstyle"):
        to_paramstyle(QUERY, {}, "percent")


class _SnowflakeLikeConnection:
    _paramstyle = "pyformat"


def test_the_paramstyle_comes_from_the_connection_or_its_driver_module():
    import duckdb

    assert driver_paramstyle(sqlite3.connect(":memory:")) == "qmark"
    assert driver_paramstyle(duckdb.connect()) == "qmark"  # class in _duckdb, found through its module
    assert driver_paramstyle(_SnowflakeLikeConnection()) == "pyformat"
    assert driver_paramstyle(object()) == "qmark"


# --------------------------------------------------------------------------- same frames as SQLAlchemy


@pytest.fixture
def sqlite_file(tmp_path) -> Path:
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x INTEGER, amount NUMERIC, big INTEGER, s TEXT, at TEXT)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        [
            (i, f"{i}.99", None if i % 4 == 0 else 2**53 + i, f"s{i}", f"2026-11-10 10:00:{i % 60:02d}")
            for i in range(1, 41)
        ],
    )
    conn.commit()
    conn.close()
    return path


def test_sqlite_gives_the_same_chunks_through_dbapi_as_through_sqlalchemy(sqlite_file):
    engine = sa.create_engine(f"sqlite:///{sqlite_file}")
    params = {"low": 3, "high": 30}
    through_sqlalchemy = list(read_sql_chunks(engine, QUERY, params, chunksize=7))
    engine.dispose()
    through_dbapi = list(read_dbapi_chunks(lambda: sqlite3.connect(sqlite_file), QUERY, params, chunksize=7))
    assert [len(c) for c in through_dbapi] == [7, 7, 7, 6]
    assert len(through_dbapi) == len(through_sqlalchemy)
    for ours, theirs in zip(through_dbapi, through_sqlalchemy, strict=True):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert set(through_dbapi[0].pct) == {"50%"} and set(through_dbapi[0].colon) == {":kept"}


def test_an_empty_result_gives_one_empty_chunk_with_the_columns(sqlite_file):
    chunks = list(read_dbapi_chunks(lambda: sqlite3.connect(sqlite_file), QUERY, {"low": 99, "high": 100}))
    assert len(chunks) == 1 and chunks[0].empty and list(chunks[0].columns) == ["pct", "colon", "x"]


class _Counting:
    """A stand-in connection recording that it was closed."""

    def __init__(self, path: Path) -> None:
        self.inner = sqlite3.connect(path)
        self.closed = False

    def cursor(self):
        return self.inner.cursor()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


def test_the_connection_is_closed_when_the_reader_is_abandoned(sqlite_file):
    opened: list[_Counting] = []
    chunks = read_dbapi_chunks(
        lambda: opened.append(_Counting(sqlite_file)) or opened[-1], "SELECT * FROM t", chunksize=5
    )
    next(chunks)
    chunks.close()
    assert opened[0].closed


DUCKDB_TYPES = """
SELECT * FROM (VALUES
    (CAST(10000000000000000000000 AS HUGEINT), DECIMAL '19.99', TIMESTAMPTZ '2026-11-10 10:00:00+02',
     TIMESTAMP '2026-11-10 10:00:00', DATE '2026-11-10', '{"a": 1}'::JSON, {'x': 1, 'y': 'z'},
     '5f1c2a4e-8d3b-4c6a-9e7f-0a1b2c3d4e5f'::UUID, 'text', 7),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) v(huge, amount, aware, naive, day, doc, struct, id, s, small)
"""


def test_duckdb_rows_become_the_frame_pandas_read_sql_builds():
    import duckdb
    from pandas.io.sql import _wrap_result  # what pd.read_sql does with fetched rows (test-only pin)

    conn = duckdb.connect()
    cursor = conn.execute(DUCKDB_TYPES)
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    ours = frame_from_rows(rows, columns)
    theirs = _wrap_result(rows, columns, coerce_float=False)
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    first = ours.iloc[0]
    assert first.huge == 10**22 and first.amount == Decimal("19.99")
    assert first.aware == pd.Timestamp("2026-11-10 08:00:00", tz="UTC") and first.day == dt.date(2026, 11, 10)
    assert first.struct == {"x": 1, "y": "z"} and isinstance(first.id, uuid.UUID)


def test_ids_beyond_2_53_next_to_nulls_stay_exact_integers():
    big = 2**53 + 1
    frame = frame_from_rows([(big, 1, 1.5), (None, None, None)], ["big", "small", "real"])
    assert frame.big.dtype == object and frame.big.tolist() == [big, None]
    # what pandas gives elsewhere, unchanged: small ints with a NULL are float64, floats too
    assert frame.small.dtype == np.float64 and frame.real.dtype == np.float64


def test_text_with_a_lone_surrogate_reads_even_where_pyarrow_backs_strings():
    pytest.importorskip("pyarrow")
    with pd.option_context("mode.string_storage", "auto"):  # pandas 3 with pyarrow: pyarrow storage
        frame = frame_from_rows([("ok\ud800",), ("fine",)], ["session_id"])
    assert frame.session_id.dtype == pd.StringDtype("python", na_value=np.nan)
    assert frame.session_id.tolist() == ["ok\ud800", "fine"]  # the transform rejects the row, not the read


# --------------------------------------------------------------------------- column names ignoring case


def snowflake_chunk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "SESSION_ID": ["s1"],
            "USER_ID": ["u1"],
            "CONVERSION_ID": ["goal"],
            "REVENUE": [Decimal("19.99")],
            "CONVERTED_AT": [pd.Timestamp("2026-11-10 10:00", tz="UTC")],
            "ORDER_ID": [9007199254740993],
            "CHANNEL": ["web"],
        }
    )


def test_upper_case_columns_serve_the_lower_case_names():
    config = TransformConfig(columns={"time": "converted_at"}, key_column="order_id", properties_columns=["channel"])
    check_columns(list(snowflake_chunk().columns), config)
    chunk = transform_chunk(snowflake_chunk(), config, now_ms=1_800_000_000_000)
    assert chunk.keys == ["9007199254740993"]
    assert chunk.events == [
        {
            "session_id": "s1",
            "user_id": "u1",
            "conversion_id": "goal",
            "revenue": 1999,
            "properties": {"channel": "web"},  # the key as configured, not as returned
            "time": int(pd.Timestamp("2026-11-10 10:00", tz="UTC").timestamp() * 1000),
        }
    ]


def test_an_exact_name_wins_and_an_ambiguous_one_is_refused():
    frame = snowflake_chunk().assign(session_id=["exact"])
    config = TransformConfig(columns={"time": "CONVERTED_AT"})
    assert transform_chunk(frame, config, now_ms=1_800_000_000_000).events[0]["session_id"] == "exact"
    ambiguous = snowflake_chunk().assign(Session_Id=["other"])
    with pytest.raises(PagentConfigError, match=r"'session_id'.*ignoring case.*'SESSION_ID', 'Session_Id'"):
        check_columns(list(ambiguous.columns), config)
    with pytest.raises(PagentConfigError, match="ignoring case"):
        transform_chunk(ambiguous, config)
