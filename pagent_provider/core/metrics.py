"""The numbers of a sync as metrics: counters and a timer, sent to whatever sink the shell provides.

The core does not know where metrics go. The operator passes a sink backed by
Airflow's ``Stats`` (so they reach StatsD or OpenTelemetry wherever the
deployment sends Airflow's own metrics); the command-line tool prints them as
JSON. Every metric is named ``pagent.<name>`` and carries the same tags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

PREFIX = "pagent"
#: The summary counts exported as counters (``pagent.<name>``), in this order.
COUNTERS = (
    "rows",
    "valid",
    "invalid",
    "sent",
    "already_sent",
    "changed_after_send",
    "rejected",
    "unknown",
    "unknown_resent",
    "failed",
    "claimed_elsewhere",
    "requests",
    "retries",
    "rate_limited",
)
#: The run's duration, exported as a timer.
TIMER = "sync_duration"


class MetricsSink(Protocol):
    """Where metrics go; Airflow's ``Stats`` has this shape."""

    def incr(self, stat: str, count: int = 1, rate: int = 1, *, tags: dict[str, str] | None = None) -> None: ...

    def timing(self, stat: str, dt: Any, *, tags: dict[str, str] | None = None) -> None: ...


def metrics_of(summary: Mapping[str, Any], outcome: str) -> dict[str, Any]:
    """The metrics of one run as a plain dict (what the CLI prints, what a sink receives)."""
    counters = {f"{PREFIX}.{name}": int(summary.get(name, 0) or 0) for name in COUNTERS}
    return {
        "counters": counters,
        "timers": {f"{PREFIX}.{TIMER}": float(summary.get("duration_s", 0.0) or 0.0)},
        "outcome": outcome,
        f"{PREFIX}.runs.{outcome}": 1,
    }


def emit(sink: MetricsSink, summary: Mapping[str, Any], outcome: str, tags: Mapping[str, str]) -> None:
    """Send one run's counters, a ``pagent.runs.<outcome>`` count and its duration (in ms) to ``sink``.

    Metrics never fail a sync: a sink that raises is logged once and ignored.
    """
    metrics = metrics_of(summary, outcome)
    tag_dict = {name: str(value) for name, value in tags.items()}
    try:
        for stat, count in metrics["counters"].items():
            if count:
                sink.incr(stat, count, tags=tag_dict)
        sink.incr(f"{PREFIX}.runs.{outcome}", 1, tags=tag_dict)
        for stat, seconds in metrics["timers"].items():
            sink.timing(stat, seconds * 1000.0, tags=tag_dict)
    except Exception as error:  # noqa: BLE001 - metrics are never worth failing a delivery
        log.warning("could not emit pagent metrics: %s: %s", type(error).__name__, error)
