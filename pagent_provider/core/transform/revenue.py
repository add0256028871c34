"""Revenue to exact integer cents: :func:`revenue_to_cents` and its helpers."""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd

from pagent_provider.core.events import MAX_REVENUE_CENTS
from pagent_provider.core.transform._columns import (
    _DECIMAL,
    _ONE,
    _column_kind,
    _float_array,
    _int_array,
    _is_missing_scalar,
    _missing,
)
from pagent_provider.core.transform._converted import Converted, _object_values, _series
from pagent_provider.core.transform._reasons import _add_reasons, _new_reasons, _shown
from pagent_provider.exceptions import PagentConfigError

RevenueUnit = Literal["dollars", "cents"]

# Floats whose cents lie within this distance of an integer take the fast path.
# See _float_dollars_to_cents for why that is exact.
_NEAR_INTEGER = 1e-6
# Beyond this many cents (100 billion dollars) the spacing of float64
# values gets too coarse for the fast-path proof; such values take the exact path.
_FAST_PATH_MAX_CENTS = 1e13
# MAX_REVENUE_CENTS as a float: 2**53 - 1 is exactly representable.
_MAX_CENTS_FLOAT = float(MAX_REVENUE_CENTS)

# A plain decimal number as text: optional sign, digits with an optional
# fraction, optional exponent. No "NaN", "Infinity", underscores or spaces.
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Texts that float64 parses exactly enough for the vectorised fast path:
# at most 13 integer digits (15 significant digits in all) and 2 decimals.
_SIMPLE_DOLLARS_TEXT = r"[+-]?[0-9]{1,13}(?:\.[0-9]{0,2})?"
_SIMPLE_CENTS_TEXT = r"[+-]?[0-9]{1,15}"


def _check_revenue_unit(unit: str) -> None:
    if unit not in ("dollars", "cents"):
        raise PagentConfigError(
            f"revenue_unit must be 'dollars' (amounts like 19.99, converted to cents) "
            f"or 'cents' (whole numbers like 1999), got {unit!r}"
        )


# --------------------------------------------------------------------------
# Revenue
# --------------------------------------------------------------------------


def revenue_to_cents(values: pd.Series, unit: RevenueUnit) -> Converted:
    """Convert a revenue column to integer cents, exactly.

    With ``unit="dollars"`` every amount with at most two decimals converts
    exactly (19.99 -> 1999, 1234567.89 -> 123456789); finer amounts round half
    away from zero on the decimal value as written (1.005 -> 101,
    -1.005 -> -101), where a float is "written" as its shortest repr. With
    ``unit="cents"`` the values must already be whole numbers.

    Accepted: int, float, ``Decimal`` and numeric text columns (nullable
    variants too). Missing values (NULL) are left out: the event carries no
    revenue. Invalid: booleans, infinities, ``Decimal('NaN')`` (PostgreSQL's
    ``numeric 'NaN'``, which is a value, not NULL), non-numeric text,
    fractions of a cent in cents mode, and amounts whose cents are beyond
    JSON's safe integer range (``|cents| <= MAX_REVENUE_CENTS``, 2**53 - 1).

    A float NaN is NULL: pandas marks NULL that way in float columns (and
    turns NaN into NA in nullable ones), so the two cannot be told apart
    after the read. To refuse a float NaN, map it in the SQL, e.g.
    ``CASE WHEN amount = 'NaN' THEN ...``.

    Args:
        values: the revenue column.
        unit: ``"dollars"`` or ``"cents"``.

    Returns:
        Converted values (Python ``int`` cents or ``None``) and reasons.

    Raises:
        PagentConfigError: on an unknown unit.
    """
    _check_revenue_unit(unit)
    kind = _column_kind(values.dtype)
    if kind == "int":
        cents, ok, reasons = _int_revenue(values, unit)
    elif kind == "float":
        cents, ok, reasons = _float_revenue(_float_array(values), unit)
    elif kind == "text":
        cents, ok, reasons = _text_revenue(values, unit)
    else:
        cents, ok, reasons = _object_revenue(values.to_numpy(dtype=object), unit)
    return Converted(_series(_object_values(cents, ok), values.index), _series(reasons, values.index))


_RevenueArrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # int64 cents, ok mask, reasons


def _int_revenue(values: pd.Series, unit: RevenueUnit) -> _RevenueArrays:
    raw, missing, too_large = _int_array(values)
    factor = 100 if unit == "dollars" else 1
    # The accepted range divided by the factor, rounded towards zero (it is
    # symmetric). No np.abs: it overflows on the int64 minimum.
    limit = MAX_REVENUE_CENTS // factor
    too_large |= (raw > limit) | (raw < -limit)
    ok = ~missing & ~too_large
    cents = np.where(ok, raw, 0) * factor
    reasons = _new_reasons(len(raw))
    shown = values.to_numpy(dtype=object)
    _add_reasons(reasons, too_large & ~missing, lambda i: _revenue_overflow(shown[i], unit))
    return cents, ok, reasons


def _float_revenue(x: np.ndarray, unit: RevenueUnit) -> _RevenueArrays:
    missing = np.isnan(x)
    infinite = np.isinf(x)
    reasons = _new_reasons(len(x))
    _add_reasons(reasons, infinite, lambda i: _infinite_revenue(x[i]))
    if unit == "dollars":
        cents, ok = _float_dollars_to_cents(x, reasons)
    else:
        cents, ok = _float_whole_cents(x, reasons)
    return cents, ok & ~missing & ~infinite, reasons


def _float_dollars_to_cents(x: np.ndarray, reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact dollars -> cents for float64, vectorised for all but a few values.

    Let w be the decimal value as written (the shortest repr of x) and
    s = fl(100 * x). When |s - rint(s)| < 1e-6 and |s| < 1e13, then
    |100*w - rint(s)| <= 100*|w - x| + |100*x - s| + 1e-6, and both rounding
    terms are below 1e-3 at that magnitude, so 100*w lies well within half a
    cent of rint(s): rounding half away from zero gives rint(s). Every amount
    with at most two decimals satisfies the condition. The others (sub-cent
    amounts such as 1.005, whose float sits just below the half, and huge
    amounts) go through Decimal(repr(x)), which is the definition itself.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = x * 100.0
        nearest = np.rint(scaled)
        fast = (np.abs(scaled - nearest) < _NEAR_INTEGER) & (np.abs(scaled) < _FAST_PATH_MAX_CENTS)
    cents = np.where(fast, nearest, 0.0).astype(np.int64)
    ok = fast.copy()
    for i in np.flatnonzero(~fast & np.isfinite(x)):
        value, reason = _decimal_to_cents(Decimal(repr(float(x[i]))), "dollars", x[i])
        if value is not None:  # (cents, None) or (None, reason)
            cents[i], ok[i] = value, True
        elif reasons[i] is None:
            reasons[i] = reason
    return cents, ok


def _float_whole_cents(x: np.ndarray, reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        whole = finite & (x == np.trunc(x))
        in_range = np.abs(x) <= _MAX_CENTS_FLOAT
    _add_reasons(reasons, finite & ~whole, lambda i: _not_whole_cents(x[i]))
    _add_reasons(reasons, whole & ~in_range, lambda i: _revenue_overflow(x[i], "cents"))
    ok = whole & in_range
    return np.where(ok, x, 0.0).astype(np.int64), ok


def _text_revenue(values: pd.Series, unit: RevenueUnit) -> _RevenueArrays:
    """Numeric text: plain amounts parse vectorised, the rest through Decimal."""
    size = len(values)
    stripped = values.str.strip()
    pattern = _SIMPLE_DOLLARS_TEXT if unit == "dollars" else _SIMPLE_CENTS_TEXT
    simple = stripped.str.fullmatch(pattern).fillna(False).to_numpy(dtype=bool)
    cents = np.zeros(size, dtype=np.int64)
    ok = np.zeros(size, dtype=bool)
    if simple.any():
        # <= 15 significant digits parse to a float within far less than half
        # a cent of the text, so rint(x * 100) is the exact cent amount.
        parsed = stripped[simple].astype(np.float64).to_numpy()
        cents[simple] = np.rint(parsed * 100.0 if unit == "dollars" else parsed).astype(np.int64)
        ok[simple] = True
    reasons = _new_reasons(size)
    rest = ~simple & ~_missing(values)
    texts = values.to_numpy(dtype=object)
    for i in np.flatnonzero(rest):
        value, reason = _revenue_from_scalar(texts[i], unit)
        if value is not None:  # (cents, None) or, the row not being missing, (None, reason)
            cents[i], ok[i] = value, True
        else:
            reasons[i] = reason
    return cents, ok, reasons


def _object_revenue(objects: np.ndarray, unit: RevenueUnit) -> _RevenueArrays:
    """Per element: the values are Python objects (Decimal, int, str, ...)."""
    size = len(objects)
    cents = np.zeros(size, dtype=np.int64)
    ok = np.zeros(size, dtype=bool)
    reasons = _new_reasons(size)
    for i, item in enumerate(objects):
        value, reason = _revenue_from_scalar(item, unit)
        if reason is not None:
            reasons[i] = reason
        elif value is not None:
            cents[i], ok[i] = value, True
    return cents, ok, reasons


def _revenue_from_scalar(value: Any, unit: RevenueUnit) -> tuple[int | None, str | None]:
    """Convert one revenue value; returns (cents, None), (None, reason) or (None, None) if missing."""
    if _is_missing_scalar(value):
        return None, None
    if isinstance(value, bool | np.bool_):
        return None, f"revenue {_shown(value)} is a boolean, not an amount; select the revenue column"
    if isinstance(value, int | np.integer):
        number = Decimal(int(value))
    elif isinstance(value, float | np.floating):
        if math.isinf(value):
            return None, _infinite_revenue(value)
        # numpy prints float32 at its own shortest precision; float64 via repr.
        number = Decimal(repr(float(value)) if isinstance(value, float | np.float64) else str(value))
    elif isinstance(value, Decimal):
        if value.is_nan():
            return None, _nan_revenue(value)
        if value.is_infinite():
            return None, _infinite_revenue(value)
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").lower() == "nan":  # numeric 'NaN' read as text (SQLite, CSV exports)
            return None, _nan_revenue(value)
        if not _NUMBER_TEXT.fullmatch(text):
            return None, (
                f"revenue {_shown(value)} is not a number; the revenue column must hold plain "
                "numbers such as 19.99 (no currency signs or thousands separators)"
            )
        number = Decimal(text)
    else:
        return None, f"revenue {_shown(value)} is a {type(value).__name__}, not a number; select the revenue column"
    return _decimal_to_cents(number, unit, value)


def _decimal_to_cents(number: Decimal, unit: RevenueUnit, shown: Any) -> tuple[int | None, str | None]:
    # Anything with more than 20 integer digits overflows int64 cents anyway;
    # checking first keeps quantize within the context's precision.
    if number.adjusted() > 20:
        return None, _revenue_overflow(shown, unit)
    if unit == "dollars":
        cents = int(number.scaleb(2, _DECIMAL).quantize(_ONE, rounding=ROUND_HALF_UP, context=_DECIMAL))
    else:
        if number != number.to_integral_value(context=_DECIMAL):
            return None, _not_whole_cents(shown)
        cents = int(number)
    if abs(cents) > MAX_REVENUE_CENTS:
        return None, _revenue_overflow(shown, unit)
    return cents, None


def _not_whole_cents(value: Any) -> str:
    return (
        f"revenue {_shown(value)} is not whole cents, but revenue_unit is 'cents'; "
        "if the column holds dollar amounts, set revenue_unit='dollars'"
    )


def _infinite_revenue(value: Any) -> str:
    return f"revenue {_shown(value)} is not a finite number; fix the amount in the warehouse"


def _nan_revenue(value: Any) -> str:
    return (
        f"revenue {_shown(value)} is NaN (not a number), which is not NULL: sending the conversion "
        "without revenue would understate it; fix the amount in the warehouse, or turn NaN into NULL "
        "in the SQL (NULLIF(amount, 'NaN')) if such rows really have no revenue"
    )


def _revenue_overflow(value: Any, unit: RevenueUnit) -> str:
    return (
        f"revenue {_shown(value)} ({unit}) is too large: its cents are beyond JSON's safe integer range "
        f"(|revenue| <= {MAX_REVENUE_CENTS} cents); check the amount and revenue_unit"
    )
