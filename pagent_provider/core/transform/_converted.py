"""The result of converting one column: :class:`Converted` and the helpers
that build its values Series.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd


class Converted(NamedTuple):
    """The result of converting one column.

    Attributes:
        values: ``object`` Series, same index as the input, holding the
            JSON-ready value of each row, or ``None`` where the value is
            missing (NULL) or invalid.
        reasons: ``object`` Series, same index, holding a message for each
            invalid row and ``None`` for valid or missing ones.
    """

    values: pd.Series
    reasons: pd.Series


def _object_values(ints: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Python ints where ``ok``, None elsewhere (numpy gives Python ints for astype(object))."""
    out = ints.astype(object)
    out[~ok] = None
    return out


def _series(data: np.ndarray | list[Any], index: pd.Index) -> pd.Series:
    return pd.Series(data, index=index, dtype=object)
