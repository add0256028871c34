"""Faults and hostile behaviours the ingest emulator can inject into its answers.

:class:`Faults` is the configuration; the functions below decide, for one
request, which fault applies and shape the strange answers (acknowledgements
that do not match what was stored, redirects, echoed credentials, answers
trickled byte by byte). The HTTP handler in
:mod:`pagent_provider.testing.emulator` composes them. Only the standard
library is used.
"""

from __future__ import annotations

import enum
import html
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FAIL_MESSAGE",
    "UNAVAILABLE_MESSAGE",
    "Faults",
    "ScheduledFault",
    "body_too_large",
    "echo_into_message",
    "echo_into_page",
    "redirect_page",
    "render_ack",
    "scheduled_fault",
    "trickle",
]

#: The ``error`` of a 500 answered by the ``fail_every`` fault.
FAIL_MESSAGE = "internal server error (emulated fault)"

#: The ``error`` of a 503 answered by the ``unavailable_every`` fault.
UNAVAILABLE_MESSAGE = "service unavailable (emulated)"


@dataclass
class Faults:
    """Faults the emulator injects into its answers.

    Every authorized ``POST`` to a conversions endpoint increments one shared
    counter ``n`` (1, 2, 3, ...). For each such request the emulator first
    sleeps ``latency_s``, then applies the first of these that matches:

    1. ``redirect_to``: the request is redirected (whatever ``n``).
    2. ``max_body_bytes``: a body longer than the limit is answered 413.
    3. The per-request faults *hang*, *drop*, *fail*, *unavailable* and
       *rate limit*, in this order: the first rule whose ``*_every`` divides
       ``n`` applies.

    A request that hits none of them is validated (400 on a broken rule or a
    ``refuse`` message) and, if valid, its events are stored and it is
    answered ``ack_status`` with ``{"accepted": <number of events>}`` or with
    ``ack_override``'s body. Unauthorized requests (401), unknown paths (404)
    and other methods (405) neither count nor wait, but ``echo_credentials``
    and ``trickle_s`` apply to every answer.

    The object may be replaced (``emulator.faults = Faults(...)``) or mutated
    while the emulator runs; each request reads the faults once, when it
    starts.

    The last group of attributes are *hostile modes*: they simulate servers,
    proxies and misconfigurations that answer strangely, so tests can check a
    client does not trust what it should not (an acknowledgement that does
    not add up, an HTML page, a redirect) and does not leak its key.

    Attributes:
        latency_s: Seconds to sleep before answering every authorized POST.
        fail_every: Every k-th POST is answered ``500 {"error": ...}`` and
            nothing is stored (0 = never).
        rate_limit_every: Every k-th POST is answered ``429`` with an empty
            body and nothing is stored (0 = never).
        retry_after: Value of the ``Retry-After`` header sent with a 429 or a
            503 (``unavailable_every``): seconds (``"1"``) or an HTTP date.
            ``None`` sends no header.
        drop_every: Every k-th POST is validated and, if valid, its events are
            *stored* (they count as accepted), then the connection is closed
            without any answer: the client cannot know the outcome. An invalid
            body still gets its normal 400 answer (0 = never).
        hang_every: Every k-th POST is never answered: the handler waits
            ``hang_s`` seconds (or until :meth:`IngestEmulator.stop`), stores
            nothing and closes the connection (0 = never).
        hang_s: How long a hanging request waits before its connection is
            closed.
        refuse: Optional per-event predicate, called with each (otherwise
            valid) event normalized to the v1 shape (see
            :meth:`IngestEmulator.events`). If it returns a message for the
            event at index ``i``, the whole request is answered
            ``400 {"error": "events[i]: <message>"}`` and nothing is stored
            (``i`` is 0 for ``/v2/conversions``). Return ``None`` to accept.
        ack_override: Hostile mode. When set, a successful POST still stores
            all its events, but its answer body is ``ack_override(n_events)``
            instead of ``{"accepted": n_events}``: a ``str`` is sent as
            ``text/html; charset=utf-8`` (e.g. an HTML error page), ``bytes``
            as-is as ``application/octet-stream``, anything else (a dict, a
            list, ``None``) as JSON. Examples: ``lambda n: {"accepted": n - 1}``
            (a partial acknowledgement), ``lambda n: {}``,
            ``lambda n: {"accepted": n, "error": "degraded"}``,
            ``lambda n: "<html>...</html>"``. If it raises, the request is
            answered 500 and nothing is stored.
        ack_status: The status of every successful answer, with or without
            ``ack_override`` (200 to 299; e.g. 202). A 204 never has a body
            (nor ``Content-Length``), whatever ``ack_override`` returns.
        redirect_to: Hostile mode (a misconfigured base URL). When set, every
            authorized POST is answered ``redirect_status`` with
            ``Location: <redirect_to>`` and a small HTML body, before any
            other fault or validation; nothing is stored. Point it at a
            :class:`~pagent_provider.testing.webapp.WebAppServer` to see what
            a client that follows redirects sends there.
        redirect_status: The 3xx status of a redirect (301, 302, 303, 307 or 308).
        max_body_bytes: A POST whose body is longer than this many bytes is
            answered ``413 {"error": "payload too large: N bytes > M"}`` and
            nothing is stored, in fast-sink mode too (0 = no limit).
        echo_credentials: Hostile mode (a debugging proxy that echoes request
            headers). It *leaks on purpose*, so a client's secret scrubbing
            can be tested: every JSON error answer (400, 401, 404, 405, 413,
            500, 503) gets ``"; debug: Authorization=<header>"`` appended to
            its ``error``, and a ``str`` body of ``ack_override`` is prefixed
            with ``<!-- debug: Authorization=<header> -->``, the header value
            copied verbatim (nothing is added when the request had none). A
            429 keeps its documented empty body. The request records still
            never contain credentials.
        trickle_s: Hostile mode (a slow-loris server). When above 0, every
            answer (status line, headers and body) is written one byte at a
            time with a pause of ``trickle_s`` seconds between bytes, so a
            client's overall request deadline can be tested. It stops early,
            closing the connection, when the emulator stops or the client
            disconnects.
        unavailable_every: Every k-th POST is answered
            ``503 {"error": "service unavailable (emulated)"}`` with the
            ``Retry-After`` header of ``retry_after``; nothing is stored
            (0 = never).
    """

    latency_s: float = 0.0
    fail_every: int = 0
    rate_limit_every: int = 0
    retry_after: str | None = "1"
    drop_every: int = 0
    hang_every: int = 0
    hang_s: float = 30.0
    refuse: Callable[[dict], str | None] | None = None
    ack_override: Callable[[int], object] | None = None
    ack_status: int = 200
    redirect_to: str | None = None
    redirect_status: int = 302
    max_body_bytes: int = 0
    echo_credentials: bool = False
    trickle_s: float = 0.0
    unavailable_every: int = 0

    def __post_init__(self) -> None:
        # Catch the typos that would otherwise produce a confusing emulator
        # (a "successful" 500, a redirect without a redirect status).
        if not 200 <= self.ack_status <= 299:
            raise ValueError(f"ack_status must be a 2xx status, not {self.ack_status}")
        if not 300 <= self.redirect_status <= 399:
            raise ValueError(f"redirect_status must be a 3xx status, not {self.redirect_status}")
        if self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, not {self.max_body_bytes}")
        if self.trickle_s < 0:
            raise ValueError(f"trickle_s must be >= 0, not {self.trickle_s}")


class ScheduledFault(enum.Enum):
    """A per-request fault chosen by the request counter (the ``*_every`` fields)."""

    HANG = "hang"
    DROP = "drop"
    FAIL = "fail"
    UNAVAILABLE = "unavailable"
    RATE_LIMIT = "rate_limit"


def _hits(every: int, n: int) -> bool:
    return every > 0 and n % every == 0


def scheduled_fault(faults: Faults, n: int) -> ScheduledFault | None:
    """The per-request fault of the ``n``-th authorized POST, in the documented order.

    Args:
        faults: The faults in effect for the request.
        n: The request's number (1 for the first authorized POST).

    Returns:
        The first of hang, drop, fail, unavailable and rate limit whose
        ``*_every`` divides ``n``, or ``None``.
    """
    for every, fault in (
        (faults.hang_every, ScheduledFault.HANG),
        (faults.drop_every, ScheduledFault.DROP),
        (faults.fail_every, ScheduledFault.FAIL),
        (faults.unavailable_every, ScheduledFault.UNAVAILABLE),
        (faults.rate_limit_every, ScheduledFault.RATE_LIMIT),
    ):
        if _hits(every, n):
            return fault
    return None


def body_too_large(faults: Faults, size: int) -> str | None:
    """The 413 message for a body of ``size`` bytes, or ``None`` if it is allowed."""
    if faults.max_body_bytes > 0 and size > faults.max_body_bytes:
        return f"payload too large: {size} bytes > {faults.max_body_bytes}"
    return None


def render_ack(value: object) -> tuple[str, bytes]:
    """Encode an ``ack_override`` result as an answer body.

    Args:
        value: What ``ack_override`` returned.

    Returns:
        ``(content_type, body)``: HTML for a ``str``, octet-stream for bytes,
        JSON for anything else.

    Raises:
        TypeError: If the value is none of these and not JSON-serializable.
    """
    if isinstance(value, str):
        return "text/html; charset=utf-8", value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "application/octet-stream", bytes(value)
    return "application/json", json.dumps(value).encode("utf-8")


def echo_into_message(message: str, authorization: str | None) -> str:
    """Append the request's ``Authorization`` header to an error message (``echo_credentials``)."""
    if authorization is None:
        return message
    return f"{message}; debug: Authorization={authorization}"


def echo_into_page(text: str, authorization: str | None) -> str:
    """Prefix an HTML body with the request's ``Authorization`` header (``echo_credentials``).

    The header goes first because clients quote only the start of a body in
    their error messages; a leak at the end of a long page would go unseen.
    """
    if authorization is None:
        return text
    return f"<!-- debug: Authorization={authorization} -->\n{text}"


def redirect_page(location: str) -> bytes:
    """The small HTML body sent with a redirect, as web servers do."""
    href = html.escape(location, quote=True)
    return (
        "<!DOCTYPE html>\n<html><head><title>Moved</title></head>"
        f'<body><p>The document has moved <a href="{href}">here</a>.</p></body></html>\n'
    ).encode()


def trickle(write: Callable[[bytes], object], data: bytes, pause_s: float, stopping: threading.Event) -> bool:
    """Write ``data`` one byte at a time, pausing ``pause_s`` between bytes.

    Args:
        write: Writes bytes to the connection (raises ``OSError`` once the
            client has gone away).
        data: The whole answer.
        pause_s: Seconds between two bytes.
        stopping: Set when the emulator stops; ends the trickle at once.

    Returns:
        ``True`` if everything was written, ``False`` if ``stopping`` was set first.
    """
    last = len(data) - 1
    for i in range(len(data)):
        write(data[i : i + 1])
        if i < last and stopping.wait(pause_s):
            return False
    return True
