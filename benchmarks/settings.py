"""What a benchmark run measures, and the targets it checks (issue 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Comparison = Literal["<=", ">="]


@dataclass(frozen=True)
class Target:
    """One row of the results table: a ratio and the bound it must stay within."""

    id: str
    title: str
    comparison: Comparison
    limit: float
    meaning: str


TARGETS: tuple[Target, ...] = (
    Target(
        "overhead",
        "1. Overhead vs minimal pipeline (SQLite, ledger + validation on)",
        "<=",
        1.5,
        "sync time / time of read_sql + json.dumps + sequential POSTs over one session, same rows",
    ),
    Target(
        "concurrency_ideal",
        "2a. Throughput at 50 ms, max_workers=8, vs ideal",
        ">=",
        0.8,
        "sync events/s / (8 x 100 events / 50 ms)",
    ),
    Target(
        "concurrency_sequential",
        "2b. Throughput at 50 ms, max_workers=8, vs sequential client",
        ">=",
        6.0,
        "sync events/s / events/s of batches of 100 POSTed one after another over one session",
    ),
    Target(
        "vendor",
        "3. Throughput at 50 ms vs vendor example (1 event/request)",
        ">=",
        100.0,
        "sync events/s at max_workers=8 / events/s of requests.post per event, new connection each",
    ),
    Target(
        "memory",
        "4. Peak RSS, PostgreSQL, large vs 1/10 of the rows",
        "<=",
        1.25,
        "peak RSS of a child syncing all rows / peak RSS of a child syncing a tenth",
    ),
    Target(
        "ledger_cost",
        "5a. Ledger on vs off",
        "<=",
        1.25,
        "sync time with the SQLite ledger / the same sync without it, same rows",
    ),
    Target(
        "ledger_rerun",
        "5b. Re-run (all already sent) vs first run",
        "<=",
        0.5,
        "time of a re-run that finds every row sent / time of the first run, same rows",
    ),
)
TARGETS_BY_ID = {target.id: target for target in TARGETS}


@dataclass(frozen=True)
class Settings:
    """Sizes and knobs of one run; :meth:`full` and :meth:`quick` are the two presets.

    Attributes:
        rows: rows of the overhead, ledger and large memory runs.
        quick: the quick preset (for the smoke test): small sizes, fewer points.
        concurrency_rows: rows synced at 50 ms latency with ``concurrency_workers``.
        vendor_events: events sent the vendor's way (one request and connection each).
        latency_s: the sink's delay before every answer, standing for the network.
        concurrency_workers: ``max_workers`` of the concurrency target.
        sweep_workers: ``max_workers`` values drawn in the chart.
        sweep_seconds: about how long each sweep point runs (at its ideal rate).
        engine_workers: ``max_workers`` of the overhead and ledger runs (the operator's default).
        repeats: runs of the concurrency target's sync; the median counts.
        cap_s: time cap of any single sync or baseline run (``None``: none); see
            :class:`benchmarks.common.Cap`.
        seed: seed of the generated rows.
    """

    rows: int = 1_000_000
    quick: bool = False
    concurrency_rows: int = 40_000
    vendor_events: int = 200
    latency_s: float = 0.05
    concurrency_workers: int = 8
    sweep_workers: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_seconds: float = 2.5
    engine_workers: int = 4
    repeats: int = 3
    cap_s: float | None = 150.0
    seed: int = 7
    batch_size: int = field(default=100, init=False)

    @classmethod
    def full(cls, rows: int = 1_000_000, cap_s: float | None = 150.0) -> Settings:
        return cls(rows=rows, cap_s=cap_s)

    @classmethod
    def quick_preset(cls, rows: int = 20_000, cap_s: float | None = 20.0) -> Settings:
        return cls(
            rows=rows,
            quick=True,
            concurrency_rows=min(rows, 8_000),
            vendor_events=40,
            sweep_workers=(1, 4, 8),
            sweep_seconds=0.5,
            repeats=1,
            cap_s=cap_s,
        )

    @property
    def memory_rows(self) -> tuple[int, int]:
        """Rows of the small and the large memory runs."""
        return max(self.rows // 10, 1_000), self.rows

    @property
    def ideal_events_per_s(self) -> float:
        return self.concurrency_workers * self.batch_size / self.latency_s

    def sweep_rows(self, workers: int) -> int:
        """Rows for a sweep point: about ``sweep_seconds`` at the ideal rate, whole batches."""
        ideal = workers * self.batch_size / self.latency_s
        rows = int(ideal * self.sweep_seconds) // self.batch_size * self.batch_size
        return max(min(rows, self.concurrency_rows), self.batch_size * workers)
