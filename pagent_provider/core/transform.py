"""Turn a chunk of warehouse rows into valid pagent v1 conversion events.

A sync reads its SQL result in :class:`pandas.DataFrame` chunks and hands each
chunk to :func:`transform_chunk`, which returns the JSON-ready v1 events of the
valid rows and one :class:`RowReject` per invalid row. Nothing here talks to
the network or to Airflow: the module is pure pandas, numpy and stdlib so it
can be tested (and profiled) on its own.

The building blocks (:func:`revenue_to_cents`, :func:`time_to_unix_ms`,
:func:`ids_to_strings`, :func:`properties_to_json_objects`,
:func:`gather_properties`) each convert one column and return a
:class:`Converted` pair: the JSON-ready values (an ``object`` Series holding
``str``/``int``/``dict``/``list`` or ``None``) and the reasons (an ``object``
Series holding a message where a row is invalid and ``None`` where it is
valid). A missing value (NULL, NaN, NaT) is ``None`` in both: whether a
missing value is acceptable depends on the event field, so
:func:`transform_chunk` decides that.

The work on whole columns is vectorised; per-element Python runs only where
the values already are Python objects (``Decimal``, ``dict``, JSON text,
``datetime`` objects in an ``object`` column) and for the rare revenue values
that need exact decimal rounding.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time as _time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from types import MappingProxyType
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from pagent_provider.exceptions import PagentConfigError

__all__ = [
    "EVENT_FIELDS",
    "REQUIRED_FIELDS",
    "Converted",
    "RowReject",
    "TransformConfig",
    "TransformedChunk",
    "check_columns",
    "gather_properties",
    "ids_to_strings",
    "properties_to_json_objects",
    "revenue_to_cents",
    "time_to_unix_ms",
    "transform_chunk",
]

#: The fields of a pagent v1 event, in the order they are written.
EVENT_FIELDS = ("session_id", "user_id", "conversion_id", "label", "revenue", "properties", "time")
#: The fields pagent refuses an event without.
REQUIRED_FIELDS = ("session_id", "user_id", "conversion_id")

RevenueUnit = Literal["dollars", "cents"]

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
#: 2000-01-01T00:00:00Z: anything earlier is almost surely a unit mistake.
_MIN_TIME_MS = 946_684_800_000
#: pagent's clock and the warehouse's may differ a little; more is a mistake.
_FUTURE_TOLERANCE_MS = 3_600_000

# Floats whose cents lie within this distance of an integer take the fast path.
# See _float_dollars_to_cents for why that is exact.
_NEAR_INTEGER = 1e-6
# Beyond this many cents (100 billion dollars) the spacing of float64
# values gets too coarse for the fast-path proof; such values take the exact path.
_FAST_PATH_MAX_CENTS = 1e13

# Our own decimal context: the thread's default one could have been changed by
# the user (precision, rounding), and the result must not depend on that.
_DECIMAL = Context(prec=60, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)

# A plain decimal number as text: optional sign, digits with an optional
# fraction, optional exponent. No "NaN", "Infinity", underscores or spaces.
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Texts that float64 parses exactly enough for the vectorised fast path:
# at most 13 integer digits (15 significant digits in all) and 2 decimals.
_SIMPLE_DOLLARS_TEXT = r"[+-]?[0-9]{1,13}(?:\.[0-9]{0,2})?"
_SIMPLE_CENTS_TEXT = r"[+-]?[0-9]{1,15}"
# Epoch milliseconds stored as text (SQLite columns without a type do that).
_DIGITS_TEXT = r"[+-]?[0-9]{1,18}"
# An ISO-8601 text ends with "Z" or a UTC offset when, after the date/time
# separator, it ends with one. "2026-11-26" ends with "-26", which is part of
# the date, hence the separator in front.
_AWARE_TEXT = r"[Tt ].*(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$"

_UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

_CONVERSION_ID_NULL = (
    "conversion_id is NULL: the goal label matched no configured goal "
    '(_pgnt.variables("label") returned conversion_id null); check the label in '
    "pagent's Tracking settings, or set conversion_id in the transform config to the goal's UUID"
)


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


@dataclass(frozen=True)
class TransformConfig:
    """How the columns of a query result become pagent v1 events.

    Attributes:
        columns: event field -> result column; a field not listed here is read
            from the column of the same name, when there is one.
        properties_columns: extra columns gathered into the ``properties``
            object as ``{column: value}``.
        key_column: a stable unique key of each row (an order id), used by the
            caller to remember which rows were sent.
        revenue_unit: whether the revenue column holds dollars (converted to
            cents, rounding half away from zero) or already whole cents.
        timezone: IANA zone in which naive timestamps are read.
        label: a constant label for every event, replacing any label column.
        conversion_id: a constant goal UUID for every event, replacing any
            conversion_id column.
        require_time: reject rows without a conversion time instead of letting
            pagent stamp them with the upload time.

    Raises:
        PagentConfigError: on an unknown event field in ``columns``, an unknown
            revenue unit or time zone, an empty constant, or a constant that
            contradicts an explicit column mapping.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    properties_columns: Sequence[str] | None = None
    key_column: str | None = None
    revenue_unit: RevenueUnit = "dollars"
    timezone: str = "UTC"
    label: str | None = None
    conversion_id: str | None = None
    require_time: bool = True

    def __post_init__(self) -> None:
        self._validate_columns()
        self._validate_properties_columns()
        if self.key_column is not None and (not isinstance(self.key_column, str) or not self.key_column):
            raise PagentConfigError(f"key_column must be a non-empty column name, got {self.key_column!r}")
        _check_revenue_unit(self.revenue_unit)
        _zone(self.timezone)
        for name in ("label", "conversion_id"):
            self._validate_constant(name)
        if not isinstance(self.require_time, bool):
            raise PagentConfigError(f"require_time must be True or False, got {self.require_time!r}")

    def column_for(self, event_field: str) -> str:
        """Return the result column that feeds ``event_field``."""
        return self.columns.get(event_field, event_field)

    def _validate_columns(self) -> None:
        if not isinstance(self.columns, Mapping):
            raise PagentConfigError(f"columns must map event fields to column names, got {self.columns!r}")
        unknown = [name for name in self.columns if name not in EVENT_FIELDS]
        if unknown:
            raise PagentConfigError(
                f"columns maps unknown event field(s) {', '.join(map(repr, unknown))}; "
                f"pagent v1 events have the fields {', '.join(EVENT_FIELDS)} "
                "(the mapping goes event field -> column, not column -> event field)"
            )
        for event_field, column in self.columns.items():
            if not isinstance(column, str) or not column:
                raise PagentConfigError(f"columns[{event_field!r}] must be a non-empty column name, got {column!r}")
        # A frozen config should not change when the caller's dict does.
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    def _validate_properties_columns(self) -> None:
        columns = self.properties_columns
        if columns is None:
            return
        # A bare string is a Sequence too: "amount" would become a, m, o, ...
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise PagentConfigError(f"properties_columns must be a list of column names, got {columns!r}")
        bad = [c for c in columns if not isinstance(c, str) or not c]
        if bad:
            raise PagentConfigError(f"properties_columns must hold non-empty column names, got {bad!r}")
        repeated = sorted({c for c in columns if list(columns).count(c) > 1})
        if repeated:
            raise PagentConfigError(f"properties_columns lists {', '.join(map(repr, repeated))} more than once")
        object.__setattr__(self, "properties_columns", tuple(columns))

    def _validate_constant(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, str) or not value.strip():
            raise PagentConfigError(f"{name} must be a non-empty string when set, got {value!r}")
        if name in self.columns:
            raise PagentConfigError(
                f"{name} is set both as a constant ({value!r}) and as a column "
                f"(columns[{name!r}] = {self.columns[name]!r}); use one of them"
            )


@dataclass(frozen=True)
class RowReject:
    """One invalid row and why it cannot be sent.

    Attributes:
        row: the key_column value when the row has one, else ``"row N"`` with
            N the 0-based row number across the whole result.
        field: the event field at fault (or the key column's name).
        reason: what is wrong and what to do about it.
    """

    row: str
    field: str
    reason: str


@dataclass
class TransformedChunk:
    """The outcome of :func:`transform_chunk` for one chunk.

    Attributes:
        events: valid v1 events in row order, JSON-ready; fields without a
            value are left out of the dict.
        keys: key_column values as strings, parallel to ``events``; ``None``
            when no key_column is configured.
        rejects: one entry per invalid row, in row order.
        rows: number of rows in the input chunk.
    """

    events: list[dict[str, Any]]
    keys: list[str] | None
    rejects: list[RowReject]
    rows: int


# --------------------------------------------------------------------------
# Configuration checks
# --------------------------------------------------------------------------


def check_columns(columns: Sequence[str], config: TransformConfig) -> None:
    """Check that a query result has every column the config needs.

    Needed are the columns of session_id and user_id, of conversion_id unless
    it is a constant, of time when ``require_time``, of any field mapped
    explicitly in ``config.columns``, the key column and the properties
    columns. Checking once per sync, before any row is read, turns a typo into
    one clear error instead of a million rejected rows.

    Args:
        columns: the column names of the query result.
        config: the transform configuration.

    Raises:
        PagentConfigError: naming each missing (or duplicated) column, what it
            is needed for, and the columns that are available.
    """
    available = list(columns)
    needed = _needed_columns(config)
    present = set(available)
    missing = [(column, purpose) for column, purpose in needed if column not in present]
    duplicated = sorted({str(c) for c, _ in needed if available.count(c) > 1})
    problems = []
    if missing:
        listed = "; ".join(f"{column!r} (for {purpose})" for column, purpose in missing)
        problems.append(
            f"the query result has no column {listed}. Rename a column in the SQL "
            "(SELECT ... AS session_id) or map it with columns={'<event field>': '<column>'}"
        )
    if duplicated:
        problems.append(
            f"the query result has more than one column named {', '.join(map(repr, duplicated))}; "
            "give each column a distinct alias in the SQL"
        )
    if problems:
        shown = ", ".join(map(repr, available)) or "(none)"
        raise PagentConfigError(f"{' and '.join(problems)}. Available columns: {shown}")


def _needed_columns(config: TransformConfig) -> list[tuple[str, str]]:
    needed: list[tuple[str, str]] = []
    for event_field in EVENT_FIELDS:
        if _constant_for(config, event_field) is not None:
            continue
        required = event_field in REQUIRED_FIELDS or (event_field == "time" and config.require_time)
        if required or event_field in config.columns:
            why = "event field " + event_field + (" (require_time=True)" if event_field == "time" else "")
            needed.append((config.column_for(event_field), why))
    if config.key_column is not None:
        needed.append((config.key_column, "key_column"))
    needed.extend((column, "properties_columns") for column in config.properties_columns or ())
    return needed


def _constant_for(config: TransformConfig, event_field: str) -> str | None:
    if event_field == "label":
        return config.label
    if event_field == "conversion_id":
        return config.conversion_id
    return None


def _check_revenue_unit(unit: str) -> None:
    if unit not in ("dollars", "cents"):
        raise PagentConfigError(
            f"revenue_unit must be 'dollars' (amounts like 19.99, converted to cents) "
            f"or 'cents' (whole numbers like 1999), got {unit!r}"
        )


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise PagentConfigError(f"timezone must be an IANA time zone name such as 'UTC', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise PagentConfigError(
            f"unknown timezone {name!r}: use an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
        ) from err


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
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, Decimal):
        return value.is_nan()
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


def _int_array(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (int64 values, missing mask, too-large mask) of an integer column.

    uint64 values beyond int64 cannot be represented; they are flagged rather
    than wrapped around.
    """
    missing = _missing(values)
    numpy_dtype = np.dtype(getattr(values.dtype, "numpy_dtype", values.dtype))
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
    numpy_dtype = np.dtype(getattr(values.dtype, "numpy_dtype", values.dtype))
    raw = values.to_numpy(dtype=numpy_dtype, na_value=np.nan)
    if numpy_dtype.itemsize < 8:
        return raw.astype(str).astype(np.float64)
    return raw.astype(np.float64, copy=False)


def _object_values(ints: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Python ints where ``ok``, None elsewhere (numpy gives Python ints for astype(object))."""
    out = ints.astype(object)
    out[~ok] = None
    return out


def _new_reasons(size: int) -> np.ndarray:
    return np.full(size, None, dtype=object)


def _add_reasons(reasons: np.ndarray, mask: np.ndarray, message: Callable[[int], str]) -> None:
    """Write ``message(i)`` for each masked row that has no reason yet.

    Runs per invalid row only, which are few; the first problem found wins.
    """
    for i in np.flatnonzero(mask):
        if reasons[i] is None:
            reasons[i] = message(int(i))


def _series(data: np.ndarray | list[Any], index: pd.Index) -> pd.Series:
    return pd.Series(data, index=index, dtype=object)


def _shown(value: Any) -> str:
    """A short, unambiguous rendering of a value for a reason message."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    variants too). Missing values are left out. Invalid: booleans, infinity,
    non-numeric text, fractions of a cent in cents mode, and amounts whose
    cents do not fit in a signed 64-bit integer.

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
    # The int64 range divided by the factor, rounded towards zero at both ends.
    too_large |= (raw > _INT64_MAX // factor) | (raw < -(-_INT64_MIN // factor))
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
    _add_reasons(reasons, infinite, lambda i: f"revenue {_shown(x[i])} is not a finite number")
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
        if reason is None:
            cents[i], ok[i] = value, True
        elif reasons[i] is None:
            reasons[i] = reason
    return cents, ok


def _float_whole_cents(x: np.ndarray, reasons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        whole = finite & (x == np.trunc(x))
        # 2**63 is exactly representable; int64 holds [-2**63, 2**63).
        in_range = (x >= -(2.0**63)) & (x < 2.0**63)
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
        if reason is None:
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
            return None, f"revenue {_shown(value)} is not a finite number"
        # numpy prints float32 at its own shortest precision; float64 via repr.
        number = Decimal(repr(float(value)) if isinstance(value, float | np.float64) else str(value))
    elif isinstance(value, Decimal):
        if value.is_infinite():
            return None, f"revenue {_shown(value)} is not a finite number"
        number = value
    elif isinstance(value, str):
        text = value.strip()
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
    if not _INT64_MIN <= cents <= _INT64_MAX:
        return None, _revenue_overflow(shown, unit)
    return cents, None


def _not_whole_cents(value: Any) -> str:
    return (
        f"revenue {_shown(value)} is not whole cents, but revenue_unit is 'cents'; "
        "if the column holds dollar amounts, set revenue_unit='dollars'"
    )


def _revenue_overflow(value: Any, unit: RevenueUnit) -> str:
    return f"revenue {_shown(value)} ({unit}) is too large: its cents do not fit in a 64-bit integer"


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------


class _Times(NamedTuple):
    """Intermediate result of reading a time column."""

    ms: np.ndarray  # int64 Unix milliseconds, meaningful where ``ok``
    ok: np.ndarray  # parsed successfully
    numeric: np.ndarray  # came from a number (for the seconds/microseconds hint)
    reasons: np.ndarray  # object: why a present value could not be read


def time_to_unix_ms(values: pd.Series, timezone: str, *, now_ms: int | None = None) -> Converted:
    """Convert a time column to Unix milliseconds (UTC).

    Accepted:

    * ``datetime64`` of any resolution (s, ms, us, ns), time zone aware or
      naive. Aware values keep their instant; sub-millisecond parts are
      floored.
    * Naive values (``datetime64``, ``datetime`` objects, ISO-8601 text
      without offset) are read as wall-clock time in ``timezone``. Ambiguous
      wall times (the repeated hour when clocks fall back) are read as their
      FIRST occurrence, the one still on daylight-saving time; nonexistent
      wall times (the hour skipped when clocks spring forward) are shifted
      forward to the first valid instant after the gap (02:30 -> 03:00 on a
      day where 02:00 jumps to 03:00).
    * ISO-8601 text such as ``'2026-11-26 10:00:00'``,
      ``'2026-11-26T10:00:00.123Z'`` or ``'2026-11-26T10:00:00+02:00'``
      (offsets may differ from row to row); text with ``Z`` or an offset uses
      it. Digit-only text is read as milliseconds.
    * Integers (and whole floats, which is what an integer column with NULLs
      becomes, and ``Decimal``) as milliseconds; fractional milliseconds are
      floored.

    Invalid: unparseable values, booleans, times before
    2000-01-01T00:00:00Z (with a hint when the number looks like seconds) and
    times more than one hour after ``now_ms``. Missing values are ``None``
    with no reason; the caller decides whether time is required.

    Args:
        values: the time column.
        timezone: IANA zone for naive values.
        now_ms: the current time in Unix milliseconds; default: the clock.

    Returns:
        Converted values (Python ``int`` milliseconds or ``None``) and reasons.

    Raises:
        PagentConfigError: on an unknown time zone.
    """
    zone = _zone(timezone)
    now = _now_ms() if now_ms is None else int(now_ms)
    times = _read_times(values, zone)
    _check_time_range(times, now)
    ok = times.ok & np.equal(times.reasons, None)
    return Converted(_series(_object_values(times.ms, ok), values.index), _series(times.reasons, values.index))


def _now_ms() -> int:
    return _time.time_ns() // 1_000_000


def _read_times(values: pd.Series, zone: ZoneInfo) -> _Times:
    kind = _column_kind(values.dtype)
    if kind == "datetime":
        return _times_from_datetimes(values, zone)
    if kind == "int":
        return _times_from_ints(values)
    if kind == "float":
        return _times_from_floats(_float_array(values))
    if kind == "text":
        return _times_from_text(values, zone)
    return _times_from_objects(values.to_numpy(dtype=object), zone)


def _empty_times(size: int) -> _Times:
    return _Times(
        np.zeros(size, dtype=np.int64), np.zeros(size, dtype=bool), np.zeros(size, dtype=bool), _new_reasons(size)
    )


def _times_from_datetimes(values: pd.Series, zone: ZoneInfo) -> _Times:
    utc = values.dt.tz_convert(None) if isinstance(values.dtype, pd.DatetimeTZDtype) else _naive_to_utc(values, zone)
    arr = utc.to_numpy()
    times = _empty_times(len(arr))
    times.ok[:] = ~np.isnat(arr)
    times.ms[:] = _datetime64_to_ms(arr)
    return times


def _naive_to_utc(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Read naive wall-clock datetimes in ``zone``; return naive UTC datetimes.

    ``ambiguous`` True means "daylight-saving time", i.e. the first of the two
    occurrences; pandas consults it only for ambiguous times.
    """
    if zone.key in _UTC_KEYS:
        return values
    local = values.dt.tz_localize(zone, ambiguous=np.ones(len(values), dtype=bool), nonexistent="shift_forward")
    return local.dt.tz_convert(None)


def _datetime64_to_ms(arr: np.ndarray) -> np.ndarray:
    """int64 milliseconds of a naive datetime64 array of any unit, floored (NaT gives garbage)."""
    unit, count = np.datetime_data(arr.dtype)
    ticks = arr.view(np.int64)
    per_ms = np.timedelta64(1, "ms") / np.timedelta64(count, unit) if unit in ("us", "ns", "ps", "fs", "as") else None
    if per_ms is not None:
        return np.floor_divide(ticks, int(per_ms))
    # Units of a millisecond or coarser convert exactly.
    return arr.astype("datetime64[ms]").view(np.int64)


def _times_from_ints(values: pd.Series) -> _Times:
    raw, missing, too_large = _int_array(values)
    times = _empty_times(len(raw))
    times.ms[:] = raw
    times.ok[:] = ~missing & ~too_large
    times.numeric[:] = True
    shown = values.to_numpy(dtype=object)
    _add_reasons(times.reasons, too_large, lambda i: _time_out_of_range(shown[i]))
    return times


def _times_from_floats(x: np.ndarray) -> _Times:
    times = _empty_times(len(x))
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        in_range = finite & (np.abs(x) < 2.0**62)
    times.ms[:] = np.floor(np.where(in_range, x, 0.0)).astype(np.int64)
    times.ok[:] = in_range
    times.numeric[:] = True
    _add_reasons(times.reasons, np.isinf(x), lambda i: f"time {_shown(x[i])} is not a finite number")
    _add_reasons(times.reasons, finite & ~in_range, lambda i: _time_out_of_range(x[i]))
    return times


def _times_from_text(values: pd.Series, zone: ZoneInfo) -> _Times:
    """ISO-8601 text, vectorised: one parse, then the naive rows are localized.

    Parsing everything with ``utc=True`` accepts mixed offsets in one column
    (a naive parse raises on them) and leaves naive texts at their wall-clock
    value, which the second step reads in ``zone``.
    """
    size = len(values)
    times = _empty_times(size)
    missing = _missing(values)
    stripped = values.str.strip()
    digits = stripped.str.fullmatch(_DIGITS_TEXT).fillna(False).to_numpy(dtype=bool)
    if digits.any():
        times.ms[digits] = stripped[digits].astype(np.int64).to_numpy()
        times.ok[digits] = True
        times.numeric[digits] = True
    iso = ~missing & ~digits
    if iso.any():
        texts = stripped[iso]
        aware = texts.str.contains(_AWARE_TEXT, regex=True).fillna(False).to_numpy(dtype=bool)
        parsed = _parse_iso_as_utc(texts)
        if (~aware).any():
            parsed[~aware] = _naive_to_utc(parsed[~aware], zone)
        arr = parsed.to_numpy()
        positions = np.flatnonzero(iso)
        times.ms[positions] = _datetime64_to_ms(arr)
        times.ok[positions] = ~np.isnat(arr)
    shown = values.to_numpy(dtype=object)
    _add_reasons(times.reasons, ~missing & ~times.ok, lambda i: _unreadable_time(shown[i]))
    return times


def _parse_iso_as_utc(texts: pd.Series) -> pd.Series:
    """Parse ISO-8601 texts to naive UTC datetime64 (naive texts keep their wall time)."""
    try:
        parsed = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
    except (ValueError, TypeError, OverflowError):
        # Defensive: should pandas refuse the batch, find the bad texts one by one.
        parsed = pd.Series([_parse_one_iso(t) for t in texts], index=texts.index, dtype="datetime64[us, UTC]")
    return parsed.dt.tz_convert(None)


def _parse_one_iso(text: str) -> pd.Timestamp:
    try:
        return pd.to_datetime(text, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _times_from_objects(objects: np.ndarray, zone: ZoneInfo) -> _Times:
    """Per element: Python objects, grouped by type, each group read the vectorised way."""
    size = len(objects)
    times = _empty_times(size)
    texts: list[int] = []
    aware: list[int] = []
    naive: list[int] = []
    for i, item in enumerate(objects):
        if _is_missing_scalar(item):
            continue
        if isinstance(item, str):
            texts.append(i)
        elif isinstance(item, _dt.datetime | pd.Timestamp):
            (aware if item.tzinfo is not None else naive).append(i)
        elif isinstance(item, _dt.date | np.datetime64):
            naive.append(i)
        else:
            _time_from_number(item, i, times)
    if texts:
        sub = _times_from_text(pd.Series(objects[texts], dtype="str"), zone)
        _place_times(times, texts, sub)
    if aware:
        utc = pd.Series(pd.to_datetime(list(objects[aware]), utc=True, errors="coerce")).dt.tz_convert(None)
        _place_datetimes(times, aware, utc.to_numpy())
    if naive:
        wall = pd.Series(pd.to_datetime(list(objects[naive]), errors="coerce"))
        _place_datetimes(times, naive, _naive_to_utc(wall, zone).to_numpy())
    unread = _mask(size, aware + naive) & ~times.ok
    _add_reasons(times.reasons, unread, lambda i: f"time {_shown(objects[i])} is out of the representable range")
    return times


def _time_from_number(item: Any, i: int, times: _Times) -> None:
    if isinstance(item, bool | np.bool_):
        times.reasons[i] = f"time {_shown(item)} is a boolean, not a time; select the conversion time column"
        return
    if isinstance(item, int | np.integer):
        value = int(item)
    elif isinstance(item, Decimal):
        if not item.is_finite():
            times.reasons[i] = f"time {_shown(item)} is not a finite number"
            return
        if item.adjusted() > 18:
            times.reasons[i] = _time_out_of_range(item)
            return
        value = int(item.to_integral_value(rounding=ROUND_FLOOR, context=_DECIMAL))
    elif isinstance(item, float | np.floating):
        if not math.isfinite(item):
            times.reasons[i] = f"time {_shown(item)} is not a finite number"
            return
        value = math.floor(item)
    else:
        times.reasons[i] = _unreadable_time(item)
        return
    if not -(2**62) < value < 2**62:
        times.reasons[i] = _time_out_of_range(item)
        return
    times.ms[i], times.ok[i], times.numeric[i] = value, True, True


def _place_times(times: _Times, positions: list[int], sub: _Times) -> None:
    times.ms[positions] = sub.ms
    times.ok[positions] = sub.ok
    times.numeric[positions] = sub.numeric
    times.reasons[positions] = sub.reasons


def _place_datetimes(times: _Times, positions: list[int], utc: np.ndarray) -> None:
    times.ms[positions] = _datetime64_to_ms(utc)
    times.ok[positions] = ~np.isnat(utc)


def _mask(size: int, positions: list[int]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    return mask


def _check_time_range(times: _Times, now_ms: int) -> None:
    latest = now_ms + _FUTURE_TOLERANCE_MS
    readable = times.ok & np.equal(times.reasons, None)
    _add_reasons(times.reasons, readable & (times.ms < _MIN_TIME_MS), lambda i: _too_early(times, i, latest))
    _add_reasons(times.reasons, readable & (times.ms > latest), lambda i: _too_late(times, i, now_ms, latest))


def _too_early(times: _Times, i: int, latest: int) -> str:
    ms = int(times.ms[i])
    if not times.numeric[i]:
        return f"time {_iso(ms)} is before 2000-01-01T00:00:00Z; select the column that holds the conversion time"
    message = f"time {ms} is before 2000-01-01T00:00:00Z when read as Unix milliseconds ({_iso(ms)})"
    if _MIN_TIME_MS <= ms * 1000 <= latest:
        return message + "; it looks like seconds, not milliseconds: select the value times 1000"
    return message + "; pagent expects Unix milliseconds"


def _too_late(times: _Times, i: int, now_ms: int, latest: int) -> str:
    ms = int(times.ms[i])
    shown = str(ms) if times.numeric[i] else _iso(ms)
    message = f"time {shown} is more than one hour in the future (now is {_iso(now_ms)})"
    if times.numeric[i]:
        for name, factor in (("microseconds", 1000), ("nanoseconds", 1_000_000)):
            if _MIN_TIME_MS <= ms // factor <= latest:
                return message + f"; it looks like {name}, not milliseconds: divide it by {factor}"
    return message + "; check the time column and the timezone setting"


def _time_out_of_range(value: Any) -> str:
    return f"time {_shown(value)} is far out of range as Unix milliseconds; check the time column"


def _unreadable_time(value: Any) -> str:
    return (
        f"time {_shown(value)} is not a timestamp; use a timestamp column, ISO-8601 text "
        "(e.g. '2026-11-26T10:00:00Z') or Unix milliseconds"
    )


def _iso(ms: int) -> str:
    try:
        moment = _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------


def ids_to_strings(values: pd.Series, *, field: str = "value") -> Converted:
    """Convert an id column (session_id, user_id, conversion_id, label, key) to strings.

    Strings are sent as stored (not stripped), but an empty or
    whitespace-only string is invalid. Integers, including integer columns
    with NULLs that pandas turned into floats (123.0), become ``"123"``;
    other floats use their repr, ``Decimal`` its text, ``UUID`` its text.
    Invalid: booleans, infinities, other types, and whole floats of 2**53 or
    more (an integer id that went through float64 may have lost digits).
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
    strings = values.to_numpy(dtype=object, na_value=None, copy=True)
    # The same test as `values.str.strip() == ""`, but C-level map() over the
    # str objects we need anyway: no intermediate stripped strings, about 5x
    # faster on the default (Python-backed) str dtype.
    present = ~_missing(values)
    blank = np.zeros(len(strings), dtype=bool)
    blank[present] = ~np.fromiter(map(bool, map(str.strip, strings[present])), dtype=bool, count=int(present.sum()))
    reasons = _new_reasons(len(strings))
    _add_reasons(reasons, blank, lambda i: _blank_id(field, strings[i]))
    strings[blank] = None
    return strings, reasons


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
        return (None, _blank_id(field, value)) if not value.strip() else (value, None)
    if isinstance(value, bool | np.bool_):
        return None, f"{field} {_shown(value)} is a boolean, not an id; select the {field} column"
    if isinstance(value, int | np.integer):
        return str(int(value)), None
    if isinstance(value, float | np.floating | Decimal):
        if not math.isfinite(value):
            return None, f"{field} {_shown(value)} is not a usable id"
        if not isinstance(value, Decimal) and value == int(value) and abs(value) >= 2**53:
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


def _blank_id(field: str, value: str) -> str:
    what = "an empty string" if value == "" else f"whitespace only ({value!r})"
    return f"{field} is {what}; select the column holding the {field} captured with _pgnt.variables()"


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


class _NotJsonError(TypeError):
    """A value that JSON cannot represent."""


def properties_to_json_objects(values: pd.Series) -> Converted:
    """Read a properties column: a JSON object or an array of objects per row.

    Accepted: ``dict``/``list`` values (JSON/JSONB read by the driver) and
    JSON text, parsed with :func:`json.loads`. Values inside are made
    JSON-safe (``Decimal`` -> number, timestamps -> ISO-8601 text, numpy
    scalars -> Python, non-finite numbers -> null). Missing values are
    ``None``. Invalid: JSON scalars, arrays holding anything but objects,
    malformed JSON (including ``NaN``), and values JSON cannot represent.

    Args:
        values: the properties column.

    Returns:
        Converted values (``dict``, ``list`` of ``dict`` or ``None``) and reasons.
    """
    objects = values.to_numpy(dtype=object)
    result = np.full(len(objects), None, dtype=object)
    reasons = _new_reasons(len(objects))
    for i, item in enumerate(objects):
        result[i], reasons[i] = _properties_from_scalar(item)
    return Converted(_series(result, values.index), _series(reasons, values.index))


def _properties_from_scalar(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, Mapping | list | tuple):
        parsed = value
    elif _is_missing_scalar(value):
        return None, None
    elif isinstance(value, str | bytes | bytearray):
        try:
            parsed = json.loads(value, parse_constant=_reject_json_constant)
        except (ValueError, UnicodeDecodeError) as err:
            return None, (
                f"properties {_shown(value)} is not valid JSON ({err}); it must be a JSON object or an array of objects"
            )
    else:
        return None, (
            f"properties {_shown(value)} is a {type(value).__name__}; "
            "pagent accepts a JSON object or an array of objects"
        )
    shape_problem = _properties_shape_problem(parsed)
    if shape_problem:
        return None, shape_problem
    try:
        return _json_value(parsed), None
    except _NotJsonError as err:
        return None, f"properties hold {err}, which JSON cannot represent"


def _reject_json_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON and which
    # pagent's parser would refuse.
    raise ValueError(f"{name} is not valid JSON")


def _properties_shape_problem(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return None
    if isinstance(value, list | tuple):
        for position, element in enumerate(value):
            if not isinstance(element, Mapping):
                return (
                    f"properties is an array whose element {position} is {_shown(element)}, "
                    "not an object; pagent accepts an object or an array of objects"
                )
        return None
    return (
        f"properties {_shown(value)} is a JSON {type(value).__name__}, not an object; "
        "pagent accepts an object or an array of objects"
    )


def _json_value(value: Any) -> Any:
    """Make a value JSON-safe, recursively. Raises _NotJsonError for the rest."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        # First: np.float64 and np.str_ subclass float and str, and
        # np.datetime64.item() would give bare nanoseconds.
        if isinstance(value, np.datetime64):
            return None if np.isnat(value) else pd.Timestamp(value).isoformat()
        if isinstance(value, np.timedelta64):
            return None if np.isnat(value) else pd.Timedelta(value).isoformat()
        return _json_value(value.item())
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if _is_missing_scalar(value):
        return None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value(context=_DECIMAL) else float(value)
    if isinstance(value, _dt.timedelta):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _NotJsonError("binary data that is not UTF-8 text") from None
    raise _NotJsonError(f"a {type(value).__name__} ({_shown(value)})")


def gather_properties(df: pd.DataFrame, columns: Sequence[str]) -> Converted:
    """Build a ``{column: value}`` properties object per row from ``columns``.

    Values are JSON-safe: timestamps as ISO-8601 text (aware ones in UTC with
    ``Z``, at the finest resolution the column needs), ``Decimal`` as int when
    whole else float, numpy scalars as Python scalars, NULL/NaN/NaT (and
    infinities) as ``None`` (JSON null).

    Args:
        df: the chunk.
        columns: the columns to gather, in the order they appear in the object.

    Returns:
        Converted values (one ``dict`` per row) and reasons (a row is invalid
        only when a value is of a type JSON cannot represent).
    """
    size = len(df)
    reasons = _new_reasons(size)
    lists = [_json_column(df[column], column, reasons) for column in columns]
    objects = [dict(zip(columns, row, strict=True)) for row in zip(*lists, strict=True)] if lists else [{}] * size
    result = np.empty(size, dtype=object)
    result[:] = objects
    return Converted(_series(result, df.index), _series(reasons, df.index))


def _json_column(values: pd.Series, column: str, reasons: np.ndarray) -> list[Any]:
    kind = _column_kind(values.dtype)
    if kind == "datetime":
        return _datetimes_to_iso(values)
    if kind in ("bool", "int", "text"):
        # tolist() gives Python scalars (NaN or pd.NA where missing).
        return _nones_where(values.tolist(), _missing(values))
    if kind == "float":
        x = _float_array(values)
        return _nones_where(x.tolist(), ~np.isfinite(x))
    out = []
    for i, item in enumerate(values.to_numpy(dtype=object)):
        try:
            out.append(_json_value(item))
        except _NotJsonError as err:
            out.append(None)
            if reasons[i] is None:
                reasons[i] = f"properties column {column!r} holds {err}, which JSON cannot represent"
    return out


def _nones_where(items: list[Any], mask: np.ndarray) -> list[Any]:
    if not mask.any():
        return items
    return [None if m else v for v, m in zip(items, mask.tolist(), strict=True)]


def _datetimes_to_iso(values: pd.Series) -> list[str | None]:
    aware = isinstance(values.dtype, pd.DatetimeTZDtype)
    arr = (values.dt.tz_convert(None) if aware else values).to_numpy()
    texts = np.datetime_as_string(arr, unit=_coarsest_exact_unit(arr), timezone="UTC" if aware else "naive")
    return _nones_where(texts.tolist(), np.isnat(arr))


def _coarsest_exact_unit(arr: np.ndarray) -> str:
    """The coarsest of s/ms/us/ns that shows every value exactly (no '.000000000' noise)."""
    present = arr[~np.isnat(arr)]
    for unit in ("s", "ms", "us", "ns"):
        rounded = present.astype(f"datetime64[{unit}]")
        if np.array_equal(rounded.astype(arr.dtype), present):
            return unit
    return np.datetime_data(arr.dtype)[0]


# --------------------------------------------------------------------------
# The whole chunk
# --------------------------------------------------------------------------

_MISSING_REQUIRED = {
    "session_id": (
        "session_id is NULL; pagent cannot attribute the conversion to a browser session without it: "
        "store the session_id from _pgnt.variables() with the order, or filter such rows out in the query"
    ),
    "user_id": (
        "user_id is NULL; pagent requires it: store the user_id from _pgnt.variables() with the order, "
        "or filter such rows out in the query"
    ),
    "conversion_id": _CONVERSION_ID_NULL,
}
_MISSING_TIME = (
    "time is NULL; pagent would stamp the event with the upload time and attribute the conversion "
    "to the wrong period: select the conversion time column (or set require_time=False to accept that)"
)
_PROPERTIES_CONFLICT = (
    "properties column holds an array, which cannot be merged with properties_columns; "
    "store an object in the properties column or drop properties_columns"
)


def transform_chunk(
    df: pd.DataFrame,
    config: TransformConfig,
    *,
    row_offset: int = 0,
    now_ms: int | None = None,
) -> TransformedChunk:
    """Turn one chunk of query rows into pagent v1 events and rejects.

    Rows are checked field by field in a fixed order (key column, then
    session_id, user_id, conversion_id, label, revenue, time, properties);
    the first problem of a row becomes its :class:`RowReject`. Output keeps
    the input order.

    Args:
        df: the chunk; its index is ignored (rows are taken by position).
        config: the transform configuration.
        row_offset: number of rows in earlier chunks, so that unkeyed rejects
            name their row across the whole result.
        now_ms: the current time in Unix milliseconds (default: the clock),
            for the "not in the future" check.

    Returns:
        The events of the valid rows, their keys, and the rejects.

    Raises:
        PagentConfigError: when a needed column is missing.
    """
    check_columns(list(df.columns), config)
    size = len(df)
    now = _now_ms() if now_ms is None else int(now_ms)
    checks: list[tuple[str, np.ndarray]] = []  # (field for the reject, reasons) in checking order
    fields: dict[str, Any] = {}  # event field -> object array of values, or a constant str

    keys = None
    if config.key_column is not None:
        keys = _key_values(df[config.key_column], config.key_column, checks)
    for id_field in ("session_id", "user_id", "conversion_id", "label"):
        constant = _constant_for(config, id_field)
        if constant is not None:
            fields[id_field] = constant
        elif config.column_for(id_field) in df.columns:
            fields[id_field] = _id_values(df[config.column_for(id_field)], id_field, checks)
    if config.column_for("revenue") in df.columns:
        converted = revenue_to_cents(df[config.column_for("revenue")], config.revenue_unit)
        fields["revenue"] = _collect(converted, "revenue", checks)
    if config.column_for("time") in df.columns:
        fields["time"] = _time_values(df[config.column_for("time")], config, now, checks)
    properties = _properties_values(df, config, checks)
    if properties is not None:
        fields["properties"] = properties

    invalid, reject_field, reject_reason = _first_problems(size, checks)
    valid_positions = np.flatnonzero(~invalid)
    events = _assemble_events(fields, valid_positions)
    rejects = [
        RowReject(
            row=keys[i] if keys is not None and keys[i] is not None else f"row {row_offset + i}",
            field=reject_field[i],
            reason=reject_reason[i],
        )
        for i in np.flatnonzero(invalid).tolist()
    ]
    event_keys = keys[valid_positions].tolist() if keys is not None else None
    return TransformedChunk(events=events, keys=event_keys, rejects=rejects, rows=size)


def _collect(
    converted: Converted,
    event_field: str,
    checks: list[tuple[str, np.ndarray]],
    *,
    missing_reason: str | None = None,
) -> np.ndarray:
    """Record the reasons of a converted column (plus one for missing values, if given); return its values."""
    values = converted.values.to_numpy(dtype=object)
    reasons = converted.reasons.to_numpy(dtype=object, copy=True)
    if missing_reason is not None:
        # Missing: no value and no reason of its own.
        _add_reasons(reasons, np.equal(values, None), lambda i: missing_reason)
    checks.append((event_field, reasons))
    return values


def _key_values(values: pd.Series, column: str, checks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return _collect(
        ids_to_strings(values, field=f"key column {column!r}"),
        column,
        checks,
        missing_reason=(
            f"key column {column!r} is NULL; every row needs a stable unique key so that it is sent exactly once"
        ),
    )


def _id_values(values: pd.Series, id_field: str, checks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    converted = ids_to_strings(values, field=id_field)
    return _collect(converted, id_field, checks, missing_reason=_MISSING_REQUIRED.get(id_field))


def _time_values(
    values: pd.Series, config: TransformConfig, now_ms: int, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray:
    converted = time_to_unix_ms(values, config.timezone, now_ms=now_ms)
    return _collect(converted, "time", checks, missing_reason=_MISSING_TIME if config.require_time else None)


def _properties_values(
    df: pd.DataFrame, config: TransformConfig, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray | None:
    column = config.column_for("properties")
    from_column = None
    if column in df.columns:
        from_column = _collect(properties_to_json_objects(df[column]), "properties", checks)
    if not config.properties_columns:
        return from_column
    gathered = _collect(gather_properties(df, config.properties_columns), "properties", checks)
    if from_column is None:
        return gathered
    return _merge_properties(from_column, gathered, checks)


def _merge_properties(
    from_column: np.ndarray, gathered: np.ndarray, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray:
    """The column's object updated with the gathered columns (per row: dicts)."""
    merged = np.empty(len(gathered), dtype=object)
    conflicts = _new_reasons(len(gathered))
    for i, (own, extra) in enumerate(zip(from_column, gathered, strict=True)):
        if isinstance(own, list):
            conflicts[i] = _PROPERTIES_CONFLICT
        merged[i] = {**own, **extra} if isinstance(own, dict) else extra
    checks.append(("properties", conflicts))
    return merged


def _first_problems(size: int, checks: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Per row: whether it is invalid, and the field and reason of its first problem."""
    invalid = np.zeros(size, dtype=bool)
    reject_field: list[Any] = [None] * size
    reject_reason: list[Any] = [None] * size
    for event_field, reasons in checks:
        new = ~np.equal(reasons, None) & ~invalid
        for i in np.flatnonzero(new).tolist():
            reject_field[i] = event_field
            reject_reason[i] = reasons[i]
        invalid |= new
    return invalid, reject_field, reject_reason


def _assemble_events(fields: dict[str, Any], positions: np.ndarray) -> list[dict[str, Any]]:
    """Build the event dicts of the rows at ``positions``, leaving out fields without a value.

    The dicts are filled one field at a time, each field in one pass over its
    values: about twice as fast as ``dict(zip(names, row))`` per row (no pair
    tuples), and a missing optional value is skipped by selecting the rows
    that have one instead of testing every value.
    """
    events: list[dict[str, Any]] = [{} for _ in range(len(positions))]
    targets = np.empty(len(events), dtype=object)  # the same dicts, for selecting rows with numpy
    targets[:] = events
    for name in (name for name in EVENT_FIELDS if name in fields):
        value = fields[name]
        if isinstance(value, str):  # a constant from the config
            for event in events:
                event[name] = value
            continue
        values = value[positions]
        present = ~np.equal(values, None)
        rows = events if present.all() else targets[present].tolist()
        for event, item in zip(rows, values[present].tolist(), strict=True):
            event[name] = item
    return events
