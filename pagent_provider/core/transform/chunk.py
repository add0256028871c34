"""The whole chunk: :func:`transform_chunk` runs the converters over a chunk and
assembles the events of the valid rows and the rejects of the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pagent_provider.core.transform._converted import Converted
from pagent_provider.core.transform._names import with_config_names
from pagent_provider.core.transform._reasons import _add_reasons, _is_none, _new_reasons
from pagent_provider.core.transform.config import (
    EVENT_FIELDS,
    REQUIRED_FIELDS,
    RowReject,
    TransformConfig,
    TransformedChunk,
    _constant_for,
    check_columns,
)
from pagent_provider.core.transform.ids import ids_to_strings
from pagent_provider.core.transform.properties import gather_properties, properties_to_json_objects
from pagent_provider.core.transform.revenue import revenue_to_cents
from pagent_provider.core.transform.session_data import (
    SESSION_DATA_FIELD,
    SESSION_DATA_KEYS,
    SessionData,
    destructure_session_data,
)
from pagent_provider.core.transform.times import _now_ms, time_to_unix_ms

_CONVERSION_ID_NULL = (
    "conversion_id is NULL: the goal label matched no configured goal "
    '(_pgnt.variables("label") returned conversion_id null); check the label in '
    "pagent's Tracking settings, or set conversion_id in the transform config to the goal's UUID"
)


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

    Rows are checked field by field in a fixed order (key column, then the
    session data object, session_id, user_id, conversion_id, label, visit_id,
    revenue, time, properties); the first problem of a row becomes its
    :class:`RowReject`. Output keeps the input order.

    Args:
        df: the chunk; its index is ignored (rows are taken by position).
        config: the transform configuration.
        row_offset: number of rows in earlier chunks, so that unkeyed rejects
            name their row across the whole result.
        now_ms: the current time in Unix milliseconds (default: the clock),
            for the "not in the future" check.

    Returns:
        The events of the valid rows, their keys, positions and visit ids,
        and the rejects. Every event is JSON that encodes to UTF-8: a value JSON or
        UTF-8 cannot carry (NaN, infinity, a lone surrogate, a type JSON has
        no form for, hostile nesting) rejects its row instead.

    Raises:
        PagentConfigError: when a needed column is missing, or a name matches
            several columns ignoring case (an exact match always wins; one
            match differing only in case, such as Snowflake's ``SESSION_ID``,
            is used).
    """
    df = with_config_names(df, config)
    check_columns(list(df.columns), config)
    size = len(df)
    now = _now_ms() if now_ms is None else int(now_ms)
    checks: list[tuple[str, np.ndarray]] = []  # (field for the reject, reasons) in checking order
    fields: dict[str, Any] = {}  # event field -> object array of values, or a constant str

    keys = None
    if config.key_column is not None:
        keys = _key_values(df[config.key_column], config.key_column, checks)
    session = _session_data(df, config, checks)
    for id_field in ("session_id", "user_id", "conversion_id", "label"):
        constant = _constant_for(config, id_field)
        if constant is not None:
            fields[id_field] = constant
        elif session is not None and id_field in session.values:
            fields[id_field] = _session_id_values(session, id_field, checks)
        elif config.column_for(id_field) in df.columns:
            column = config.column_for(id_field)
            fields[id_field] = _id_values(df[column], id_field, checks, column)
    visit_ids = _visit_id_values(df, config, session, checks)
    if config.column_for("revenue") in df.columns:
        converted = revenue_to_cents(df[config.column_for("revenue")], config.revenue_unit)
        fields["revenue"] = _collect(converted, "revenue", checks, column=config.column_for("revenue"))
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
    return TransformedChunk(
        events=events,
        keys=event_keys,
        rejects=rejects,
        rows=size,
        positions=valid_positions.tolist(),
        visit_ids=visit_ids[valid_positions].tolist() if visit_ids is not None else None,
    )


def _collect(
    converted: Converted,
    event_field: str,
    checks: list[tuple[str, np.ndarray]],
    *,
    missing_reason: str | None = None,
    column: str | None = None,
) -> np.ndarray:
    """Record the reasons of a converted column (plus one for missing values, if given); return its values.

    When the field is read from a column of another name, each reason starts
    with that column, so the user knows where to look.
    """
    values = converted.values.to_numpy(dtype=object)
    reasons = converted.reasons.to_numpy(dtype=object, copy=True)
    if missing_reason is not None:
        # Missing: no value and no reason of its own.
        _add_reasons(reasons, _is_none(values), lambda i: missing_reason)
    if column is not None and column != event_field:
        # Per invalid row only, which are few.
        for i in np.flatnonzero(~_is_none(reasons)).tolist():
            reasons[i] = f"column {column!r}: {reasons[i]}"
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


def _id_values(
    values: pd.Series, id_field: str, checks: list[tuple[str, np.ndarray]], column: str | None = None
) -> np.ndarray:
    converted = ids_to_strings(values, field=id_field)
    return _collect(converted, id_field, checks, missing_reason=_MISSING_REQUIRED.get(id_field), column=column)


def _session_data(
    df: pd.DataFrame, config: TransformConfig, checks: list[tuple[str, np.ndarray]]
) -> SessionData | None:
    """The session data column destructured into the keys it is read for (those without a constant or mapping)."""
    column = config.session_data_column
    if column is None:
        return None
    keys = tuple(key for key in SESSION_DATA_KEYS if _constant_for(config, key) is None and key not in config.columns)
    data = destructure_session_data(df[column], column, keys=keys, required=any(key in REQUIRED_FIELDS for key in keys))
    checks.append((SESSION_DATA_FIELD, data.reasons))
    return data


def _session_id_values(session: SessionData, id_field: str, checks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    if id_field in REQUIRED_FIELDS:
        checks.append((id_field, session.missing_key_reasons(id_field)))
    return _id_values(session.values[id_field], id_field, checks, session.column)


def _visit_id_values(
    df: pd.DataFrame, config: TransformConfig, session: SessionData | None, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray | None:
    """The visit ids (str or None per row), from ``columns["visit_id"]`` or the session data; None without either."""
    if "visit_id" in config.columns:
        column = config.columns["visit_id"]
        return _id_values(df[column], "visit_id", checks, column)
    if session is not None and "visit_id" in session.values:
        return _id_values(session.values["visit_id"], "visit_id", checks, session.column)
    return None


def _time_values(
    values: pd.Series, config: TransformConfig, now_ms: int, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray:
    converted = time_to_unix_ms(values, config.timezone, now_ms=now_ms)
    missing_reason = _MISSING_TIME if config.require_time else None
    return _collect(converted, "time", checks, missing_reason=missing_reason, column=config.column_for("time"))


def _properties_values(
    df: pd.DataFrame, config: TransformConfig, checks: list[tuple[str, np.ndarray]]
) -> np.ndarray | None:
    column = config.column_for("properties")
    from_column = None
    if column in df.columns:
        from_column = _collect(properties_to_json_objects(df[column]), "properties", checks, column=column)
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
        new = ~_is_none(reasons) & ~invalid
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
        present = ~_is_none(values)
        rows = events if present.all() else targets[present].tolist()
        for event, item in zip(rows, values[present].tolist(), strict=True):
            event[name] = item
    return events
