"""Benchmark the sync engine against what users would otherwise write; see benchmarks/README.md.

Usage::

    python -m benchmarks [--rows 1000000] [--quick] [--out DIR] [--cap-seconds S] [--strict]
    python benchmarks/run.py ...            # the same
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import measure, report
from benchmarks.settings import Settings

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the pagent sync against a minimal pipeline, a sequential client and the "
        "vendor's example, side by side in one run; print a table, write results.json and throughput.png.",
    )
    parser.add_argument(
        "--rows",
        type=int,
        help="rows of the warehouse table and of the large memory run (default 1,000,000; 20,000 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and fewer points (well under a minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default %(default)s)")
    parser.add_argument(
        "--cap-seconds",
        type=float,
        help="time cap of any single run; a capped run stops at a chunk boundary and the runs it is "
        "compared with use the same rows (default 150, 20 with --quick; 0 = no cap)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    cap = args.cap_seconds
    kwargs = {} if cap is None else {"cap_s": cap or None}
    if args.quick:
        return Settings.quick_preset(rows=args.rows or 20_000, **kwargs)
    return Settings.full(rows=args.rows or 1_000_000, **kwargs)


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("airflow-provider-pagent", "pandas", "numpy", "sqlalchemy", "requests", "psycopg"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _git() -> dict[str, str | bool]:
    """The commit measured, and whether the engine's code differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pagent_provider"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "pagent_provider_modified": bool(dirty)}


def _check_requirements() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("the benchmark draws its chart with matplotlib: pip install -e '.[benchmark]' (make test installs it)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    _check_requirements()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"pagent sync benchmark ({'quick' if settings.quick else 'full'}), {os.cpu_count()} CPUs", flush=True)

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    bench, results = measure.run_all(settings, progress)
    wall = time.perf_counter() - started
    meta = {
        "started_at": started_at,
        "wall_time_s": round(wall, 1),
        "mode": "quick" if settings.quick else "full",
        "settings": {
            **{
                name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(settings).items()
            },
            "chunksize": 10_000,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": _versions(),
        "git": _git(),
    }
    table = report.format_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(report.results_document(bench, results, meta), args.out / "results.json")
    report.draw_chart(bench, results, args.out / "throughput.png")
    (args.out / "results.txt").write_text(table + f"\nwall time {wall:.0f}s\n")
    print()
    print(table)
    print(f"\nwall time {wall:.0f}s; wrote {args.out / 'results.json'}, {args.out / 'throughput.png'}")
    if args.strict and not all(result.met for result in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
