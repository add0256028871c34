"""The hook validates what the operator validates: client-side event rules, over real HTTP.

Refusals go through the real :class:`~pagent_provider.core.client.PagentClient`
(and :class:`~pagent_provider.hooks.pagent.PagentHook`) against the real
emulator, so "refused before sending" is checked by the emulator having seen
no request at all. The rules are also checked against the warehouse
transform, value for value, since both must apply the same constants.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagent_provider.core.client import PagentClient, encode_json
from pagent_provider.core.encoding import encode_event
from pagent_provider.core.events import (
    FUTURE_TOLERANCE_MS,
    MAX_PROPERTIES_DEPTH,
    MAX_PROPERTY_INT,
    MAX_REVENUE_CENTS,
    MIN_PROPERTY_INT,
    MIN_TIME_MS,
    json_problem,
    validate_v1_event,
    validate_v1_events,
    validate_v2_events,
)
from pagent_provider.core.transform import properties_to_json_objects, revenue_to_cents, time_to_unix_ms
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentValidationError
from pagent_provider.hooks.pagent import PagentHook
from pagent_provider.testing import IngestEmulator

KEY = "test-key"
#: A fixed "now" for the checks that take one: 2027-01-15T08:00:00Z.
NOW_MS = 1_800_000_000_000
FIXTURES = [HealthCheck.function_scoped_fixture]


def event(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"session_id": f"s{n}", "user_id": f"u{n}", "conversion_id": "goal-1", **extra}


def nested(depth: int) -> dict[str, Any]:
    """A properties object nesting ``depth`` levels (the object itself is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.fixture(scope="module")
def emulator():
    with IngestEmulator(api_keys=(KEY,)) as running:
        yield running


@pytest.fixture
def client(emulator):
    emulator.reset()
    with PagentClient(KEY, base_url=emulator.url, policy=RetryPolicy(max_retries=0)) as pagent:
        yield pagent


@pytest.fixture
def hook(monkeypatch, emulator) -> PagentHook:
    emulator.reset()
    conn = {"conn_type": "pagent", "host": emulator.url, "password": KEY, "extra": {"timeout": 2, "max_retries": 0}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    return PagentHook()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- refusals over HTTP

REFUSED = [
    # time: integer Unix milliseconds in [2000-01-01, now + 1 h]
    pytest.param({"time": 1_700_000_000}, "time", "looks like Unix seconds: multiply by 1000", id="time-seconds"),
    pytest.param({"time": -1}, "time", "negative", id="time-negative"),
    pytest.param({"time": MIN_TIME_MS - 1}, "time", "before 2000-01-01", id="time-before-2000"),
    pytest.param({"time": True}, "time", "bool", id="time-bool"),
    pytest.param({"time": 1_760_000_000_000.5}, "time", "whole Unix milliseconds", id="time-fraction"),
    pytest.param({"time": float("nan")}, "time", "finite", id="time-nan"),
    pytest.param({"time": float("-inf")}, "time", "finite", id="time-inf"),
    pytest.param({"time": "2026-01-01"}, "time", "str", id="time-text"),
    pytest.param({"time": Decimal("1760000000000")}, "time", "Decimal", id="time-decimal"),
    pytest.param({"time": 10**5000}, "time", "future", id="time-huge"),
    # revenue: integer cents within JSON's safe integer range
    pytest.param({"revenue": MAX_REVENUE_CENTS + 1}, "revenue", "safe integer range", id="revenue-too-large"),
    pytest.param({"revenue": -(2**53)}, "revenue", "safe integer range", id="revenue-too-small"),
    pytest.param({"revenue": False}, "revenue", "cents", id="revenue-bool"),
    pytest.param({"revenue": 9.99}, "revenue", "9.99 -> 999", id="revenue-dollars"),
    pytest.param({"revenue": np.int64(999)}, "revenue", "integer number of cents", id="revenue-numpy"),
    pytest.param({"revenue": Decimal("NaN")}, "revenue", "integer number of cents", id="revenue-decimal-nan"),
    # properties: JSON content only
    pytest.param({"properties": {"note": "bad \ud800 text"}}, "properties.note", "lone surrogate", id="prop-surrogate"),
    pytest.param({"properties": {"bad\udc00key": 1}}, "properties", "lone surrogate", id="prop-surrogate-key"),
    pytest.param(
        {"properties": {"items": [{"price": 1.5}, {"price": float("nan")}]}},
        "properties.items[1].price",
        "not a finite number",
        id="prop-nan",
    ),
    pytest.param({"properties": {"x": float("1e400")}}, "properties.x", "inf", id="prop-1e400"),
    pytest.param({"properties": {"x": np.float64("-inf")}}, "properties.x", "inf", id="prop-numpy-inf"),
    pytest.param({"properties": {"price": Decimal("1.5")}}, "properties.price", "int or float", id="prop-decimal"),
    pytest.param({"properties": {"price": Decimal("NaN")}}, "properties.price", "Decimal", id="prop-decimal-nan"),
    pytest.param({"properties": {"raw": b"\x00"}}, "properties.raw", "decode it to text", id="prop-bytes"),
    pytest.param({"properties": {"tags": {"a", "b"}}}, "properties.tags", "list", id="prop-set"),
    pytest.param({"properties": {"pair": (1, 2)}}, "properties.pair", "list", id="prop-tuple"),
    pytest.param({"properties": {"z": 1j}}, "properties.z", "complex", id="prop-complex"),
    pytest.param({"properties": {"at": dt.datetime(2026, 1, 1)}}, "properties.at", "isoformat", id="prop-datetime"),
    pytest.param({"properties": {"n": np.int64(3)}}, "properties.n", ".item()", id="prop-numpy-int"),
    pytest.param({"properties": {"n": MAX_PROPERTY_INT + 1}}, "properties.n", "64 bits", id="prop-int-too-large"),
    pytest.param({"properties": {"n": -(10**5000)}}, "properties.n", "64 bits", id="prop-int-huge"),
    pytest.param({"properties": {1: "one"}}, "properties", "keys are strings", id="prop-int-key"),
    pytest.param({"properties": {"odd key": {"x": None, "y": object()}}}, "properties['odd key'].y", "object"),
    pytest.param(
        {"properties": nested(MAX_PROPERTIES_DEPTH + 1)},
        "properties" + ".a" * MAX_PROPERTIES_DEPTH,
        f"deeper than {MAX_PROPERTIES_DEPTH}",
        id="prop-too-deep",
    ),
    pytest.param({"properties": MappingProxyType({"a": 1})}, "properties", "a dict", id="prop-mapping"),
    pytest.param({"properties": [{"a": 1}, ["b"]]}, "properties", "element 1", id="prop-array-of-non-objects"),
    # ids and label: strings without lone surrogates
    pytest.param({"session_id": "s\ud83d"}, "session_id", "lone surrogate", id="session-surrogate"),
    pytest.param({"user_id": "\udfff"}, "user_id", "lone surrogate", id="user-surrogate"),
    pytest.param({"conversion_id": "g\ud800\udc00"}, "conversion_id", "lone surrogate", id="goal-split-pair"),
    pytest.param({"label": "purchase\udc80"}, "label", "lone surrogate", id="label-surrogate"),
    # any other field still has to be JSON
    pytest.param({"custom": {"when": float("inf")}}, "custom.when", "finite", id="extra-field"),
]


@pytest.mark.parametrize(("bad", "field", "words"), REFUSED)
def test_refused_before_any_request(client, emulator, bad, field, words):
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversions([event(0), {**event(1), **bad}])
    error = raised.value
    assert (error.index, error.field) == (1, field)
    assert str(error).startswith(f"events[1].{field} ")
    assert words in str(error)
    str(error).encode("utf-8")  # the message itself is always loggable
    assert emulator.requests() == []


def test_circular_properties_are_refused_not_a_recursion_error(client, emulator):
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(PagentValidationError, match="deeper than"):
        client.send_conversions([event(properties=loop)])
    assert emulator.requests() == []


def test_future_times_are_refused_with_unit_hints(client, emulator):
    now = now_ms()
    with pytest.raises(PagentValidationError, match="more than one hour in the future"):
        client.send_conversions([event(time=now + FUTURE_TOLERANCE_MS + 60_000)])
    with pytest.raises(PagentValidationError, match="looks like Unix microseconds: divide by 1000"):
        client.send_conversions([event(time=now * 1000)])
    with pytest.raises(PagentValidationError, match="looks like Unix nanoseconds: divide by 1000000"):
        client.send_conversions([event(time=now * 1_000_000)])
    assert emulator.requests() == []


def test_boundaries_are_accepted_and_sent_as_given(client, emulator):
    now = now_ms()
    events = [
        event(0, time=MIN_TIME_MS, revenue=MAX_REVENUE_CENTS),
        event(1, time=now, revenue=-MAX_REVENUE_CENTS),
        event(
            2, properties={"max": MAX_PROPERTY_INT, "min": MIN_PROPERTY_INT, "deep": nested(MAX_PROPERTIES_DEPTH - 1)}
        ),
        event(3, properties=[{"emoji": "\U0001f600", "cjk": "\u4e2d", "empty": "", "nothing": None, "f": -0.0}]),
        event(4, label="", properties={}),
    ]
    assert client.send_conversions(events) == {"accepted": 5}
    assert emulator.events() == events


def test_a_whole_float_time_is_sent_as_an_integer(client, emulator):
    client.send_conversions([event(time=1_760_000_000_000.0)])
    [stored] = emulator.events()
    assert stored["time"] == 1_760_000_000_000 and type(stored["time"]) is int


def test_v2_single_names_the_field_without_an_index(client, emulator):
    session_data = {"session_id": "s", "user_id": "u", "conversion_id": "g"}
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversion_v2(session_data, time=1_700_000_000)
    assert (raised.value.index, raised.value.field) == (None, "time")
    assert str(raised.value).startswith("time 1700000000 ") and "multiply by 1000" in str(raised.value)
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversion_v2(session_data, properties={"cart": [{"sku": "\ud800"}]})
    assert raised.value.field == "properties.cart[0].sku"
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversion_v2({**session_data, "visit_id": "v\udc00"})
    assert raised.value.field == "session_data.visit_id"
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversion_v2({**session_data, "extra": {"n": float("nan")}})
    assert raised.value.field == "session_data.extra.n"
    assert emulator.requests() == []


def test_v2_bulk_names_the_event_and_field(client, emulator):
    good = {"session_data": {"session_id": "s", "user_id": "u", "conversion_id": "g"}}
    bad = {"session_data": {"session_id": "s", "user_id": "u\ud800", "conversion_id": "g"}}
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversions_v2_bulk([good, good, bad])
    assert (raised.value.index, raised.value.field) == (2, "session_data.user_id")
    with pytest.raises(PagentValidationError) as raised:
        client.send_conversions_v2_bulk([good, {**good, "revenue": 2**60}])
    assert (raised.value.index, raised.value.field) == (1, "revenue")
    assert emulator.requests() == []
    assert client.send_conversions_v2_bulk([good, {**good, "time": 1_760_000_000_000}]) == {"accepted": 2}


# --------------------------------------------------------------------------- through the Airflow hook


def test_hook_raises_a_validation_error_naming_the_field(hook, emulator):
    with pytest.raises(PagentValidationError) as raised:
        hook.send_conversions([event(0), event(1, properties={"items": [{"price": float("inf")}]})])
    assert raised.value.field == "properties.items[0].price"
    assert "events[1].properties.items[0].price" in str(raised.value)
    with pytest.raises(PagentValidationError, match=r"^session_data\.session_id .*lone surrogate"):
        hook.send_conversion_v2({"session_id": "\ud800", "user_id": "u", "conversion_id": "g"})
    with pytest.raises(PagentValidationError, match=r"^events\[0\]\.time .*multiply by 1000"):
        hook.send_conversions_v2_bulk([{"session_data": event(), "time": 1_700_000_000}])
    with pytest.raises(PagentValidationError, match=r"^revenue .*safe integer range"):
        hook.send_conversion_v2(event(), revenue=2**53)
    assert emulator.requests() == []


def test_hook_error_fails_the_airflow_task_without_retries(hook, emulator):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(PagentValidationError) as raised:
        hook.send_conversions([event(properties={"deep": nested(40)})])
    assert isinstance(raised.value, AirflowFailException)
    assert emulator.requests() == []


# --------------------------------------------------------------------------- properties of the rules

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=MIN_PROPERTY_INT, max_value=MAX_PROPERTY_INT),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # no surrogates: hypothesis' default alphabet leaves them out
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)),
    max_leaves=25,
)
_json_objects = st.dictionaries(st.text(), _json_values, max_size=6)
_properties = st.one_of(_json_objects, st.lists(_json_objects, max_size=3))

_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_with_surrogate = st.tuples(st.text(max_size=5), _surrogate, st.text(max_size=5)).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(properties=_properties)
def test_any_json_properties_pass_and_round_trip_byte_identically(client, emulator, properties):
    emulator.reset()
    sent = event(properties=properties)
    assert client.send_conversions([sent]) == {"accepted": 1}
    [stored] = emulator.events()
    assert encode_event(stored) == encode_event(sent)
    assert encode_event(stored).encode() == encode_event(sent).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(text=_with_surrogate, where=st.sampled_from(["session_id", "user_id", "label", "value", "key", "nested"]))
def test_any_string_with_a_lone_surrogate_is_refused(client, emulator, text, where):
    emulator.reset()
    changes = {
        "session_id": {"session_id": text},
        "user_id": {"user_id": text},
        "label": {"label": text},
        "value": {"properties": {"v": text}},
        "key": {"properties": {text: 1}},
        "nested": {"properties": [{"a": [{"b": text}]}]},
    }[where]
    with pytest.raises(PagentValidationError, match="lone surrogate") as raised:
        client.send_conversions([event(**changes)])
    str(raised.value).encode("utf-8")
    assert emulator.requests() == []


_anything = st.recursive(
    st.one_of(
        _json_scalars,
        st.floats(),
        st.integers(),
        _with_surrogate,
        st.decimals(),
        st.binary(max_size=3),
        st.datetimes(),
        st.sampled_from([np.int64(1), np.float64("nan"), pd.NA, 1j, frozenset()]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children),
        st.dictionaries(st.one_of(st.text(max_size=3), _with_surrogate, st.integers()), children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_anything)
def test_validated_events_always_encode(value):
    """``client.encode_json`` cannot raise on what validation lets through."""
    for candidate in (event(properties={"x": value}), event(custom=value), event(label=value), event(time=value)):
        try:
            cleaned = validate_v1_events([candidate])
        except PagentValidationError as error:
            str(error).encode("utf-8")
            continue
        encode_json({"events": cleaned})
        encode_event(cleaned[0]).encode("utf-8")


# --------------------------------------------------------------------------- the transform applies the same rules


@settings(max_examples=300, deadline=None)
@given(value=_anything)
def test_transform_and_hook_agree_on_json_values(value):
    """The transform's output always passes the hook's rules; on plain JSON types both decide alike."""
    converted = properties_to_json_objects(pd.Series([{"x": value}], dtype=object))
    transform_ok = converted.reasons.iloc[0] is None
    if transform_ok:
        assert json_problem(converted.values.iloc[0]) is None
        encode_event(converted.values.iloc[0]).encode("utf-8")
    if _pure_json_types(value):
        assert transform_ok == (json_problem({"x": value}) is None)
        if transform_ok:
            assert converted.values.iloc[0] == {"x": value}


def _pure_json_types(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return type(value) in (type(None), bool, int, float, str)
    if type(value) is list:
        return all(_pure_json_types(item) for item in value)
    if type(value) is dict:
        return all(isinstance(key, str) and _pure_json_types(item) for key, item in value.items())
    return False


@settings(max_examples=200, deadline=None)
@given(
    ms=st.one_of(
        st.integers(min_value=-(2**62), max_value=2**62),
        st.integers(min_value=MIN_TIME_MS - 10**6, max_value=MIN_TIME_MS + 10**6),
        st.integers(min_value=NOW_MS + FUTURE_TOLERANCE_MS - 10**6, max_value=NOW_MS + FUTURE_TOLERANCE_MS + 10**6),
    )
)
def test_transform_and_hook_agree_on_times(ms):
    transform_ok = time_to_unix_ms(pd.Series([ms]), "UTC", now_ms=NOW_MS).reasons.iloc[0] is None
    try:
        validate_v1_event(event(time=ms), now_ms=NOW_MS)
        hook_ok = True
    except PagentValidationError:
        hook_ok = False
    assert transform_ok == hook_ok == (MIN_TIME_MS <= ms <= NOW_MS + FUTURE_TOLERANCE_MS)


@settings(max_examples=200, deadline=None)
@given(
    cents=st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.integers(min_value=MAX_REVENUE_CENTS - 1000, max_value=MAX_REVENUE_CENTS + 1000),
    )
)
def test_transform_and_hook_agree_on_revenue(cents):
    transform_ok = revenue_to_cents(pd.Series([cents]), "cents").reasons.iloc[0] is None
    try:
        validate_v1_event(event(revenue=cents))
        hook_ok = True
    except PagentValidationError:
        hook_ok = False
    assert transform_ok == hook_ok == (abs(cents) <= MAX_REVENUE_CENTS)


def test_seconds_hint_is_the_same_text_in_both():
    transform_reason = time_to_unix_ms(pd.Series([1_700_000_000]), "UTC", now_ms=NOW_MS).reasons.iloc[0]
    with pytest.raises(PagentValidationError) as raised:
        validate_v1_event(event(time=1_700_000_000), now_ms=NOW_MS)
    hint = "it looks like Unix seconds: multiply by 1000"
    assert hint in transform_reason and hint in str(raised.value)


def test_latest_accepted_time_is_now_plus_the_tolerance():
    latest = NOW_MS + FUTURE_TOLERANCE_MS
    events = [{"session_data": event(i), "time": latest} for i in range(3)]
    assert [e["time"] for e in validate_v2_events(events, now_ms=NOW_MS)] == [latest] * 3
    with pytest.raises(PagentValidationError, match="future"):
        validate_v2_events([{"session_data": event(), "time": latest + 1}], now_ms=NOW_MS)
