"""Profile the sync's hot path on the overhead run (SQLite source, fast sink, validation on), every thread.

Usage::

    python -m benchmarks.hotpath [--rows 1000000] [--ledger sqlite|postgresql|off] [--workers 4]
                                 [--latency-ms 0] [--interval-ms 2] [--cap-seconds S] [--out DIR]

A sampler thread reads every thread's Python stack with
:func:`sys._current_frames` every ``--interval-ms`` while one sync runs: the
main thread (claims, marks, hand-off to the senders), the ``pagent-prepare``
helper (reading the next chunk, transform, encoding, hashing, the ledger
lookup of sent keys), the ``pagent-send`` senders (HTTP) and any other. It
writes ``profile-ledger-<kind>.txt`` (per thread: the share of each part of
the pipeline and the top functions), ``.json`` (the same, as data) and
``.collapsed`` (one line per distinct stack, ``thread;frame;...;frame count``,
for flame-graph tools such as speedscope or flamegraph.pl).

A sample says where a thread IS, not whether it runs: a thread blocked in C
(a socket read, a lock, a database call) shows the Python frame that called
it. Samples whose innermost frame is a known blocking call (a lock or
condition wait, a socket read, the pool's idle wait) count as "waiting". A
thread shown running may still be waiting for the GIL; the sampler itself
takes it briefly at each sample (about 2% at 2 ms).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datagen, engine_runs, ledgers
from benchmarks.sink import SinkProcess

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

#: One frame as sampled: (file name, qualified function name, line).
Frame = tuple[str, str, int]
Stack = tuple[Frame, ...]

# (category, test on (qualified function name, file)); walking a stack from the
# outermost frame, the first category that matches takes the sample, except
# that the engine's bookkeeping gives way to a more specific category deeper down.
Rule = tuple[str, Callable[[str, str], bool]]
BOOKKEEPING = "engine bookkeeping (sync loop, dedupe, batching, summary)"
RULES: tuple[Rule, ...] = (
    ("reading: read_sql_chunks (fetch + DataFrame)", lambda q, p: q.endswith("read_sql_chunks")),
    ("transform_chunk (columns -> event dicts, validation)", lambda q, p: q.split(".")[-1] in ("transform_chunk",)),
    ("JSON encoding: encode_event", lambda q, p: q.endswith("encode_event")),
    ("hashing: content_hash / ledger_key", lambda q, p: q.split(".")[-1] in ("content_hash", "ledger_key")),
    ("ledger: claim (claim_batches)", lambda q, p: q.startswith("Ledger.claim")),
    ("ledger: mark sent", lambda q, p: q.startswith("Ledger.mark_")),
    ("ledger: lookup (sent_digests, lookup)", lambda q, p: q in ("Ledger.sent_digests", "Ledger.lookup")),
    ("ledger: other (create_tables, heartbeat, ...)", lambda q, p: q.startswith("Ledger.")),
    ("HTTP: deliver_batch (senders)", lambda q, p: q.endswith("deliver_batch")),
    (
        "thread hand-off: waiting for senders / submit / shutdown",
        lambda q, p: (
            (q.endswith("wait") and "concurrent" in p)
            or q in ("ThreadPoolExecutor.submit", "ThreadPoolExecutor.shutdown", "Executor.__exit__")
        ),
    ),
    (
        BOOKKEEPING,
        lambda q, p: (
            q.startswith(("ConversionSync.", "ChunkPreparer.", "PendingEvent."))
            or q.split(".")[-1] in ("_drop_duplicates", "_batches", "prepare_ahead")
        ),
    ),
)
OTHER = "other (interpreter, logging, libraries)"
WAITING = "waiting (blocked: lock, condition, socket, idle pool)"
# innermost Python frames that block in C
_BLOCKING = {
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("threading.py", "Thread._wait_for_tstate_lock"),
    ("threading.py", "Semaphore.acquire"),
    ("socket.py", "SocketIO.readinto"),
    ("selectors.py", "EpollSelector.select"),
    ("selectors.py", "PollSelector.select"),
    ("selectors.py", "SelectSelector.select"),
    ("queue.py", "Queue.get"),
    ("thread.py", "_worker"),
    ("ssl.py", "SSLSocket.read"),
    ("ssl.py", "SSLSocket.recv_into"),
}


class ThreadSampler:
    """Samples the stack of every thread but its own every ``interval_s`` seconds.

    Attributes:
        samples: how many times each ``(thread group, stack)`` was seen.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.samples: Counter[tuple[str, Stack]] = Counter()
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hotpath-sampler", daemon=True)

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {thread.ident: thread.name for thread in threading.enumerate()}
            self.ticks += 1
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.samples[(thread_group(names.get(ident, "?")), _stack(frame))] += 1


def thread_group(name: str) -> str:
    """The sync's threads by role: main, pagent-prepare, pagent-send (all senders together), other."""
    if name == "MainThread":
        return "main"
    if name.startswith("pagent-send"):
        return "pagent-send (senders)"
    if name.startswith("pagent-prepare"):
        return "pagent-prepare (next chunk)"
    return "other threads"


def _stack(frame: FrameType | None) -> Stack:
    frames: list[Frame] = []
    while frame is not None:
        code = frame.f_code
        frames.append((Path(code.co_filename).name, code.co_qualname, frame.f_lineno))
        frame = frame.f_back
    return tuple(reversed(frames))


def categorise(stack: Stack) -> str:
    """The category of one sample (see :data:`RULES`), or :data:`WAITING` for a blocked thread."""
    if stack and (stack[-1][0], stack[-1][1]) in _BLOCKING:
        return WAITING
    owner: str | None = None
    for file, qualname, _ in stack:
        if owner is not None and owner != BOOKKEEPING:
            break
        for category, test in RULES:
            if test(qualname, file):
                if category != BOOKKEEPING or owner is None:
                    owner = category
                break
    return owner or OTHER


def breakdown(samples: Counter[tuple[str, Stack]]) -> dict[str, Any]:
    """Per thread group: samples, the share of each category, and the top innermost functions."""
    groups: dict[str, dict[str, Any]] = {}
    by_group: dict[str, Counter[tuple[str, Stack]]] = defaultdict(Counter)
    for (group, stack), count in samples.items():
        by_group[group][(group, stack)] += count
    for group, counts in sorted(by_group.items()):
        total = sum(counts.values())
        categories: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        for (_, stack), count in counts.items():
            categories[categorise(stack)] += count
            if stack:
                file, qualname, line = stack[-1]
                leaves[f"{qualname} ({file}:{line})"] += count
        groups[group] = {
            "samples": total,
            "categories_pct": {name: round(n / total * 100, 1) for name, n in categories.most_common()},
            "top_innermost_pct": {name: round(n / total * 100, 1) for name, n in leaves.most_common(20)},
        }
    return groups


def collapsed(samples: Counter[tuple[str, Stack]]) -> Iterator[str]:
    """Flame-graph input: ``group;file:function;...  count`` per distinct stack (lines dropped)."""
    merged: Counter[str] = Counter()
    for (group, stack), count in samples.items():
        merged[";".join([group, *(f"{file}:{qualname}" for file, qualname, _ in stack)])] += count
    for line, count in sorted(merged.items()):
        yield f"{line} {count}"


def profile_sync(
    rows: int,
    *,
    ledger_kind: str,
    cap_s: float | None,
    out: Path,
    interval_s: float = 0.002,
    workers: int = 4,
    latency_s: float = 0.0,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pagent-profile-") as scratch, ExitStack() as stack:
        workdir = Path(scratch)
        print(f"generating and loading {rows:,} rows", flush=True)
        source = datagen.load_sqlite(workdir / "warehouse.db", datagen.make_rows(rows))
        stack.callback(source.dispose)
        datagen.warm_sqlite(source)
        ledger = None
        if ledger_kind == "sqlite":
            ledger = engine_runs.sqlite_ledger(workdir / "ledger.db")
        elif ledger_kind == "postgresql":
            ledger = engine_runs.postgres_ledger(stack.enter_context(datagen.postgres_database()), "pagent_ledger")
        if ledger is not None:
            ledger.create_tables()
            stack.callback(ledgers.drop, ledger)
        sink = stack.enter_context(SinkProcess(latency_s=latency_s))
        print(f"profiling the sync (ledger: {ledger_kind}), every thread", flush=True)
        started = time.perf_counter()
        with ThreadSampler(interval_s) as sampler:
            timing = engine_runs._sync(
                source, datagen.select_rows(rows), sink.url, workers=workers, ledger=ledger, cap_s=cap_s
            )
        wall = time.perf_counter() - started
    groups = breakdown(sampler.samples)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"profile-ledger-{ledger_kind}"
    result = {
        "rows": timing.rows,
        "capped": timing.capped,
        "ledger": ledger_kind,
        "workers": workers,
        "latency_ms": latency_s * 1000,
        "sync_seconds": round(timing.seconds, 3),
        "wall_seconds_profiled": round(wall, 3),
        "events_per_s_profiled": round(timing.events / wall, 1),
        "interval_ms": interval_s * 1000,
        "ticks": sampler.ticks,
        "threads": groups,
    }
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.collapsed").write_text("\n".join(collapsed(sampler.samples)) + "\n")
    Path(f"{stem}.txt").write_text(format_breakdown(result, top=20) + "\n")
    return result


def format_breakdown(result: dict[str, Any], top: int = 10) -> str:
    lines = [
        f"sync of {result['rows']:,} rows, ledger {result['ledger']}, {result['workers']} workers, sink latency "
        f"{result['latency_ms']:g} ms: {result['sync_seconds']:.1f}s under the "
        f"sampler ({result['events_per_s_profiled']:,.0f} ev/s), {result['ticks']:,} samples of every thread "
        f"every {result['interval_ms']:g} ms" + (" [capped]" if result["capped"] else ""),
    ]
    for group, data in result["threads"].items():
        share = data["samples"] / max(result["ticks"], 1)
        lines.append(f"{group}: {data['samples']:,} samples ({share:.1f} threads on average)")
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in data["categories_pct"].items()]
        lines.append("  innermost functions:")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in list(data["top_innermost_pct"].items())[:top]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ledger", choices=("sqlite", "postgresql", "off", "on"), default="sqlite", help="on = sqlite")
    parser.add_argument("--workers", type=int, default=4, help="max_workers (default 4)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the sink's delay per request (default 0)")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="sampling interval (default 2)")
    parser.add_argument(
        "--cap-seconds", type=float, default=None, help="stop reading after this long (default: no cap)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    kind = "sqlite" if args.ledger == "on" else args.ledger
    result = profile_sync(
        args.rows,
        ledger_kind=kind,
        cap_s=args.cap_seconds,
        out=args.out,
        interval_s=args.interval_ms / 1000,
        workers=args.workers,
        latency_s=args.latency_ms / 1000,
    )
    print(format_breakdown(result))
    print(f"wrote {args.out}/profile-ledger-{kind}.txt, .json and .collapsed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
