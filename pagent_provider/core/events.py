"""Client-side validation of pagent events, before any byte is sent.

The rules are the ones pagent documents for its ingest API (v1 events, v2
``session_data`` events). A violation raises
:class:`~pagent_provider.exceptions.PagentValidationError` naming the event
index and the field, so the caller can fix the data instead of reading a 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pagent_provider.exceptions import PagentValidationError

#: pagent accepts 1 to 100 events per v1 or v2 bulk request.
MAX_EVENTS_PER_REQUEST = 100

ID_FIELDS = ("session_id", "user_id", "conversion_id")
OPTIONAL_FIELDS = ("label", "revenue", "properties", "time")


def _fail(index: int | None, field: str, problem: str) -> PagentValidationError:
    where = field if index is None else f"events[{index}].{field}"
    return PagentValidationError(f"{where} {problem}", index=index, field=field)


def _check_id(value: Any, index: int | None, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"{type(value).__name__} {value!r}"
        raise _fail(index, field, f"must be a non-empty string, got {shown}")


def _check_optional(event: Mapping[str, Any], index: int | None) -> None:
    label = event.get("label")
    if label is not None and not isinstance(label, str):
        raise _fail(index, "label", f"must be a string, got {type(label).__name__}")
    revenue = event.get("revenue")
    if revenue is not None and (isinstance(revenue, bool) or not isinstance(revenue, int)):
        raise _fail(
            index,
            "revenue",
            f"must be an integer number of cents, got {revenue!r} (convert dollars to cents: 9.99 -> 999)",
        )
    properties = event.get("properties")
    if properties is not None:
        is_object = isinstance(properties, Mapping)
        is_object_array = isinstance(properties, list) and all(isinstance(item, Mapping) for item in properties)
        if not (is_object or is_object_array):
            raise _fail(index, "properties", "must be an object or an array of objects")
    time = event.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time)):
        raise _fail(index, "time", f"must be a finite Unix timestamp in milliseconds, got {time!r}")


def _without_none(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in event.items() if value is not None}


def _check_count(events: Sequence[Any]) -> None:
    if isinstance(events, str | bytes | Mapping) or not isinstance(events, Sequence):
        raise PagentValidationError("events must be a list of event objects", field="events")
    if not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        raise PagentValidationError(
            f"a request carries 1 to {MAX_EVENTS_PER_REQUEST} events, got {len(events)}; "
            "split larger uploads into batches",
            field="events",
        )


def _check_is_object(event: Any, index: int | None, field: str = "event") -> None:
    if not isinstance(event, Mapping):
        raise _fail(index, field, f"must be an object, got {type(event).__name__}")


def validate_v1_event(event: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Check one v1 event and return it with ``None`` fields left out.

    Raises:
        PagentValidationError: naming ``events[index].field`` and the problem.
    """
    _check_is_object(event, index)
    for field in ID_FIELDS:
        _check_id(event.get(field), index, field)
    _check_optional(event, index)
    return _without_none(event)


def validate_v1_events(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a v1 batch (1 to 100 events) and return the events without ``None`` fields."""
    _check_count(events)
    return [validate_v1_event(event, index) for index, event in enumerate(events)]


def validate_v2_event(event: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Check one v2 event (``session_data`` plus optional fields); return it without ``None`` fields."""
    _check_is_object(event, index)
    session_data = event.get("session_data")
    _check_is_object(session_data, index, "session_data")
    for field in ID_FIELDS:
        _check_id(session_data.get(field), index, f"session_data.{field}")
    visit_id = session_data.get("visit_id")
    if visit_id is not None and not isinstance(visit_id, str):
        raise _fail(index, "session_data.visit_id", "must be a string")
    _check_optional(event, index)
    cleaned = _without_none(event)
    cleaned["session_data"] = _without_none(session_data)
    return cleaned


def validate_v2_events(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a v2 bulk batch (1 to 100 events) and return the events without ``None`` fields."""
    _check_count(events)
    return [validate_v2_event(event, index) for index, event in enumerate(events)]
