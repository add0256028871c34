"""The example DAG through real Airflow (``dag.test()``), three real warehouses, the emulator over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest

from pagent_provider.testing import Faults
from pagent_provider.testing.dag_runs import load_dag, run_dag, sql_connection
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

ROOT = Path(__file__).resolve().parent.parent

DAG_ID = "pagent_daily_conversions"
DAY_1 = datetime(2026, 11, 10)  # in the past: times more than an hour ahead are refused
DAYS = 2
ROWS = 900


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def purchases(warehouse_url) -> pd.DataFrame:
    frame = generate_conversions(ROWS, start=DAY_1, end=DAY_1 + timedelta(days=DAYS + 1), seed=11)
    write_conversions(warehouse_url, frame)
    return frame


@pytest.fixture(scope="module")
def dag():
    return load_dag(ROOT / "dags", DAG_ID)


def expected_events(frame: pd.DataFrame, day: datetime) -> dict[str, dict]:
    """What pagent must receive for one day, computed independently of the transform (per row, Decimal)."""
    rows = frame[(frame.converted_at >= day) & (frame.converted_at < day + timedelta(days=1))]
    expected = {}
    for row in rows.itertuples():
        when = row.converted_at.to_pydatetime().replace(tzinfo=UTC)
        expected[row.session_id] = {
            "session_id": row.session_id,
            "user_id": row.user_id,
            "conversion_id": row.conversion_id,
            "label": row.label,
            "revenue": int((row.amount_usd * 100).quantize(Decimal(1), ROUND_HALF_UP)),
            "time": int(when.timestamp() * 1000),
            "properties": {"channel": row.channel, "coupon": None if pd.isna(row.coupon) else row.coupon},
        }
    return expected


def test_daily_dag_delivers_each_day_exactly_once(dag, purchases, warehouse_url, pagent_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(sql_connection(warehouse_url)))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())

    for n in range(DAYS):
        day = DAY_1 + timedelta(days=n)
        before = len(pagent_emulator.events())
        # A manual run at midnight D syncs the complete day before D (CronDataIntervalTimetable).
        run = run_dag(dag, day + timedelta(days=1), task_id="sync_purchases")
        assert run.state == "success"
        received = {e["session_id"]: e for e in pagent_emulator.events()[before:]}
        expected = expected_events(purchases, day)
        assert len(pagent_emulator.events()) - before == len(expected) > 100
        assert received == expected
        summary = run.result
        # lookback=3 days: the days already synced are read again and skipped
        earlier = sum(len(expected_events(purchases, DAY_1 + timedelta(days=k))) for k in range(n))
        assert summary["sent"] == summary["accepted"] == len(expected)
        assert summary["rows"] == summary["valid"] == len(expected) + earlier
        assert summary["already_sent"] == earlier
        assert summary["batches"] == -(-len(expected) // 100)
        assert summary["invalid"] == summary["unknown"] == 0
        assert summary["dry_run"] is False and summary["duration_s"] > 0

    again = run_dag(dag, DAY_1 + timedelta(days=1), task_id="sync_purchases")
    assert again.state == "success"
    assert again.result["sent"] == 0
    assert again.result["already_sent"] == len(expected_events(purchases, DAY_1))  # nothing before DAY_1
    assert len(pagent_emulator.events()) == sum(
        len(expected_events(purchases, DAY_1 + timedelta(days=n))) for n in range(DAYS)
    )


def test_failing_sync_fails_the_dag_run(dag, tmp_path, pagent_emulator, monkeypatch):
    warehouse = tmp_path / "broken.db"
    frame = generate_conversions(50, start=DAY_1, end=DAY_1 + timedelta(days=1), seed=3)
    frame.loc[7, "conversion_id"] = None  # the goal label matched no goal
    write_conversions(f"sqlite:///{warehouse}", frame)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())

    run = run_dag(dag, DAY_1 + timedelta(days=1), task_id="sync_purchases")
    assert run.state == "failed"  # max_invalid_rows=0 in the example DAG
    assert len(pagent_emulator.events()) == 49  # the valid rows were still delivered
    rejects = pd.read_sql("SELECT * FROM pagent_ledger_rejects", f"sqlite:///{warehouse}")
    assert list(rejects.row_ref) == ["8"] and "no configured goal" in rejects.reason[0]


def test_mapped_backfill_partitions_overlapping_the_daily_dag(dag, tmp_path, pagent_emulator, monkeypatch):
    warehouse = tmp_path / "warehouse.db"
    frame = generate_conversions(600, start=DAY_1, end=DAY_1 + timedelta(days=4), seed=5)
    write_conversions(f"sqlite:///{warehouse}", frame)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())

    daily = run_dag(dag, DAY_1 + timedelta(days=1), task_id="sync_purchases")  # day 1 by the daily DAG
    assert daily.state == "success" and daily.result["sent"] > 0

    backfill = load_dag(ROOT / "dags", "pagent_backfill_partitions")
    conf = {
        "start": DAY_1.date().isoformat(),
        "end": (DAY_1 + timedelta(days=4)).date().isoformat(),
        "days_per_partition": 1,
    }
    run = run_dag(backfill, DAY_1 + timedelta(days=10), task_id="sync_partition", run_conf=conf)
    assert run.state == "success"
    received = [e["session_id"] for e in pagent_emulator.events()]
    assert sorted(received) == sorted(frame.session_id)  # every order once: the day already sent was skipped
    # each partition is labelled with its window in the UI (map_index_template)
    assert rendered_map_indexes(backfill.dag_id, run.run_id, "sync_partition") == [
        f"{(DAY_1 + timedelta(days=n)):%Y-%m-%d %H:%M:%S} to {(DAY_1 + timedelta(days=n + 1)):%Y-%m-%d %H:%M:%S}"
        for n in range(4)
    ]


def rendered_map_indexes(dag_id: str, run_id: str, task_id: str) -> list[str | None]:
    """The labels Airflow rendered for the mapped task instances of one run, by map index."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance.map_index, TaskInstance.rendered_map_index)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id)
            .order_by(TaskInstance.map_index)
        )
        return [label for _, label in rows]


@pytest.fixture
def small_warehouse(tmp_path, monkeypatch) -> pd.DataFrame:
    warehouse = tmp_path / "warehouse.db"
    frame = generate_conversions(250, start=DAY_1, end=DAY_1 + timedelta(days=1), seed=8)
    write_conversions(f"sqlite:///{warehouse}", frame)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    return frame


def dag_with_retries(retries: int, api: str = "v1"):
    dag = load_dag(ROOT / "dags", DAG_ID, retries=retries)
    for task in dag.tasks:
        task.retry_delay = timedelta(seconds=0.2)
        task.retry_exponential_backoff = False
        task.api = api
    return dag


def test_wrong_key_fails_the_task_without_burning_retries(small_warehouse, pagent_emulator, monkeypatch):
    conn = json.loads(pagent_emulator.airflow_connection_json())
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps({**conn, "password": "revoked-key"}))

    run = run_dag(dag_with_retries(3), DAY_1 + timedelta(days=1), task_id="sync_purchases")

    assert run.state == "failed"
    assert [r.status for r in pagent_emulator.requests()] == [401]  # one try, one request
    assert pagent_emulator.events() == []


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_lost_answer_is_resent_by_airflows_retry(small_warehouse, pagent_emulator, monkeypatch, api):
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    pagent_emulator.faults = Faults(drop_every=3)  # the 3rd request is stored, then its answer is lost

    run = run_dag(dag_with_retries(2, api), DAY_1 + timedelta(days=1), task_id="sync_purchases")

    paths = {record.path for record in pagent_emulator.requests()}
    assert paths == {"/v1/conversions" if api == "v1" else "/v2/conversions/bulk"}

    assert run.state == "success"  # try 1 failed with an unknown outcome, try 2 resent it
    received = [e["session_id"] for e in pagent_emulator.events()]
    assert set(received) == set(small_warehouse.session_id)
    duplicated = len(received) - len(set(received))
    assert 0 < duplicated <= 100  # at least once: only the batch whose answer was lost
    assert run.result["unknown"] == run.result["unknown_resent"] == duplicated
