"""The measurements: each target's runs, side by side in one process, and their ratios.

Every ratio compares runs made one after the other in the same benchmark run,
on the same rows and against the same sink, so the noise of a shared machine
mostly cancels out. Each function here returns :class:`TargetResult` rows and
records the runs it made in :attr:`Bench.runs`.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks import baselines, datagen, engine_runs, memory
from benchmarks.common import Timing
from benchmarks.settings import TARGETS_BY_ID, Settings
from benchmarks.sink import SinkProcess

log = logging.getLogger("benchmarks")


@dataclass
class TargetResult:
    """One row of the results table."""

    id: str
    title: str
    measured: float
    comparison: str
    limit: float
    summary: str
    meaning: str
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.measured <= self.limit if self.comparison == "<=" else self.measured >= self.limit

    @property
    def margin_pct(self) -> float:
        """Distance from the limit in percent of it: positive = headroom, negative = missed by."""
        if self.comparison == "<=":
            return (self.limit - self.measured) / self.limit * 100
        return (self.measured - self.limit) / self.limit * 100

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "measured": round(self.measured, 4),
            "comparison": self.comparison,
            "limit": self.limit,
            "met": self.met,
            "margin_pct": round(self.margin_pct, 1),
            "summary": self.summary,
            "meaning": self.meaning,
            "numbers": self.numbers,
            "notes": self.notes,
        }


def _result(target_id: str, measured: float, summary: str, numbers: dict[str, Any], notes: list[str]) -> TargetResult:
    target = TARGETS_BY_ID[target_id]
    return TargetResult(
        id=target.id,
        title=target.title,
        measured=measured,
        comparison=target.comparison,
        limit=target.limit,
        summary=summary,
        meaning=target.meaning,
        numbers=numbers,
        notes=notes,
    )


def _rate(value: float) -> str:
    return f"{value:,.0f} ev/s"


@dataclass
class Bench:
    """Everything one benchmark run shares: settings, data, scratch directory, recorded runs."""

    settings: Settings
    workdir: Path
    sqlite: sa.Engine
    postgres: sa.Engine | None = None
    postgres_note: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    progress: Callable[[str], None] = print

    def record(self, name: str, timing: Timing, sink: SinkProcess | None = None) -> Timing:
        data = timing.as_dict()
        if sink is not None:
            accepted = sink.accepted()
            data["sink_accepted"] = accepted
            sink.reset()
            expected = timing.details.get("sent", timing.events)
            if accepted != expected:
                raise RuntimeError(f"{name}: the sink accepted {accepted} events, the run reported {expected}")
        self.runs[name] = data
        capped = f", capped after {timing.rows:,} rows" if timing.capped else ""
        self.progress(
            f"  {name}: {timing.events:,} events in {timing.seconds:.2f}s = {_rate(timing.events_per_s)}{capped}"
        )
        return timing


def prepare(settings: Settings, workdir: Path, stack: ExitStack, progress: Callable[[str], None] = print) -> Bench:
    """Generate the rows once; load them into SQLite, and into a scratch PostgreSQL database when it answers.

    The PostgreSQL database is dropped when ``stack`` closes.
    """
    progress(f"generating {settings.rows:,} rows (seed {settings.seed}) and loading them")
    frame = datagen.make_rows(settings.rows, seed=settings.seed)
    sqlite = datagen.load_sqlite(workdir / "warehouse.db", frame)
    stack.callback(sqlite.dispose)
    datagen.warm_sqlite(sqlite)
    bench = Bench(settings=settings, workdir=workdir, sqlite=sqlite, progress=progress)
    problem = datagen.postgres_reachable()
    if problem is None:
        bench.postgres = stack.enter_context(datagen.postgres_database())
        datagen.load_postgres(bench.postgres, frame)
    else:
        bench.postgres_note = f"PostgreSQL unreachable ({problem}); memory measured on SQLite instead"
        progress(f"  {bench.postgres_note}")
    return bench


# --- 2, 3 and the chart: 50 ms latency ---------------------------------------------------------


def measure_latency_targets(bench: Bench) -> list[TargetResult]:
    """Targets 2a, 2b and 3, and the throughput sweep of the chart, against a sink with latency."""
    s = bench.settings
    src = bench.sqlite
    rows_sql = datagen.select_rows(s.concurrency_rows)
    bench.progress(
        f"latency {s.latency_s * 1000:.0f} ms: sync at max_workers={s.concurrency_workers}, baselines, sweep"
    )
    with SinkProcess(latency_s=s.latency_s) as sink:
        repeats = [
            bench.record(
                f"sync_50ms_w{s.concurrency_workers}_{i + 1}",
                engine_runs.sync_concurrent(src, rows_sql, sink.url, workers=s.concurrency_workers, cap_s=s.cap_s),
                sink,
            )
            for i in range(s.repeats)
        ]
        sync_rate = statistics.median(t.events_per_s for t in repeats)
        sequential = bench.record(
            "sequential_batching_50ms", baselines.minimal_pipeline(src, rows_sql, sink.url, cap_s=s.cap_s), sink
        )
        events = baselines.vendor_events(src, datagen.select_rows(s.vendor_events))
        vendor = bench.record("vendor_pattern_50ms", baselines.vendor_pattern(events, sink.url), sink)
        for workers in s.sweep_workers:
            if workers == s.concurrency_workers:
                rate, rows = sync_rate, repeats[0].rows
            else:
                timing = bench.record(
                    f"sweep_50ms_w{workers}",
                    engine_runs.sync_concurrent(
                        src, datagen.select_rows(s.sweep_rows(workers)), sink.url, workers=workers, cap_s=s.cap_s
                    ),
                    sink,
                )
                rate, rows = timing.events_per_s, timing.rows
            ideal = workers * s.batch_size / s.latency_s
            bench.sweep.append(
                {"workers": workers, "events_per_s": round(rate, 1), "ideal_events_per_s": ideal, "rows": rows}
            )

    ideal = s.ideal_events_per_s
    numbers = {
        "sync_events_per_s": round(sync_rate, 1),
        "sync_runs_events_per_s": [round(t.events_per_s, 1) for t in repeats],
        "ideal_events_per_s": ideal,
        "sequential_events_per_s": round(sequential.events_per_s, 1),
        "vendor_events_per_s": round(vendor.events_per_s, 1),
        "rows": s.concurrency_rows,
        "vendor_events": len(events),
        "latency_s": s.latency_s,
        "workers": s.concurrency_workers,
    }
    runs_note = f"median of {len(repeats)} runs" if len(repeats) > 1 else "one run"
    notes = [
        f"2a, 2b, 3: sync at max_workers={s.concurrency_workers} without the ledger (its cost is 5a), {runs_note}; "
        f"sink latency {s.latency_s * 1000:.0f} ms"
    ]
    return [
        _result(
            "concurrency_ideal",
            sync_rate / ideal,
            f"sync {_rate(sync_rate)} vs ideal {_rate(ideal)} ({s.concurrency_rows:,} rows)",
            numbers,
            notes,
        ),
        _result(
            "concurrency_sequential",
            sync_rate / sequential.events_per_s,
            f"sync {_rate(sync_rate)} vs sequential {_rate(sequential.events_per_s)}",
            numbers,
            notes,
        ),
        _result(
            "vendor",
            sync_rate / vendor.events_per_s,
            f"sync {_rate(sync_rate)} vs vendor pattern {vendor.events_per_s:,.1f} ev/s ({len(events)} events)",
            numbers,
            notes,
        ),
    ]


# --- 1 and 5: no latency, SQLite ----------------------------------------------------------------


def measure_overhead_and_ledger(bench: Bench) -> list[TargetResult]:
    """Targets 1, 5a and 5b: the first sync with the ledger, the minimal pipeline, ledger off, re-run."""
    s = bench.settings
    src = bench.sqlite
    bench.progress(f"no latency, SQLite, {s.rows:,} rows: sync with ledger, minimal pipeline, ledger off, re-run")
    ledger = engine_runs.sqlite_ledger(bench.workdir / "ledger.db")
    with SinkProcess() as sink:
        first = bench.record(
            "sync_ledger_on",
            engine_runs.sync_ledger_on(
                src, datagen.select_rows(s.rows), sink.url, ledger, workers=s.engine_workers, cap_s=s.cap_s
            ),
            sink,
        )
        # Everything else runs on exactly the rows the first run covered (all of them, unless it was capped).
        covered = datagen.select_rows(first.rows)
        minimal = bench.record("minimal_pipeline", baselines.minimal_pipeline(src, covered, sink.url), sink)
        off = bench.record(
            "sync_ledger_off", engine_runs.sync_ledger_off(src, covered, sink.url, workers=s.engine_workers), sink
        )
        rerun = bench.record(
            "sync_rerun", engine_runs.sync_rerun(src, covered, sink.url, ledger, workers=s.engine_workers), sink
        )
    ledger.engine.dispose()
    if rerun.details.get("sent"):
        raise RuntimeError(f"the re-run sent {rerun.details['sent']} events again")

    notes = []
    if first.capped:
        notes.append(
            f"1, 5a, 5b: the sync with the ledger hit the {s.cap_s:.0f}s cap after {first.rows:,} of {s.rows:,} rows; "
            "the minimal pipeline, the sync without ledger and the re-run were then measured on those same rows"
        )
    numbers = {
        "rows": first.rows,
        "sync_ledger_on_s": round(first.seconds, 3),
        "sync_ledger_on_events_per_s": round(first.events_per_s, 1),
        "minimal_pipeline_s": round(minimal.seconds, 3),
        "minimal_pipeline_events_per_s": round(minimal.events_per_s, 1),
        "sync_ledger_off_s": round(off.seconds, 3),
        "sync_ledger_off_events_per_s": round(off.events_per_s, 1),
        "sync_rerun_s": round(rerun.seconds, 3),
        "sync_rerun_events_per_s": round(rerun.events_per_s, 1),
        "workers": s.engine_workers,
    }
    return [
        _result(
            "overhead",
            first.seconds / minimal.seconds,
            f"sync {_rate(first.events_per_s)} vs minimal {_rate(minimal.events_per_s)} ({first.rows:,} rows)",
            numbers,
            notes,
        ),
        _result(
            "ledger_cost",
            first.seconds / off.seconds,
            f"on {first.seconds:.1f}s ({_rate(first.events_per_s)}) vs off {off.seconds:.1f}s ({_rate(off.events_per_s)})",
            numbers,
            notes,
        ),
        _result(
            "ledger_rerun",
            rerun.seconds / first.seconds,
            f"re-run {rerun.seconds:.1f}s vs first {first.seconds:.1f}s",
            numbers,
            notes,
        ),
    ]


# --- 4: memory ---------------------------------------------------------------------------------


def measure_memory(bench: Bench) -> list[TargetResult]:
    """Target 4: peak RSS of a sync of all rows against one of a tenth, each in a fresh child."""
    s = bench.settings
    small_rows, large_rows = s.memory_rows
    bench.progress(f"memory: child processes syncing {small_rows:,} and {large_rows:,} rows")
    source = bench.postgres if bench.postgres is not None else bench.sqlite
    source_name = "PostgreSQL" if bench.postgres is not None else "SQLite"
    url = source.url.render_as_string(hide_password=False)
    with SinkProcess() as sink:
        small = memory.peak_of_sync(url, sink.url, small_rows)
        sink.reset()
        large = memory.peak_of_sync(url, sink.url, large_rows)
        sink.reset()
    for name, peak in (("memory_small", small), ("memory_large", large)):
        bench.runs[name] = {**peak.as_dict(), "source": source_name}
        bench.progress(
            f"  {name}: {peak.rows:,} rows, peak RSS {peak.peak_mib:.1f} MiB (floor {peak.floor_kib / 1024:.1f} MiB)"
        )
    for peak, rows in ((small, small_rows), (large, large_rows)):
        if peak.sent != rows:
            raise RuntimeError(f"the memory child sent {peak.sent} of {rows} rows")
    notes = ["4: each sync in a fresh child process, without the ledger; peak RSS = VmHWM of the child"]
    if bench.postgres_note:
        notes.append(bench.postgres_note)
    numbers = {
        "source": source_name,
        "small_rows": small_rows,
        "large_rows": large_rows,
        "small_peak_mib": round(small.peak_mib, 1),
        "large_peak_mib": round(large.peak_mib, 1),
        "small_floor_mib": round(small.floor_kib / 1024, 1),
        "large_floor_mib": round(large.floor_kib / 1024, 1),
    }
    return [
        _result(
            "memory",
            large.peak_kib / small.peak_kib,
            f"{source_name}: {large_rows:,} rows {large.peak_mib:.0f} MiB vs {small_rows:,} rows {small.peak_mib:.0f} MiB",
            numbers,
            notes,
        )
    ]


def run_all(settings: Settings, progress: Callable[[str], None] = print) -> tuple[Bench, list[TargetResult]]:
    """Every measurement, with scratch data (SQLite files, a PostgreSQL database) removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pagent-bench-") as scratch, ExitStack() as stack:
        bench = prepare(settings, Path(scratch), stack, progress)
        results = measure_latency_targets(bench)
        results += measure_overhead_and_ledger(bench)
        results += measure_memory(bench)
    order = {target_id: i for i, target_id in enumerate(TARGETS_BY_ID)}
    return bench, sorted(results, key=lambda result: order[result.id])
