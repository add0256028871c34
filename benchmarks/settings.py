"""What a benchmark run measures, and the targets it checks (issues 5 and 13)."""

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
    unit: str = "x"


TARGETS: tuple[Target, ...] = (
    Target(
        "overhead",
        "1. Sync vs a correct hand-written pipeline (SQLite source + ledger, validation on)",
        "<=",
        1.0,
        "sync time / time of read_sql + vectorised events + json.dumps per 100 + sequential POSTs, same rows",
    ),
    Target(
        "concurrency_ideal",
        "2a. 50 ms, 8 workers, no ledger, vs ideal",
        ">=",
        0.8,
        "sync events/s / (8 x 100 events / 50 ms)",
    ),
    Target(
        "concurrency_sequential",
        "2b. 50 ms, 8 workers, no ledger, vs the pipeline (sequential)",
        ">=",
        6.0,
        "sync events/s / events/s of the hand-written pipeline, batches of 100 POSTed one after another",
    ),
    Target(
        "concurrency_sqlite_w8",
        "2c. 50 ms, 8 workers, SQLite ledger, vs ideal",
        ">=",
        0.9,
        "sync events/s with a SQLite ledger / (8 x 100 events / 50 ms)",
    ),
    Target(
        "concurrency_sqlite_w32",
        "2d. 50 ms, 32 workers, SQLite ledger, vs ideal",
        ">=",
        0.8,
        "sync events/s with a SQLite ledger / (32 x 100 events / 50 ms)",
    ),
    Target(
        "concurrency_postgresql_w8",
        "2e. 50 ms, 8 workers, PostgreSQL ledger, vs ideal",
        ">=",
        0.9,
        "sync events/s with a PostgreSQL ledger / (8 x 100 events / 50 ms)",
    ),
    Target(
        "concurrency_postgresql_w32",
        "2f. 50 ms, 32 workers, PostgreSQL ledger, vs ideal",
        ">=",
        0.8,
        "sync events/s with a PostgreSQL ledger / (32 x 100 events / 50 ms)",
    ),
    Target(
        "vendor",
        "3. 50 ms, 8 workers vs vendor example (1 event/request)",
        ">=",
        100.0,
        "sync events/s at max_workers=8 / events/s of requests.post per event, new connection each",
    ),
    Target(
        "memory",
        "4. Peak RSS, PostgreSQL source, all rows vs a tenth",
        "<=",
        1.25,
        "peak RSS of a child syncing all rows / peak RSS of a child syncing a tenth",
    ),
    Target(
        "ledger_cost",
        "5a. SQLite ledger on vs off",
        "<=",
        1.15,
        "sync time with a SQLite ledger / the same sync without a ledger, same rows",
    ),
    Target(
        "ledger_cost_postgresql",
        "5b. PostgreSQL ledger on vs off",
        "<=",
        1.15,
        "sync time with a PostgreSQL ledger / the same sync without a ledger, same rows",
    ),
    Target(
        "ledger_rerun",
        "5c. Re-run (all already sent) vs first run",
        "<=",
        0.5,
        "time of a re-run that finds every row sent / time of the first run (SQLite ledger), same rows",
    ),
    Target(
        "ledger_bytes_sqlite",
        "6a. SQLite ledger size per event",
        "<=",
        100.0,
        "bytes of the ledger table and its indexes / rows it holds, after a first sync",
        unit="B",
    ),
    Target(
        "ledger_bytes_postgresql",
        "6b. PostgreSQL ledger size per event",
        "<=",
        100.0,
        "pg_total_relation_size of the ledger / rows it holds, after a first sync",
        unit="B",
    ),
    Target(
        "ledger_bytes_mariadb",
        "6c. MariaDB ledger size per event",
        "<=",
        100.0,
        "DATA_LENGTH + INDEX_LENGTH of the ledger / rows it holds, after the claims and marks of a first sync",
        unit="B",
    ),
    Target(
        "ledger_growth_sqlite",
        "7a. A day against a big SQLite ledger vs an empty one",
        "<=",
        1.1,
        "sync time of a day's new rows against a ledger of 50 days / against an empty ledger",
    ),
    Target(
        "ledger_growth_postgresql",
        "7b. A day against a big PostgreSQL ledger vs an empty one",
        "<=",
        1.1,
        "sync time of a day's new rows against a ledger of 50 days / against an empty ledger",
    ),
)
#: The targets measured on PostgreSQL and MariaDB ledgers: left out (with a note) when the server is unreachable.
NEEDS_POSTGRESQL = frozenset(
    {
        "concurrency_postgresql_w8",
        "concurrency_postgresql_w32",
        "ledger_cost_postgresql",
        "ledger_bytes_postgresql",
        "ledger_growth_postgresql",
    }
)
NEEDS_MARIADB = frozenset({"ledger_bytes_mariadb"})
TARGETS_BY_ID = {target.id: target for target in TARGETS}


@dataclass(frozen=True)
class Settings:
    """Sizes and knobs of one run; :meth:`full` and :meth:`quick_preset` are the two presets.

    Attributes:
        rows: rows in the warehouse table; the large memory run syncs all of them.
        quick: the quick preset (for the smoke test): small sizes, fewer points.
        ratio_rows: rows of each no-latency run (targets 1, 5 and 6).
        rounds: interleaved rounds of the no-latency runs (and of the day runs of 7);
            each ratio is the median of its rounds' ratios.
        concurrency_seconds: about how long each 50 ms run lasts at its ideal rate
            (its rows: ideal events/s x this, whole batches, at most ``rows``).
        vendor_events: events sent the vendor's way (one request and connection each).
        latency_s: the sink's delay before every answer, standing for the network.
        concurrency_workers: ``max_workers`` of targets 2a, 2b and 3.
        ledger_workers: ``max_workers`` of the ledger-on 50 ms targets (2c to 2f).
        sweep_workers: ``max_workers`` values drawn in the chart (no ledger).
        engine_workers: ``max_workers`` of the no-latency runs (the operator's default).
        repeats: runs of each 50 ms sync target; the median counts.
        mariadb_events: events the MariaDB ledger of 6c is driven with.
        day_rows: a day's new rows in target 7.
        history_days: days the big ledger of target 7 already holds (``day_rows`` each).
        cap_s: time cap of any single sync or baseline run (``None``: none); see
            :class:`benchmarks.common.Cap`.
        seed: seed of the generated rows.
    """

    rows: int = 1_000_000
    quick: bool = False
    ratio_rows: int = 200_000
    rounds: int = 3
    concurrency_seconds: float = 2.5
    vendor_events: int = 200
    latency_s: float = 0.05
    concurrency_workers: int = 8
    ledger_workers: tuple[int, ...] = (8, 32)
    sweep_workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    engine_workers: int = 4
    repeats: int = 3
    mariadb_events: int = 100_000
    day_rows: int = 100_000
    history_days: int = 50
    cap_s: float | None = 150.0
    seed: int = 7
    batch_size: int = field(default=100, init=False)

    @classmethod
    def full(cls, rows: int = 1_000_000, cap_s: float | None = 150.0) -> Settings:
        ratio_rows = min(rows, 200_000)
        return cls(rows=rows, ratio_rows=ratio_rows, day_rows=min(100_000, max(rows // 10, 1_000)), cap_s=cap_s)

    @classmethod
    def quick_preset(cls, rows: int = 20_000, cap_s: float | None = 20.0) -> Settings:
        return cls(
            rows=rows,
            quick=True,
            ratio_rows=min(rows, 10_000),
            rounds=1,
            concurrency_seconds=0.5,
            vendor_events=40,
            sweep_workers=(1, 4, 8),
            repeats=1,
            mariadb_events=5_000,
            day_rows=min(rows // 4, 2_000),
            cap_s=cap_s,
        )

    @property
    def memory_rows(self) -> tuple[int, int]:
        """Rows of the small and the large memory runs."""
        return max(self.rows // 10, 1_000), self.rows

    @property
    def history_rows(self) -> int:
        """Rows the big ledger of target 7 holds before the day."""
        return self.day_rows * self.history_days

    def ideal_events_per_s(self, workers: int | None = None) -> float:
        return (workers or self.concurrency_workers) * self.batch_size / self.latency_s

    def latency_rows(self, workers: int) -> int:
        """Rows for a 50 ms run: about ``concurrency_seconds`` at the ideal rate, whole batches, within the table."""
        rows = int(self.ideal_events_per_s(workers) * self.concurrency_seconds) // self.batch_size * self.batch_size
        return max(min(rows, self.rows), self.batch_size * workers)
