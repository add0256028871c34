"""Client-side validation of pagent events, before any byte is sent.

The rules are the ones pagent documents for its ingest API (v1 events, v2
``session_data`` events), tightened to what JSON and UTF-8 can carry without
loss. A violation raises
:class:`~pagent_provider.exceptions.PagentValidationError` naming the event
index and the field (``events[3].properties.items[0].price``), so the caller
can fix the data instead of reading a 400 or a ``UnicodeEncodeError``.

The constants and rule helpers here are the single definition of the rules:
the warehouse transform (:mod:`pagent_provider.core.transform`) imports them,
so an event the operator would send is one the hook accepts, and the other way
round.

Rules:

* ids (``session_id``, ``user_id``, ``conversion_id``, v2 ``session_data.*``)
  are non-empty strings; ``label`` and ``session_data.visit_id`` strings.
  No string anywhere may hold a surrogate code point (a lone half of a UTF-16
  pair, as broken UTF-16 data decodes to): UTF-8 cannot encode it.
* ``time`` is integer Unix milliseconds from :data:`MIN_TIME_MS` to
  :data:`FUTURE_TOLERANCE_MS` after now. A float is accepted only when it is
  whole (``1.7e12``) and is then sent as an integer; a fractional one is
  refused, since pagent stores whole milliseconds and silently flooring would
  hide a unit mistake such as ``time.time() * 1000`` left unrounded.
* ``revenue`` is an integer number of cents with ``|revenue| <=``
  :data:`MAX_REVENUE_CENTS` (JSON's safe integer range).
* ``properties`` is an object or an array of objects whose content is JSON:
  ``dict`` (string keys), ``list``, ``str``, ``int`` (within 64 bits),
  finite ``float``, ``bool`` and ``None``, nested at most
  :data:`MAX_PROPERTIES_DEPTH` levels. Any other field an event carries must
  be JSON of the same kind.
"""

from __future__ import annotations

import math
import re
import time as _time
from collections.abc import Mapping, Sequence
from typing import Any

from pagent_provider.exceptions import PagentValidationError

#: pagent accepts 1 to 100 events per v1 or v2 bulk request.
MAX_EVENTS_PER_REQUEST = 100

#: 2000-01-01T00:00:00Z in Unix milliseconds: an earlier conversion time is almost surely a unit mistake.
MIN_TIME_MS = 946_684_800_000
#: How far past "now" a conversion time may lie: pagent's clock and ours may differ a little; more is a mistake.
FUTURE_TOLERANCE_MS = 3_600_000
#: The largest ``|revenue|`` in cents: 2**53 - 1, beyond which a JSON (JavaScript) parser rounds integers.
MAX_REVENUE_CENTS = 2**53 - 1
#: How deeply objects and arrays may nest in ``properties`` (the properties value itself is level 1).
#: Real metadata needs a few levels; the limit keeps hostile input from exhausting the stack.
MAX_PROPERTIES_DEPTH = 32
#: Integers in ``properties`` must fit in 64 bits, signed or unsigned (the widest warehouse integer types);
#: larger ones are garbage or hostile, and past 4300 digits Python cannot even print them.
MIN_PROPERTY_INT = -(2**63)
MAX_PROPERTY_INT = 2**64 - 1

ID_FIELDS = ("session_id", "user_id", "conversion_id")
OPTIONAL_FIELDS = ("label", "revenue", "properties", "time")

_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------
# Rule helpers shared with the transform
# --------------------------------------------------------------------------


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point, which UTF-8 cannot encode.

    ``str.isascii`` is O(1) in CPython, so the common ASCII case costs almost
    nothing; only non-ASCII text is searched.
    """
    return not text.isascii() and _SURROGATE.search(text) is not None


def surrogate_problem(text: str) -> str:
    """The reason text for a string holding a surrogate code point."""
    found = _SURROGATE.search(text)
    where = f" ({found.group()!a} at position {found.start()})" if found else ""
    return (
        f"holds a lone surrogate{where}, which UTF-8 cannot encode (broken UTF-16 data?): "
        "repair the text at the source or replace it"
    )


def non_finite_problem(value: Any) -> str:
    """The reason text for NaN or an infinity where JSON needs a number."""
    return (
        f"is {render(value)}, not a finite number; JSON has no NaN or Infinity "
        "(JSON text such as 1e400 overflows to infinity): store null or a finite number"
    )


def int_range_problem() -> str:
    """The reason text for an integer in properties beyond 64 bits."""
    return "is an integer beyond 64 bits; store such a number as text"


def depth_problem() -> str:
    """The reason text for properties nested too deeply."""
    return f"nests objects and arrays deeper than {MAX_PROPERTIES_DEPTH} levels; flatten the properties"


def type_problem(value: Any) -> str:
    """The reason text for a value of a type JSON has no form for, with a hint how to convert it."""
    name = type(value).__name__
    if type(value).__module__ == "numpy":
        hint = "convert numpy values to Python ones with .item()"
    elif name == "Decimal":
        hint = "convert it to int or float"
    elif name in ("datetime", "date", "time", "Timestamp"):
        hint = "convert it to ISO-8601 text with .isoformat()"
    elif isinstance(value, bytes | bytearray | memoryview):
        hint = "decode it to text"
    elif isinstance(value, Mapping):
        hint = "convert it to a dict"
    elif isinstance(value, tuple | set | frozenset):
        hint = "convert it to a list"
    else:
        hint = "convert it to a string, number, boolean, null, object or array"
    return f"is a {name} ({render(value)}), which JSON has no form for: {hint}"


def time_unit_hint(ms: int, latest_ms: int) -> str | None:
    """A hint when an out-of-range time in ms looks like another unit, else ``None``.

    Args:
        ms: the time, read as Unix milliseconds.
        latest_ms: the latest accepted time (now plus the tolerance).
    """
    if ms < MIN_TIME_MS and MIN_TIME_MS <= ms * 1000 <= latest_ms:
        return "it looks like Unix seconds: multiply by 1000"
    if ms > latest_ms:
        for name, factor in (("microseconds", 1000), ("nanoseconds", 1_000_000)):
            if MIN_TIME_MS <= ms // factor <= latest_ms:
                return f"it looks like Unix {name}: divide by {factor}"
    return None


def render(value: Any) -> str:
    """A short, ASCII-only rendering of a value for a message (never raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        # repr() refuses integers past 4300 digits; a size is all a reader needs.
        return f"an integer of {value.bit_length()} bits"
    try:
        text = ascii(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def path_segment(key: Any) -> str:
    """How a key or index extends a field path: ``.name``, ``[3]`` or ``['odd key']``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    if isinstance(key, str) and _NAME.fullmatch(key):
        return "." + key
    return f"[{render(key)}]"


def json_problem(value: Any, depth: int = 1) -> tuple[str, str] | None:
    """The first reason ``value`` is not JSON that encodes losslessly, or ``None``.

    Args:
        value: the value to check.
        depth: the nesting level of ``value`` (the properties value itself is 1).

    Returns:
        ``(path below value, problem)``: the path is ``""`` for ``value``
        itself, else like ``".items[0].price"``.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return ("", surrogate_problem(value)) if has_lone_surrogate(value) else None
    if isinstance(value, int):
        return None if MIN_PROPERTY_INT <= value <= MAX_PROPERTY_INT else ("", int_range_problem())
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", non_finite_problem(value))
    if isinstance(value, dict | list):
        if depth > MAX_PROPERTIES_DEPTH:
            return "", depth_problem()
        return _container_problem(value, depth)
    return "", type_problem(value)


def _container_problem(value: dict[Any, Any] | list[Any], depth: int) -> tuple[str, str] | None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict):
            key_problem = _key_problem(key)
            if key_problem is not None:
                return "", key_problem
        found = json_problem(item, depth + 1)
        if found is not None:
            return path_segment(key) + found[0], found[1]
    return None


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"has the key {render(key)} (of type {type(key).__name__}); JSON object keys are strings"
    if has_lone_surrogate(key):
        return f"has the key {render(key)}, which {surrogate_problem(key)}"
    return None


# --------------------------------------------------------------------------
# Event validation
# --------------------------------------------------------------------------


def _fail(index: int | None, field: str, problem: str) -> PagentValidationError:
    where = field if index is None else f"events[{index}].{field}"
    return PagentValidationError(f"{where} {problem}", index=index, field=field)


def _check_string(value: Any, index: int | None, field: str) -> None:
    if has_lone_surrogate(value):
        raise _fail(index, field, surrogate_problem(value))


def _check_id(value: Any, index: int | None, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"{type(value).__name__} {render(value)}"
        raise _fail(index, field, f"must be a non-empty string, got {shown}")
    _check_string(value, index, field)


def _check_optional_string(value: Any, index: int | None, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _fail(index, field, f"must be a string, got {type(value).__name__}")
    _check_string(value, index, field)


def _check_revenue(revenue: Any, index: int | None) -> None:
    if revenue is None:
        return
    if isinstance(revenue, bool) or not isinstance(revenue, int):
        raise _fail(
            index,
            "revenue",
            f"must be an integer number of cents, got {render(revenue)} (convert dollars to cents: 9.99 -> 999)",
        )
    if abs(revenue) > MAX_REVENUE_CENTS:
        raise _fail(
            index,
            "revenue",
            f"{render(revenue)} is beyond JSON's safe integer range (|revenue| <= {MAX_REVENUE_CENTS} cents); "
            "check the amount (is it already in cents?)",
        )


def _check_time(time: Any, index: int | None, now_ms: int) -> int | None:
    """Check ``time``; return it as an int (a whole float becomes one), or ``None`` when absent."""
    if time is None:
        return None
    if isinstance(time, bool) or not isinstance(time, int | float):
        raise _fail(index, "time", f"must be Unix milliseconds (an integer), got {type(time).__name__} {render(time)}")
    if isinstance(time, float):
        if not math.isfinite(time):
            raise _fail(index, "time", f"must be a finite Unix timestamp in milliseconds, got {render(time)}")
        if not time.is_integer():
            raise _fail(
                index,
                "time",
                f"must be whole Unix milliseconds, got {render(time)}; round it, e.g. int(time.time() * 1000)",
            )
        time = int(time)
    _check_time_range(int(time), index, now_ms)
    return int(time)


def _check_time_range(ms: int, index: int | None, now_ms: int) -> None:
    latest = now_ms + FUTURE_TOLERANCE_MS
    if MIN_TIME_MS <= ms <= latest:
        return
    if ms < 0:
        problem = f"{render(ms)} is negative, which is no conversion time"
    elif ms < MIN_TIME_MS:
        problem = f"{render(ms)} is before 2000-01-01T00:00:00Z as Unix milliseconds"
    else:
        problem = f"{render(ms)} is more than one hour in the future as Unix milliseconds"
    hint = time_unit_hint(ms, latest)
    raise _fail(index, "time", f"{problem}; {hint}" if hint else f"{problem}; pagent expects Unix milliseconds")


def _check_properties(properties: Any, index: int | None) -> None:
    if properties is None:
        return
    shape = (
        "must be an object or an array of objects (a dict or a list of dicts), got "
        f"{type(properties).__name__} {render(properties)}"
    )
    if isinstance(properties, list):
        for position, element in enumerate(properties):
            if not isinstance(element, dict):
                raise _fail(index, "properties", f"{shape}: element {position} is a {type(element).__name__}")
    elif not isinstance(properties, dict):
        raise _fail(index, "properties", shape)
    _check_json(properties, index, "properties")


def _check_json(value: Any, index: int | None, field: str) -> None:
    found = json_problem(value)
    if found is not None:
        path, problem = found
        raise _fail(index, field + path, problem)


def _check_extra_fields(event: Mapping[str, Any], index: int | None, known: Sequence[str], prefix: str = "") -> None:
    """Fields beyond the documented ones pass through, but must be JSON that encodes."""
    for name, value in event.items():
        if not isinstance(name, str) or has_lone_surrogate(name):
            raise _fail(index, prefix.rstrip(".") or "event", _key_problem(name) or "has an invalid key")
        if name not in known:
            _check_json(value, index, prefix + name)


def _check_optional(event: Mapping[str, Any], index: int | None, now_ms: int) -> int | None:
    """Check label, revenue, properties and time; return the time as an int (or ``None``)."""
    _check_optional_string(event.get("label"), index, "label")
    _check_revenue(event.get("revenue"), index)
    _check_properties(event.get("properties"), index)
    return _check_time(event.get("time"), index, now_ms)


def _cleaned(event: Mapping[str, Any], time: int | None) -> dict[str, Any]:
    cleaned = _without_none(event)
    if time is not None:
        cleaned["time"] = time
    return cleaned


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


def _check_is_object(event: Any, index: int | None, field: str = "event") -> Mapping[str, Any]:
    """``event`` itself when it is a JSON object (a ``Mapping``); else the validation error."""
    if not isinstance(event, Mapping):
        raise _fail(index, field, f"must be an object, got {type(event).__name__}")
    return event


def _now_ms() -> int:
    return _time.time_ns() // 1_000_000


def validate_v1_event(
    event: Mapping[str, Any], index: int | None = None, *, now_ms: int | None = None
) -> dict[str, Any]:
    """Check one v1 event and return it with ``None`` fields left out.

    Args:
        event: the event.
        index: its position in the request, for the messages.
        now_ms: the current time in Unix milliseconds (default: the clock),
            for the "not in the future" check.

    Returns:
        A new dict without the ``None`` fields; a whole float ``time`` is an
        int in it. Every value is JSON that encodes to UTF-8 as it is.

    Raises:
        PagentValidationError: naming ``events[index].field`` and the problem.
    """
    _check_is_object(event, index)
    for field in ID_FIELDS:
        _check_id(event.get(field), index, field)
    time = _check_optional(event, index, _now_ms() if now_ms is None else now_ms)
    _check_extra_fields(event, index, ID_FIELDS + OPTIONAL_FIELDS)
    return _cleaned(event, time)


def validate_v1_events(events: Sequence[Mapping[str, Any]], *, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Check a v1 batch (1 to 100 events) and return the events without ``None`` fields."""
    _check_count(events)
    now = _now_ms() if now_ms is None else now_ms
    return [validate_v1_event(event, index, now_ms=now) for index, event in enumerate(events)]


def validate_v2_event(
    event: Mapping[str, Any], index: int | None = None, *, now_ms: int | None = None
) -> dict[str, Any]:
    """Check one v2 event (``session_data`` plus optional fields); return it without ``None`` fields.

    Raises:
        PagentValidationError: naming ``events[index].field`` (for example
            ``session_data.user_id``) and the problem.
    """
    _check_is_object(event, index)
    session_data = _check_is_object(event.get("session_data"), index, "session_data")
    for field in ID_FIELDS:
        _check_id(session_data.get(field), index, f"session_data.{field}")
    _check_optional_string(session_data.get("visit_id"), index, "session_data.visit_id")
    _check_extra_fields(session_data, index, (*ID_FIELDS, "visit_id"), prefix="session_data.")
    time = _check_optional(event, index, _now_ms() if now_ms is None else now_ms)
    _check_extra_fields(event, index, ("session_data", *OPTIONAL_FIELDS))
    cleaned = _cleaned(event, time)
    cleaned["session_data"] = _without_none(session_data)
    return cleaned


def validate_v2_events(events: Sequence[Mapping[str, Any]], *, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Check a v2 bulk batch (1 to 100 events) and return the events without ``None`` fields."""
    _check_count(events)
    now = _now_ms() if now_ms is None else now_ms
    return [validate_v2_event(event, index, now_ms=now) for index, event in enumerate(events)]


def event_json_problem(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of an event that JSON or UTF-8 cannot carry, as ``(field path, problem)``.

    Used to explain an event that failed to encode; ``None`` when every
    field is JSON that encodes.
    """
    for name, value in event.items():
        key_problem = _key_problem(name)
        if key_problem is not None:
            return "event", key_problem
        found = json_problem(value)
        if found is not None:
            return name + found[0], found[1]
    return None
