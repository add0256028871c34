"""The reasons of invalid rows: the reasons arrays and the rendering of a value
in a reason message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _new_reasons(size: int) -> np.ndarray:
    return np.full(size, None, dtype=object)


def _is_none(values: np.ndarray) -> np.ndarray:
    """``values == None`` elementwise, as a bool array: the rows without a reason (or value)."""
    # numpy's stubs take no None operand, though an object array compares with it elementwise
    return np.equal(values, None)  # type: ignore[call-overload]


def _add_reasons(reasons: np.ndarray, mask: np.ndarray, message: Callable[[int], str]) -> None:
    """Write ``message(i)`` for each masked row that has no reason yet.

    Runs per invalid row only, which are few; the first problem found wins.
    """
    for i in np.flatnonzero(mask):
        if reasons[i] is None:
            reasons[i] = message(int(i))


def _shown(value: Any) -> str:
    """A short, unambiguous rendering of a value for a reason message.

    ``repr`` escapes lone surrogates, so the reason itself stays encodable
    (it is logged and stored in the ledger); integers too long for ``repr``
    are described by their size instead of raising.
    """
    plain = value.item() if isinstance(value, np.generic) else value
    if isinstance(plain, int) and plain.bit_length() > 200:
        return f"an integer of {plain.bit_length()} bits"
    text = repr(plain)
    return text if len(text) <= 80 else text[:77] + "..."
