"""Canonical JSON for events, content hashes and event keys.

Each event is encoded once, with sorted keys; the same text serves as the
request body fragment and as the input of its content hash, so the hash is
stable across runs, processes and machines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import msgspec

from pagent_provider.core.ledger import MAX_KEY_LENGTH

# Stored content hashes depend on these exact settings: changing any of them
# makes every event of a re-run look "changed after send". This encoder is the
# reference: whatever encodes an event must produce its bytes.
_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# msgspec writes the same bytes as _encoder for strings (every code point, every
# escape), integers of any size, booleans and null, in five times less time. Not
# for floats: it writes 1e16 where json writes 1e+16, and NaN as null.
_plain_encoder = msgspec.json.Encoder(order="sorted")
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})

#: What :func:`encode_event` and :func:`content_hash` raise for an event that
#: JSON or UTF-8 cannot carry: ``ValueError`` (NaN or infinity, a circular
#: reference, an integer too long to print, and ``UnicodeEncodeError`` for a
#: lone surrogate), ``TypeError`` (a value of a type JSON has no form for) and
#: ``RecursionError`` (nesting too deep).
ENCODING_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, RecursionError)


def encode_event(event: dict[str, Any]) -> str:
    """The canonical JSON text of one event (sorted keys, no spaces, non-ASCII kept as is).

    Raises:
        ValueError, TypeError, RecursionError: see :data:`ENCODING_ERRORS`.
    """
    if _is_plain(event):
        try:
            return _plain_encoder.encode(event).decode()
        except (TypeError, ValueError, OverflowError):
            pass  # the reference encoder says what is wrong, in its own words
    return _encoder.encode(event)


def _is_plain(event: dict[str, Any]) -> bool:
    """Whether every value is a str, int, bool or None, or a flat object of them with str keys.

    Exact types only: a subclass (an ``IntEnum``, a numpy scalar) may print differently.
    """
    for value in event.values():
        if type(value) in _PLAIN_TYPES:
            continue
        if type(value) is not dict:
            return False
        for name, item in value.items():
            if type(name) is not str or type(item) not in _PLAIN_TYPES:
                return False
    return True


def content_hash(encoded_event: str) -> str:
    """A 128-bit BLAKE2b hex digest of an event's canonical JSON, encoded as UTF-8.

    Raises:
        UnicodeEncodeError: the text holds a lone surrogate (see :data:`ENCODING_ERRORS`).
    """
    return hashlib.blake2b(encoded_event.encode(), digest_size=16).hexdigest()


def ledger_key(key: str) -> str:
    """``key`` as stored in the ledger: hashed when longer than the key column allows."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "blake2b:" + hashlib.blake2b(key.encode(), digest_size=32).hexdigest()


def batch_body(encoded_events: Sequence[str]) -> bytes:
    """A v1 or v2 bulk request body (both are ``{"events": [...]}``) from already encoded events."""
    return ('{"events":[' + ",".join(encoded_events) + "]}").encode()
