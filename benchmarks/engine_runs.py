"""One small function per sync-engine run that the benchmark measures.

Every run drives the Airflow-free core exactly as the operator does:
:func:`~pagent_provider.core.reading.read_sql_chunks` ->
:class:`~pagent_provider.core.sync.ConversionSync` ->
:class:`~pagent_provider.core.client.PagentClient`, with validation on (the
engine always validates) and the transform of the sample table.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from benchmarks.common import Cap, Timing
from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig

API_KEY = "test-key"
CHUNKSIZE = 10_000
NAMESPACE = "bench"
TRANSFORM = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id")


def sqlite_ledger(path: Path) -> Ledger:
    """A ledger in its own SQLite file (created when the sync starts)."""
    return Ledger(sa.create_engine(f"sqlite:///{path}"), namespace=NAMESPACE)


def postgres_ledger(database: sa.Engine, table: str) -> Ledger:
    """A ledger in table ``table`` of the PostgreSQL database of ``database`` (its own engine and pool)."""
    engine = sa.create_engine(database.url, pool_size=2)
    return Ledger(engine, namespace=NAMESPACE, table_name=table)


def _sync(
    source: sa.Engine,
    sql: str,
    base_url: str,
    *,
    workers: int,
    ledger: Ledger | None,
    cap_s: float | None = None,
    chunksize: int = CHUNKSIZE,
) -> Timing:
    client = PagentClient(API_KEY, base_url=base_url, pool_size=workers)
    sync = ConversionSync(client, TRANSFORM, SyncOptions(max_workers=workers), ledger=ledger)
    cap = Cap(cap_s)
    try:
        started = time.perf_counter()
        summary = sync.run(cap.until(read_sql_chunks(source, sql, chunksize=chunksize)))
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return Timing(
        events=summary.sent + summary.already_sent,
        seconds=seconds,
        requests=summary.requests,
        rows=summary.rows,
        capped=cap.hit,
        details={"sent": summary.sent, "already_sent": summary.already_sent, "workers": workers},
    )


def sync_ledger_on(
    source: sa.Engine, sql: str, base_url: str, ledger: Ledger, *, workers: int = 4, cap_s: float | None = None
) -> Timing:
    """A first sync with the delivery ledger: every row is claimed, sent and marked."""
    return _sync(source, sql, base_url, workers=workers, ledger=ledger, cap_s=cap_s)


def sync_ledger_off(
    source: sa.Engine, sql: str, base_url: str, *, workers: int = 4, cap_s: float | None = None
) -> Timing:
    """The same sync without the ledger (no deduplication across runs)."""
    return _sync(source, sql, base_url, workers=workers, ledger=None, cap_s=cap_s)


def sync_rerun(
    source: sa.Engine, sql: str, base_url: str, ledger: Ledger, *, workers: int = 4, cap_s: float | None = None
) -> Timing:
    """The same sync again on the same ledger: every row is already sent, nothing goes out."""
    return _sync(source, sql, base_url, workers=workers, ledger=ledger, cap_s=cap_s)


def sync_concurrent(
    source: sa.Engine,
    sql: str,
    base_url: str,
    *,
    workers: int,
    cap_s: float | None = None,
    ledger: Ledger | None = None,
) -> Timing:
    """A sync at ``workers`` concurrent requests (the latency rows), without the ledger unless given one."""
    return _sync(source, sql, base_url, workers=workers, ledger=ledger, cap_s=cap_s)
