"""Issue 9: a ledger connection dropped while pagent's answers arrive costs nothing, end to end.

A real sync over HTTP keeps a PostgreSQL ledger while another connection
terminates the ledger's server connections again and again (what a failover,
a pgbouncer restart or an idle-session killer does). Every write is retried,
so the run still ends with the server's store, the ledger's ``sent`` and the
summary in agreement, and a re-run sends nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions, load_conversions

ROWS = 3_000
TRANSFORM = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id", properties_columns=["order_id"]
)


class ConnectionKiller:
    """Terminates every other connection to the database every ``interval_s`` until stopped."""

    def __init__(self, url: str, interval_s: float) -> None:
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self.interval_s = interval_s
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(self.interval_s):
                rows = conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).all()
                self.killed += sum(1 for (ok,) in rows if ok)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[tuple[sa.Engine, list[int]]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    frame = generate_conversions(ROWS, start=datetime(2026, 1, 1), end=datetime(2026, 1, 3), seed=8)
    load_conversions(engine, frame)
    yield engine, frame["order_id"].tolist()
    engine.dispose()


def run(warehouse: sa.Engine, ledger_engine: sa.Engine, emulator: IngestEmulator) -> dict:
    ledger = Ledger(ledger_engine, namespace="pagent_default")
    with PagentClient("test-key", base_url=emulator.url, policy=RetryPolicy(max_retries=1)) as client:
        sync = ConversionSync(client, TRANSFORM, SyncOptions(max_workers=4), ledger=ledger)
        sql = "SELECT * FROM conversions ORDER BY order_id"
        return sync.run(read_sql_chunks(warehouse, sql, None, chunksize=250)).as_dict()


def test_ledger_connections_killed_mid_run_lose_and_double_nothing(
    warehouse, postgres_url: str, pagent_emulator: IngestEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    engine, order_ids = warehouse
    ledger_engine = sa.create_engine(postgres_url)
    Ledger(ledger_engine, namespace="pagent_default").create_tables()
    pagent_emulator.faults = Faults(latency_s=0.01)
    try:
        started = time.monotonic()
        with ConnectionKiller(postgres_url, interval_s=0.05) as killer:
            summary = run(engine, ledger_engine, pagent_emulator)
        elapsed = time.monotonic() - started
        assert killer.killed >= 3, f"only {killer.killed} connections were killed in {elapsed:.1f}s"
        retried = [r for r in caplog.records if r.name == "pagent_provider.core.ledger_retry"]
        assert retried, "no ledger statement ever failed: the test proved nothing"
        rerun = run(engine, ledger_engine, pagent_emulator)
        statuses = Ledger(ledger_engine, namespace="pagent_default").count_by_status()
    finally:
        ledger_engine.dispose()

    assert Counter(event["properties"]["order_id"] for event in pagent_emulator.events()) == Counter(order_ids)
    assert summary["sent"] == ROWS and statuses == {"sent": ROWS}
    assert rerun["sent"] == 0 and rerun["already_sent"] == ROWS
