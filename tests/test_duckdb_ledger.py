"""A DuckDB ledger (duckdb_engine), one process at a time: exact keys, rejects, re-runs, and a clear refusal
when another process holds the file. A real DuckDB file, the real emulator over HTTP."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.ledger_dialects import check_placement, ledger_dialect
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.exceptions import PagentLedgerError

pytest.importorskip("duckdb_engine", reason="the duckdb extra (duckdb-engine) is not installed")

KEYS = ["ABC", "abc", "é", "e\u0301", "x", "x ", "01", "1"]


def chunk() -> pd.DataFrame:
    rows = len(KEYS)
    return pd.DataFrame(
        {
            "order_id": KEYS,
            "session_id": [f"s{i}" for i in range(rows)],
            "user_id": "u",
            "conversion_id": ["goal"] * (rows - 1) + [None],  # the last row is invalid: a reject
        }
    )


def sync(engine: sa.Engine, url: str) -> dict:
    with PagentClient("test-key", base_url=url) as client:
        run = ConversionSync(
            client,
            TransformConfig(key_column="order_id", require_time=False),
            SyncOptions(max_invalid_rows=1),
            ledger=Ledger(engine, namespace="pagent_default"),
        )
        return run.run([chunk()]).as_dict()


def test_a_duckdb_ledger_keeps_every_byte_exact_key_once(tmp_path: Path, pagent_emulator) -> None:
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'ledger.duckdb'}")
    try:
        first, second = sync(engine, pagent_emulator.url), sync(engine, pagent_emulator.url)
        statuses = Ledger(engine, namespace="pagent_default").count_by_status()
        rejects = pd.read_sql("SELECT id, row_ref FROM pagent_ledger_rejects ORDER BY id", engine)
    finally:
        engine.dispose()
    assert first["sent"] == len(KEYS) - 1 and first["invalid"] == 1
    assert second["sent"] == 0 and second["already_sent"] == len(KEYS) - 1
    assert statuses == {"sent": len(KEYS) - 1}
    assert sorted(e["session_id"] for e in pagent_emulator.events()) == sorted(f"s{i}" for i in range(len(KEYS) - 1))
    assert rejects["id"].tolist() == [1, 2]  # ids from the sequence, one reject per run


def test_a_duckdb_file_held_by_another_process_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, time, pathlib
            con = duckdb.connect("{path}")
            pathlib.Path("{path}.held").touch()
            time.sleep(60)
        """),
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{path}.held").exists():
            assert time.monotonic() < deadline, "the other process never opened the file"
            time.sleep(0.05)
        engine = sa.create_engine(f"duckdb:///{path}")
        started = time.monotonic()
        with pytest.raises(PagentLedgerError, match="one process at a time"):
            Ledger(engine, namespace="pagent_default").create_tables()
        assert time.monotonic() - started < 10  # not retried for a minute
        engine.dispose()
    finally:
        holder.kill()
        holder.wait()


def test_a_duckdb_ledger_is_one_machine_only() -> None:
    with pytest.raises(PagentLedgerError, match="several machines"):
        check_placement(ledger_dialect("duckdb"), "CeleryExecutor")
