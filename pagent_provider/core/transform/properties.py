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

from pagent_provider.core.transform._columns import (
    _DECIMAL,
    _column_kind,
    _float_array,
    _is_missing_scalar,
    _missing,
)
from pagent_provider.core.transform._converted import Converted, _series
from pagent_provider.core.transform._reasons import _new_reasons, _shown

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
