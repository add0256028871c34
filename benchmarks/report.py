"""The report: a text table, ``results.json`` and ``throughput.png``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import Bench, TargetResult

TABLE_COLUMNS = ("Target", "Measured", "Limit", "Result", "Margin", "Side by side")


def measured_text(result: TargetResult) -> str:
    """``1.07x`` for a ratio, ``247 B/event`` for a size."""
    if result.unit == "x":
        return f"{result.measured:.2f}x"
    return f"{result.measured:.0f} {result.unit}/event"


def _limit_text(result: TargetResult) -> str:
    return f"{result.comparison} {result.limit:g}" + ("x" if result.unit == "x" else f" {result.unit}")


def _row(result: TargetResult) -> tuple[str, ...]:
    status = "met" if result.met else "MISSED"
    margin = f"{result.margin_pct:+.0f}%" if result.met else f"by {-result.margin_pct:.0f}%"
    return (result.title, measured_text(result), _limit_text(result), status, margin, result.summary)


def format_table(results: Sequence[TargetResult]) -> str:
    """The results as a fixed-width text table, one row per target, and the notes under it.

    Margin: distance from the limit in percent of the limit; positive is
    headroom, negative is how far the target was missed.
    """
    rows = [TABLE_COLUMNS, *(_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    out = [line(rows[0]), "-+-".join("-" * width for width in widths)]
    out += [line(row) for row in rows[1:]]
    met = sum(result.met for result in results)
    out.append(f"{met} of {len(results)} targets met. Margin: +headroom, or missed by, in % of the limit.")
    notes = dict.fromkeys(note for result in results for note in result.notes)  # first-seen order
    out += [f"note: {note}" for note in notes]
    return "\n".join(out)


def results_document(bench: Bench, results: Sequence[TargetResult], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, JSON-ready."""
    return {
        "meta": meta,
        "targets": [result.as_dict() for result in results],
        "runs": bench.runs,
        "sweep": bench.sweep,
        "ledger_points": bench.ledger_points,
        "growth_points": bench.growth_points,
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def draw_chart(bench: Bench, results: Sequence[TargetResult], path: Path) -> None:
    """Left: throughput against ``max_workers`` at the sink's latency, with the ideal, the ledgers and the baselines.

    Right: events/s of the no-latency runs of targets 1 and 5 (same rows each; the median runs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = bench.settings
    by_id = {result.id: result for result in results}
    numbers = by_id["concurrency_ideal"].numbers
    workers = [point["workers"] for point in bench.sweep]
    measured = [point["events_per_s"] for point in bench.sweep]
    ideal = [point["ideal_events_per_s"] for point in bench.sweep]

    figure, (left, right, growth) = plt.subplots(
        1, 3, figsize=(18, 5.5), dpi=110, gridspec_kw={"width_ratios": [3, 2, 2]}
    )
    left.plot(workers, ideal, linestyle="--", color="grey", label="ideal: workers x 100 events / latency")
    left.plot(workers, measured, marker="o", color="tab:blue", linewidth=2, label="sync engine, no ledger")
    for x, y in zip(workers, measured, strict=True):
        left.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    for database, color, marker in (("sqlite", "tab:purple", "s"), ("postgresql", "tab:cyan", "D")):
        points = [point for point in bench.ledger_points if point["database"] == database]
        if points:
            left.plot(
                [point["workers"] for point in points],
                [point["events_per_s"] for point in points],
                marker=marker,
                linestyle=":",
                color=color,
                label=f"sync engine, {'SQLite' if database == 'sqlite' else 'PostgreSQL'} ledger",
            )
    left.axhline(
        numbers["sequential_events_per_s"],
        color="tab:orange",
        label=f"hand-written pipeline, sequential ({numbers['sequential_events_per_s']:,.0f} ev/s)",
    )
    left.axhline(
        numbers["vendor_events_per_s"],
        color="tab:red",
        label=f"vendor example: 1 event per request, new connection ({numbers['vendor_events_per_s']:,.1f} ev/s)",
    )
    ticks = sorted(set(workers) | {point["workers"] for point in bench.ledger_points})
    left.set_xscale("log", base=2)
    left.set_xticks(ticks, [str(w) for w in ticks])
    left.set_yscale("log")
    left.set_xlabel("max_workers")
    left.set_ylabel("events per second (log scale)")
    left.set_title(f"{s.latency_s * 1000:.0f} ms latency per request")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="lower right")

    runs = bench.runs
    bars = [
        ("hand-written pipeline", "minimal_pipeline", "tab:green"),
        ("sync, SQLite ledger", "sync_ledger_on", "tab:purple"),
        ("sync, PostgreSQL ledger", "sync_postgresql_ledger_on", "tab:cyan"),
        ("sync, no ledger", "sync_ledger_off", "tab:blue"),
        ("re-run, all sent", "sync_rerun", "tab:grey"),
    ]
    present = [(label, runs[name]["events_per_s"], color) for label, name, color in bars if name in runs]
    if present:
        labels, rates, colors = zip(*present, strict=True)
        positions = range(len(labels))
        right.barh(positions, rates, color=colors)
        right.set_yticks(list(positions), labels)
        right.invert_yaxis()
        for y, rate in zip(positions, rates, strict=True):
            right.annotate(f" {rate:,.0f}", (rate, y), va="center", fontsize=8)
        right.set_xlim(0, max(rates) * 1.25)
        rows = runs.get("sync_ledger_on", {}).get("rows", 0)
        right.set_title(f"no latency, SQLite source, {rows:,} rows, max_workers={s.engine_workers}")
        right.set_xlabel("events per second")
        right.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}k")
        right.grid(True, axis="x", alpha=0.3)
    _draw_growth(growth, bench)
    figure.suptitle("pagent sync benchmark: throughput, and a day's cost against the ledger's size")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _draw_growth(axes: Any, bench: Bench) -> None:
    """A day's sync time against the rows its ledger already holds (target 7), one line per database."""
    for database, color, marker in (("sqlite", "tab:purple", "s"), ("postgresql", "tab:cyan", "D")):
        points = [point for point in bench.growth_points if point["database"] == database]
        if not points:
            continue
        name = "SQLite" if database == "sqlite" else "PostgreSQL"
        sizes = [0] + [point["ledger_rows"] for point in points]
        # the empty ledger's time: the median of every step's empty runs
        empty = sorted(point["empty_s"] for point in points)[len(points) // 2]
        axes.plot(sizes, [empty] + [point["day_s"] for point in points], marker=marker, color=color, label=name)
        for point in points:
            axes.annotate(
                f"{point['ratio']:.2f}x",
                (point["ledger_rows"], point["day_s"]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
    tops = [point["day_s"] for point in bench.growth_points] + [point["empty_s"] for point in bench.growth_points]
    axes.set_ylim(0, max(tops, default=1.0) * 1.2)  # room for the labels above the highest point
    axes.set_xlabel("rows already in the ledger")
    axes.set_ylabel("seconds for a day of new rows")
    axes.set_title(f"a day of {bench.settings.day_rows:,} rows (labels: / empty ledger)")
    axes.xaxis.set_major_formatter(lambda value, _: f"{value / 1e6:g}M" if value >= 1e6 else f"{value:,.0f}")
    axes.grid(True, alpha=0.3)
    if axes.get_lines():
        axes.legend(fontsize=8, loc="lower right")
