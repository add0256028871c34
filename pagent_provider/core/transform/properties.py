"""Properties to JSON objects: :func:`properties_to_json_objects`,
:func:`gather_properties` and the JSON-safe conversion of values.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from pagent_provider.core.events import (
    MAX_PROPERTIES_DEPTH,
    MAX_PROPERTY_INT,
    MIN_PROPERTY_INT,
    depth_problem,
    has_lone_surrogate,
    int_range_problem,
    non_finite_problem,
    path_segment,
    render,
    surrogate_problem,
)
from pagent_provider.core.transform._columns import (
    _DECIMAL,
    _column_kind,
    _float_array,
    _is_missing_scalar,
    _lone_surrogate_mask,
    _missing,
)
from pagent_provider.core.transform._converted import Converted, _series
from pagent_provider.core.transform._reasons import _add_reasons, _new_reasons, _shown

# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


class _NotJsonError(TypeError):
    """A value that JSON cannot carry; ``path`` is where, below the value converted."""

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    def below(self, segment: str) -> _NotJsonError:
        """The same problem, seen from one level up (``segment`` in front of the path)."""
        return _NotJsonError(self.problem, segment + self.path)


def properties_to_json_objects(values: pd.Series) -> Converted:
    """Read a properties column: a JSON object or an array of objects per row.

    Accepted: ``dict``/``list`` values (JSON/JSONB read by the driver) and
    JSON text, parsed with :func:`json.loads`. Values inside are made
    JSON-safe by these rules: ``Decimal`` -> int when whole, else float;
    timestamps, dates and times -> ISO-8601 text; timedeltas -> ISO-8601
    durations; ``UUID`` -> text; UTF-8 bytes -> text; numpy scalars ->
    Python; ``None``/``pd.NA``/``NaT`` -> null. Missing values are ``None``.

    Invalid (the row is rejected, the reason names the path, e.g.
    ``properties.items[0].price``): JSON scalars, arrays holding anything but
    objects, malformed JSON (including ``NaN``), NaN and infinite numbers
    (a float NaN, ``Decimal('NaN')``, or JSON text like ``1e400``, which
    parses to infinity), integers beyond 64 bits, strings or keys holding a
    lone surrogate, non-string keys, nesting deeper than
    :data:`~pagent_provider.core.events.MAX_PROPERTIES_DEPTH`, and values of
    other types (sets, complex numbers, non-UTF-8 bytes, arbitrary objects).

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
        except RecursionError:
            return None, f"properties {_shown(value)} {depth_problem()}"
    else:
        return None, (
            f"properties {_shown(value)} is a {type(value).__name__}; "
            "pagent accepts a JSON object or an array of objects"
        )
    shape_problem = _properties_shape_problem(parsed)
    if shape_problem:
        return None, shape_problem
    try:
        return _json_value(parsed, 1), None
    except _NotJsonError as err:
        return None, f"properties{err.path} {err.problem}"


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


def _json_value(value: Any, depth: int) -> Any:
    """Make a value JSON-safe, recursively, by the documented rules; raise _NotJsonError for the rest.

    ``depth`` is the nesting level of ``value`` (the properties value is 1).
    The checks are those of :func:`pagent_provider.core.events.json_problem`,
    after the conversions; a string costs one O(1) ``isascii`` test unless it
    is non-ASCII.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        return _numpy_value(value, depth)
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise _NotJsonError(surrogate_problem(value))
        return value
    if isinstance(value, int):
        return _checked_int(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJsonError(non_finite_problem(value))
        return float(value)
    if isinstance(value, Mapping | list | tuple):
        if depth > MAX_PROPERTIES_DEPTH:
            raise _NotJsonError(depth_problem())
        return _json_container(value, depth)
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, Decimal):
        return _decimal_value(value)
    return _json_scalar(value)


def _numpy_value(value: np.generic, depth: int) -> Any:
    # np.float64 and np.str_ subclass float and str, and np.datetime64.item()
    # would give bare nanoseconds, hence this branch comes first.
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else pd.Timedelta(value).isoformat()
    return _json_value(value.item(), depth)


def _json_container(value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> Any:
    if not isinstance(value, Mapping):
        converted = []
        for position, item in enumerate(value):
            try:
                converted.append(_json_value(item, depth + 1))
            except _NotJsonError as err:
                raise err.below(f"[{position}]") from None
        return converted
    result = {}
    for key, item in value.items():
        if not isinstance(key, str):
            # str(key) could collide with another key or read differently
            # from what json.dumps would write (True -> "True" vs "true").
            raise _NotJsonError(
                f"has the key {render(key)} (of type {type(key).__name__}); JSON object keys are strings"
            )
        if has_lone_surrogate(key):
            raise _NotJsonError(f"has the key {render(key)}, which {surrogate_problem(key)}")
        try:
            result[key] = _json_value(item, depth + 1)
        except _NotJsonError as err:
            raise err.below(path_segment(key)) from None
    return result


def _checked_int(value: int) -> int:
    if not MIN_PROPERTY_INT <= value <= MAX_PROPERTY_INT:
        raise _NotJsonError(int_range_problem())
    return value


def _decimal_value(value: Decimal) -> int | float:
    if not value.is_finite():
        raise _NotJsonError(non_finite_problem(value))
    if value == value.to_integral_value(context=_DECIMAL):
        return _checked_int(int(value))
    as_float = float(value)
    if not math.isfinite(as_float):
        raise _NotJsonError(non_finite_problem(value))
    return as_float


def _json_scalar(value: Any) -> Any:
    if isinstance(value, _dt.timedelta):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _NotJsonError(f"is binary data that is not UTF-8 text ({render(value)})") from None
        return text  # strict UTF-8 decoding never yields a lone surrogate
    raise _NotJsonError(
        f"is a {type(value).__name__} ({render(value)}), which JSON has no form for; "
        "convert it in the SQL (to text, a number or JSON)"
    )


def gather_properties(df: pd.DataFrame, columns: Sequence[str]) -> Converted:
    """Build a ``{column: value}`` properties object per row from ``columns``.

    Values are JSON-safe: timestamps as ISO-8601 text (aware ones in UTC with
    ``Z``, at the finest resolution the column needs), ``Decimal`` as int when
    whole else float, numpy scalars as Python scalars, NULL/NaN/NaT as
    ``None`` (JSON null; in a float column NaN is how pandas marks NULL).
    Nested values (a dict in an object column) follow the rules of
    :func:`properties_to_json_objects`.

    Args:
        df: the chunk.
        columns: the columns to gather, in the order they appear in the object.

    Returns:
        Converted values (one ``dict`` per row) and reasons (a row is invalid
        when a value cannot be carried by JSON: an infinity, a
        ``Decimal('NaN')``, a lone surrogate in a string, a value of a type
        JSON has no form for).
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
    if kind in ("bool", "int"):
        # tolist() gives Python scalars (NaN or pd.NA where missing).
        return _nones_where(values.tolist(), _missing(values))
    if kind == "text":
        return _json_texts(values, column, reasons)
    if kind == "float":
        x = _float_array(values)
        infinite = np.isinf(x)
        _add_reasons(reasons, infinite, lambda i: _column_problem(column, "", non_finite_problem(float(x[i]))))
        return _nones_where(x.tolist(), ~np.isfinite(x))
    out = []
    for i, item in enumerate(values.to_numpy(dtype=object)):
        try:
            # Level 2: the gathered object is the properties value (level 1).
            out.append(None if _is_missing_scalar(item) else _json_value(item, 2))
        except _NotJsonError as err:
            out.append(None)
            if reasons[i] is None:
                reasons[i] = _column_problem(column, err.path, err.problem)
    return out


def _json_texts(values: pd.Series, column: str, reasons: np.ndarray) -> list[Any]:
    missing = _missing(values)
    items = values.tolist()
    unencodable = _lone_surrogate_mask(np.asarray(items, dtype=object), ~missing)
    _add_reasons(reasons, unencodable, lambda i: _column_problem(column, "", surrogate_problem(items[i])))
    return _nones_where(items, missing | unencodable)


def _column_problem(column: str, path: str, problem: str) -> str:
    return f"properties column {column!r} (properties{path_segment(column)}{path}) {problem}"


def _nones_where(items: list[Any], mask: np.ndarray) -> list[Any]:
    if not mask.any():
        return items
    return [None if m else v for v, m in zip(items, mask.tolist(), strict=True)]


def _datetimes_to_iso(values: pd.Series) -> list[str | None]:
    aware = isinstance(values.dtype, pd.DatetimeTZDtype)
    arr = (values.dt.tz_convert(None) if aware else values).to_numpy()
    # the stubs want a Literal unit, which the np.datetime_data fallback of _coarsest_exact_unit gives as a str
    texts = np.datetime_as_string(arr, unit=_coarsest_exact_unit(arr), timezone="UTC" if aware else "naive")  # type: ignore[call-overload]
    return _nones_where(texts.tolist(), np.isnat(arr))


def _coarsest_exact_unit(arr: np.ndarray) -> str:
    """The coarsest of s/ms/us/ns that shows every value exactly (no '.000000000' noise)."""
    present = arr[~np.isnat(arr)]
    for unit in ("s", "ms", "us", "ns"):
        rounded = present.astype(f"datetime64[{unit}]")
        if np.array_equal(rounded.astype(arr.dtype), present):
            return unit
    return np.datetime_data(arr.dtype)[0]
