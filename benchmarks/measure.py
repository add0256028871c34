"""The measurements: each target's runs, side by side in one process, and their ratios.

Every ratio compares runs made in the same benchmark run, on the same rows and
against the same sink, so the noise of a shared machine mostly cancels out.
The no-latency runs and the day runs go in interleaved rounds (each kind of run
once per round) and each ratio is the median of its rounds' ratios. Each
function here returns :class:`TargetResult` rows and records the runs it made
in :attr:`Bench.runs`.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks import baselines, datagen, engine_runs, ledger_ops, ledgers, memory
from benchmarks.common import Timing
from benchmarks.settings import NEEDS_MARIADB, NEEDS_POSTGRESQL, TARGETS_BY_ID, Settings
from benchmarks.sink import SinkProcess
from pagent_provider.core.ledger import Ledger

log = logging.getLogger("benchmarks")

#: Keys of the big ledger of target 7 start here: numeric like the day's order ids
#: (so that, compared as text, they interleave with them all through the index), never equal.
HISTORY_FIRST_KEY = 10_000_001


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
    unit: str = "x"
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
            "unit": self.unit,
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
        unit=target.unit,
        numbers=numbers,
        notes=notes,
    )


def _rate(value: float) -> str:
    return f"{value:,.0f} ev/s"


def _median_run(timings: Sequence[Timing]) -> Timing:
    """The run of median time (the lower middle one of an even count)."""
    ordered = sorted(timings, key=lambda timing: timing.seconds)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class Bench:
    """Everything one benchmark run shares: settings, data, scratch directory, recorded runs."""

    settings: Settings
    workdir: Path
    sqlite: sa.Engine
    postgres: sa.Engine | None = None
    postgres_note: str | None = None
    mariadb_note: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    ledger_points: list[dict[str, Any]] = field(default_factory=list)
    growth_points: list[dict[str, Any]] = field(default_factory=list)
    progress: Callable[[str], None] = print
    _names: Iterator[int] = field(default_factory=itertools.count)

    def record(self, name: str, timing: Timing, sink: SinkProcess | None = None) -> Timing:
        data = timing.as_dict()
        if sink is not None:
            accepted = sink.accepted()
            invalid, reason = sink.invalid()
            data["sink_accepted"] = accepted
            sink.reset()
            if invalid:
                raise RuntimeError(f"{name}: the sink refused {invalid} bodies as pagent would (first: {reason})")
            expected = timing.details.get("sent", timing.events)
            if accepted != expected:
                raise RuntimeError(f"{name}: the sink accepted {accepted} events, the run reported {expected}")
        self.runs[name] = data
        capped = f", capped after {timing.rows:,} rows" if timing.capped else ""
        self.progress(
            f"  {name}: {timing.events:,} events in {timing.seconds:.2f}s = {_rate(timing.events_per_s)}{capped}"
        )
        return timing

    def keep_median(self, name: str, timings: Sequence[Timing]) -> Timing:
        """Record the run of median time of ``timings`` under ``name`` too (the table's and chart's figure)."""
        median = _median_run(timings)
        self.runs[name] = {**median.as_dict(), "of_runs": len(timings)}
        return median

    # --- ledgers

    def sqlite_ledger(self) -> Ledger:
        return engine_runs.sqlite_ledger(self.workdir / f"ledger-{next(self._names)}.db")

    def postgres_ledger(self) -> Ledger:
        if self.postgres is None:
            raise RuntimeError("PostgreSQL is not reachable")
        return engine_runs.postgres_ledger(self.postgres, f"ledger_{next(self._names)}")

    @contextmanager
    def ledger(self, database: str) -> Iterator[Ledger]:
        """A new, empty ledger on ``database`` ("sqlite" or "postgresql"), dropped afterwards.

        Its tables are created here, before any run is timed: a daily sync finds them there.
        """
        ledger = self.sqlite_ledger() if database == "sqlite" else self.postgres_ledger()
        ledger.create_tables()
        try:
            yield ledger
        finally:
            ledgers.drop(ledger)


LEDGER_DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


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
        bench.postgres_note = (
            f"PostgreSQL unreachable ({problem}): memory measured on SQLite, the PostgreSQL ledger rows left out"
        )
        progress(f"  {bench.postgres_note}")
    problem = ledgers.reachable(ledgers.MARIADB_ADMIN_URL)
    if problem is not None:
        bench.mariadb_note = f"MariaDB unreachable ({problem}): its ledger size left out"
        progress(f"  {bench.mariadb_note}")
    return bench


def _ledger_databases(bench: Bench) -> list[str]:
    return ["sqlite"] + (["postgresql"] if bench.postgres is not None else [])


# --- 2, 3 and the chart: 50 ms latency ---------------------------------------------------------


def measure_latency_targets(bench: Bench) -> list[TargetResult]:
    """Targets 2a to 2f and 3, and the throughput sweep of the chart, against a sink with latency."""
    s = bench.settings
    src = bench.sqlite
    w = s.concurrency_workers
    rows = s.latency_rows(w)
    bench.progress(f"latency {s.latency_s * 1000:.0f} ms: sync at max_workers={w}, baselines, ledgers, sweep")
    results: list[TargetResult] = []
    with SinkProcess(latency_s=s.latency_s) as sink:
        repeats = [
            bench.record(
                f"sync_50ms_w{w}_{i + 1}",
                engine_runs.sync_concurrent(src, datagen.select_rows(rows), sink.url, workers=w, cap_s=s.cap_s),
                sink,
            )
            for i in range(s.repeats)
        ]
        sync_rate = statistics.median(t.events_per_s for t in repeats)
        sequential = bench.record(
            "sequential_batching_50ms",
            baselines.minimal_pipeline(src, datagen.select_rows(rows), sink.url, cap_s=s.cap_s),
            sink,
        )
        events = baselines.vendor_events(src, datagen.select_rows(s.vendor_events))
        vendor = bench.record("vendor_pattern_50ms", baselines.vendor_pattern(events, sink.url), sink)
        for database in _ledger_databases(bench):
            for workers in s.ledger_workers:
                results.append(_ledger_at_latency(bench, sink, database, workers))
        for workers in s.sweep_workers:
            if workers == w:
                rate, swept = sync_rate, repeats[0].rows
            else:
                timing = bench.record(
                    f"sweep_50ms_w{workers}",
                    engine_runs.sync_concurrent(
                        src, datagen.select_rows(s.latency_rows(workers)), sink.url, workers=workers, cap_s=s.cap_s
                    ),
                    sink,
                )
                rate, swept = timing.events_per_s, timing.rows
            bench.sweep.append(
                {
                    "workers": workers,
                    "events_per_s": round(rate, 1),
                    "ideal_events_per_s": s.ideal_events_per_s(workers),
                    "rows": swept,
                }
            )

    ideal = s.ideal_events_per_s(w)
    numbers = {
        "sync_events_per_s": round(sync_rate, 1),
        "sync_runs_events_per_s": [round(t.events_per_s, 1) for t in repeats],
        "ideal_events_per_s": ideal,
        "sequential_events_per_s": round(sequential.events_per_s, 1),
        "vendor_events_per_s": round(vendor.events_per_s, 1),
        "rows": rows,
        "vendor_events": len(events),
        "latency_s": s.latency_s,
        "workers": w,
    }
    runs_note = f"median of {len(repeats)} runs" if len(repeats) > 1 else "one run"
    notes = [
        f"2a, 2b, 3: sync at max_workers={w} without the ledger, {runs_note}; 2c-2f: the same with a new ledger "
        f"each run, {runs_note}; sink latency {s.latency_s * 1000:.0f} ms, every body validated"
    ]
    return [
        _result(
            "concurrency_ideal",
            sync_rate / ideal,
            f"sync {_rate(sync_rate)} vs ideal {_rate(ideal)} ({rows:,} rows)",
            numbers,
            notes,
        ),
        _result(
            "concurrency_sequential",
            sync_rate / sequential.events_per_s,
            f"sync {_rate(sync_rate)} vs pipeline {_rate(sequential.events_per_s)}",
            numbers,
            notes,
        ),
        *results,
        _result(
            "vendor",
            sync_rate / vendor.events_per_s,
            f"sync {_rate(sync_rate)} vs vendor pattern {vendor.events_per_s:,.1f} ev/s ({len(events)} events)",
            numbers,
            notes,
        ),
    ]


def _ledger_at_latency(bench: Bench, sink: SinkProcess, database: str, workers: int) -> TargetResult:
    s = bench.settings
    rows = s.latency_rows(workers)
    timings = []
    for i in range(s.repeats):
        with bench.ledger(database) as ledger:
            timings.append(
                bench.record(
                    f"sync_50ms_w{workers}_{database}_ledger_{i + 1}",
                    engine_runs.sync_concurrent(
                        bench.sqlite, datagen.select_rows(rows), sink.url, workers=workers, cap_s=s.cap_s, ledger=ledger
                    ),
                    sink,
                )
            )
    rate = statistics.median(t.events_per_s for t in timings)
    ideal = s.ideal_events_per_s(workers)
    bench.ledger_points.append({"database": database, "workers": workers, "events_per_s": round(rate, 1)})
    numbers = {
        "database": database,
        "workers": workers,
        "rows": rows,
        "events_per_s": round(rate, 1),
        "runs_events_per_s": [round(t.events_per_s, 1) for t in timings],
        "ideal_events_per_s": ideal,
    }
    return _result(
        f"concurrency_{database}_w{workers}",
        rate / ideal,
        f"{LEDGER_DATABASES[database]} ledger: {_rate(rate)} vs ideal {_rate(ideal)} ({rows:,} rows)",
        numbers,
        [],
    )


# --- 1, 5 and 6: no latency ---------------------------------------------------------------------


def measure_overhead_and_ledger(bench: Bench) -> list[TargetResult]:
    """Targets 1, 5a-5c, 6a and 6b: the sync with each ledger, the pipeline, no ledger, re-run; in rounds."""
    s = bench.settings
    src = bench.sqlite
    databases = _ledger_databases(bench)
    bench.progress(
        f"no latency, {s.ratio_rows:,} rows, {s.rounds} interleaved round(s): sync with a "
        f"{' / '.join(LEDGER_DATABASES[d] for d in databases)} ledger, pipeline, no ledger, re-run"
    )
    runs: dict[str, list[Timing]] = {}
    rows = s.ratio_rows
    sizes: dict[str, ledgers.LedgerSize] = {}
    capped_note = []
    with SinkProcess() as sink:
        for r in range(1, s.rounds + 1):
            with ExitStack() as round_ledgers:
                on = {database: round_ledgers.enter_context(bench.ledger(database)) for database in databases}
                first = bench.record(
                    f"sync_ledger_on_r{r}",
                    engine_runs.sync_ledger_on(
                        src, datagen.select_rows(rows), sink.url, on["sqlite"], workers=s.engine_workers, cap_s=s.cap_s
                    ),
                    sink,
                )
                if first.capped and r == 1:
                    # Everything else runs on exactly the rows the first run covered.
                    capped_note.append(
                        f"1, 5, 6: the first sync with the SQLite ledger hit the {s.cap_s:.0f}s cap after "
                        f"{first.rows:,} of {rows:,} rows; every other run was then measured on those rows"
                    )
                    rows = first.rows
                sql = datagen.select_rows(rows)
                runs.setdefault("sync_ledger_on", []).append(first)
                runs.setdefault("minimal_pipeline", []).append(
                    bench.record(f"minimal_pipeline_r{r}", baselines.minimal_pipeline(src, sql, sink.url), sink)
                )
                runs.setdefault("sync_ledger_off", []).append(
                    bench.record(
                        f"sync_ledger_off_r{r}",
                        engine_runs.sync_ledger_off(src, sql, sink.url, workers=s.engine_workers),
                        sink,
                    )
                )
                if "postgresql" in on:
                    runs.setdefault("sync_postgresql_ledger_on", []).append(
                        bench.record(
                            f"sync_postgresql_ledger_on_r{r}",
                            engine_runs.sync_ledger_on(src, sql, sink.url, on["postgresql"], workers=s.engine_workers),
                            sink,
                        )
                    )
                rerun = bench.record(
                    f"sync_rerun_r{r}",
                    engine_runs.sync_rerun(src, sql, sink.url, on["sqlite"], workers=s.engine_workers),
                    sink,
                )
                if rerun.details.get("sent"):
                    raise RuntimeError(f"the re-run sent {rerun.details['sent']} events again")
                runs.setdefault("sync_rerun", []).append(rerun)
                if r == s.rounds:
                    sizes = {database: ledgers.bytes_per_event(ledger) for database, ledger in on.items()}
    medians = {name: bench.keep_median(name, timings) for name, timings in runs.items()}

    def ratio(numerator: str, denominator: str) -> float:
        pairs = zip(runs[numerator], runs[denominator], strict=True)
        return statistics.median(a.seconds / b.seconds for a, b in pairs)

    def per_round(numerator: str, denominator: str) -> list[float]:
        return [round(a.seconds / b.seconds, 3) for a, b in zip(runs[numerator], runs[denominator], strict=True)]

    numbers: dict[str, Any] = {"rows": rows, "rounds": s.rounds, "workers": s.engine_workers}
    for name, timing in medians.items():
        numbers[f"{name}_s"] = round(timing.seconds, 3)
        numbers[f"{name}_events_per_s"] = round(timing.events_per_s, 1)
        numbers[f"{name}_runs_s"] = [round(t.seconds, 3) for t in runs[name]]
    notes = [
        *capped_note,
        f"1, 5: {s.rounds} interleaved round(s) of {rows:,} rows, each ratio the median of the rounds' ratios; "
        "events/s and seconds shown are the median run's",
    ]
    on, off = medians["sync_ledger_on"], medians["sync_ledger_off"]
    results = [
        _result(
            "overhead",
            ratio("sync_ledger_on", "minimal_pipeline"),
            f"sync {_rate(on.events_per_s)} vs pipeline {_rate(medians['minimal_pipeline'].events_per_s)} "
            f"(rounds: {per_round('sync_ledger_on', 'minimal_pipeline')})",
            numbers,
            notes,
        ),
        _result(
            "ledger_cost",
            ratio("sync_ledger_on", "sync_ledger_off"),
            f"on {on.seconds:.2f}s ({_rate(on.events_per_s)}) vs off {off.seconds:.2f}s ({_rate(off.events_per_s)})",
            numbers,
            notes,
        ),
    ]
    if "sync_postgresql_ledger_on" in runs:
        pg = medians["sync_postgresql_ledger_on"]
        results.append(
            _result(
                "ledger_cost_postgresql",
                ratio("sync_postgresql_ledger_on", "sync_ledger_off"),
                f"on {pg.seconds:.2f}s ({_rate(pg.events_per_s)}) vs off {off.seconds:.2f}s "
                f"(rounds: {per_round('sync_postgresql_ledger_on', 'sync_ledger_off')})",
                numbers,
                notes,
            )
        )
    results.append(
        _result(
            "ledger_rerun",
            ratio("sync_rerun", "sync_ledger_on"),
            f"re-run {medians['sync_rerun'].seconds:.2f}s vs first {on.seconds:.2f}s",
            numbers,
            notes,
        )
    )
    results += [_size_result(database, size) for database, size in sizes.items()]
    return results


def _size_result(database: str, size: ledgers.LedgerSize) -> TargetResult:
    return _result(
        f"ledger_bytes_{database}",
        size.per_event,
        f"{size.bytes / 2**20:,.1f} MiB for {size.rows:,} rows",
        size.as_dict(),
        [f"6: {size.database}: {size.method}"],
    )


def measure_mariadb_size(bench: Bench) -> list[TargetResult]:
    """Target 6c: a MariaDB ledger driven as a first sync drives it (claims per window, marks), then measured."""
    if bench.mariadb_note is not None:
        return []
    events = bench.settings.mariadb_events
    bench.progress(f"MariaDB ledger: the claims and marks of a first sync of {events:,} events")
    with ledgers.mariadb_database() as engine:
        ledger = Ledger(engine, namespace=engine_runs.NAMESPACE)
        ledger.create_tables()
        ledger_ops.drive(ledger, ledger_ops.event_keys(events), bench.settings.engine_workers)
        size = ledgers.bytes_per_event(ledger)
    bench.runs["mariadb_ledger"] = size.as_dict()
    return [_size_result("mariadb", size)]


# --- 7: a day against a big ledger ------------------------------------------------------------------


def measure_growth(bench: Bench) -> list[TargetResult]:
    """Targets 7a and 7b: a day's new rows against a ledger of ``history_days`` days, and against an empty one.

    The big ledger is filled in steps (:data:`GROWTH_STEPS` of its final size):
    at each step the same rounds of day-against-big and day-against-empty run,
    which gives the chart its cost against ledger size; the target is the
    last step's ratio.
    """
    s = bench.settings
    results = []
    for database in _ledger_databases(bench):
        label = LEDGER_DATABASES[database]
        bench.progress(
            f"a day of {s.day_rows:,} new rows against a {label} ledger of up to {s.history_rows:,} rows and an empty one"
        )
        with bench.ledger(database) as big, SinkProcess() as sink:
            filled, days = 0, itertools.count()
            for fraction in GROWTH_STEPS:
                target_rows = round(s.history_rows * fraction)
                seconds = ledgers.prefill(big, HISTORY_FIRST_KEY + filled, target_rows - filled)
                filled = target_rows
                bench.progress(f"  filled the big ledger to {filled:,} rows in {seconds:.1f}s")
                pairs = _days_against(bench, database, big, sink, days)
                _record_growth_point(bench, database, filled, pairs)
            size = ledgers.bytes_per_event(big)
        results.append(_growth_result(bench, database, pairs, size))
    return results


#: Fractions of ``history_rows`` the big ledger of target 7 is measured at, in order.
GROWTH_STEPS = (0.2, 1.0)


def _days_against(
    bench: Bench, database: str, big: Ledger, sink: SinkProcess, days: Iterator[int]
) -> list[tuple[Timing, Timing]]:
    """``rounds`` new days, each synced against ``big`` and against a new empty ledger, in alternating order."""
    s = bench.settings
    pairs = []
    for r in range(s.rounds):
        day = next(days)
        sql = datagen.select_rows(s.day_rows, offset=day * s.day_rows)  # a day never synced before
        with bench.ledger(database) as empty:
            order = [("empty", empty), ("big", big)] if r % 2 == 0 else [("big", big), ("empty", empty)]
            timings = {
                kind: bench.record(
                    f"day{day + 1}_{database}_{kind}_ledger",
                    engine_runs.sync_ledger_on(bench.sqlite, sql, sink.url, ledger, workers=s.engine_workers),
                    sink,
                )
                for kind, ledger in order
            }
        pairs.append((timings["big"], timings["empty"]))
    return pairs


def _record_growth_point(bench: Bench, database: str, ledger_rows: int, pairs: list[tuple[Timing, Timing]]) -> None:
    bench.growth_points.append(
        {
            "database": database,
            "ledger_rows": ledger_rows,
            "day_s": round(statistics.median(a.seconds for a, _ in pairs), 3),
            "empty_s": round(statistics.median(b.seconds for _, b in pairs), 3),
            "ratio": round(statistics.median(a.seconds / b.seconds for a, b in pairs), 3),
        }
    )


def _growth_result(
    bench: Bench, database: str, pairs: list[tuple[Timing, Timing]], size: ledgers.LedgerSize
) -> TargetResult:
    s = bench.settings
    ratios = [a.seconds / b.seconds for a, b in pairs]
    numbers = {
        "database": database,
        "day_rows": s.day_rows,
        "history_rows": s.history_rows,
        "big_s": [round(a.seconds, 3) for a, _ in pairs],
        "empty_s": [round(b.seconds, 3) for _, b in pairs],
        "ratios": [round(ratio, 3) for ratio in ratios],
        "steps": [point for point in bench.growth_points if point["database"] == database],
        "big_ledger_bytes_per_event": round(size.per_event, 1),
        "big_ledger_mib": round(size.bytes / 2**20, 1),
    }
    return _result(
        f"ledger_growth_{database}",
        statistics.median(ratios),
        f"{statistics.median(a.seconds for a, _ in pairs):.2f}s vs "
        f"{statistics.median(b.seconds for _, b in pairs):.2f}s; big ledger {size.bytes / 2**20:,.0f} MiB",
        numbers,
        [
            f"7: {s.rounds} round(s) at each size, each a new day of {s.day_rows:,} rows, against a ledger "
            f"of {s.history_days} such days already sent (filled in steps: "
            f"{', '.join(f'{round(s.history_rows * f):,}' for f in GROWTH_STEPS)} rows, plus the days before) "
            "and a new empty one, in alternating order"
        ],
    )


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
        results += measure_mariadb_size(bench)
        results += measure_growth(bench)
        results += measure_memory(bench)
    missing = [
        target_id
        for target_id in TARGETS_BY_ID
        if target_id not in {result.id for result in results}
        and not (target_id in NEEDS_POSTGRESQL and bench.postgres_note)
        and not (target_id in NEEDS_MARIADB and bench.mariadb_note)
    ]
    if missing:
        raise RuntimeError(f"targets not measured: {missing}")
    if bench.postgres_note or bench.mariadb_note:
        for result in results[:1]:
            result.notes += [note for note in (bench.postgres_note, bench.mariadb_note) if note]
    order = {target_id: i for i, target_id in enumerate(TARGETS_BY_ID)}
    return bench, sorted(results, key=lambda result: order[result.id])
