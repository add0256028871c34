"""The whole ``_pgnt.variables()`` object in one column: :func:`destructure_session_data`.

pagent's documentation tells backends to pass the object returned by
``window._pgnt.variables("goal")`` along as it is, so many warehouses keep it
as one JSON column (``orders.pagent`` holding ``{"session_id": ...,
"user_id": ..., "visit_id": ..., "conversion_id": ...}``) rather than as four
columns. ``TransformConfig(session_data_column="pagent")`` reads it: each
row's object is destructured into the values of its keys, which then go
through the same rules as separate columns
(:func:`~pagent_provider.core.transform.ids.ids_to_strings`, the NULL rules of
the required fields).

A row's value may be a native object (a ``dict``, as psycopg returns JSONB),
JSON text (SQLite TEXT, MariaDB JSON, Snowflake VARIANT, DuckDB JSON), UTF-8
bytes, or NULL. Only text and bytes are parsed; dicts are used as they are.
Keys other than :data:`SESSION_DATA_KEYS` are ignored.

The column itself is at fault (field ``session_data`` of the reject) when it
is NULL (while a required field is to come from it), is not valid JSON, or
holds something other than an object. A required key the object lacks is the
fault of that key's field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from pagent_provider.core.events import depth_problem
from pagent_provider.core.transform._columns import _column_kind, _is_missing_scalar, _missing
from pagent_provider.core.transform._reasons import _new_reasons, _shown

#: The keys of the ``_pgnt.variables()`` object that become event fields (visit_id: v2 only).
SESSION_DATA_KEYS = ("session_id", "user_id", "conversion_id", "visit_id")
#: The field of a reject whose session data object itself is missing or malformed.
SESSION_DATA_FIELD = "session_data"

_OBJECT_HINT = (
    'it must hold the whole _pgnt.variables() object, such as {"session_id": "...", "user_id": "...", '
    '"conversion_id": "..."}'
)


def _reject_json_constant(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every row: json.loads(text, parse_constant=...) would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_json_constant)
# Its C scanner, which decode() wraps in Python: (value, end) of the JSON value at an index.
_SCAN_ONCE = _DECODER.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__, not in typeshed


@dataclass(frozen=True)
class SessionData:
    """A session data column, destructured.

    Attributes:
        values: key -> ``object`` Series (the column's index) holding the value of
            that key in each row's object as stored (not yet checked), ``None``
            where the key is absent, null, or the row has no valid object.
        absent: key -> bool array, true where the row's object is valid but
            lacks the key.
        reasons: ``object`` array, a message where the column's value itself is
            missing (when required) or malformed, else ``None``.
        column: the column's name, for the messages.
    """

    values: dict[str, pd.Series]
    absent: dict[str, np.ndarray]
    reasons: np.ndarray
    column: str

    def missing_key_reasons(self, key: str) -> np.ndarray:
        """The reason of each row whose object lacks ``key`` (``None`` for the others)."""
        reasons = _new_reasons(len(self.reasons))
        absent = self.absent[key]
        if absent.any():
            reasons[absent] = _missing_key(self.column, key)
        return reasons


def destructure_session_data(
    values: pd.Series, column: str, *, keys: tuple[str, ...] = SESSION_DATA_KEYS, required: bool = True
) -> SessionData:
    """Read each row's ``_pgnt.variables()`` object and take out the values of ``keys``.

    Args:
        values: the session data column.
        column: its name, for the reasons.
        keys: the keys to take out.
        required: whether a NULL in the column is invalid (it is when a
            required field is to be read from the object; when only the
            optional visit_id is, a NULL object means no visit id).

    Returns:
        The values of each key, where each key is absent, and the rows whose
        object is missing or malformed (see :class:`SessionData`).
    """
    objects, reasons, present = _objects(values, column, required)
    index = values.index
    taken: dict[str, pd.Series] = {}
    absent: dict[str, np.ndarray] = {}
    for key in keys:
        # C-level maps over the dicts; rows without an object hold {} here.
        taken[key] = _key_values(list(map(dict.get, objects, repeat(key))), index)
        has_key = np.fromiter(map(dict.__contains__, objects, repeat(key)), dtype=bool, count=len(objects))
        absent[key] = present & ~has_key
    return SessionData(values=taken, absent=absent, reasons=reasons, column=column)


def _key_values(raw: list[Any], index: pd.Index) -> pd.Series:
    """The values of one key as a Series: text when they all are strings, so that the id checks run vectorised."""
    if pd.api.types.infer_dtype(raw, skipna=True) == "string":
        return pd.Series(raw, index=index, dtype=pd.StringDtype("python"))
    return pd.Series(raw, index=index, dtype=object)


def _objects(values: pd.Series, column: str, required: bool) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Each row's object as a dict ({} where there is none), the column's reasons, the rows holding an object."""
    size = len(values)
    reasons = _new_reasons(size)
    if _column_kind(values.dtype) == "text":
        items = values.to_numpy(dtype=object)  # the missing values are not read
        missing = _missing(values)
        objects = _parse_texts(items, missing, column, reasons)
    else:
        items = values.to_numpy(dtype=object)
        objects = [{}] * size
        missing = np.zeros(size, dtype=bool)
        for i, item in enumerate(items.tolist()):
            if isinstance(item, dict):
                objects[i] = item
            elif _is_missing_scalar(item):
                missing[i] = True
            else:
                objects[i], reasons[i] = _object_from_scalar(item, column)
    if required and missing.any():
        reasons[missing] = _null_object(column)
    present = ~missing & pd.isna(reasons)
    return objects, reasons, present


def _parse_texts(items: np.ndarray, missing: np.ndarray, column: str, reasons: np.ndarray) -> list[dict[str, Any]]:
    """Parse a text column's JSON, with one C-level map over the texts when each one is exactly a JSON object.

    The map calls the decoder's C scanner directly (a third faster than
    ``decode``, which wraps it in Python); a text it cannot take whole
    (leading or trailing whitespace, malformed JSON, a value that is not an
    object) sends the column through :func:`_object_from_scalar`, row by row,
    for the exact reasons.
    """
    objects: list[dict[str, Any]] = [{}] * len(items)
    positions = np.flatnonzero(~missing).tolist()
    texts = items[~missing].tolist() if missing.any() else items.tolist()
    try:
        scanned = list(map(_SCAN_ONCE, texts, repeat(0)))
    except (StopIteration, ValueError, RecursionError):
        scanned = None
    if scanned:
        parsed, ends = zip(*scanned, strict=True)
        if list(ends) == list(map(len, texts)) and all(map(isinstance, parsed, repeat(dict))):
            for position, obj in zip(positions, parsed, strict=True):
                objects[position] = obj
            return objects
    for position, text in zip(positions, texts, strict=True):
        objects[position], reasons[position] = _object_from_scalar(text, column)
    return objects


def _object_from_scalar(value: Any, column: str) -> tuple[dict[str, Any], str | None]:
    """One value that is not a dict (nor NULL): parsed when it is text or bytes; ({}, reason) when invalid."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {}, f"column {column!r} is binary data that is not UTF-8 text ({_shown(value)}); {_OBJECT_HINT}"
    if isinstance(value, str):
        try:
            value = _DECODER.decode(value)
        except ValueError as err:
            return {}, f"column {column!r} is not valid JSON ({err}): {_shown(value)}; {_OBJECT_HINT}"
        except RecursionError:
            return {}, f"column {column!r} {depth_problem()}"
    if isinstance(value, dict):
        return value, None
    if isinstance(value, Mapping):
        return dict(value), None
    return {}, f"column {column!r} is not a JSON object (got {_kind(value)}): {_shown(value)}; {_OBJECT_HINT}"


def _kind(value: Any) -> str:
    """What a value that should have been an object is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _null_object(column: str) -> str:
    return (
        f"column {column!r} is NULL; it must hold the _pgnt.variables() object (session_id, user_id, "
        "conversion_id): store the object with the order, or filter such rows out in the query"
    )


def _missing_key(column: str, key: str) -> str:
    also = "; or set conversion_id in the transform config to the goal's UUID" if key == "conversion_id" else ""
    return (
        f'column {column!r} has no "{key}" key: {_OBJECT_HINT}, or map {key} to a column of its own '
        f'with columns={{"{key}": "<column>"}}{also}'
    )
