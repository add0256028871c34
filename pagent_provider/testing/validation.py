"""The emulator's request validation, written from pagent's vendor documentation.

This module holds the documented ``400 Bad Request`` rules of the three
conversions endpoints, the normalization of v2 events to the v1 shape, and the
event counting used in request records and in fast-sink mode.

It deliberately shares no code with the client in :mod:`pagent_provider.core`:
the emulator stands in for the vendor's server, so a client bug must not be
mirrored here. Only the standard library is used.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "ENDPOINTS",
    "EVENT_COUNT_MESSAGE",
    "MAX_EVENTS_PER_REQUEST",
    "V1_CONVERSIONS",
    "V2_CONVERSIONS",
    "V2_CONVERSIONS_BULK",
    "Invalid",
    "count_events",
    "fast_count",
    "normalize",
    "parse_json",
    "validate",
]

#: Endpoints served by the emulator.
V1_CONVERSIONS = "/v1/conversions"
V2_CONVERSIONS = "/v2/conversions"
V2_CONVERSIONS_BULK = "/v2/conversions/bulk"
ENDPOINTS = (V1_CONVERSIONS, V2_CONVERSIONS, V2_CONVERSIONS_BULK)

#: Maximum number of events in one v1 or v2 bulk request (documented).
MAX_EVENTS_PER_REQUEST = 100

#: The 400 message of an ``events`` array with 0 or more than 100 items.
EVENT_COUNT_MESSAGE = f"events must contain 1 to {MAX_EVENTS_PER_REQUEST} items"

_ID_FIELDS = ("session_id", "user_id", "conversion_id")


class Invalid(Exception):
    """A request body the server refuses with 400; the message is the error."""


def _show(value: Any) -> str:
    """Render a JSON value for an error message (``9.99``, ``true``, ``"abc"``)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # pragma: no cover - values come from json.loads
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """Parse a request body strictly (no ``NaN``/``Infinity``).

    Args:
        body: The raw request body.

    Returns:
        The parsed JSON value.

    Raises:
        Invalid: If the body is not valid JSON.
    """
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None


def _check_id_fields(obj: dict, prefix: str) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if value is None:
            raise Invalid(f"{prefix}{name} is required")
        if not isinstance(value, str) or not value:
            raise Invalid(f"{prefix}{name} must be a non-empty string, not {_show(value)}")


def _check_optional_fields(event: dict, prefix: str) -> None:
    label = event.get("label")
    if label is not None and not isinstance(label, str):
        raise Invalid(f"{prefix}label must be a string, not {_show(label)}")

    revenue = event.get("revenue")
    if revenue is not None and (isinstance(revenue, bool) or not isinstance(revenue, int)):
        raise Invalid(f"{prefix}revenue must be an integer, not {_show(revenue)}")

    properties = event.get("properties")
    if properties is not None:
        if isinstance(properties, list):
            for j, item in enumerate(properties):
                if not isinstance(item, dict):
                    raise Invalid(f"{prefix}properties[{j}] must be an object, not {_show(item)}")
        elif not isinstance(properties, dict):
            raise Invalid(f"{prefix}properties must be an object or an array of objects, not {_show(properties)}")

    when = event.get("time")
    if when is not None:
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise Invalid(f"{prefix}time must be a number, not {_show(when)}")
        if isinstance(when, float) and not math.isfinite(when):
            raise Invalid(f"{prefix}time must be a finite number")


def _check_v1_event(event: Any, prefix: str) -> None:
    if not isinstance(event, dict):
        raise Invalid(f"{prefix.rstrip('.')} must be an object, not {_show(event)}")
    _check_id_fields(event, prefix)
    _check_optional_fields(event, prefix)


def _check_v2_event(event: Any, prefix: str) -> None:
    if not isinstance(event, dict):
        raise Invalid(f"{prefix.rstrip('.')} must be an object, not {_show(event)}")
    session_data = event.get("session_data")
    if not isinstance(session_data, dict):
        raise Invalid(
            f"{prefix}session_data must be an object containing session_id, user_id "
            f"and conversion_id, not {_show(session_data)}"
        )
    _check_id_fields(session_data, f"{prefix}session_data.")
    visit_id = session_data.get("visit_id")
    if visit_id is not None and not isinstance(visit_id, str):
        raise Invalid(f"{prefix}session_data.visit_id must be a string, not {_show(visit_id)}")
    _check_optional_fields(event, prefix)


def _events_array(body: dict) -> list:
    events = body.get("events")
    if events is None:
        raise Invalid(f"events is required: an array of 1 to {MAX_EVENTS_PER_REQUEST} items")
    if not isinstance(events, list):
        raise Invalid(f"events must be an array of 1 to {MAX_EVENTS_PER_REQUEST} items, not {_show(events)}")
    if not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        raise Invalid(EVENT_COUNT_MESSAGE)
    return events


def validate(endpoint: str, body: Any) -> list[dict]:
    """Validate a parsed body for ``endpoint`` with the documented 400 rules.

    Args:
        endpoint: One of :data:`ENDPOINTS`.
        body: The parsed JSON body.

    Returns:
        The body's events exactly as received (a one-item list for
        ``/v2/conversions``).

    Raises:
        Invalid: On the first rule broken, e.g.
            ``"events[3].revenue must be an integer, not 9.99"``.
    """
    if not isinstance(body, dict):
        raise Invalid(f"request body must be a JSON object, not {_show(body)}")
    if endpoint == V2_CONVERSIONS:
        _check_v2_event(body, "")
        return [body]
    events = _events_array(body)
    check = _check_v1_event if endpoint == V1_CONVERSIONS else _check_v2_event
    for i, event in enumerate(events):
        check(event, f"events[{i}].")
    return events


def normalize(endpoint: str, event: dict) -> dict:
    """Return a valid ``event`` in the v1 shape (v2 ``session_data`` flattened).

    Args:
        endpoint: The endpoint that received the event.
        event: The event as received.

    Returns:
        A new dict: ``session_id``, ``user_id``, ``conversion_id`` (and
        ``visit_id`` when sent) as top-level keys, then every other field sent.
    """
    if endpoint == V1_CONVERSIONS:
        return dict(event)
    session_data = event.get("session_data") or {}
    flat = {name: session_data.get(name) for name in _ID_FIELDS}
    if "visit_id" in session_data:
        flat["visit_id"] = session_data["visit_id"]
    flat.update((k, v) for k, v in event.items() if k != "session_data" and k not in flat)
    return flat


def count_events(body: Any, endpoint: str) -> int:
    """Best-effort number of events in a parsed body, whatever its validity.

    Args:
        body: The parsed JSON body, or ``None`` when it did not parse.
        endpoint: The endpoint that received it.

    Returns:
        The length of ``events`` (v1 and v2 bulk), 1 for a v2 single-event
        object body, 0 when it cannot be determined.
    """
    if not isinstance(body, dict):
        return 0
    if endpoint == V2_CONVERSIONS:
        return 1
    events = body.get("events")
    return len(events) if isinstance(events, list) else 0


def fast_count(endpoint: str, body: bytes) -> int:
    """Cheap event count for fast-sink mode, without parsing the JSON.

    It counts occurrences of the one key every event must carry, so it is
    exact for bodies a correct client sends and meaningless otherwise.

    Args:
        endpoint: The endpoint that received the body.
        body: The raw request body.

    Returns:
        The estimated number of events.
    """
    if endpoint == V2_CONVERSIONS:
        return 1
    if endpoint == V2_CONVERSIONS_BULK:
        return body.count(b'"session_data"')
    return body.count(b'"session_id"')
