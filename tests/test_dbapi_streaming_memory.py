"""Reading 300,000 rows through the DB-API path keeps memory bounded, measured in a child process.

The DB-API path (``fetchmany`` on the driver's cursor) is the one the chooser
takes for DuckDB, Snowflake, BigQuery, Databricks and Trino. Memory is the
peak RSS growth of a child process, compared as ratios, never as absolute
numbers: the streamed read of 300,000 rows against the streamed read of
30,000, and against reading the 300,000 rows all at once (``fetchall``).

* SQLite (sqlite3), a driver that steps through the result as it is fetched:
  the streamed read stays where it was at a tenth of the rows.
* DuckDB (a real DuckDB file): DuckDB's Python client materialises the whole
  result of ``execute()`` in its own columnar buffer before the first
  ``fetchmany`` (measured: with or without ORDER BY, whatever its
  ``memory_limit``), so its part grows with the table. It is compact: the
  Python objects of the read-all baseline take about three times as much,
  and that is the part the DB-API path keeps to one chunk.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "workers" / "dbapi_stream_peak.py"
BIG, SMALL, CHUNK = 300_000, 30_000, 2_000
SELECT = (
    "SELECT i AS order_id, 'sess_' || {md5} AS session_id, 'user_' || (i % 50000) AS user_id, "
    "'5f1c2a4e-8d3b-4c6a-9e7f-0a1b2c3d4e5f' AS conversion_id, 'purchase' AS label, "
    "{amount} AS amount_usd, {time} AS converted_at, 'web' AS channel"
)


def peak_growth_mib(path: Path, limit: int, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(path), str(limit), str(CHUNK), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows, growth_kib = map(int, done.stdout.split())
    assert rows == limit
    return growth_kib / 1024


def measure(path: Path) -> tuple[float, float, float, str]:
    stream_small = peak_growth_mib(path, SMALL, "stream")
    stream_big = peak_growth_mib(path, BIG, "stream")
    buffered_big = peak_growth_mib(path, BIG, "buffered")
    report = (
        f"{path.suffix}: peak RSS growth, chunks of {CHUNK}: streamed {SMALL} rows {stream_small:.1f} MiB, "
        f"{BIG} rows {stream_big:.1f} MiB; read all at once {buffered_big:.1f} MiB "
        f"(streamed / all at once: {stream_big / buffered_big:.2f})"
    )
    print(report)
    return stream_small, stream_big, buffered_big, report


def test_sqlite_dbapi_streaming_memory_does_not_grow_with_the_table(tmp_path):
    path = tmp_path / "big.db"
    conn = sqlite3.connect(path)
    select = SELECT.format(
        md5="hex(randomblob(16))",
        amount="(i % 100000) / 100.0",
        time="datetime('2026-10-01', '+' || (i * 7) || ' seconds')",
    )
    conn.execute(
        f"CREATE TABLE conversions AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {BIG}) "
        f"{select} FROM r"
    )
    conn.commit()
    conn.close()

    stream_small, stream_big, buffered_big, report = measure(path)
    assert stream_big <= 1.25 * stream_small + 16, report
    assert stream_big <= 0.25 * buffered_big, report


def test_duckdb_dbapi_streaming_keeps_the_python_side_to_one_chunk(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "big.duckdb"
    select = SELECT.format(
        md5="md5(i::VARCHAR)",
        amount="CAST((i % 100000) / 100 AS DECIMAL(12, 2))",
        time="TIMESTAMP '2026-10-01' + to_seconds(i * 7)",
    )
    with duckdb.connect(str(path)) as conn:
        conn.execute(f"CREATE TABLE conversions AS {select} FROM range(1, {BIG + 1}) r(i)")

    _, stream_big, buffered_big, report = measure(path)
    assert stream_big <= 0.5 * buffered_big, report
