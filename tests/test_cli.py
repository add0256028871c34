"""The ``pagent-conversions`` command line, run as a real subprocess.

Every run goes against a SQLite warehouse file built with the sample data and
an emulator running in this test process (``pagent_emulator``, key
``"test-key"``). Every subprocess gets an ``airflow`` package that refuses to
be imported, proving that the command-line tool never needs Airflow, and every
run's output is checked for the API key.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.sync import SyncSummary
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

KEY = "test-key"  # the emulator fixture's key
ROWS = 200
CLI = [sys.executable, "-m", "pagent_provider.cli"]
# The columns of the sample table, mapped onto event fields; order_id rides along in
# the properties so that each delivered event can be traced back to its row.
MAPPING = [
    "--columns",
    "time=converted_at",
    "revenue=amount_usd",
    "--key-column",
    "order_id",
    "--properties-columns",
    "order_id,channel",
]
QUERY = "SELECT * FROM conversions ORDER BY order_id"


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def no_airflow_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding an ``airflow`` package whose import fails."""
    root = tmp_path_factory.mktemp("no_airflow")
    (root / "airflow").mkdir()
    (root / "airflow" / "__init__.py").write_text(
        "raise ImportError('the pagent-conversions command must not import Airflow')\n"
    )
    return root


@pytest.fixture(scope="session")
def sample_frame() -> pd.DataFrame:
    """ROWS reproducible orders from the last few days."""
    return generate_conversions(ROWS, start=datetime(2026, 1, 1), end=datetime(2026, 1, 4), seed=11)


def build_warehouse(path: Path, frame: pd.DataFrame) -> str:
    """Write ``frame`` to a SQLite file; return its SQLAlchemy URL."""
    url = f"sqlite:///{path}"
    write_conversions(url, frame)
    return url


@pytest.fixture
def warehouse(tmp_path: Path, sample_frame: pd.DataFrame) -> str:
    """URL of a SQLite warehouse holding the sample orders."""
    return build_warehouse(tmp_path / "shop.db", sample_frame)


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    no_airflow: Path,
    key: str | None = KEY,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``pagent-conversions ARGS`` with ``key`` in PAGENT_API_KEY; check that the key never shows."""
    completed = subprocess.run(
        [*CLI, *args], cwd=cwd, env=cli_env(no_airflow, key, env), capture_output=True, text=True, timeout=timeout
    )
    if key:
        assert key not in completed.stdout and key not in completed.stderr, "the API key was printed"
    return completed


def cli_env(no_airflow: Path, key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI run: no inherited pagent settings, Airflow made unimportable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PAGENT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(no_airflow), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if key is not None:
        env["PAGENT_API_KEY"] = key
    env.update(extra or {})
    return env


def sync_args(emulator: IngestEmulator, source_url: str, *extra: str, sql: str = QUERY) -> list[str]:
    """``sync`` against the emulator, with the sample mapping."""
    return ["sync", "--base-url", emulator.url, "--source-url", source_url, "--sql", sql, *MAPPING, *extra]


def parse_json(stdout: str) -> dict:
    """The one JSON object of ``--json``."""
    document = json.loads(stdout)
    assert isinstance(document, dict)
    return document


def table_value(stdout: str, name: str) -> str:
    """The value of row ``name`` in the summary table."""
    match = re.search(rf"^{re.escape(name)}\s+(\S+)$", stdout, re.MULTILINE)
    assert match, f"no row {name!r} in:\n{stdout}"
    return match.group(1)


def free_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ledger_count(source_url: str, table: str = "pagent_ledger") -> int | None:
    """Rows in the ledger table, or None when it does not exist."""
    engine = sa.create_engine(source_url)
    try:
        if not sa.inspect(engine).has_table(table):
            return None
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- sync


def test_sync_delivers_every_row_exactly_once_with_exact_revenue(
    pagent_emulator: IngestEmulator, warehouse: str, sample_frame: pd.DataFrame, tmp_path: Path, no_airflow_path: Path
) -> None:
    result = run_cli(
        sync_args(pagent_emulator, warehouse, "--batch-size", "30", "--verbose"),
        cwd=tmp_path,
        no_airflow=no_airflow_path,
    )

    assert result.returncode == 0, result.stderr
    assert table_value(result.stdout, "status") == "ok"
    assert table_value(result.stdout, "rows") == str(ROWS)
    assert table_value(result.stdout, "sent") == str(ROWS)
    assert table_value(result.stdout, "accepted") == str(ROWS)
    assert table_value(result.stdout, "dry_run") == "no"
    assert "\r" not in result.stderr  # no progress line when stderr is not a terminal
    events = pagent_emulator.events()
    per_order = Counter(event["properties"]["order_id"] for event in events)
    assert len(events) == ROWS and set(per_order.values()) == {1}
    expected = {
        int(row.order_id): (int(row.amount_usd * 100), int(pd.Timestamp(row.converted_at).timestamp() * 1000))
        for row in sample_frame.itertuples()
    }
    assert all(isinstance(row.amount_usd, Decimal) for row in sample_frame.itertuples())
    delivered = {event["properties"]["order_id"]: (event["revenue"], event["time"]) for event in events}
    assert delivered == expected
    assert ledger_count(warehouse) == ROWS


def test_rerun_sends_nothing_and_reports_json(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    first = run_cli(sync_args(pagent_emulator, warehouse, "--json"), cwd=tmp_path, no_airflow=no_airflow_path)
    second = run_cli(sync_args(pagent_emulator, warehouse, "--json"), cwd=tmp_path, no_airflow=no_airflow_path)

    assert first.returncode == 0 and second.returncode == 0, second.stderr
    summary = parse_json(second.stdout)
    # status first, no "error" on success, the metrics last
    assert list(summary) == ["status", *SyncSummary().as_dict(), "metrics"]
    assert summary["status"] == "ok"
    assert summary["metrics"]["pagent.already_sent"] == ROWS and summary["metrics"]["pagent.sent"] == 0
    assert summary["rows"] == summary["already_sent"] == ROWS
    assert summary["sent"] == summary["requests"] == summary["changed_after_send"] == 0
    assert parse_json(first.stdout)["sent"] == ROWS
    assert len(pagent_emulator.events()) == ROWS
    # both runs are in the run history next to the ledger (the warehouse, by default)
    runs = pd.read_sql("SELECT outcome, sent, already_sent FROM pagent_ledger_runs ORDER BY started_at", warehouse)
    assert runs.values.tolist() == [["success", ROWS, 0], ["success", 0, ROWS]]


def test_api_v2_delivers_through_the_bulk_endpoint_and_shares_the_ledger_with_v1(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    first = run_cli(
        sync_args(pagent_emulator, warehouse, "--api", "v2", "--json"), cwd=tmp_path, no_airflow=no_airflow_path
    )
    as_v1 = run_cli(
        sync_args(pagent_emulator, warehouse, "--api", "v1", "--json"), cwd=tmp_path, no_airflow=no_airflow_path
    )
    bad = run_cli(sync_args(pagent_emulator, warehouse, "--api", "v3"), cwd=tmp_path, no_airflow=no_airflow_path)

    assert first.returncode == 0, first.stderr
    assert parse_json(first.stdout)["sent"] == ROWS
    assert {record.path for record in pagent_emulator.requests()} == {"/v2/conversions/bulk"}
    assert all("session_data" in accepted.event for accepted in pagent_emulator.accepted())
    assert as_v1.returncode == 0, as_v1.stderr
    assert parse_json(as_v1.stdout)["already_sent"] == ROWS and parse_json(as_v1.stdout)["sent"] == 0
    assert len(pagent_emulator.events()) == ROWS
    assert bad.returncode == 2 and "invalid choice: 'v3'" in bad.stderr


def test_reconcile_finds_what_a_stopped_run_left_and_nothing_once_it_is_delivered(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    refused = {7, 70}
    pagent_emulator.faults = Faults(refuse=lambda e: "unknown goal" if e["properties"]["order_id"] in refused else None)
    run_cli(sync_args(pagent_emulator, warehouse, "--max-invalid-rows", "5"), cwd=tmp_path, no_airflow=no_airflow_path)
    check = ["reconcile", "--source-url", warehouse, "--sql", QUERY, *MAPPING, "--json"]
    before = run_cli(check, cwd=tmp_path, no_airflow=no_airflow_path)
    assert before.returncode == 1, before.stderr
    report = parse_json(before.stdout)
    assert report["counts"]["refused"] == 2 and report["counts"]["sent"] == ROWS - 2 and report["unaccounted"] == 2
    assert {int(e["key"]) for e in report["examples"]["refused"]} == refused

    pagent_emulator.faults = Faults()  # the goal now exists: the re-run delivers them
    run_cli(sync_args(pagent_emulator, warehouse), cwd=tmp_path, no_airflow=no_airflow_path)
    after = run_cli(check, cwd=tmp_path, no_airflow=no_airflow_path)
    assert after.returncode == 0 and parse_json(after.stdout)["counts"]["sent"] == ROWS
    assert len(pagent_emulator.events()) == ROWS


def test_dry_run_sends_nothing_writes_nothing_and_needs_no_key(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    result = run_cli(
        sync_args(pagent_emulator, warehouse, "--dry-run", "--json"), cwd=tmp_path, no_airflow=no_airflow_path, key=None
    )

    assert result.returncode == 0, result.stderr
    summary = parse_json(result.stdout)
    assert summary["dry_run"] is True and summary["status"] == "ok"
    assert summary["valid"] == ROWS and summary["sent"] == summary["requests"] == 0
    assert pagent_emulator.requests() == []
    assert ledger_count(warehouse) is None
    assert ledger_count(warehouse, "pagent_ledger_rejects") is None


def test_sql_file_and_parameters(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    query = tmp_path / "orders.sql"
    query.write_text("SELECT * FROM conversions\nWHERE order_id > :first AND channel = :channel\n")
    result = run_cli(
        sync_args(pagent_emulator, warehouse, "--param", "first=150", "channel=web", "--json", sql=str(query)),
        cwd=tmp_path,
        no_airflow=no_airflow_path,
    )

    assert result.returncode == 0, result.stderr
    events = pagent_emulator.events()
    assert parse_json(result.stdout)["sent"] == len(events) > 0
    assert all(e["properties"]["order_id"] > 150 and e["properties"]["channel"] == "web" for e in events)


# --------------------------------------------------------------------------- failures


def test_missing_api_key_is_a_usage_error(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    result = run_cli(sync_args(pagent_emulator, warehouse), cwd=tmp_path, no_airflow=no_airflow_path, key=None)

    assert result.returncode == 2
    assert "PAGENT_API_KEY" in result.stderr
    assert result.stdout == ""
    assert pagent_emulator.requests() == []


def test_missing_column_is_a_usage_error_naming_it(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    sql = "SELECT order_id, session_id, user_id, conversion_id, amount_usd FROM conversions"
    result = run_cli(sync_args(pagent_emulator, warehouse, sql=sql), cwd=tmp_path, no_airflow=no_airflow_path)

    assert result.returncode == 2
    assert "'converted_at'" in result.stderr and "Available columns" in result.stderr
    assert "Traceback" not in result.stderr
    assert pagent_emulator.requests() == []


def test_invalid_rows_beyond_the_limit_fail_after_delivering_the_valid_ones(
    pagent_emulator: IngestEmulator, sample_frame: pd.DataFrame, tmp_path: Path, no_airflow_path: Path
) -> None:
    frame = sample_frame.copy()
    frame.loc[frame.index[:3], "conversion_id"] = None  # goal label that matched no goal
    source = build_warehouse(tmp_path / "shop.db", frame)

    strict = run_cli(sync_args(pagent_emulator, source), cwd=tmp_path, no_airflow=no_airflow_path)
    tolerant = run_cli(
        sync_args(pagent_emulator, source, "--max-invalid-rows", "3"), cwd=tmp_path, no_airflow=no_airflow_path
    )

    assert strict.returncode == 1
    assert "max_invalid_rows" in strict.stderr and "conversion_id is NULL" in strict.stderr
    assert table_value(strict.stdout, "status") == "failed"
    assert table_value(strict.stdout, "invalid") == "3"
    assert table_value(strict.stdout, "sent") == str(ROWS - 3)
    assert "reject examples:" in strict.stdout
    assert tolerant.returncode == 0, tolerant.stderr
    assert table_value(tolerant.stdout, "already_sent") == str(ROWS - 3)
    assert len(pagent_emulator.events()) == ROWS - 3


def test_rows_refused_by_pagent_beyond_the_limit_fail(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    pagent_emulator.faults = Faults(
        refuse=lambda event: "unknown goal" if event["properties"]["order_id"] % 50 == 0 else None
    )
    result = run_cli(
        sync_args(pagent_emulator, warehouse, "--max-invalid-rows", "2", "--json"),
        cwd=tmp_path,
        no_airflow=no_airflow_path,
    )

    assert result.returncode == 1
    summary = parse_json(result.stdout)
    assert summary["status"] == "failed"
    # past the limit (2) the next refused request is not bisected: its rows are released, not sent
    assert summary["rejected"] == 3 and summary["failed"] > 0
    assert "refused" in summary["error"] and "refused" in result.stderr
    assert len(pagent_emulator.events()) == summary["sent"] <= ROWS - 3 - summary["failed"]

    # with room for every refused row, a re-run delivers exactly what was left
    rerun = run_cli(
        sync_args(pagent_emulator, warehouse, "--max-invalid-rows", "10", "--json"),
        cwd=tmp_path,
        no_airflow=no_airflow_path,
    )
    assert rerun.returncode == 0, rerun.stderr
    stored = [event["properties"]["order_id"] for event in pagent_emulator.events()]
    assert len(stored) == len(set(stored)) == ROWS - ROWS // 50


def test_refused_key_during_sync_exits_3(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    bad_key = "bad-key-4c1d9e"
    result = run_cli(sync_args(pagent_emulator, warehouse), cwd=tmp_path, no_airflow=no_airflow_path, key=bad_key)

    assert result.returncode == 3
    assert "401" in result.stderr and "PAGENT_API_KEY" in result.stderr
    assert table_value(result.stdout, "status") == "failed"
    assert pagent_emulator.events() == []


# --------------------------------------------------------------------------- check


def test_check_accepts_the_good_key(pagent_emulator: IngestEmulator, tmp_path: Path, no_airflow_path: Path) -> None:
    result = run_cli(["check", "--base-url", pagent_emulator.url], cwd=tmp_path, no_airflow=no_airflow_path)

    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert pagent_emulator.events() == []


def test_check_refuses_a_bad_key(pagent_emulator: IngestEmulator, tmp_path: Path, no_airflow_path: Path) -> None:
    bad_key = "bad-key-7e2a01"
    result = run_cli(
        ["check", "--base-url", pagent_emulator.url], cwd=tmp_path, no_airflow=no_airflow_path, key=bad_key
    )

    assert result.returncode == 3
    assert "401" in result.stderr


def test_check_reports_an_unreachable_url(tmp_path: Path, no_airflow_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(["check"], cwd=tmp_path, no_airflow=no_airflow_path, env={"PAGENT_BASE_URL": url})

    assert result.returncode == 1
    assert "Could not check the key" in result.stderr and url in result.stderr


# --------------------------------------------------------------------------- help, emulator, terminal


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["sync", "check", "emulator", "PAGENT_API_KEY"]),
        (["sync"], ["--source-url", "--dry-run", "--ledger-namespace", "pagent_default", "examples:", "exit status:"]),
        (["check"], ["--base-url", "examples:"]),
        (["emulator"], ["--port", "--fail-every", "examples:"]),
    ],
)
def test_help(command: list[str], expected: list[str], tmp_path: Path, no_airflow_path: Path) -> None:
    result = run_cli([*command, "--help"], cwd=tmp_path, no_airflow=no_airflow_path, key=None)

    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout


def test_bad_flag_and_key_flag_are_usage_errors(tmp_path: Path, no_airflow_path: Path) -> None:
    bad = run_cli(["sync", "--source-url", "sqlite:///x.db"], cwd=tmp_path, no_airflow=no_airflow_path)
    key_flag = run_cli(["check", "--api-key", "sk-should-not-echo"], cwd=tmp_path, no_airflow=no_airflow_path, key=None)

    assert bad.returncode == 2 and "--sql" in bad.stderr
    assert key_flag.returncode == 2 and "PAGENT_API_KEY" in key_flag.stderr
    assert "sk-should-not-echo" not in key_flag.stderr


def test_emulator_command_serves_until_terminated(tmp_path: Path, no_airflow_path: Path) -> None:
    emulator = subprocess.Popen(
        [*CLI, "emulator", "--port", "0"],
        cwd=tmp_path,
        env=cli_env(no_airflow_path, None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().split()[-1]
        check = run_cli(["check", "--base-url", url], cwd=tmp_path, no_airflow=no_airflow_path)
        assert check.returncode == 0, check.stderr
    finally:
        emulator.send_signal(signal.SIGTERM)
        out, err = emulator.communicate(timeout=10)
    assert emulator.returncode == 0, err
    assert "pagent emulator stopped" in out


def read_all(fd: int, into: list[bytes]) -> None:
    """Read a pty until its other side is closed."""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return
        if not data:
            return
        into.append(data)


def test_progress_line_on_a_terminal(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    pagent_emulator.faults = Faults(latency_s=0.05)  # about one second in all: several redraws
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, *sync_args(pagent_emulator, warehouse, "--batch-size", "10", "--max-workers", "1")],
            cwd=tmp_path,
            env=cli_env(no_airflow_path, KEY),
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
    finally:
        os.close(terminal)  # the child holds its own copy; the controller sees EOF when the child exits
    received: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(controller, received), daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=60)
        reader.join(timeout=10)
    finally:
        os.close(controller)
    on_terminal = b"".join(received).decode()

    assert process.returncode == 0
    assert "rows read" in on_terminal and "sent" in on_terminal and "rows/s" in on_terminal
    assert on_terminal.endswith("\r\x1b[K")  # the line is wiped before the summary
    assert KEY not in on_terminal and KEY not in stdout
    assert table_value(stdout, "sent") == str(ROWS)


def test_airflow_connection_ids_instead_of_urls(
    pagent_emulator: IngestEmulator, warehouse: str, tmp_path: Path, no_airflow_path: Path
) -> None:
    database = sa.engine.make_url(warehouse).database
    ledger_db = tmp_path / "ledger.db"
    env = {
        "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": database}),
        "AIRFLOW_CONN_PAGENT_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(ledger_db)}),
    }
    args = ["sync", "--base-url", pagent_emulator.url, "--conn-id", "warehouse", "--sql", QUERY, *MAPPING, "--json"]
    # with Airflow importable: the very connections a DAG would use
    done = subprocess.run(
        [*CLI, *args, "--ledger-conn-id", "pagent_ledger"],
        cwd=tmp_path,
        env={**cli_env(tmp_path / "no-such-dir", KEY), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert parse_json(done.stdout)["sent"] == ROWS == len(pagent_emulator.events())
    ledger = sa.create_engine(f"sqlite:///{ledger_db}")
    sent = (
        "SELECT count(*) AS n FROM pagent_ledger e JOIN pagent_ledger_claims c ON c.claim_id = e.claim_id"
        " WHERE COALESCE(e.status, c.status) = 'sent'"
    )
    assert pd.read_sql(sent, ledger).n[0] == ROWS
    ledger.dispose()

    # without Airflow, a connection id is a usage error that says what to give instead
    refused = run_cli(args, cwd=tmp_path, no_airflow=no_airflow_path, env=env)
    assert refused.returncode == 2 and "needs Airflow installed" in refused.stderr
