"""Reading the values of a column: dtype kinds, missing-value masks, int and
float arrays, and the decimal context shared by the converters.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import numpy as np
import pandas as pd

from pagent_provider.core.events import has_lone_surrogate

_INT64_MAX = 2**63 - 1

# Our own decimal context: the thread's default one could have been changed by
# the user (precision, rounding), and the result must not depend on that.
_DECIMAL = Context(prec=60, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)


# --------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------


def _column_kind(dtype: Any) -> str:
    """Classify a dtype as bool, int, float, datetime, text or object.

    Nullable ``boolean``/``Int64``/``Float64`` fall into the same kinds as
    their numpy counterparts; anything else (categorical, timedelta, ...) goes
    the per-element ``object`` way, which rejects what it cannot use.
    """
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.StringDtype):
        return "text"
    return "object"


def _missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy(dtype=bool)


def _is_missing_scalar(value: Any) -> bool:
    """Whether a Python/numpy scalar stands for SQL NULL.

    A float NaN does: pandas marks NULL that way in float and object columns,
    so a NaN there cannot be told apart from NULL. A ``Decimal('NaN')`` does
    not: drivers return ``None`` for a NULL NUMERIC, so a NaN is a value
    (PostgreSQL's ``numeric 'NaN'``) that each converter must refuse.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


def _lone_surrogate_mask(strings: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The rows of a text column whose string holds a lone surrogate (UTF-8 cannot encode it).

    The common case costs one C-level pass: the present strings are joined
    and the result is ASCII (an O(1) test) or encodes as UTF-8. Only when it
    does not are the strings searched one by one.
    """
    mask = np.zeros(len(strings), dtype=bool)
    everything = bool(present.all())
    texts = strings.tolist() if everything else strings[present].tolist()
    joined = "".join(texts)
    if joined.isascii():
        return mask
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        found = np.fromiter(map(has_lone_surrogate, texts), dtype=bool, count=len(texts))
        mask[np.flatnonzero(present)] = found
    return mask


def _numpy_dtype(values: pd.Series) -> np.dtype:
    """The NumPy dtype of a column: a masked dtype's ``numpy_dtype`` (``Int64`` -> ``int64``), else its own."""
    dtype: Any = getattr(values.dtype, "numpy_dtype", values.dtype)
    return np.dtype(dtype)


def _int_array(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (int64 values, missing mask, too-large mask) of an integer column.

    uint64 values beyond int64 cannot be represented; they are flagged rather
    than wrapped around.
    """
    missing = _missing(values)
    numpy_dtype = _numpy_dtype(values)
    raw = values.to_numpy(dtype=numpy_dtype, na_value=0)
    too_large = np.zeros(len(raw), dtype=bool)
    if numpy_dtype.kind == "u":
        too_large = raw > np.uint64(_INT64_MAX)
        raw = np.where(too_large, 0, raw)
    return raw.astype(np.int64), missing, too_large


def _float_array(values: pd.Series) -> np.ndarray:
    """Return a float64 array (NaN where missing) of a float column.

    float32 values go through their shortest text: the float64 nearest to
    that text is the value as written (19.99f stays 19.99, not 19.9899997...).
    """
    numpy_dtype = _numpy_dtype(values)
    raw = values.to_numpy(dtype=numpy_dtype, na_value=np.nan)
    if numpy_dtype.itemsize < 8:
        return raw.astype(str).astype(np.float64)
    return raw.astype(np.float64, copy=False)
