"""Issue 12: the run history table, on SQLite, PostgreSQL and MariaDB.

Each run writes one row at its start and completes it at its end; concurrent
workers create the table without failing; the SQL the module documents for
"what happened to this day" is run as written; and a history that cannot be
written never fails the sync that writes it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.core import run_history
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.run_history import RunHistory, RunStart, outcome_of, to_ms
from pagent_provider.core.sync import SyncSummary
from pagent_provider.exceptions import PagentDeliveryError, PagentInterruptedError

NAMESPACE = "pagent_default"
DAY = datetime(2026, 11, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def text(value: object) -> object:
    """Key columns come back as bytes from a hand-written query on MySQL (VARBINARY, as the ledger's)."""
    return value.decode() if isinstance(value, bytes) else value


def raw_rows(engine: sa.Engine, table: str = "pagent_ledger_runs") -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY started_at"))
        return [{key: text(value) for key, value in row._mapping.items()} for row in rows]


def airflow_run(window_start: datetime, window_end: datetime, *, try_number: int = 1, **kwargs) -> RunStart:
    owner = ClaimOwner(task="daily/sync/scheduled__x/-1", try_number=try_number)
    return RunStart.of(
        owner,
        NAMESPACE,
        params={"start": window_start.strftime("%Y-%m-%d %H:%M:%S"), "end": window_end.strftime("%Y-%m-%d %H:%M:%S")},
        window_start=window_start,
        window_end=window_end,
        dag_id="daily",
        task_id="sync",
        run_id=f"scheduled__{window_start:%Y-%m-%d}",
        map_index=-1,
        **kwargs,
    )


# --------------------------------------------------------------------------- start and finish


def test_a_run_writes_its_row_at_the_start_and_completes_it_at_the_end(engine: sa.Engine) -> None:
    history = RunHistory.for_ledger(Ledger(engine, namespace=NAMESPACE))
    run = airflow_run(DAY, DAY + timedelta(days=1), try_number=2)

    assert history.start(run)
    [started] = raw_rows(engine)
    assert started["outcome"] == "running" and started["finished_at"] is None and started["rows_read"] is None
    assert (started["run_token"], started["dag_id"], started["try_number"]) == (run.run_token, "daily", 2)
    assert (started["window_start"], started["window_end"]) == (to_ms(DAY), to_ms(DAY + timedelta(days=1)))

    summary = SyncSummary(rows=120, valid=118, invalid=2, sent=100, already_sent=18, requests=3, duration_s=1.2345)
    assert history.finish(run.run_token, summary.as_dict())

    [finished] = raw_rows(engine)
    assert finished["outcome"] == "success" and finished["error"] is None
    assert finished["finished_at"] >= finished["started_at"]
    assert (finished["rows_read"], finished["sent"], finished["already_sent"], finished["invalid"]) == (120, 100, 18, 2)
    assert finished["duration_ms"] == 1234 and finished["unknown"] == 0
    [row] = history.recent(NAMESPACE)
    assert row.params == {"start": "2026-11-05 00:00:00", "end": "2026-11-06 00:00:00"}
    assert row.counts["rows"] == 120 and row.as_dict()["sent"] == 100 and row.as_dict()["host"] == run.host


def test_a_failed_run_keeps_its_counts_and_a_storable_error(engine: sa.Engine) -> None:
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE, params={"day": DAY})  # the command line: no Airflow fields
    history.start(run)
    error = PagentDeliveryError("3 invalid rows: 日本 \x00 " + "x" * 5000)
    error.summary = SyncSummary(rows=10, invalid=3, sent=7).as_dict()  # type: ignore[attr-defined]

    history.finish(run.run_token, error.summary, error=error)  # type: ignore[attr-defined]

    [row] = history.recent(NAMESPACE)
    assert row.outcome == "failed" and row.counts["invalid"] == 3 and row.counts["sent"] == 7
    assert row.error is not None and row.error.startswith("PagentDeliveryError: 3 invalid rows: 日本 \\x00 xxx")
    assert len(row.error) == run_history.ERROR_LIMIT
    assert (row.dag_id, row.task_id, row.run_id, row.map_index, row.try_number) == (None,) * 5
    assert row.host == run.host and row.pid == run.pid and row.params == {"day": DAY.isoformat()}


def test_outcomes() -> None:
    assert outcome_of(None) == "success"
    assert outcome_of(PagentInterruptedError("SIGTERM")) == outcome_of(KeyboardInterrupt()) == "interrupted"
    assert outcome_of(ValueError()) == "failed"


def test_a_run_that_ended_before_its_sync_has_no_counts(engine: sa.Engine) -> None:
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE)
    history.start(run)
    history.finish(run.run_token, None, error=PagentInterruptedError("SIGTERM received"))
    [row] = history.recent(NAMESPACE)
    assert row.outcome == "interrupted" and set(row.counts.values()) == {None} and row.duration_ms is None


def test_recent_is_per_namespace_latest_first_and_empty_without_a_table(engine: sa.Engine, caplog) -> None:
    history = RunHistory(engine, "ops.pagent_ledger" if engine.dialect.name == "postgresql" else "pagent_ledger")
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA ops")
    with caplog.at_level(logging.WARNING):
        assert history.recent(NAMESPACE) == []
    assert not caplog.records  # no table yet: nothing was recorded, nothing to warn about
    for index in range(5):
        run = RunStart.of(ClaimOwner(), NAMESPACE if index != 2 else "other", started_at=1_000 + index)
        history.start(run)
    assert [row.started_at for row in history.recent(NAMESPACE, limit=3)] == [1_004, 1_003, 1_001]
    assert [row.namespace for row in history.recent("other")] == ["other"]


# --------------------------------------------------------------------------- workers racing


def test_four_workers_create_the_table_at_once(url: str) -> None:
    engines = [sa.create_engine(url) for _ in range(4)]
    barrier = threading.Barrier(4)
    results: list[bool] = []
    failures: list[BaseException] = []

    def worker(engine: sa.Engine) -> None:
        try:
            history = RunHistory(engine)
            run = RunStart.of(ClaimOwner(), NAMESPACE)
            barrier.wait()
            results.append(history.create_table())
            results.append(history.start(run))
            results.append(history.finish(run.run_token, SyncSummary(rows=1, sent=1).as_dict()))
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not failures and results == [True] * 12
        rows = raw_rows(engines[0])
        assert len(rows) == 4 and {row["outcome"] for row in rows} == {"success"}
    finally:
        for engine in engines:
            engine.dispose()


# --------------------------------------------------------------------------- what happened to this day


def documented_query() -> str:
    """The SQL block of the module docstring, as a reader would copy it."""
    match = re.search(r"\.\. code-block:: sql\n\n((?:    .*\n|\n)+)", run_history.__doc__ or "")
    assert match, "the module docstring has no SQL block"
    return "\n".join(line[4:] for line in match.group(1).splitlines()).strip()


# The docstring's day bounds, one expression per database (MySQL's reads the session time zone).
DAY_START_MS = {
    "sqlite": "SELECT unixepoch('2026-11-05') * 1000",
    "postgresql": "SELECT CAST(EXTRACT(EPOCH FROM DATE '2026-11-05') * 1000 AS BIGINT)",
    "mysql": "SELECT UNIX_TIMESTAMP('2026-11-05') * 1000",
}


def test_the_documented_query_lists_the_runs_whose_window_covers_a_day(engine: sa.Engine) -> None:
    history = RunHistory(engine)
    day, next_day = DAY, DAY + timedelta(days=1)
    runs = {
        "the day before": airflow_run(day - timedelta(days=1), day, started_at=1),
        "the day, try 1": airflow_run(day, next_day, started_at=2),
        "a 3-day backfill": airflow_run(day - timedelta(days=1), next_day + timedelta(days=1), started_at=3),
        "the day, try 2": airflow_run(day, next_day, try_number=2, started_at=4),
        "the next day": airflow_run(next_day, next_day + timedelta(days=1), started_at=5),
        "another namespace": RunStart.of(ClaimOwner(), "other", window_start=day, window_end=next_day, started_at=6),
        "no window known": RunStart.of(ClaimOwner(), NAMESPACE, started_at=7),
        "the last hour": airflow_run(next_day - timedelta(hours=1), next_day, started_at=8),
    }
    for name, run in runs.items():
        history.start(run)
        history.finish(run.run_token, SyncSummary(rows=len(name)).as_dict(), error=None)

    with engine.connect() as conn:
        if engine.dialect.name == "mysql":
            conn.exec_driver_sql("SET time_zone = '+00:00'")
        day_start_ms = conn.exec_driver_sql(DAY_START_MS[engine.dialect.name]).scalar()
        assert day_start_ms == to_ms(day)
        bounds = {"namespace": NAMESPACE, "day_start_ms": day_start_ms, "day_end_ms": to_ms(next_day)}
        rows = conn.execute(sa.text(documented_query()), bounds).all()

    expected = ["the day, try 1", "a 3-day backfill", "the day, try 2", "the last hour"]
    assert [text(row.run_token) for row in rows] == [runs[name].run_token for name in expected]
    assert [row.rows_read for row in rows] == [len(name) for name in expected]
    assert {row.outcome for row in rows} == {"success"}
    covering = history.covering(NAMESPACE, day, next_day)
    assert [row.run_token for row in covering] == [runs[name].run_token for name in expected]


# --------------------------------------------------------------------------- never fail the sync


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_a_history_that_cannot_be_written_warns_once_per_write_and_never_raises(tmp_path: Path, caplog) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")  # no such directory
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE, params={"start": "2026-11-05"})

    with caplog.at_level(logging.WARNING):
        assert history.start(run) is False
        assert history.finish(run.run_token, SyncSummary().as_dict(), error=ValueError("boom")) is False
        assert history.recent(NAMESPACE) == []
    messages = warnings_of(caplog)
    assert len(messages) == 3 and all("pagent_ledger_runs" in message for message in messages)
    assert "OperationalError" in messages[0]
    engine.dispose()


def test_the_warning_names_no_statement_and_no_parameter(engine: sa.Engine, caplog) -> None:
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE, params={"secret_looking": "s3cr3t-value"})
    history.start(run)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE pagent_ledger_runs")  # someone dropped it mid-run

    with caplog.at_level(logging.WARNING):
        assert history.finish(run.run_token, SyncSummary(rows=5).as_dict()) is False

    [message] = warnings_of(caplog)
    assert "record the end of a run" in message
    for leaked in (run.run_token, "UPDATE", "pagent_ledger_runs SET", "s3cr3t", "parameters"):
        assert leaked not in message


def test_finish_writes_the_whole_row_when_the_start_could_not(engine: sa.Engine, monkeypatch, caplog) -> None:
    history = RunHistory(engine)
    run = airflow_run(DAY, DAY + timedelta(days=1))

    def fail(row: dict) -> None:
        raise sa.exc.OperationalError("INSERT INTO pagent_ledger_runs ...", row, Exception("server has gone away"))

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(history, "_insert", fail)
        assert history.start(run) is False
    [message] = warnings_of(caplog)
    assert run.run_token not in message and "INSERT" not in message and "OperationalError" in message

    assert history.finish(run.run_token, SyncSummary(rows=9, sent=9).as_dict())
    [row] = history.recent(NAMESPACE)
    assert (row.run_token, row.dag_id, row.outcome, row.counts["sent"]) == (run.run_token, "daily", "success", 9)
    assert row.window_start == to_ms(DAY)


def test_an_unknown_outcome_is_recorded_as_failed(engine: sa.Engine, caplog) -> None:
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE)
    history.start(run)
    with caplog.at_level(logging.WARNING):
        assert history.finish(run.run_token, None, outcome="exploded")
    assert history.recent(NAMESPACE)[0].outcome == "failed" and "exploded" in caplog.text


def test_parameters_too_long_are_cut_and_no_longer_parsed(engine: sa.Engine) -> None:
    history = RunHistory(engine)
    run = RunStart.of(ClaimOwner(), NAMESPACE, params={"ids": list(range(10_000))})
    history.start(run)
    [row] = history.recent(NAMESPACE)
    assert row.window_params is not None and len(row.window_params) == run_history.PARAMS_LIMIT
    assert row.params is None


def test_a_database_down_at_the_start_and_back_at_the_end_still_gets_the_whole_row(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "not-yet"
    engine = sa.create_engine(f"sqlite:///{folder / 'ledger.db'}")
    history = RunHistory(engine)
    run = airflow_run(DAY, DAY + timedelta(days=1))
    with caplog.at_level(logging.WARNING):
        assert history.start(run) is False  # the database cannot be opened
    folder.mkdir()  # ... and now it can

    assert history.finish(run.run_token, SyncSummary(rows=3, sent=3).as_dict())

    [row] = history.recent(NAMESPACE)
    assert (row.run_token, row.run_id, row.outcome, row.counts["rows"]) == (run.run_token, run.run_id, "success", 3)
    assert row.started_at == run.started_at <= row.finished_at
    assert len(warnings_of(caplog)) == 1
    engine.dispose()
