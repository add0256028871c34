"""Child process for the streaming-memory test: read a PostgreSQL table and print the peak RSS growth.

Usage: python stream_peak.py URL TABLE LIMIT CHUNKSIZE MODE
MODE "stream": read_sql_chunks -> ConversionSync(dry_run) (the operator's path);
MODE "buffered": the same chunks through a client-side cursor (what common-sql's
get_df_by_chunks does), to show the measurement can tell the two apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def buffered_chunks(engine: sa.Engine, sql: str, chunksize: int):
    with engine.connect() as conn:
        yield from pd.read_sql(sql, conn.connection.dbapi_connection, chunksize=chunksize, coerce_float=False)


def main(url: str, table: str, limit: int, chunksize: int, mode: str) -> None:
    engine = sa.create_engine(url)
    sql = f"SELECT * FROM {table} ORDER BY order_id LIMIT {limit}"
    config = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id")
    sync = ConversionSync(sender=None, transform=config, options=SyncOptions(dry_run=True))  # type: ignore[arg-type]
    warm = ConversionSync(sender=None, transform=config, options=SyncOptions(dry_run=True))  # type: ignore[arg-type]
    warm.run(read_sql_chunks(engine, f"SELECT * FROM {table} LIMIT 10", chunksize=10))  # imports, caches
    baseline = peak_rss_kib()
    chunks = (
        read_sql_chunks(engine, sql, chunksize=chunksize)
        if mode == "stream"
        else buffered_chunks(engine, sql, chunksize)
    )
    summary = sync.run(chunks)
    engine.dispose()
    print(summary.rows, peak_rss_kib() - baseline)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
