"""The ledger's own cost per event, without reading, HTTP or the rest of the sync.

Usage::

    python -m benchmarks.ledger_ops [--events 50000] [--db sqlite|postgresql|mariadb|all] [--busy] [--json]

It drives a :class:`~pagent_provider.core.ledger.Ledger` exactly as a sync with
``max_workers=4`` does: per chunk of 10,000 events one ``sent_digests`` lookup,
per window of 4 batches of 100 one ``claim_batches`` that also marks the
previous window's claims sent, and a last ``mark_claims_sent``. It prints the
wall time and the main thread's CPU time per event. ``--busy`` runs a
CPU-bound Python thread beside it, as the sync's senders and reader are: a
statement that gives the GIL up and takes it back once per row (a driver's
``executemany``) then waits for the busy thread at every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from benchmarks.datagen import POSTGRES_ADMIN_URL, postgres_database
from benchmarks.ledgers import mariadb_database
from pagent_provider.core.ledger import Ledger

CHUNK = 10_000
BATCH = 100


@dataclass
class LedgerCost:
    """What one pass over ``events`` events cost the ledger."""

    database: str
    events: int
    workers: int
    busy_thread: bool
    wall_s: float
    cpu_s: float
    server_cpu_s: float | None = None

    @property
    def wall_us_per_event(self) -> float:
        return self.wall_s / self.events * 1e6

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def server_cpu_us_per_event(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.events * 1e6

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "wall_us_per_event": round(self.wall_us_per_event, 2),
            "cpu_us_per_event": round(self.cpu_us_per_event, 2),
            "server_cpu_us_per_event": None
            if self.server_cpu_us_per_event is None
            else round(self.server_cpu_us_per_event, 2),
        }


def event_keys(count: int, first: int = 1) -> list[tuple[str, str]]:
    """``(key, content hash)`` pairs shaped like the sync's: order ids and 32 hex digits."""
    return [(str(i), f"{i * 2654435761 % 2**128:032x}") for i in range(first, first + count)]


def drive(ledger: Ledger, entries: Sequence[tuple[str, str]], workers: int = 4) -> None:
    """What a first sync does to the ledger for ``entries`` (none of them sent before)."""
    pending: list[str] = []
    for start in range(0, len(entries), CHUNK):
        chunk = entries[start : start + CHUNK]
        ledger.sent_digests([key for key, _ in chunk])
        window = workers * BATCH
        for w in range(0, len(chunk), window):
            part = chunk[w : w + window]
            batches = [part[b : b + BATCH] for b in range(0, len(part), BATCH)]
            claims = ledger.claim_batches(batches, mark_sent=pending)
            pending = [claim.claim_id for claim in claims]
    ledger.mark_claims_sent(pending)


def server_cpu_s(engine: sa.Engine) -> float | None:
    """CPU seconds used so far by the PostgreSQL backends of ``engine``'s database (a server on this machine).

    ``None`` elsewhere, or when ``/proc`` does not show the backends.
    """
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        pids = [
            row[0]
            for row in conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ]
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def busy_thread(enabled: bool) -> Iterator[None]:
    """A pure-Python CPU-bound thread for as long as the block runs (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        total = 0
        while not stop.is_set():
            for i in range(10_000):
                total += i * i

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def measure(
    make_engine: Callable[[], sa.Engine],
    database: str,
    events: int,
    *,
    workers: int = 4,
    busy: bool = False,
    namespace: str = "ledger-ops",
) -> LedgerCost:
    engine = make_engine()
    try:
        ledger = Ledger(engine, namespace=namespace)
        ledger.create_tables()
        entries = event_keys(events)
        ledger.sent_digests([key for key, _ in entries[:10]])  # connect and warm up outside the timing
        with busy_thread(busy):
            server = server_cpu_s(engine)
            cpu = time.thread_time()
            wall = time.perf_counter()
            drive(ledger, entries, workers)
            wall = time.perf_counter() - wall
            cpu = time.thread_time() - cpu
            server_after = server_cpu_s(engine)
        counts = ledger.count_by_status()
        if counts != {"sent": events}:
            raise RuntimeError(f"the ledger holds {counts}, expected {events} sent")
    finally:
        engine.dispose()
    server_cpu = None if server is None or server_after is None else server_after - server
    return LedgerCost(database, events, workers, busy, wall, cpu, server_cpu)


def _emptied(url: sa.engine.URL) -> Callable[[], sa.Engine]:
    """Engines on the scratch database ``url``, each with the ledger's tables dropped first."""

    def fresh() -> sa.Engine:
        fresh_engine = sa.create_engine(url)
        with fresh_engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS pagent_ledger, pagent_ledger_rejects")
        return fresh_engine

    return fresh


@contextmanager
def database_engines(name: str, workdir: Path) -> Iterator[Callable[[], sa.Engine]]:
    """A factory of engines on an empty ledger database of kind ``name``, removed afterwards."""
    if name == "sqlite":
        counter = iter(range(1_000_000))
        yield lambda: sa.create_engine(f"sqlite:///{workdir / f'ledger-{next(counter)}.db'}")
    elif name in ("postgresql", "mariadb"):
        scratch = postgres_database(POSTGRES_ADMIN_URL) if name == "postgresql" else mariadb_database()
        with scratch as engine:
            yield _emptied(engine.url)
    else:
        raise ValueError(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "mariadb", "all"), default="all")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--busy", action="store_true", help="a CPU-bound thread runs beside the ledger")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = ("sqlite", "postgresql", "mariadb") if args.db == "all" else (args.db,)
    results = []
    with tempfile.TemporaryDirectory(prefix="pagent-ledger-ops-") as scratch:
        for name in names:
            with database_engines(name, Path(scratch)) as make_engine:
                for _ in range(args.repeats):
                    cost = measure(make_engine, name, args.events, workers=args.workers, busy=args.busy)
                    results.append(cost)
                    if not args.json:
                        print(
                            f"{name:10s} {cost.events:,} events{' (busy thread beside)' if cost.busy_thread else ''}: "
                            f"wall {cost.wall_s:.2f}s = {cost.wall_us_per_event:.1f} us/event, "
                            f"CPU {cost.cpu_us_per_event:.1f} us/event"
                            + (
                                ""
                                if cost.server_cpu_us_per_event is None
                                else f", server CPU {cost.server_cpu_us_per_event:.1f} us/event"
                            ),
                            flush=True,
                        )
    if args.json:
        print(json.dumps([cost.as_dict() for cost in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
