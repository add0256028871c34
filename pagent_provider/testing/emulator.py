"""A local, in-process emulator of pagent's server-side conversions ingest API.

The emulator is a real HTTP/1.1 server (keep-alive, ``Content-Length`` on every
answer) that implements the documented endpoints::

    POST /v1/conversions          {"events": [ {session_id, user_id, conversion_id, ...}, ... ]}
    POST /v2/conversions          {"session_data": {session_id, user_id, conversion_id, visit_id?}, ...}
    POST /v2/conversions/bulk     {"events": [ {"session_data": {...}, ...}, ... ]}

with the documented answers (``200 {"accepted": n}``, ``400 {"error": ...}``,
``401 {"error": ...}``, ``429`` with an empty body) and injectable faults
(latency, 500s, 429s, dropped connections, hanging requests, refused events).

It deliberately shares no code with the client in :mod:`pagent_provider`: it
stands in for the vendor's server, so its validation is written independently
from the vendor documentation, and a client bug is not mirrored here.

Only the standard library is used; nothing here imports Airflow.

Example:
    >>> from pagent_provider.testing import IngestEmulator, Faults
    >>> with IngestEmulator(faults=Faults(fail_every=3)) as emulator:  # doctest: +SKIP
    ...     run_my_upload(url=emulator.url, api_key="test-key")
    ...     assert len(emulator.events()) == 42
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AcceptedEvent", "Faults", "IngestEmulator", "RequestRecord"]

logger = logging.getLogger(__name__)

#: Endpoints served by the emulator.
V1_CONVERSIONS = "/v1/conversions"
V2_CONVERSIONS = "/v2/conversions"
V2_CONVERSIONS_BULK = "/v2/conversions/bulk"
ENDPOINTS = (V1_CONVERSIONS, V2_CONVERSIONS, V2_CONVERSIONS_BULK)

#: Maximum number of events in one v1 or v2 bulk request (documented).
MAX_EVENTS_PER_REQUEST = 100

#: ``RequestRecord.status`` of a request that got no answer at all (drop and hang faults).
NO_RESPONSE = 0

_UNAUTHORIZED_MESSAGE = "missing, invalid or expired API key"
_EVENT_COUNT_MESSAGE = f"events must contain 1 to {MAX_EVENTS_PER_REQUEST} items"
_ID_FIELDS = ("session_id", "user_id", "conversion_id")


# --------------------------------------------------------------------------- public data types


@dataclass
class Faults:
    """Faults the emulator injects into its answers.

    Every authorized ``POST`` to a conversions endpoint increments one shared
    counter ``n`` (1, 2, 3, ...). For each request the emulator first sleeps
    ``latency_s``, then checks, in this order, *hang*, *drop*, *fail* and
    *rate limit*: the first rule whose ``*_every`` divides ``n`` applies. A
    request that hits none of them is validated and answered normally.

    The object may be replaced (``emulator.faults = Faults(...)``) or mutated
    while the emulator runs; each request reads the faults once, when it
    starts.

    Attributes:
        latency_s: Seconds to sleep before answering every authorized POST.
        fail_every: Every k-th POST is answered ``500 {"error": ...}`` and
            nothing is stored (0 = never).
        rate_limit_every: Every k-th POST is answered ``429`` with an empty
            body and nothing is stored (0 = never).
        retry_after: Value of the ``Retry-After`` header sent with a 429:
            seconds (``"1"``) or an HTTP date. ``None`` sends no header.
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
    """

    latency_s: float = 0.0
    fail_every: int = 0
    rate_limit_every: int = 0
    retry_after: str | None = "1"
    drop_every: int = 0
    hang_every: int = 0
    hang_s: float = 30.0
    refuse: Callable[[dict], str | None] | None = None


@dataclass(frozen=True)
class AcceptedEvent:
    """One event the emulator accepted (stored).

    Attributes:
        endpoint: The endpoint that received it: ``"/v1/conversions"``,
            ``"/v2/conversions"`` or ``"/v2/conversions/bulk"``.
        event: The event exactly as received (v1 shape or v2 shape, depending
            on the endpoint).
        received_at: ``time.time()`` when the request started being handled.
    """

    endpoint: str
    event: dict
    received_at: float


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the emulator saw. Credentials are never recorded.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: Request path without the query string.
        status: Status code answered, or ``0`` when no answer was sent (the
            drop and hang faults).
        n_events: Number of events in the request body when it could be
            determined (length of ``events`` for v1 and v2 bulk, 1 for a v2
            single-event body), whatever the outcome; 0 otherwise.
        received_at: ``time.time()`` when the request started being handled.
    """

    method: str
    path: str
    status: int
    n_events: int
    received_at: float


# --------------------------------------------------------------------------- validation
# Written from the vendor documentation only; do not share with the client.


class _Invalid(Exception):
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


def _parse_json(body: bytes) -> Any:
    """Parse a request body strictly (no NaN/Infinity); raise ``_Invalid``."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _Invalid(f"request body is not valid JSON: {exc}") from None


def _check_id_fields(obj: dict, prefix: str) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if value is None:
            raise _Invalid(f"{prefix}{name} is required")
        if not isinstance(value, str) or not value:
            raise _Invalid(f"{prefix}{name} must be a non-empty string, not {_show(value)}")


def _check_optional_fields(event: dict, prefix: str) -> None:
    label = event.get("label")
    if label is not None and not isinstance(label, str):
        raise _Invalid(f"{prefix}label must be a string, not {_show(label)}")

    revenue = event.get("revenue")
    if revenue is not None and (isinstance(revenue, bool) or not isinstance(revenue, int)):
        raise _Invalid(f"{prefix}revenue must be an integer, not {_show(revenue)}")

    properties = event.get("properties")
    if properties is not None:
        if isinstance(properties, list):
            for j, item in enumerate(properties):
                if not isinstance(item, dict):
                    raise _Invalid(f"{prefix}properties[{j}] must be an object, not {_show(item)}")
        elif not isinstance(properties, dict):
            raise _Invalid(f"{prefix}properties must be an object or an array of objects, not {_show(properties)}")

    when = event.get("time")
    if when is not None:
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise _Invalid(f"{prefix}time must be a number, not {_show(when)}")
        if isinstance(when, float) and not math.isfinite(when):
            raise _Invalid(f"{prefix}time must be a finite number")


def _check_v1_event(event: Any, prefix: str) -> None:
    if not isinstance(event, dict):
        raise _Invalid(f"{prefix.rstrip('.')} must be an object, not {_show(event)}")
    _check_id_fields(event, prefix)
    _check_optional_fields(event, prefix)


def _check_v2_event(event: Any, prefix: str) -> None:
    if not isinstance(event, dict):
        raise _Invalid(f"{prefix.rstrip('.')} must be an object, not {_show(event)}")
    session_data = event.get("session_data")
    if not isinstance(session_data, dict):
        raise _Invalid(
            f"{prefix}session_data must be an object containing session_id, user_id "
            f"and conversion_id, not {_show(session_data)}"
        )
    _check_id_fields(session_data, f"{prefix}session_data.")
    visit_id = session_data.get("visit_id")
    if visit_id is not None and not isinstance(visit_id, str):
        raise _Invalid(f"{prefix}session_data.visit_id must be a string, not {_show(visit_id)}")
    _check_optional_fields(event, prefix)


def _events_array(body: dict) -> list:
    events = body.get("events")
    if events is None:
        raise _Invalid(f"events is required: an array of 1 to {MAX_EVENTS_PER_REQUEST} items")
    if not isinstance(events, list):
        raise _Invalid(f"events must be an array of 1 to {MAX_EVENTS_PER_REQUEST} items, not {_show(events)}")
    if not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        raise _Invalid(_EVENT_COUNT_MESSAGE)
    return events


def _validate(endpoint: str, body: Any) -> list[dict]:
    """Validate a parsed body for ``endpoint``; return its events as received."""
    if not isinstance(body, dict):
        raise _Invalid(f"request body must be a JSON object, not {_show(body)}")
    if endpoint == V2_CONVERSIONS:
        _check_v2_event(body, "")
        return [body]
    events = _events_array(body)
    check = _check_v1_event if endpoint == V1_CONVERSIONS else _check_v2_event
    for i, event in enumerate(events):
        check(event, f"events[{i}].")
    return events


def _normalize(endpoint: str, event: dict) -> dict:
    """Return ``event`` in the v1 shape (v2 ``session_data`` flattened)."""
    if endpoint == V1_CONVERSIONS:
        return dict(event)
    session_data = event.get("session_data") or {}
    flat = {name: session_data.get(name) for name in _ID_FIELDS}
    if "visit_id" in session_data:
        flat["visit_id"] = session_data["visit_id"]
    flat.update((k, v) for k, v in event.items() if k != "session_data" and k not in flat)
    return flat


def _count_events(body: Any, endpoint: str) -> int:
    """Best-effort number of events in a parsed body (for request records)."""
    if not isinstance(body, dict):
        return 0
    if endpoint == V2_CONVERSIONS:
        return 1
    events = body.get("events")
    return len(events) if isinstance(events, list) else 0


def _fast_count(endpoint: str, body: bytes) -> int:
    """Cheap event count for fast-sink mode (no JSON parsing)."""
    if endpoint == V2_CONVERSIONS:
        return 1
    if endpoint == V2_CONVERSIONS_BULK:
        return body.count(b'"session_data"')
    return body.count(b'"session_id"')


def _hits(every: int, n: int) -> bool:
    return every > 0 and n % every == 0


# --------------------------------------------------------------------------- HTTP plumbing


class _NoAnswer(Exception):
    """Close the connection without answering (drop and hang faults)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() shuts connections down itself, idle keep-alives included
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple, emulator: IngestEmulator, family: int) -> None:
        self.address_family = family
        self.emulator = emulator
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may block on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # client went away, or stop() closed the socket
            logger.debug("pagent emulator: connection from %s ended: %r", client_address, exc)
        else:
            logger.exception("pagent emulator: error while handling %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "pagent-emulator"
    sys_version = ""
    server: _Server

    # -- connection bookkeeping (so stop() can release every handler thread)

    def setup(self) -> None:
        super().setup()
        self.server.emulator._register_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._unregister_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("pagent emulator %s: " + format, self.address_string(), *args)

    # -- method dispatch

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_POST

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        # What _answer() records just before writing (so a client that got its
        # answer always finds the request in emulator.requests()).
        self._received_at = time.time()
        self._path = path
        self._n_events = 0
        self._recorded = False
        try:
            body = self._read_body()
            if body is None:
                self.close_connection = True
                self._answer(400, {"error": "invalid Content-Length or chunked body"})
                return
            if path not in ENDPOINTS:
                self._answer(404, {"error": f"not found: {path}"})
                return
            if self.command != "POST":
                self._answer(
                    405,
                    {"error": f"method {self.command} not allowed on {path}"},
                    headers=(("Allow", "POST"),),
                )
                return
            if emulator.fast_sink:
                self._post_fast(emulator, path, body)
            else:
                self._post(emulator, path, body)
        except _NoAnswer:
            self.close_connection = True
        except OSError:
            self.close_connection = True
            raise
        except Exception as exc:  # a bug here, or in a user's refuse predicate
            logger.exception("pagent emulator: error while handling %s %s", self.command, path)
            self.close_connection = True
            self._answer(500, {"error": f"emulator internal error: {exc!r}"})
        finally:
            self._record(NO_RESPONSE)

    def _record(self, status: int) -> None:
        """Record this request once (nothing in fast-sink mode)."""
        emulator = self.server.emulator
        if self._recorded or emulator.fast_sink:
            return
        self._recorded = True
        emulator._record(RequestRecord(self.command, self._path, status, self._n_events, self._received_at))

    def _read_body(self) -> bytes | None:
        """Read the request body; ``None`` if its framing is invalid."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            return None
        if n < 0:
            return None
        data = self.rfile.read(n)
        if len(data) != n:
            raise _NoAnswer  # client went away mid-body
        return data

    def _read_chunked(self) -> bytes | None:
        parts = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _NoAnswer
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _NoAnswer
            parts.append(chunk)
            self.rfile.readline(65537)  # CRLF after the chunk

    def _authorized(self, emulator: IngestEmulator) -> bool:
        header = self.headers.get("Authorization")
        if header is None or not header.startswith("Bearer "):
            return False
        presented = header[len("Bearer ") :].encode("utf-8", "surrogateescape")
        ok = False
        for key in emulator.api_keys:
            ok |= hmac.compare_digest(presented, key.encode("utf-8", "surrogateescape"))
        return ok

    def _before_faults(self, emulator: IngestEmulator) -> tuple[int, Faults]:
        """Count this POST, apply latency and the hang fault."""
        n = emulator._next_post_number()
        faults = emulator.faults
        if faults.latency_s > 0:
            emulator._stopping.wait(faults.latency_s)
        if _hits(faults.hang_every, n):
            emulator._stopping.wait(faults.hang_s)
            raise _NoAnswer
        return n, faults

    def _post(self, emulator: IngestEmulator, endpoint: str, raw: bytes) -> None:
        """Handle a POST to a conversions endpoint (normal mode)."""
        try:
            body: Any = _parse_json(raw)
            parse_error: _Invalid | None = None
        except _Invalid as exc:
            body, parse_error = None, exc
        self._n_events = _count_events(body, endpoint)

        if not self._authorized(emulator):
            self._answer(401, {"error": _UNAUTHORIZED_MESSAGE})
            return

        n, faults = self._before_faults(emulator)
        drop = _hits(faults.drop_every, n)
        if not drop:
            if _hits(faults.fail_every, n):
                self._answer(500, {"error": "internal server error (emulated fault)"})
                return
            if _hits(faults.rate_limit_every, n):
                self._answer_rate_limited(faults)
                return

        try:
            if parse_error is not None:
                raise parse_error
            events = _validate(endpoint, body)
            normalized = [_normalize(endpoint, event) for event in events]
            if faults.refuse is not None:
                for i, event in enumerate(normalized):
                    message = faults.refuse(event)
                    if message is not None:
                        raise _Invalid(f"events[{i}]: {message}")
        except _Invalid as exc:
            self._answer(400, {"error": str(exc)})
            return

        emulator._store(endpoint, events, self._received_at)
        if drop:
            logger.debug("pagent emulator: dropping the answer to POST #%d", n)
            raise _NoAnswer
        self._answer(200, {"accepted": len(events)})

    def _post_fast(self, emulator: IngestEmulator, endpoint: str, raw: bytes) -> None:
        """Fast-sink POST: auth, faults, a cheap count; nothing stored but the count."""
        if not self._authorized(emulator):
            self._answer(401, {"error": _UNAUTHORIZED_MESSAGE})
            return
        n, faults = self._before_faults(emulator)
        count = _fast_count(endpoint, raw)
        if _hits(faults.drop_every, n):
            if 1 <= count <= MAX_EVENTS_PER_REQUEST:
                emulator._add_fast(count)
                raise _NoAnswer
        elif _hits(faults.fail_every, n):
            self._answer(500, {"error": "internal server error (emulated fault)"})
            return
        elif _hits(faults.rate_limit_every, n):
            self._answer_rate_limited(faults)
            return
        if not 1 <= count <= MAX_EVENTS_PER_REQUEST:
            self._answer(400, {"error": _EVENT_COUNT_MESSAGE})
            return
        emulator._add_fast(count)
        self._answer(200, {"accepted": count})

    def _answer_rate_limited(self, faults: Faults) -> None:
        headers = () if faults.retry_after is None else (("Retry-After", str(faults.retry_after)),)
        self._answer(429, None, headers=headers)

    def _answer(self, status: int, payload: dict | None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Write the whole response (status line, headers, body) in one write."""
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"{self.protocol_version} {status} {reason}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if payload is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        self._record(status)
        self.wfile.write(data)
        logger.debug("pagent emulator: %s %s -> %d", self.command, self.path, status)


# --------------------------------------------------------------------------- the emulator


class IngestEmulator:
    """A local HTTP server that behaves like pagent's ingest API.

    It checks the ``Authorization: Bearer <key>`` header first (401 on a
    missing or unknown key, before looking at the body), then applies the
    configured :class:`Faults`, then validates the body with the documented
    rules (400 ``{"error": "events[3].revenue must be an integer, not 9.99"}``)
    and answers ``200 {"accepted": n}``, storing the events.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with IngestEmulator(api_keys=("k1",)) as emulator:
            requests.post(f"{emulator.url}/v1/conversions", json=...,
                          headers={"Authorization": "Bearer k1"})
            assert emulator.accepted_count == 1

    Args:
        host: Address to listen on.
        port: Port to listen on; 0 picks a free port (see :attr:`port`).
        api_keys: API keys the server accepts, compared exactly (no trimming).
        faults: Faults to inject; default none.
        fast_sink: Benchmark mode: auth, latency and faults still apply, but
            bodies are not parsed (events are counted cheaply and only
            :attr:`accepted_count` is kept; no events or request records are
            stored and bodies are not validated beyond the 1..100 count).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = ("test-key",),
        faults: Faults | None = None,
        fast_sink: bool = False,
    ) -> None:
        if isinstance(api_keys, str):
            api_keys = (api_keys,)
        self.api_keys: tuple[str, ...] = tuple(api_keys)
        if not self.api_keys:
            raise ValueError("api_keys must contain at least one key")
        self.host = host
        self._requested_port = port
        self.fast_sink = fast_sink
        self._faults = faults if faults is not None else Faults()

        self._lock = threading.Lock()
        self._accepted: list[AcceptedEvent] = []
        self._requests: list[RequestRecord] = []
        self._accepted_count = 0
        self._post_counter = 0

        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition(threading.Lock())
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> IngestEmulator:
        """Bind the socket and serve in a background (daemon) thread.

        Returns:
            The emulator itself, so ``emulator = IngestEmulator().start()`` works.

        Raises:
            RuntimeError: If the emulator is already running.
            OSError: If the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._stopping = threading.Event()
        server = _Server((self.host, self._requested_port), self, family)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pagent-emulator-{server.server_address[1]}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        logger.debug("pagent emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, idle keep-alives included.

        Hanging requests (the hang fault) and latency sleeps are released at
        once. Returns within about a second even with clients still connected.
        Recorded events stay readable after stopping. Calling it twice is fine.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        try:
            # Wakes serve_forever's select() at once on Linux (accept() then
            # fails quietly until the shutdown flag is seen); elsewhere the
            # loop notices within its poll interval.
            server.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        server.shutdown()
        server.server_close()
        with self._connections_changed:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._connections_changed:
            self._connections_changed.wait_for(lambda: not self._connections, timeout=2.0)
        if thread is not None:
            thread.join(timeout=2.0)
        self._server = self._thread = None

    def __enter__(self) -> IngestEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the emulator is serving."""
        return self._server is not None

    # -- addresses

    @property
    def port(self) -> int:
        """The port listened on (the real one once started, even if 0 was asked)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    @property
    def _connect_host(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        """Base URL to send requests to, e.g. ``"http://127.0.0.1:54321"``.

        A wildcard bind address (``0.0.0.0``, ``::``) is replaced by loopback.
        """
        return f"http://{self._connect_host}:{self.port}"

    def airflow_connection_json(self, conn_id_key: str | None = None) -> str:
        """An Airflow connection for this emulator, as JSON for ``AIRFLOW_CONN_<ID>``.

        Example:
            ``monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", emulator.airflow_connection_json())``

        Args:
            conn_id_key: API key to put in the connection's password; default
                the first of ``api_keys``. Any string is allowed, so a key the
                emulator does not accept can be used to test 401 handling.

        Returns:
            ``'{"conn_type": "pagent", "host": "http://127.0.0.1", "port": PORT, "password": KEY}'``
        """
        key = self.api_keys[0] if conn_id_key is None else conn_id_key
        return json.dumps(
            {
                "conn_type": "pagent",
                "host": f"http://{self._connect_host}",
                "port": self.port,
                "password": key,
            }
        )

    # -- faults

    @property
    def faults(self) -> Faults:
        """The faults in effect; may be replaced or mutated while running."""
        with self._lock:
            return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        with self._lock:
            self._faults = value if value is not None else Faults()

    # -- what was received

    def accepted(self) -> list[AcceptedEvent]:
        """Every accepted event, in order of acceptance (a copy).

        Events of a dropped request (drop fault) are included: the server
        stored them even though the client got no answer.
        """
        with self._lock:
            return list(self._accepted)

    def events(self) -> list[dict]:
        """Accepted events normalized to the v1 shape, in order of acceptance.

        v2 events have their ``session_data`` flattened: ``session_id``,
        ``user_id``, ``conversion_id`` (and ``visit_id`` when sent) become
        top-level keys next to ``label``, ``revenue``, ``properties``,
        ``time`` and any other field sent. v1 events are returned as sent.
        """
        return [_normalize(a.endpoint, a.event) for a in self.accepted()]

    def requests(self) -> list[RequestRecord]:
        """Every request seen, in order of completion (a copy; empty in fast-sink mode).

        No header, and in particular no API key, is ever recorded.
        """
        with self._lock:
            return list(self._requests)

    @property
    def accepted_count(self) -> int:
        """Number of events accepted so far (the only thing kept in fast-sink mode)."""
        with self._lock:
            return self._accepted_count

    def reset(self) -> None:
        """Forget accepted events, request records and the fault counter."""
        with self._lock:
            self._accepted.clear()
            self._requests.clear()
            self._accepted_count = 0
            self._post_counter = 0

    # -- internals used by the handler

    def _next_post_number(self) -> int:
        with self._lock:
            self._post_counter += 1
            return self._post_counter

    def _store(self, endpoint: str, events: list[dict], received_at: float) -> None:
        with self._lock:
            self._accepted.extend(AcceptedEvent(endpoint, e, received_at) for e in events)
            self._accepted_count += len(events)

    def _add_fast(self, count: int) -> None:
        with self._lock:
            self._accepted_count += count

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _register_connection(self, conn: socket.socket) -> None:
        with self._connections_changed:
            self._connections.add(conn)

    def _unregister_connection(self, conn: socket.socket) -> None:
        with self._connections_changed:
            self._connections.discard(conn)
            self._connections_changed.notify_all()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<IngestEmulator {self.url} {state} accepted={self.accepted_count}>"
