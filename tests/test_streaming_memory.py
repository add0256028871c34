"""Reading a large PostgreSQL table keeps memory bounded by the chunk size, not the table size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

WORKER = Path(__file__).parent / "workers" / "stream_peak.py"
BIG, SMALL, CHUNK = 300_000, 30_000, 2_000


def peak_growth_mib(url: str, limit: int, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, str(WORKER), url, "conversions", str(limit), str(CHUNK), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows, growth_kib = map(int, done.stdout.split())
    assert rows == limit
    return growth_kib / 1024


def fill_conversions(url: str, rows: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE conversions (order_id BIGINT PRIMARY KEY, session_id TEXT, user_id TEXT, "
            "conversion_id TEXT, label TEXT, amount_usd NUMERIC(12, 2), converted_at TIMESTAMP, channel TEXT)"
        )
        conn.exec_driver_sql(
            "INSERT INTO conversions SELECT g, 'sess_' || md5(g::text), 'user_' || mod(g, 50000), "
            "'5f1c2a4e-8d3b-4c6a-9e7f-0a1b2c3d4e5f', 'purchase', mod(g, 100000) / 100.0, "
            f"timestamp '2026-10-01' + g * interval '7 seconds', 'web' FROM generate_series(1, {rows}) g"
        )
    engine.dispose()


def test_streaming_memory_does_not_grow_with_the_table(postgres_url):
    fill_conversions(postgres_url, BIG)

    stream_small = peak_growth_mib(postgres_url, SMALL, "stream")
    stream_big = peak_growth_mib(postgres_url, BIG, "stream")
    buffered_small = peak_growth_mib(postgres_url, SMALL, "buffered")
    buffered_big = peak_growth_mib(postgres_url, BIG, "buffered")
    report = (
        f"peak RSS growth, chunks of {CHUNK}: streamed {SMALL} rows {stream_small:.1f} MiB, "
        f"{BIG} rows {stream_big:.1f} MiB; buffered {buffered_small:.1f} / {buffered_big:.1f} MiB"
    )
    print(report)
    # Ten times the rows: a streamed read stays where it was, a buffered one grows with the table.
    assert stream_big <= 1.25 * stream_small + 16, report
    assert buffered_big - buffered_small > 4 * max(stream_big - stream_small, 8), report
