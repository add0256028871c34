"""What ``lookback`` costs: the daily sync with and without re-reading the days before, side by side.

Run it on its own (it is not part of ``make benchmark``'s table)::

    .venv/bin/python -m benchmarks.lookback                      # 8 days x 25,000 rows, lookback 3 days
    .venv/bin/python -m benchmarks.lookback --rows-per-day 5000 --days 6 --json

Each simulated day makes three runs, one right after another, against one
fast-sink process (no latency) and SQLite (source, and one ledger file per
series), so that the noise of a shared machine mostly cancels out:

``first``
    the day's window ``[d, d+1)`` on ledger A: every row is new (a daily run without lookback).
``lookback``
    ``[d - lookback, d+1)`` on ledger B: the day's rows are new, the days before
    are already sent and skipped (the daily run with ``lookback``).
``reread``
    ``[d - lookback, d)`` again on ledger A: nothing but rows already sent (the re-read alone).

Printed, over the days that have a full lookback behind them (medians):
``lookback / first`` (what a daily run costs with the lookback, against
without) and ``reread / (lookback days x first)`` (what re-reading one sent
day costs, against sending it the first time). No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.datagen import TABLE, load_sqlite, warm_sqlite
from benchmarks.engine_runs import API_KEY, NAMESPACE, TRANSFORM
from benchmarks.sink import SinkProcess
from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.operators.lookback import with_lookback
from pagent_provider.testing.sample_warehouse import generate_conversions

FIRST_DAY = datetime(2026, 10, 1)
SQL = f"SELECT * FROM {TABLE} WHERE converted_at >= :start AND converted_at < :end ORDER BY converted_at, order_id"
STAMP = "%Y-%m-%d %H:%M:%S"


def _window(day: datetime) -> dict[str, str]:
    return {"start": day.strftime(STAMP), "end": (day + timedelta(days=1)).strftime(STAMP)}


def _run(source: sa.Engine, url: str, ledger: Ledger, params: dict[str, str], workers: int) -> dict[str, Any]:
    client = PagentClient(API_KEY, base_url=url, pool_size=workers)
    sync = ConversionSync(client, TRANSFORM, SyncOptions(max_workers=workers), ledger=ledger)
    try:
        started = time.perf_counter()
        summary = sync.run(read_sql_chunks(source, SQL, params, chunksize=10_000))
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return {"seconds": seconds, "rows": summary.rows, "sent": summary.sent, "already_sent": summary.already_sent}


def measure(rows_per_day: int, days: int, lookback_days: int, workers: int = 4) -> dict[str, Any]:
    """Run the three series day by day; return every run and the two ratios."""
    lookback = timedelta(days=lookback_days)
    with tempfile.TemporaryDirectory(prefix="pagent-lookback-") as scratch:
        folder = Path(scratch)
        frame = generate_conversions(
            rows_per_day * days, start=FIRST_DAY, end=FIRST_DAY + timedelta(days=days), seed=17
        )
        source = load_sqlite(folder / "warehouse.db", frame)
        with source.begin() as conn:  # a warehouse selects a window without scanning the table
            conn.exec_driver_sql(f"CREATE INDEX ix_{TABLE}_time ON {TABLE} (converted_at)")
        warm_sqlite(source)
        plain = Ledger(sa.create_engine(f"sqlite:///{folder / 'ledger_a.db'}"), namespace=NAMESPACE)
        looking = Ledger(sa.create_engine(f"sqlite:///{folder / 'ledger_b.db'}"), namespace=NAMESPACE)
        runs = []
        with SinkProcess() as sink:
            for n in range(days):
                day = FIRST_DAY + timedelta(days=n)
                window = _window(day)
                earlier = {"start": with_lookback(window, "start", lookback)["start"], "end": window["start"]}
                runs.append(
                    {
                        "day": day.date().isoformat(),
                        "first": _run(source, sink.url, plain, window, workers),
                        "lookback": _run(source, sink.url, looking, with_lookback(window, "start", lookback), workers),
                        "reread": _run(source, sink.url, plain, earlier, workers) if n else None,
                    }
                )
        for ledger in (plain, looking):
            ledger.engine.dispose()
        source.dispose()
    steady = runs[lookback_days:]  # days with a full lookback of sent days behind them
    if not steady:
        raise SystemExit(f"--days must be more than the lookback ({lookback_days}) to have a steady state")
    lookback_vs_first = statistics.median(r["lookback"]["seconds"] / r["first"]["seconds"] for r in steady)
    reread_per_day = statistics.median(r["reread"]["seconds"] / (lookback_days * r["first"]["seconds"]) for r in steady)
    return {
        "rows_per_day": rows_per_day,
        "days": days,
        "lookback_days": lookback_days,
        "workers": workers,
        "lookback_vs_first": round(lookback_vs_first, 3),
        "reread_day_vs_first_day": round(reread_per_day, 3),
        "runs": runs,
    }


def describe(result: dict[str, Any]) -> str:
    """The two ratios and the runs behind them, as a short table."""
    lines = [
        f"lookback {result['lookback_days']} days, {result['rows_per_day']:,} rows a day, {result['days']} days, "
        f"max_workers={result['workers']} (fast sink, SQLite source and ledgers)",
        f"{'day':<12}{'first s':>9}{'lookback s':>12}{'reread s':>10}",
    ]
    for run in result["runs"]:
        reread = f"{run['reread']['seconds']:.3f}" if run["reread"] else "-"
        lines.append(f"{run['day']:<12}{run['first']['seconds']:>9.3f}{run['lookback']['seconds']:>12.3f}{reread:>10}")
    lines.append(f"a daily run with the lookback / without:        {result['lookback_vs_first']:.2f}x (median)")
    lines.append(f"re-reading one sent day / sending it the first time: {result['reread_day_vs_first_day']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; ``--json`` prints the whole result instead."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lookback", description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=25_000)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--lookback-days", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.rows_per_day, args.days, args.lookback_days, args.workers)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
