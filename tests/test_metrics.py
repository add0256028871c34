"""Retries, 429s and every count of a run reach the summary and a metrics sink, over real HTTP."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.metrics import emit, metrics_of
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.testing import Faults, IngestEmulator


class RecordingSink:
    """Has the shape of Airflow's ``Stats``; keeps what it was given."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.tags: list[dict[str, str]] = []

    def incr(self, stat: str, count: int = 1, rate: int = 1, *, tags: dict[str, str] | None = None) -> None:
        self.counts[stat] = self.counts.get(stat, 0) + count
        self.tags.append(tags or {})

    def timing(self, stat: str, dt: float, *, tags: dict[str, str] | None = None) -> None:
        self.timings[stat] = dt


def chunk(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(rows)],
            "session_id": [f"s{i}" for i in range(rows)],
            "user_id": "u",
            "conversion_id": "goal-1",
            "revenue": [None if i == 3 else 1.5 for i in range(rows)],
            "time": [None if i == 7 else 1_764_000_000_000 for i in range(rows)],
        }
    )


def test_a_runs_counts_retries_and_429s_reach_the_summary_and_the_sink(pagent_emulator: IngestEmulator, tmp_path):
    pagent_emulator.faults = Faults(rate_limit_every=3, retry_after="0", fail_every=5)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    policy = RetryPolicy(max_retries=5, backoff_initial_s=0.01, backoff_max_s=0.05)
    try:
        with PagentClient("test-key", base_url=pagent_emulator.url, policy=policy) as client:
            sync = ConversionSync(
                client,
                TransformConfig(key_column="order_id", columns={"time": "time"}),
                SyncOptions(batch_size=10, max_workers=2, max_invalid_rows=1),
                ledger=Ledger(engine, namespace="pagent_default"),
            )
            summary = sync.run([chunk(200)]).as_dict()
    finally:
        engine.dispose()

    statuses = [r.status for r in pagent_emulator.requests()]
    assert summary["rate_limited"] == statuses.count(429) > 0
    assert summary["retries"] == statuses.count(429) + statuses.count(500)
    assert summary["sent"] == 199 and summary["invalid"] == 1 and summary["requests"] == statuses.count(200)

    sink = RecordingSink()
    emit(sink, summary, "success", {"dag_id": "d", "task_id": "t", "namespace": "pagent_default"})
    assert sink.counts["pagent.sent"] == 199 and sink.counts["pagent.invalid"] == 1
    assert sink.counts["pagent.rate_limited"] == summary["rate_limited"]
    assert sink.counts["pagent.runs.success"] == 1
    assert sink.timings["pagent.sync_duration"] == summary["duration_s"] * 1000
    assert all(tags == {"dag_id": "d", "task_id": "t", "namespace": "pagent_default"} for tags in sink.tags)
    assert metrics_of(summary, "success")["counters"]["pagent.retries"] == summary["retries"]


def test_a_sink_that_fails_never_fails_the_run(caplog) -> None:
    class Broken(RecordingSink):
        def incr(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            raise ConnectionError("statsd is down")

    emit(Broken(), {"sent": 3}, "failed", {})
    assert "could not emit pagent metrics" in caplog.text
