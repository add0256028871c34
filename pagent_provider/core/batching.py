"""Splitting events into request-sized batches, deterministically."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def batched(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive batches of ``size`` items (the last may be shorter), in input order.

    The same input always gives the same batches, so a re-run claims and sends
    the same groups.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
