"""Issue 12 through real Airflow: a failed run's summary in XCom, the run history, metrics via Stats.

The example daily DAG runs with ``dag.test()`` against the emulator; metrics
are captured by replacing Airflow's ``Stats`` logger for the run with one that
records (StatsD itself is not installed here).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from airflow.providers.common.compat.sdk import Stats

from pagent_provider.testing import Faults
from pagent_provider.testing.dag_runs import load_dag, run_dag
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

ROOT = Path(__file__).resolve().parent.parent
DAY = datetime(2026, 11, 10)


class RecordingStats:
    """Has the shape of Airflow's Stats logger; keeps what it receives."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.timings: list[str] = []
        self.tags: list[dict] = []

    def incr(self, stat: str, count: int = 1, rate: int = 1, *, tags: dict | None = None) -> None:
        self.counts[stat] = self.counts.get(stat, 0) + count
        self.tags.append(tags or {})

    def timing(self, stat: str, dt: float, *, tags: dict | None = None) -> None:
        self.timings.append(stat)


@pytest.fixture(scope="module")
def dag():
    return load_dag(ROOT / "dags", "pagent_daily_conversions")


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pagent_emulator) -> Path:
    path = tmp_path / "warehouse.db"
    frame = generate_conversions(300, start=DAY, end=DAY + timedelta(days=1), seed=5)
    frame.loc[11, "conversion_id"] = None  # one invalid row: the example DAG allows none
    write_conversions(f"sqlite:///{path}", frame)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    return path


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> RecordingStats:
    recording = RecordingStats()
    monkeypatch.setattr(Stats, "incr", recording.incr)
    monkeypatch.setattr(Stats, "timing", recording.timing)
    return recording


def test_a_failed_run_pushes_its_summary_records_its_run_and_emits_metrics(dag, warehouse, pagent_emulator, stats):
    refused = pd.read_sql("SELECT session_id FROM conversions ORDER BY order_id", f"sqlite:///{warehouse}").iloc[20, 0]
    pagent_emulator.faults = Faults(refuse=lambda e: "unknown goal" if e["session_id"] == refused else None)
    run = run_dag(dag, DAY + timedelta(days=1), task_id="sync_purchases")

    assert run.state == "failed" and run.result is None  # no return value for a failed try
    summary = run.summary
    assert summary is not None, "a failed run must still push its summary"
    # one invalid, one refused: both recorded, every other row delivered, and the run fails (the limit is 0)
    assert summary["invalid"] == 1 and summary["rejected"] == 1
    assert summary["sent"] == len(pagent_emulator.events()) == 298

    runs = pd.read_sql("SELECT * FROM pagent_ledger_runs", f"sqlite:///{warehouse}")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row.dag_id, row.task_id, row.outcome) == ("pagent_daily_conversions", "sync_purchases", "failed")
    assert row.sent == summary["sent"] and row.invalid == 1 and "PagentDeliveryError" in row.error
    assert row.window_end - row.window_start == 4 * 86_400_000  # the day it covered and its 3-day lookback

    assert stats.counts["pagent.sent"] == summary["sent"] and stats.counts["pagent.invalid"] == 1
    assert stats.counts["pagent.runs.failed"] == 1 and "pagent.sync_duration" in stats.timings
    assert {
        "dag_id": "pagent_daily_conversions",
        "task_id": "sync_purchases",
        "namespace": "pagent_default",
    } in stats.tags


@pytest.mark.parametrize(
    "executor", ["CeleryExecutor", "KubernetesExecutor", "airflow.providers.edge3.executors.EdgeExecutor"]
)
def test_a_sqlite_ledger_under_a_multi_machine_executor_fails_before_sending(
    dag, warehouse, pagent_emulator, monkeypatch, executor, capsys
):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    run = run_dag(dag, DAY + timedelta(days=1), task_id="sync_purchases")
    assert run.state == "failed"
    logged = capsys.readouterr()
    assert "runs them on several machines" in logged.out + logged.err
    assert pagent_emulator.requests() == []  # refused before the first claim: nothing sent, nothing claimed
    with sa.create_engine(f"sqlite:///{warehouse}").connect() as conn:
        assert not sa.inspect(conn).has_table("pagent_ledger")


def test_the_placement_rule_names_the_executor_and_what_to_do():
    from pagent_provider.core.ledger_dialects import POSTGRESQL, SQLITE, check_placement
    from pagent_provider.exceptions import PagentLedgerError

    check_placement(SQLITE, "LocalExecutor")
    check_placement(SQLITE, None)  # outside Airflow: the CLI, one machine
    check_placement(POSTGRESQL, "CeleryExecutor")
    with pytest.raises(PagentLedgerError, match=r"CeleryExecutor.*PostgreSQL or MySQL"):
        check_placement(SQLITE, "airflow.providers.celery.executors.celery_executor.CeleryExecutor")
