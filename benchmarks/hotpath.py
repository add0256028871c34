"""Profile the sync's hot path on the overhead run (SQLite source, fast sink, ledger + validation on).

Usage::

    python -m benchmarks.hotpath [--rows 1000000] [--ledger on|off] [--cap-seconds S] [--out DIR]

Runs one sync under pyinstrument (the main thread, which reads, transforms,
encodes, hashes, claims and hands batches to the senders) and writes
``profile-ledger-<on|off>.txt`` (the call tree), ``.html`` (interactive) and
``.json`` (the breakdown below), and prints the time spent in each part of the
pipeline in percent of the sync's total:

reading, transform_chunk, JSON encoding, hashing, ledger statements (claim,
mark_sent, lookup), thread hand-off (waiting for senders), the engine's own
bookkeeping, and the rest. The sender threads are not sampled: their HTTP
work shows up only as time the main thread spends waiting for them, or
waiting for the GIL inside whatever it was doing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datagen, engine_runs
from benchmarks.sink import SinkProcess

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# (category, test on (class name, function, file)); the first category that
# matches a frame takes the frame's whole time, its callees included.
Rule = tuple[str, Callable[[str, str, str], bool]]
RULES: tuple[Rule, ...] = (
    ("reading: read_sql_chunks (fetch + DataFrame)", lambda c, f, p: f == "read_sql_chunks"),
    ("transform_chunk (columns -> event dicts, validation)", lambda c, f, p: f in ("transform_chunk", "check_columns")),
    ("JSON encoding: encode_event", lambda c, f, p: f == "encode_event"),
    ("hashing: content_hash / ledger_key", lambda c, f, p: f in ("content_hash", "ledger_key")),
    ("ledger: claim", lambda c, f, p: c == "Ledger" and f == "claim"),
    ("ledger: mark_sent", lambda c, f, p: c == "Ledger" and f == "mark_sent"),
    ("ledger: lookup (skip already sent)", lambda c, f, p: c == "Ledger" and f == "lookup"),
    ("ledger: other (create_tables, heartbeat, ...)", lambda c, f, p: c == "Ledger"),
    (
        "thread hand-off: waiting for senders / submit / shutdown",
        lambda c, f, p: (
            (f == "wait" and "concurrent" in p)
            or (c == "ThreadPoolExecutor" and f in ("submit", "shutdown", "__exit__"))
        ),
    ),
    (
        "engine bookkeeping (PendingEvent, dedupe, batching, summary)",
        lambda c, f, p: c in ("ConversionSync", "PendingEvent") or f in ("_encode", "_drop_duplicates", "_batches"),
    ),
)
OTHER = "other (imports, logging, interpreter)"


def _categorise(root: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Time per category, and self time per function (``file:function``), under ``root``."""
    categories: dict[str, float] = defaultdict(float)
    functions: dict[str, float] = defaultdict(float)

    def function_self_times(frame: Any) -> None:
        # pyinstrument keeps a frame's own time in synthetic "[self]" children.
        real = [child for child in frame.children if not child.is_synthetic]
        own = frame.time - sum(child.time for child in real)
        where = f"{Path(frame.file_path or '?').name}:{frame.line_no}"
        functions[f"{frame.class_name + '.' if frame.class_name else ''}{frame.function} ({where})"] += own
        for child in real:
            function_self_times(child)

    def walk(frame: Any, owner: str | None) -> None:
        if owner is None or owner.startswith("engine bookkeeping"):
            for category, test in RULES:
                if test(frame.class_name or "", frame.function or "", frame.file_path or ""):
                    if owner is None or category != owner:
                        owner = category
                    break
        if owner is not None and not owner.startswith("engine bookkeeping"):
            categories[owner] += frame.time
            return
        own = frame.time - sum(child.time for child in frame.children)
        categories[owner or OTHER] += own
        for child in frame.children:
            walk(child, owner)

    walk(root, None)
    function_self_times(root)
    return dict(categories), dict(functions)


def _find(frame: Any, function: str) -> Any | None:
    if frame.function == function:
        return frame
    for child in frame.children:
        found = _find(child, function)
        if found is not None:
            return found
    return None


def profile_sync(rows: int, *, ledger_on: bool, cap_s: float | None, out: Path) -> dict[str, Any]:
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="pagent-profile-") as scratch:
        workdir = Path(scratch)
        print(f"generating and loading {rows:,} rows", flush=True)
        source = datagen.load_sqlite(workdir / "warehouse.db", datagen.make_rows(rows))
        datagen.warm_sqlite(source)
        ledger = engine_runs.sqlite_ledger(workdir / "ledger.db") if ledger_on else None
        with SinkProcess() as sink:
            profiler = Profiler(interval=0.001)
            print(f"profiling the sync (ledger {'on' if ledger_on else 'off'})", flush=True)
            started = time.perf_counter()
            profiler.start()
            if ledger is not None:
                timing = engine_runs.sync_ledger_on(source, datagen.select_rows(rows), sink.url, ledger, cap_s=cap_s)
            else:
                timing = engine_runs.sync_ledger_off(source, datagen.select_rows(rows), sink.url, cap_s=cap_s)
            profiler.stop()
            wall = time.perf_counter() - started
        source.dispose()
        if ledger is not None:
            ledger.engine.dispose()

    session = profiler.last_session
    root = _find(session.root_frame(), "run") or session.root_frame()
    categories, functions = _categorise(root)
    total = root.time
    suffix = "on" if ledger_on else "off"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile-ledger-{suffix}.txt").write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    (out / f"profile-ledger-{suffix}.html").write_text(profiler.output_html())
    breakdown = {
        "rows": timing.rows,
        "capped": timing.capped,
        "ledger": ledger_on,
        "sync_seconds": round(total, 3),
        "wall_seconds_profiled": round(wall, 3),
        "events_per_s_profiled": round(timing.events / wall, 1),
        "categories_pct": {
            name: round(seconds / total * 100, 1) for name, seconds in sorted(categories.items(), key=lambda kv: -kv[1])
        },
        "top_self_time_pct": {
            name: round(seconds / total * 100, 1)
            for name, seconds in sorted(functions.items(), key=lambda kv: -kv[1])[:25]
        },
    }
    (out / f"profile-ledger-{suffix}.json").write_text(json.dumps(breakdown, indent=2) + "\n")
    return breakdown


def format_breakdown(breakdown: dict[str, Any]) -> str:
    lines = [
        f"sync of {breakdown['rows']:,} rows, ledger {'on' if breakdown['ledger'] else 'off'}: "
        f"{breakdown['sync_seconds']:.1f}s under the profiler ({breakdown['events_per_s_profiled']:,.0f} ev/s)"
        + (" [capped]" if breakdown["capped"] else ""),
        "share of the main thread's time:",
    ]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in breakdown["categories_pct"].items()]
    lines.append("top functions by self time:")
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in list(breakdown["top_self_time_pct"].items())[:15]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ledger", choices=("on", "off"), default="on")
    parser.add_argument(
        "--cap-seconds", type=float, default=None, help="stop reading after this long (default: no cap)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    breakdown = profile_sync(args.rows, ledger_on=args.ledger == "on", cap_s=args.cap_seconds, out=args.out)
    print(format_breakdown(breakdown))
    print(f"wrote {args.out}/profile-ledger-{args.ledger}.txt, .html and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
