"""The canonical encoding: every event encodes to the bytes of the reference encoder.

Stored content hashes (and their digests in the ledger) were computed from
``json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)``. :func:`encode_event` takes a faster path (msgspec) for
events of plain values; a single byte of difference would make every re-run
of a ledger written by an earlier release report its rows "changed after
send". These tests hold it to the reference, byte for byte, and to the
reference's errors.
"""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagent_provider.core.encoding import ENCODING_ERRORS, content_hash, encode_event

REFERENCE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# Every code point, surrogates included, and the characters JSON escapes.
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)
escapes = st.sampled_from(["\x00", "\x1f", '"', "\\", "\x7f", "\u2028", "\u2029", "\ufeff", "\U0010ffff", "/"])
texts = st.one_of(any_text, st.lists(st.one_of(escapes, any_text), max_size=6).map("".join))
integers = st.one_of(st.integers(), st.integers(min_value=-(2**200), max_value=2**200))
plain = st.one_of(texts, integers, st.booleans(), st.none())
json_values = st.recursive(
    st.one_of(plain, st.floats(allow_nan=True, allow_infinity=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
events = st.dictionaries(
    st.one_of(st.sampled_from(["session_id", "user_id", "conversion_id", "label", "revenue", "time"]), texts),
    st.one_of(plain, st.dictionaries(texts, plain, max_size=5), json_values),
    max_size=8,
)


def reference(event: dict[str, Any]) -> bytes | type[Exception]:
    """The reference bytes, or the class of the reference's error."""
    try:
        return REFERENCE.encode(event).encode()
    except ENCODING_ERRORS as error:
        return type(error)


def ours(event: dict[str, Any]) -> bytes | type[Exception]:
    try:
        return encode_event(event).encode()
    except ENCODING_ERRORS as error:
        return type(error)


@settings(max_examples=3_000, deadline=None)
@given(events)
def test_every_event_encodes_to_the_reference_bytes_or_fails_as_it_does(event: dict[str, Any]) -> None:
    assert ours(event) == reference(event)


@pytest.mark.parametrize(
    "value",
    [
        1e16,
        1e-7,
        0.1,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        {"nested": 1e22},
        {"a": {"b": "c"}},
        {1: "an int key, which json prints as a string"},
        [1, "x"],
        (1, 2),
        10**4299,
        -(2**64),
        "\ud800",
        "a\x00b\x1f\u2028",
    ],
    ids=lambda value: type(value).__name__,
)
def test_values_that_print_differently_elsewhere_print_as_the_reference(value: Any) -> None:
    """Floats (msgspec writes ``1e16``, json ``1e+16``), nesting, tuples, huge ints, surrogates, escapes."""
    event = {"session_id": "s", "properties": {"v": value} if not isinstance(value, dict) else value, "revenue": value}
    assert ours(event) == reference(event)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), 10**5000, object(), "\udfff"],
    ids=["nan", "inf", "5000-digit int", "object", "lone surrogate"],
)
def test_what_the_reference_refuses_is_refused(value: Any) -> None:
    refused = reference({"properties": value})
    assert isinstance(refused, type) and issubclass(refused, Exception)
    with pytest.raises(ENCODING_ERRORS):
        content_hash(encode_event({"properties": value}))


def test_subclasses_of_plain_types_print_as_the_reference() -> None:
    class Level(IntEnum):
        HIGH = 3

    class Tag(str):
        pass

    event = {"revenue": Level.HIGH, "label": Tag("x"), "properties": {"level": Level.HIGH, "flag": True}}
    assert ours(event) == reference(event)


def test_a_known_event_keeps_its_pinned_hash() -> None:
    """The hash an earlier release stored for this event: a change here breaks every ledger."""
    event = {
        "session_id": "s-1",
        "user_id": "u-1",
        "conversion_id": "9f7c1e6e-2a11-4c6d-9b8e-0d1b7a0e5f42",
        "label": "purchase",
        "revenue": 4999,
        "time": 1_700_000_000_000,
        "properties": {"plan": "pro", "seats": 3, "trial": False, "coupon": None, "note": "naïve\n\u2028"},
    }
    assert encode_event(event) == REFERENCE.encode(event)
    assert content_hash(encode_event(event)) == "38f1dad8da3543d5d5e3d411ba5a1532"  # json's, as every release stored it


def test_int_digit_limit_is_the_interpreters() -> None:
    """Both paths honour ``sys.set_int_max_str_digits`` (a 4,300-digit integer prints, a longer one is refused)."""
    limit = sys.get_int_max_str_digits()
    assert ours({"revenue": 10 ** (limit - 1)}) == reference({"revenue": 10 ** (limit - 1)})
    assert ours({"revenue": 10**limit}) is ValueError
