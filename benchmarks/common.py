"""Small pieces every benchmark module shares: timings and time caps."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Timing:
    """How long one run took to deliver (or skip) how many events.

    Attributes:
        events: events delivered, or found already delivered (re-run).
        seconds: wall time of the run.
        requests: HTTP requests made.
        rows: source rows read.
        capped: the run hit its time cap and stopped reading early (see :func:`until`).
        details: anything else worth keeping in the JSON.
    """

    events: int
    seconds: float
    requests: int = 0
    rows: int = 0
    capped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "rows": self.rows,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.events_per_s, 1),
            "requests": self.requests,
            "capped": self.capped,
            **self.details,
        }


class Cap:
    """Stops an iterator of chunks once ``seconds`` have passed (``None``: never).

    A run that hits its cap ends at the next chunk boundary; its rate (events/s)
    is still a steady-state measurement, and the runs it is compared with are
    then measured on the same rows. This keeps the whole suite within its time
    budget even when the code under test is far slower than it should be.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.hit = False

    def until(self, chunks: Iterable[T]) -> Iterator[T]:
        iterator = iter(chunks)
        deadline = None if self.seconds is None else time.perf_counter() + self.seconds
        try:
            for chunk in iterator:
                yield chunk
                if deadline is not None and time.perf_counter() >= deadline:
                    self.hit = True
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
