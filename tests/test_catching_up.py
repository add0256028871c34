"""Issue 12, catching up: the daily DAG's ``lookback`` delivers late and fixed rows on the next run, once.

Through real Airflow (``dag.test()``), the example daily DAG (``lookback=timedelta(days=3)``),
a SQLite warehouse and the emulator over HTTP.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.exceptions import PagentConfigError
from pagent_provider.operators.lookback import check_lookback, shift_back, with_lookback
from pagent_provider.testing import Faults
from pagent_provider.testing.dag_runs import load_dag, run_dag
from pagent_provider.testing.sample_warehouse import generate_conversions, load_conversions, write_conversions

ROOT = Path(__file__).resolve().parent.parent
DAY = datetime(2026, 11, 10)


@pytest.fixture(scope="module")
def dag():
    return load_dag(ROOT / "dags", "pagent_daily_conversions")


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pagent_emulator) -> str:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    frame = generate_conversions(200, start=DAY, end=DAY + timedelta(days=2), seed=21)
    write_conversions(url, frame)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")})
    )
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    return url


def rows_of_day(url: str, day: datetime) -> pd.DataFrame:
    query = "SELECT * FROM conversions WHERE converted_at >= :start AND converted_at < :end ORDER BY order_id"
    params = {
        "start": day.strftime("%Y-%m-%d %H:%M:%S"),
        "end": (day + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S"),
    }
    return pd.read_sql(sa.text(query), url, params=params)


def test_a_late_row_is_delivered_by_the_next_days_run_exactly_once(dag, warehouse, pagent_emulator):
    first = run_dag(dag, DAY + timedelta(days=1), task_id="sync_purchases")  # syncs DAY
    assert first.state == "success"
    day_1 = rows_of_day(warehouse, DAY)
    assert first.result["sent"] == len(day_1)

    # A row of DAY lands in the warehouse after DAY's run (a late upstream load).
    late = generate_conversions(
        1, start=DAY + timedelta(hours=23), end=DAY + timedelta(hours=23, minutes=1), seed=99, first_order_id=10_000
    )
    engine = sa.create_engine(warehouse)
    load_conversions(engine, late, replace=False)
    engine.dispose()

    second = run_dag(dag, DAY + timedelta(days=2), task_id="sync_purchases")  # syncs DAY + 1, looks back to DAY - 2
    assert second.state == "success"
    day_2 = rows_of_day(warehouse, DAY + timedelta(days=1))
    summary = second.result
    assert summary["sent"] == len(day_2) + 1  # the new day and the late row
    assert summary["already_sent"] == len(day_1)  # everything else was skipped by the ledger
    assert summary["rows"] == len(day_1) + 1 + len(day_2)

    sessions = [event["session_id"] for event in pagent_emulator.events()]
    assert len(sessions) == len(set(sessions)) == len(day_1) + 1 + len(day_2)  # each once
    assert late.session_id[0] in sessions

    # The run history records what was selected: from DAY - 2 (the lookback) to the end of DAY + 1.
    runs = pd.read_sql("SELECT * FROM pagent_ledger_runs ORDER BY started_at", warehouse)
    assert (runs.window_end - runs.window_start).tolist() == [4 * 86_400_000, 4 * 86_400_000]
    assert json.loads(runs.window_params[1])["start"] == "2026-11-08 00:00:00"


def test_invalid_and_refused_rows_fixed_after_their_run_go_out_on_the_next_run(dag, warehouse, pagent_emulator):
    day_1 = rows_of_day(warehouse, DAY)
    invalid_order = int(day_1.order_id[3])
    refused_session = day_1.session_id[7]
    engine = sa.create_engine(warehouse)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE conversions SET conversion_id = NULL WHERE order_id = :o"), {"o": invalid_order})
    pagent_emulator.faults = Faults(refuse=lambda e: "unknown goal" if e["session_id"] == refused_session else None)

    first = run_dag(dag, DAY + timedelta(days=1), task_id="sync_purchases")
    assert first.state == "failed"  # max_invalid_rows=0: one invalid and one refused row
    assert first.summary["invalid"] == 1 and first.summary["rejected"] == 1
    assert first.summary["sent"] == len(day_1) - 2

    # Both are fixed: the row gets its goal back, pagent now accepts the other.
    good_goal = day_1.conversion_id[3]
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE conversions SET conversion_id = :g WHERE order_id = :o"),
            {"g": good_goal, "o": invalid_order},
        )
    engine.dispose()
    pagent_emulator.faults = Faults()

    second = run_dag(dag, DAY + timedelta(days=2), task_id="sync_purchases")
    assert second.state == "success"
    day_2 = rows_of_day(warehouse, DAY + timedelta(days=1))
    assert second.result["sent"] == len(day_2) + 2
    assert second.result["already_sent"] == len(day_1) - 2
    assert second.result["invalid"] == second.result["rejected"] == 0
    sessions = [event["session_id"] for event in pagent_emulator.events()]
    assert len(sessions) == len(set(sessions)) == len(day_1) + len(day_2)


def test_the_lookback_parameter_keeps_its_type_and_shape():
    three = timedelta(days=3)
    assert shift_back("2026-11-10 00:00:00", three) == "2026-11-07 00:00:00"
    assert shift_back("2026-11-10", three) == "2026-11-07"
    assert shift_back("2026-11-10T06:30:00.250Z", timedelta(hours=7)) == "2026-11-09T23:30:00.250Z"
    assert shift_back("2026-11-10T00:00+02:00", three) == "2026-11-07T00:00+02:00"
    assert shift_back(datetime(2026, 11, 10), three) == datetime(2026, 11, 7)
    assert shift_back(date(2026, 11, 10), three) == date(2026, 11, 7)
    assert with_lookback({"start": "2026-11-10", "end": "2026-11-11"}, "start", three) == {
        "start": "2026-11-07",
        "end": "2026-11-11",
    }
    assert with_lookback({"start": "x"}, "start", None) == {"start": "x"}  # no lookback: untouched


@pytest.mark.parametrize(
    ("lookback", "parameter", "parameters", "message"),
    [
        (timedelta(0), "start", None, "positive"),
        (3, "start", None, "positive"),
        (timedelta(days=1), "", None, "lookback_parameter"),
        (timedelta(days=1), "start", {"since": "2026-11-10"}, r"'start'.*\['since'\]"),
    ],
)
def test_a_lookback_that_cannot_work_is_refused_when_the_dag_is_parsed(lookback, parameter, parameters, message):
    with pytest.raises(PagentConfigError, match=message):
        check_lookback(lookback, parameter, parameters)


@pytest.mark.parametrize("value", ["yesterday", 20261110, "2026-11-10 00"])
def test_a_start_that_is_no_date_or_time_is_refused(value):
    with pytest.raises(PagentConfigError, match="start"):
        shift_back(value, timedelta(days=1))
    with pytest.raises(PagentConfigError, match="whole days"):
        shift_back(date(2026, 11, 10), timedelta(hours=12))
