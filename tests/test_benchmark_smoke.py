"""The benchmark suite runs end to end in its quick mode and reports every target.

No timing is asserted here: the figures depend on the machine. What is checked
is that the command completes and that its table, JSON and chart are well formed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET_IDS = (
    "overhead",
    "concurrency_ideal",
    "concurrency_sequential",
    "concurrency_sqlite_w8",
    "concurrency_sqlite_w32",
    "concurrency_postgresql_w8",
    "concurrency_postgresql_w32",
    "vendor",
    "memory",
    "ledger_cost",
    "ledger_cost_postgresql",
    "ledger_rerun",
    "ledger_bytes_sqlite",
    "ledger_bytes_postgresql",
    "ledger_bytes_mariadb",
    "ledger_growth_sqlite",
    "ledger_growth_postgresql",
)
# measured on a PostgreSQL or MariaDB ledger: left out (with a note) when the server is not reachable
NEEDS_A_SERVER = {target for target in TARGET_IDS if "postgresql" in target or "mariadb" in target}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_benchmark_produces_table_json_and_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the benchmark chart needs matplotlib (the benchmark extra)")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    document = json.loads((tmp_path / "results.json").read_text())
    targets = {target["id"]: target for target in document["targets"]}
    required = set(TARGET_IDS) if os.environ.get("PAGENT_REQUIRE_SERVICES") == "1" else set(TARGET_IDS) - NEEDS_A_SERVER
    assert required <= set(targets) <= set(TARGET_IDS)
    for target in targets.values():
        assert _number(target["measured"]) and target["measured"] > 0, target
        assert _number(target["limit"]), target
        assert target["comparison"] in ("<=", ">="), target
        assert isinstance(target["met"], bool), target
        assert _number(target["margin_pct"]), target
        expected = (
            target["measured"] <= target["limit"]
            if target["comparison"] == "<="
            else (target["measured"] >= target["limit"])
        )
        assert target["met"] == expected, target
    assert document["meta"]["mode"] == "quick"
    assert _number(document["meta"]["wall_time_s"])
    for run in ("sync_ledger_on", "minimal_pipeline", "sync_ledger_off", "sync_rerun", "vendor_pattern_50ms"):
        assert document["runs"][run]["events"] > 0, run
        assert _number(document["runs"][run]["events_per_s"]), run
    assert document["runs"]["sync_rerun"]["sent"] == 0
    assert [point["workers"] for point in document["sweep"]] == [1, 4, 8]
    # the chart's cost against ledger size: each database's big ledger measured at growing sizes
    growth = [target["numbers"] for name, target in targets.items() if name.startswith("ledger_growth_")]
    assert growth, "no growth target ran"
    for numbers in growth:
        steps = numbers["steps"]
        assert [step["ledger_rows"] for step in steps] == sorted({step["ledger_rows"] for step in steps}), steps
        assert len(steps) >= 2 and steps[-1]["ledger_rows"] == numbers["history_rows"], steps
        assert all(step["day_s"] > 0 and step["empty_s"] > 0 for step in steps), steps
        assert steps[-1]["ratio"] == pytest.approx(sorted(numbers["ratios"])[len(numbers["ratios"]) // 2], abs=0.001), (
            numbers
        )
    assert document["growth_points"] == [step for numbers in growth for step in numbers["steps"]]
    if os.environ.get("PAGENT_REQUIRE_SERVICES") == "1":  # CI: PostgreSQL must be there
        assert targets["memory"]["numbers"]["source"] == "PostgreSQL"

    # The printed table: a header, then one row per target with its measured ratio and verdict.
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Target ") and "| Measured" in line)
    shown = [target_id for target_id in TARGET_IDS if target_id in targets]
    rows = lines[header + 2 : header + 2 + len(shown)]
    for row, target_id in zip(rows, shown, strict=True):
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[0] == targets[target_id]["title"], row
        measured = float(cells[1].split()[0].rstrip("x"))  # "1.07x", or "247 B/event"
        precision = 0.01 if targets[target_id]["unit"] == "x" else 0.5
        assert measured == pytest.approx(targets[target_id]["measured"], rel=0.01, abs=precision)
        assert cells[3] == ("met" if targets[target_id]["met"] else "MISSED"), row
    assert (tmp_path / "results.txt").read_text().startswith(lines[header])

    chart = tmp_path / "throughput.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fast_loader_stores_what_load_conversions_stores(tmp_path: Path) -> None:
    import pandas as pd
    import sqlalchemy as sa

    from benchmarks import datagen
    from pagent_provider.testing.sample_warehouse import load_conversions

    frame = datagen.make_rows(500)
    fast = datagen.load_sqlite(tmp_path / "fast.db", frame)
    reference = sa.create_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    load_conversions(reference, frame)
    query = "SELECT * FROM conversions ORDER BY order_id"
    try:
        pd.testing.assert_frame_equal(pd.read_sql(query, fast), pd.read_sql(query, reference))
    finally:
        fast.dispose()
        reference.dispose()
