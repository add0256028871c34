"""Child process for the DB-API streaming-memory test: read a table, print rows and peak RSS growth.

Usage: python dbapi_stream_peak.py FILE LIMIT CHUNKSIZE MODE
FILE: a DuckDB file (``.duckdb``, read with the duckdb driver) or an SQLite file (sqlite3).
MODE "stream": read_dbapi_chunks (fetchmany) -> ConversionSync(dry_run), the operator's DB-API path;
MODE "buffered": the same rows fetched all at once (fetchall) and then cut into chunks, the
read-everything baseline that the streamed read is compared with.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from pagent_provider.core.frames import frame_from_rows
from pagent_provider.core.reading_dbapi import read_dbapi_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def connector(path: str):
    if path.endswith(".duckdb"):
        import duckdb

        return lambda: duckdb.connect(path, read_only=True)
    return lambda: sqlite3.connect(path)


def buffered_chunks(connect, sql: str, chunksize: int):
    conn = connect()
    cursor = conn.cursor()
    cursor.execute(sql)
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    conn.close()
    for start in range(0, len(rows), chunksize):
        yield frame_from_rows(rows[start : start + chunksize], columns)


def main(path: str, limit: int, chunksize: int, mode: str) -> None:
    sql = f"SELECT * FROM conversions ORDER BY order_id LIMIT {limit}"
    config = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id")

    connect = connector(path)

    def dry_sync() -> ConversionSync:
        return ConversionSync(sender=None, transform=config, options=SyncOptions(dry_run=True))  # type: ignore[arg-type]

    dry_sync().run(read_dbapi_chunks(connect, "SELECT * FROM conversions LIMIT 10", chunksize=10))  # imports, caches
    baseline = peak_rss_kib()
    chunks = (
        read_dbapi_chunks(connect, sql, chunksize=chunksize)
        if mode == "stream"
        else buffered_chunks(connect, sql, chunksize)
    )
    summary = dry_sync().run(chunks)
    print(summary.rows, peak_rss_kib() - baseline)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
