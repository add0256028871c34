"""Issue 12, no silent success: each mistake that once ran green now warns or fails, as documented.

Through real Airflow (``dag.test()``, the DAGs of tests/dags/pagent_silent_success.py and
the example daily DAG), the command-line tool, and the rules themselves.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.cli import main
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.placeholders import placeholder_style
from pagent_provider.core.run_history import RunHistory, RunStart
from pagent_provider.core.silent_success import date_time_warning, empty_interval_error, zero_rows_warning
from pagent_provider.testing.dag_runs import load_dag, run_dag
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

ROOT = Path(__file__).resolve().parent.parent
TEST_DAGS = ROOT / "tests" / "dags"
DAY = datetime(2026, 11, 10)


@pytest.fixture(scope="module")
def test_dags():
    """The DAGs of tests/dags/pagent_silent_success.py, by id (dag.test() runs only DAGs of a configured bundle)."""
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in (("dags-folder", ROOT / "dags"), ("pagent-test-dags", TEST_DAGS))
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
        yield {
            dag_id: load_dag(TEST_DAGS, dag_id)
            for dag_id in ("pagent_trigger_timetable", "pagent_pyformat_sql", "pagent_date_column")
        }


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pagent_emulator) -> Path:
    path = tmp_path / "warehouse.db"
    write_conversions(f"sqlite:///{path}", generate_conversions(120, start=DAY, end=DAY + timedelta(days=1), seed=4))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    return path


# --------------------------------------------------------------------------- an empty data interval: fail


def test_an_empty_data_interval_fails_before_reading(test_dags, warehouse, pagent_emulator, capsys):
    dag = test_dags["pagent_trigger_timetable"]
    run = run_dag(dag, DAY + timedelta(days=1), task_id="sync")
    assert run.state == "failed"
    logged = capsys.readouterr()
    assert "data interval of this run is empty" in logged.out + logged.err
    assert "CronDataIntervalTimetable" in logged.out + logged.err
    assert pagent_emulator.requests() == []
    with sa.create_engine(f"sqlite:///{warehouse}").connect() as conn:
        assert not sa.inspect(conn).has_table("pagent_ledger_runs")  # failed before the run started


def test_the_empty_interval_rule():
    moment = datetime(2026, 11, 10)
    assert "CronDataIntervalTimetable" in empty_interval_error(moment, moment)
    assert empty_interval_error(moment, moment + timedelta(days=1)) is None
    assert empty_interval_error(None, None) is None  # a run without a data interval (Airflow 3 manual runs)


# --------------------------------------------------------------------------- driver placeholders: fail


def test_pyformat_placeholders_fail_the_task_before_connecting(
    test_dags, tmp_path, monkeypatch, pagent_emulator, capsys
):
    missing = tmp_path / "no-such-warehouse.db"  # connecting would create or fail on it
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(missing)}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    run = run_dag(test_dags["pagent_pyformat_sql"], DAY, task_id="sync")
    assert run.state == "failed"
    logged = capsys.readouterr()
    assert "'%(start)s'" in logged.out + logged.err and ":name" in logged.out + logged.err
    assert not missing.exists() and pagent_emulator.requests() == []


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("SELECT * FROM t WHERE a >= %(start)s", "%(start)s"),
        ("SELECT * FROM t WHERE a >= %s AND b < %s", "%s"),
        ("SELECT * FROM t WHERE a >= ? AND b < ?", "?"),
        ("SELECT * FROM t WHERE a IN (?, ?)", "?"),
        ("SELECT * FROM t WHERE a >= :start", None),
        ("SELECT * FROM t WHERE label LIKE 'purch%s%' AND a = :a", None),  # in a string literal
        ("SELECT * FROM t -- why? because %s\nWHERE a = :a", None),  # in comments
        ("SELECT * FROM t /* ? */ WHERE a = :a", None),
        ('SELECT "odd?name" FROM t', None),  # a quoted identifier
        ("SELECT * FROM t WHERE props ? 'coupon' AND props ?| array['a'] AND tags ?& :wanted", None),  # JSON ops
        ("SELECT $$ %s ? $$ AS body, a::date FROM t", None),  # dollar quoting, casts
        ("SELECT a % 7 FROM t", None),  # the modulo operator
    ],
)
def test_driver_placeholders_are_found_outside_literals_and_comments(sql, found):
    assert placeholder_style(sql) == found


def test_the_cli_refuses_driver_placeholders_before_connecting(tmp_path, capsys):
    missing = tmp_path / "shop.db"
    status = main(["reconcile", "--source-url", f"sqlite:///{missing}", "--sql", "SELECT * FROM orders WHERE id = ?"])
    assert status == 2 and "'?'" in capsys.readouterr().err
    status = main(
        ["sync", "--dry-run", "--source-url", f"sqlite:///{missing}", "--sql", "SELECT * FROM o WHERE d >= %(since)s"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "'%(since)s'" in err and "Write them as :name" in err
    assert not missing.exists()


# --------------------------------------------------------------------------- a DATE time column: warn


def test_a_date_time_column_warns_with_the_column_name(test_dags, warehouse, pagent_emulator):
    run = run_dag(test_dags["pagent_date_column"], DAY + timedelta(days=1), task_id="sync")
    assert run.state == "success"
    assert run.result["sent"] == 120  # a warning, not a failure: the events go out, stamped midnight
    (warning,) = run.result["warnings"]
    assert "'converted_at'" in warning and "midnight" in warning
    assert {event["time"] for event in pagent_emulator.events()} == {int(DAY.replace(tzinfo=UTC).timestamp() * 1000)}


def test_a_postgresql_date_column_warns_through_the_cli(postgres_url, capsys, monkeypatch):
    engine = sa.create_engine(postgres_url)
    frame = generate_conversions(5, start=DAY, end=DAY + timedelta(days=1), seed=2)
    write_conversions(postgres_url, frame)
    sql = "SELECT order_id, session_id, user_id, conversion_id, label, amount_usd AS revenue, "
    sql += "CAST(converted_at AS DATE) AS time FROM conversions"
    status = main(
        ["sync", "--dry-run", "--json", "--source-url", postgres_url, "--sql", sql, "--key-column", "order_id"]
    )
    engine.dispose()
    document = json.loads(capsys.readouterr().out)
    assert status == 0 and document["valid"] == 5
    assert len(document["warnings"]) == 1 and "'time'" in document["warnings"][0]


@pytest.mark.parametrize(
    ("values", "warns"),
    [
        ([date(2026, 11, 10), None, date(2026, 11, 11)], True),
        (["2026-11-10", "2026-11-11"], True),
        ([datetime(2026, 11, 10), datetime(2026, 11, 11)], False),
        (pd.to_datetime(["2026-11-10", "2026-11-11"]), False),  # timestamps, even at midnight
        (["2026-11-10 10:00:00", "2026-11-10"], False),
        ([1_762_732_800_000], False),
        ([None, None], False),
    ],
)
def test_the_date_rule(values, warns):
    frame = pd.DataFrame({"time": list(values) if not isinstance(values, pd.DatetimeIndex) else values})
    assert (date_time_warning(frame, "time") is not None) is warns


# --------------------------------------------------------------------------- 0 rows after busy runs: warn


def record_busy_runs(url: str, rows: int, count: int) -> None:
    engine = sa.create_engine(url)
    history = RunHistory(engine)
    for n in range(count):
        owner = ClaimOwner(task=f"pagent_daily_conversions/sync_purchases/earlier_{n}/-1")
        start = RunStart.of(
            owner,
            "pagent_default",
            dag_id="pagent_daily_conversions",
            task_id="sync_purchases",
            run_id=f"earlier_{n}",
            started_at=1_700_000_000_000 + n,
        )
        history.start(start)
        history.finish(owner.run_token, {"rows": rows, "sent": rows}, "success")
    engine.dispose()


def test_zero_rows_after_runs_of_thousands_warns(warehouse, pagent_emulator):
    record_busy_runs(f"sqlite:///{warehouse}", 4_000, 3)
    dag = load_dag(ROOT / "dags", "pagent_daily_conversions")
    quiet = run_dag(dag, DAY + timedelta(days=30), task_id="sync_purchases")  # a day without rows
    assert quiet.state == "success" and quiet.result["rows"] == 0
    (warning,) = quiet.result["warnings"]
    assert "0 rows" in warning and "4,000" in warning

    busy = run_dag(dag, DAY + timedelta(days=1), task_id="sync_purchases")
    assert busy.result["rows"] == 120 and busy.result["warnings"] == []


def test_the_zero_rows_rule():
    def run(rows: int | None, finished: bool = True):
        from pagent_provider.core.run_history import RunRow

        fields = dict.fromkeys(RunRow.__dataclass_fields__)
        fields.update(run_token="t", namespace="n", started_at=0, outcome="success", counts={"rows": rows})
        fields["finished_at"] = 1 if finished else None
        return RunRow(**fields)

    assert zero_rows_warning(0, [run(5000), run(3000), run(0)]) is not None  # median 3,000
    assert zero_rows_warning(0, [run(5000), run(10), run(0)]) is None  # median 10: quiet days happen
    assert zero_rows_warning(12, [run(5000)]) is None
    assert zero_rows_warning(0, []) is None  # a first run
    assert zero_rows_warning(0, [run(5000, finished=False)]) is None  # still running: not a reference
