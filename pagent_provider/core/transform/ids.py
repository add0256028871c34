"""Id columns to strings: :func:`ids_to_strings` and its helpers."""

from __future__ import annotations

import math
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from pagent_provider.core.events import has_lone_surrogate, surrogate_problem
from pagent_provider.core.transform._columns import (
    _column_kind,
    _float_array,
    _int_array,
    _is_missing_scalar,
    _lone_surrogate_mask,
    _missing,
)
from pagent_provider.core.transform._converted import Converted, _series
from pagent_provider.core.transform._reasons import _add_reasons, _new_reasons, _shown

# --------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------


def ids_to_strings(values: pd.Series, *, field: str = "value") -> Converted:
    """Convert an id column (session_id, user_id, conversion_id, label, key) to strings.

    Strings are sent as stored (not stripped), but an empty or
    whitespace-only string is invalid. Integers, including integer columns
    with NULLs that pandas turned into floats (123.0), become ``"123"``;
    other floats use their repr, ``Decimal`` its text, ``UUID`` its text.
    Invalid: booleans, infinities and NaN ``Decimal`` values, other types,
    strings holding a lone surrogate (UTF-8 cannot encode them) or a NUL
    character (PostgreSQL text cannot hold one), and whole
    floats of 2**53 or more (an integer id that went through float64 may have
    lost digits).
    Missing values are ``None`` with no reason: whether that is allowed
    depends on the field.

    Args:
        values: the id column.
        field: name used in the reason messages.

    Returns:
        Converted values (Python ``str`` or ``None``) and reasons.
    """
    kind = _column_kind(values.dtype)
    if kind == "text":
        strings, reasons = _text_ids(values, field)
    elif kind == "int":
        raw, missing, too_large = _int_array(values)
        strings = np.fromiter(map(str, raw.tolist()), dtype=object, count=len(raw))
        strings[missing] = None
        reasons = _new_reasons(len(raw))
        shown = values.to_numpy(dtype=object)
        # Only uint64 beyond int64 can get here; their exact text is still fine.
        for i in np.flatnonzero(too_large):
            strings[i] = str(int(shown[i]))
    elif kind == "float":
        strings, reasons = _float_ids(_float_array(values), field)
    else:
        strings, reasons = _object_ids(values.to_numpy(dtype=object), field)
    return Converted(_series(strings, values.index), _series(reasons, values.index))


def _text_ids(values: pd.Series, field: str) -> tuple[np.ndarray, np.ndarray]:
    # pandas-stubs refuse na_value=None, which pandas takes (any scalar)
    strings = values.to_numpy(dtype=object, na_value=None, copy=True)  # type: ignore[call-overload]
    # The same test as `values.str.strip() == ""`, but C-level map() over the
    # str objects we need anyway: no intermediate stripped strings, about 5x
    # faster on the default (Python-backed) str dtype.
    present = ~_missing(values)
    blank = np.zeros(len(strings), dtype=bool)
    blank[present] = ~np.fromiter(map(bool, map(str.strip, strings[present])), dtype=bool, count=int(present.sum()))
    reasons = _new_reasons(len(strings))
    _add_reasons(reasons, blank, lambda i: _blank_id(field, strings[i]))
    unencodable = _lone_surrogate_mask(strings, present & ~blank)
    _add_reasons(reasons, unencodable, lambda i: _surrogate_id(field, strings[i]))
    nul = _nul_mask(strings, present & ~blank & ~unencodable)
    _add_reasons(reasons, nul, lambda i: _nul_id(field, strings[i]))
    strings[blank | unencodable | nul] = None
    return strings, reasons


def _nul_mask(strings: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The rows whose string holds a NUL character (one C-level search in the common case)."""
    mask = np.zeros(len(strings), dtype=bool)
    if "\x00" not in "".join(strings[present].tolist()):
        return mask
    mask[present] = np.fromiter(("\x00" in text for text in strings[present]), dtype=bool, count=int(present.sum()))
    return mask


def _float_ids(x: np.ndarray, field: str) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        # Below 2**53 every whole float is an exact integer.
        whole = np.isfinite(x) & (x == np.trunc(x)) & (np.abs(x) < 2.0**53)
    strings = np.full(len(x), None, dtype=object)
    strings[whole] = x[whole].astype(np.int64).astype(str).astype(object)
    reasons = _new_reasons(len(x))
    for i in np.flatnonzero(~whole & ~np.isnan(x)):
        strings[i], reasons[i] = _id_from_scalar(float(x[i]), field)
    return strings, reasons


def _object_ids(objects: np.ndarray, field: str) -> tuple[np.ndarray, np.ndarray]:
    strings = np.full(len(objects), None, dtype=object)
    reasons = _new_reasons(len(objects))
    for i, item in enumerate(objects):
        strings[i], reasons[i] = _id_from_scalar(item, field)
    return strings, reasons


def _id_from_scalar(value: Any, field: str) -> tuple[str | None, str | None]:
    """One id value; returns (text, None), (None, reason) or (None, None) when missing."""
    if _is_missing_scalar(value):
        return None, None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{field} {_shown(value)} is binary data that is not UTF-8 text"
    if isinstance(value, str):
        if not value.strip():
            return None, _blank_id(field, value)
        if has_lone_surrogate(value):
            return None, _surrogate_id(field, value)
        return (None, _nul_id(field, value)) if "\x00" in value else (value, None)
    if isinstance(value, bool | np.bool_):
        return None, f"{field} {_shown(value)} is a boolean, not an id; select the {field} column"
    try:
        return _id_from_number(value, field)
    except ValueError:
        # str() refuses integers past 4300 digits: no real id is that long.
        return None, f"{field} {_shown(value)} is far too long a number to be an id; check the {field} column"


def _id_from_number(value: Any, field: str) -> tuple[str | None, str | None]:
    if isinstance(value, int | np.integer):
        return str(int(value)), None
    if isinstance(value, float | np.floating | Decimal):
        # Decimal's own test: math.isfinite() raises on a signaling NaN.
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not finite:
            return None, f"{field} {_shown(value)} is not a usable id"
        # (np.abs: mypy joins abs() of a float or a NumPy float to object)
        if not isinstance(value, Decimal) and value == int(value) and np.abs(value) >= 2**53:
            # An integer id column with NULLs arrives as float64, which keeps
            # only 53 bits: the digits may already be wrong, so do not send them.
            return None, (
                f"{field} {_shown(value)} arrived as a float too large to hold every integer exactly, "
                "so its digits may be wrong; cast the column to text in the SQL"
            )
        if value == int(value):
            return str(int(value)), None
        if isinstance(value, Decimal):
            return str(value), None
        return (repr(float(value)) if isinstance(value, float | np.float64) else str(value)), None
    if isinstance(value, uuid.UUID):
        return str(value), None
    return None, f"{field} {_shown(value)} is a {type(value).__name__}, not a string id; select the {field} column"


def _surrogate_id(field: str, value: str) -> str:
    return f"{field} {_shown(value)} {surrogate_problem(value)}"


def _nul_id(field: str, value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no id captured by the SDK holds one
    return f"{field} {_shown(value)} holds a NUL character (\\x00); clean the column in the SQL"


def _blank_id(field: str, value: str) -> str:
    what = "an empty string" if value == "" else f"whitespace only ({value!r})"
    return f"{field} is {what}; select the column holding the {field} captured with _pgnt.variables()"
