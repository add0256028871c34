"""Issue 9: SIGINT, SIGTERM and Airflow's on_kill stop a sync gracefully, for real processes.

Each test starts a real process (the ``pagent-conversions`` command, or a
``dag.test()`` run of the example DAG), lets it upload against a slow
emulator, sends it a real signal mid-run, and then counts: what the server
stored, what the ledger records as sent (equal: every acknowledged batch was
recorded, nothing is left claimed), what the summary says; and after a re-run,
that every row reached the server exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.ledger import Ledger
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

ROOT = Path(__file__).resolve().parent.parent
DAG_WORKER = Path(__file__).parent / "workers" / "dag_worker.py"
KEY = "test-key"
ROWS = 3_000
DAY = datetime(2026, 11, 10)
CLI = [sys.executable, "-m", "pagent_provider.cli"]
CLI_MAPPING = [
    "--columns",
    "time=converted_at",
    "revenue=amount_usd",
    "--key-column",
    "order_id",
    "--properties-columns",
    "order_id,channel",
]


@pytest.fixture
def frame() -> pd.DataFrame:
    rows = generate_conversions(ROWS, start=DAY, end=DAY + timedelta(days=1), seed=21)
    assert rows["session_id"].is_unique  # the DAG's events are traced back to their rows by session id
    return rows


@pytest.fixture
def warehouse(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "warehouse.db"
    write_conversions(f"sqlite:///{path}", frame)
    return path


@pytest.fixture
def slow_emulator(pagent_emulator: IngestEmulator) -> IngestEmulator:
    pagent_emulator.faults = Faults(latency_s=0.05)  # a run takes a few seconds: time to signal it
    return pagent_emulator


def stored(emulator: IngestEmulator, field: str = "order_id") -> Counter:
    """How often the server stored each row (by its order id in the properties, or by session id)."""
    if field == "order_id":
        return Counter(event["properties"]["order_id"] for event in emulator.events())
    return Counter(event[field] for event in emulator.events())


def statuses(ledger_db: Path) -> Counter[str]:
    engine = sa.create_engine(f"sqlite:///{ledger_db}")
    try:
        return Counter(Ledger(engine, namespace="pagent_default").count_by_status())
    finally:
        engine.dispose()


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- the command line


def cli_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PAGENT_")}
    env["PAGENT_API_KEY"] = KEY
    return env


def cli_sync(emulator: IngestEmulator, warehouse: Path) -> list[str]:
    return [
        *CLI,
        "sync",
        "--base-url",
        emulator.url,
        "--source-url",
        f"sqlite:///{warehouse}",
        "--sql",
        "SELECT * FROM conversions ORDER BY order_id",
        "--json",
        *CLI_MAPPING,
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_cli_stops_on_a_signal_with_every_acknowledged_batch_recorded(
    signum: signal.Signals, slow_emulator: IngestEmulator, warehouse: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        cli_sync(slow_emulator, warehouse), env=cli_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: slow_emulator.accepted_count >= 500, 60, "the first 500 events")
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 130, stderr.decode()
    assert b"interrupted" in stderr and signal.Signals(signum).name.encode() in stderr
    summary = json.loads(stdout)
    server = stored(slow_emulator)
    ledger = statuses(warehouse)
    # stopped mid-run, and every batch pagent acknowledged is recorded: nothing left claimed
    assert 500 <= sum(server.values()) < ROWS
    assert summary["sent"] == ledger["sent"] == sum(server.values()) == len(server)
    assert ledger["claimed"] == 0 and ledger["unknown"] == 0

    rerun = subprocess.run(cli_sync(slow_emulator, warehouse), env=cli_env(), cwd=tmp_path, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert stored(slow_emulator) == Counter(frame["order_id"].tolist())  # each row exactly once


# --------------------------------------------------------------------------- a real Airflow task


def start_dag_run(
    tmp_path: Path, name: str, warehouse: Path, emulator: IngestEmulator
) -> tuple[subprocess.Popen, Path]:
    home = tmp_path / f"airflow-{name}"
    home.mkdir()
    result_file = tmp_path / f"{name}.result.json"
    config = {
        "airflow_home": str(home),
        "dags_folder": str(ROOT / "dags"),
        "dag_id": "pagent_daily_conversions",
        "task_id": "sync_purchases",
        # a manual run at midnight D syncs the day before D
        "logical_date": (DAY + timedelta(days=1)).isoformat(),
        "connections": {
            "warehouse": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
            "pagent_default": emulator.airflow_connection_json(),
        },
        "ready_file": str(tmp_path / f"{name}.ready"),
        "result_file": str(result_file),
    }
    config_file = tmp_path / f"{name}.json"
    config_file.write_text(json.dumps(config))
    with open(tmp_path / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, str(DAG_WORKER), str(config_file)], stdout=log, stderr=log)
    return process, result_file


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM-on_kill", "SIGINT"])
def test_an_airflow_task_stops_on_a_signal_with_every_acknowledged_batch_recorded(
    signum: signal.Signals, slow_emulator: IngestEmulator, warehouse: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    process, result_file = start_dag_run(tmp_path, "killed", warehouse, slow_emulator)
    try:
        wait_for(lambda: slow_emulator.accepted_count >= 500 or process.poll() is not None, 120, "500 events")
        assert process.poll() is None, (tmp_path / "killed.log").read_text()
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()

    log = (tmp_path / "killed.log").read_text()
    assert "PagentInterruptedError" in log, log[-3000:]
    assert json.loads(result_file.read_text())["state"] == "failed"
    server = stored(slow_emulator, "session_id")
    ledger = statuses(warehouse)
    assert 500 <= sum(server.values()) < ROWS
    assert ledger["sent"] == sum(server.values()) == len(server)
    assert ledger["claimed"] == 0 and ledger["unknown"] == 0

    process, result_file = start_dag_run(tmp_path, "rerun", warehouse, slow_emulator)
    assert process.wait(timeout=120) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    rerun = json.loads(result_file.read_text())
    assert rerun["state"] == "success"
    assert rerun["result"]["sent"] == ROWS - len(server) and rerun["result"]["already_sent"] == len(server)
    assert stored(slow_emulator, "session_id") == Counter(frame["session_id"].tolist())
