"""Peak memory of a sync, each measured in a fresh child process.

The parent starts ``python -m benchmarks.memory SOURCE_URL SINK_URL ROWS``;
the child imports everything, notes its resident set (the floor), runs one
sync of the first ``ROWS`` rows through the engine and prints one JSON line
with its peak resident set (``VmHWM`` from ``/proc/self/status``, the kernel's
high-water mark; ``ru_maxrss`` where there is no ``/proc``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PeakMemory:
    """What one child process reported."""

    rows: int
    sent: int
    seconds: float
    floor_kib: int
    peak_kib: int

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sent": self.sent,
            "seconds": round(self.seconds, 3),
            "floor_mib": round(self.floor_kib / 1024, 1),
            "peak_mib": round(self.peak_mib, 1),
            "growth_mib": round((self.peak_kib - self.floor_kib) / 1024, 1),
        }


def peak_of_sync(source_url: str, sink_url: str, rows: int, *, timeout_s: float = 600) -> PeakMemory:
    """Run one sync of ``rows`` rows in a fresh child process; return its peak RSS."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", source_url, sink_url, str(rows)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the memory child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return PeakMemory(**report)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_kib() -> int:
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _child(source_url: str, sink_url: str, rows: int) -> None:
    import sqlalchemy as sa

    from benchmarks.datagen import select_rows
    from benchmarks.engine_runs import sync_ledger_off

    source = sa.create_engine(source_url)
    floor = _peak_kib()
    timing = sync_ledger_off(source, select_rows(rows), sink_url)
    source.dispose()
    report = {
        "rows": timing.rows,
        "sent": timing.events,
        "seconds": timing.seconds,
        "floor_kib": floor,
        "peak_kib": _peak_kib(),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
