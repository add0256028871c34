"""A local, in-process emulator of pagent's server-side conversions ingest API.

The emulator is a real HTTP/1.1 server (keep-alive, ``Content-Length`` on every
answer) that implements the documented endpoints::

    POST /v1/conversions          {"events": [ {session_id, user_id, conversion_id, ...}, ... ]}
    POST /v2/conversions          {"session_data": {session_id, user_id, conversion_id, visit_id?}, ...}
    POST /v2/conversions/bulk     {"events": [ {"session_data": {...}, ...}, ... ]}

with the documented answers (``200 {"accepted": n}``, ``400 {"error": ...}``,
``401 {"error": ...}``, ``429`` with an empty body) and injectable faults
(latency, 500s, 503s, 429s, dropped connections, hanging requests, refused
events) and hostile modes (acknowledgements that do not match what was stored,
redirects, body size limits, echoed credentials, trickled answers).

This module is the server: the HTTP handler, the store of what was received
and :class:`IngestEmulator`. The documented 400 rules live in
:mod:`pagent_provider.testing.validation`, the faults in
:mod:`pagent_provider.testing.faults`.

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
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from pagent_provider.testing.background_server import BackgroundServer, LocalHTTPServer, address_family
from pagent_provider.testing.faults import (
    FAIL_MESSAGE,
    UNAVAILABLE_MESSAGE,
    Faults,
    ScheduledFault,
    body_too_large,
    echo_into_message,
    echo_into_page,
    redirect_page,
    render_ack,
    scheduled_fault,
    trickle,
)
from pagent_provider.testing.inspection import PREFIX as INSPECTION_PREFIX
from pagent_provider.testing.inspection import inspection_document
from pagent_provider.testing.request_body import ClientGone, read_request_body
from pagent_provider.testing.validation import (
    ENDPOINTS,
    EVENT_COUNT_MESSAGE,
    MAX_EVENTS_PER_REQUEST,
    Invalid,
    count_events,
    fast_count,
    normalize,
    parse_json,
    validate,
)

# Re-exported: these names were defined here before the split, and code imports them from here.
from pagent_provider.testing.validation import V1_CONVERSIONS as V1_CONVERSIONS
from pagent_provider.testing.validation import V2_CONVERSIONS as V2_CONVERSIONS
from pagent_provider.testing.validation import V2_CONVERSIONS_BULK as V2_CONVERSIONS_BULK

__all__ = ["AcceptedEvent", "Faults", "IngestEmulator", "RequestRecord"]

logger = logging.getLogger(__name__)

#: ``RequestRecord.status`` of a request that got no answer at all (drop and hang faults).
NO_RESPONSE = 0

_UNAUTHORIZED_MESSAGE = "missing, invalid or expired API key"

# Statuses whose answers never carry a body nor Content-Length (RFC 9110 8.6, 15.3.5, 15.4.5).
_BODILESS_STATUSES = frozenset({204, 304})


# --------------------------------------------------------------------------- records


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
        status: Status code answered (whichever fault or hostile mode chose
            it), or ``0`` when no answer was sent (the drop and hang faults).
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


# --------------------------------------------------------------------------- HTTP plumbing


class _NoAnswer(Exception):
    """Close the connection without answering (drop and hang faults)."""


class _Server(LocalHTTPServer):
    block_on_close = False  # stop() shuts connections down itself, idle keep-alives included
    request_queue_size = 256

    def __init__(self, address: tuple, emulator: IngestEmulator, family: int) -> None:
        self.address_family = family
        self.emulator = emulator
        super().__init__(address, _Handler)

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
        # Read once, so a request sees one consistent configuration even if
        # the test swaps emulator.faults meanwhile.
        self._faults = emulator.faults
        try:
            try:
                body = read_request_body(self.headers, self.rfile)
            except ClientGone:
                raise _NoAnswer from None
            if body is None:
                self.close_connection = True
                self._answer_error(400, "invalid Content-Length or chunked body")
                return
            if path.startswith(INSPECTION_PREFIX):
                self._inspect(emulator, path)
                return
            if path not in ENDPOINTS:
                self._answer_error(404, f"not found: {path}")
                return
            if self.command != "POST":
                self._answer_error(405, f"method {self.command} not allowed on {path}", headers=(("Allow", "POST"),))
                return
            emulator._begin_post()
            self._post_open = True
            try:
                self._post(emulator, path, body)
            finally:
                self._leave_post()
        except _NoAnswer:
            self.close_connection = True
        except OSError:
            self.close_connection = True
            raise
        except Exception as exc:  # a bug here, or in a user's refuse or ack_override callable
            logger.exception("pagent emulator: error while handling %s %s", self.command, path)
            self.close_connection = True
            self._answer_error(500, f"emulator internal error: {exc!r}")
        finally:
            self._record(NO_RESPONSE)

    def _inspect(self, emulator: IngestEmulator, path: str) -> None:
        """``GET /_emulator/...``: what was received, as JSON (see :mod:`pagent_provider.testing.inspection`)."""
        self._recorded = True  # looking is not a request to look at
        self._faults = Faults()  # nor subject to the faults (a trickled answer, a leaked header)
        document = inspection_document(emulator, path)
        if document is None:
            self._answer(404, json.dumps({"error": f"not found: {path}"}).encode(), content_type="application/json")
        elif self.command not in ("GET", "HEAD"):
            self._answer(405, b'{"error": "GET only"}', content_type="application/json", headers=(("Allow", "GET"),))
        else:
            body = json.dumps(document, ensure_ascii=False, default=str).encode("utf-8")
            self._answer(200, body, content_type="application/json")

    def _record(self, status: int) -> None:
        """Record this request once (nothing in fast-sink mode)."""
        emulator = self.server.emulator
        if self._recorded or emulator.fast_sink:
            return
        self._recorded = True
        emulator._record(RequestRecord(self.command, self._path, status, self._n_events, self._received_at))

    def _authorized(self, emulator: IngestEmulator) -> bool:
        header = self.headers.get("Authorization")
        if header is None or not header.startswith("Bearer "):
            return False
        presented = header[len("Bearer ") :].encode("utf-8", "surrogateescape")
        ok = False
        for key in emulator.api_keys:
            ok |= hmac.compare_digest(presented, key.encode("utf-8", "surrogateescape"))
        return ok

    # -- the conversions endpoints

    def _post(self, emulator: IngestEmulator, endpoint: str, raw: bytes) -> None:
        """Handle a POST to a conversions endpoint: auth, faults, validation, store, answer.

        The order is the one documented on :class:`Faults`. In fast-sink mode
        the body is not parsed: events are counted cheaply and only the count
        is kept.
        """
        faults = self._faults
        fast = emulator.fast_sink
        body: Any = None
        parse_error: Invalid | None = None
        if fast:
            count = fast_count(endpoint, raw)
        else:
            try:
                body = parse_json(raw)
            except Invalid as exc:
                parse_error = exc
            count = self._n_events = count_events(body, endpoint)

        if not self._authorized(emulator):
            self._answer_error(401, _UNAUTHORIZED_MESSAGE)
            return

        n = emulator._next_post_number()
        if faults.latency_s > 0:
            emulator._stopping.wait(faults.latency_s)
        if faults.redirect_to is not None:
            self._answer_redirect(faults.redirect_to, faults.redirect_status)
            return
        too_large = body_too_large(faults, len(raw))
        if too_large is not None:
            self._answer_error(413, too_large)
            return

        fault = scheduled_fault(faults, n)
        if fault is ScheduledFault.HANG:
            emulator._stopping.wait(faults.hang_s)
            raise _NoAnswer
        if fault is ScheduledFault.FAIL:
            self._answer_error(500, FAIL_MESSAGE)
            return
        if fault is ScheduledFault.UNAVAILABLE:
            self._answer_error(503, UNAVAILABLE_MESSAGE, headers=self._retry_after_header(faults))
            return
        if fault is ScheduledFault.RATE_LIMIT:
            self._answer(429, headers=self._retry_after_header(faults))
            return

        events: list[dict] = []
        try:
            if fast:
                if not 1 <= count <= MAX_EVENTS_PER_REQUEST:
                    raise Invalid(EVENT_COUNT_MESSAGE)
            else:
                if parse_error is not None:
                    raise parse_error
                events = validate(endpoint, body)
                count = len(events)
                self._refuse(faults, endpoint, events)
        except Invalid as exc:
            self._answer_error(400, str(exc))
            return

        # Built before storing: an ack_override that raises must leave nothing stored.
        content_type, answer = self._ack_body(faults, count)
        if fast:
            emulator._add_fast(count)
        else:
            emulator._store(endpoint, events, self._received_at)
        if fault is ScheduledFault.DROP:
            logger.debug("pagent emulator: dropping the answer to POST #%d", n)
            raise _NoAnswer
        self._answer(faults.ack_status, answer, content_type=content_type)

    @staticmethod
    def _refuse(faults: Faults, endpoint: str, events: list[dict]) -> None:
        """Apply the user's ``refuse`` predicate; raise ``Invalid`` for the first refused event."""
        if faults.refuse is None:
            return
        for i, event in enumerate(events):
            message = faults.refuse(normalize(endpoint, event))
            if message is not None:
                raise Invalid(f"events[{i}]: {message}")

    def _ack_body(self, faults: Faults, count: int) -> tuple[str, bytes]:
        """Content type and body of a successful answer (the documented one or ``ack_override``'s)."""
        if faults.ack_override is None:
            return "application/json", json.dumps({"accepted": count}).encode("utf-8")
        value = faults.ack_override(count)
        if isinstance(value, str) and faults.echo_credentials:
            value = echo_into_page(value, self.headers.get("Authorization"))
        return render_ack(value)

    @staticmethod
    def _retry_after_header(faults: Faults) -> tuple[tuple[str, str], ...]:
        return () if faults.retry_after is None else (("Retry-After", str(faults.retry_after)),)

    # -- writing answers

    def _answer_error(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer ``status`` with ``{"error": message}`` (the header echoed when ``echo_credentials``)."""
        if self._faults.echo_credentials:
            message = echo_into_message(message, self.headers.get("Authorization"))
        body = json.dumps({"error": message}).encode("utf-8")
        self._answer(status, body, content_type="application/json", headers=headers)

    def _answer_redirect(self, location: str, status: int) -> None:
        self._answer(
            status,
            redirect_page(location),
            content_type="text/html; charset=utf-8",
            headers=(("Location", location),),
        )

    def _leave_post(self) -> None:
        """This POST is no longer in flight (once, whether answered, dropped or hung up on)."""
        if getattr(self, "_post_open", False):
            self._post_open = False
            self.server.emulator._end_post()

    def _answer(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Write the whole response (status line, headers, body).

        Normally in one write (so Nagle's algorithm and delayed ACKs never
        stall a keep-alive client); byte by byte under ``Faults.trickle_s``.
        """
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"{self.protocol_version} {status} {reason}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if status in _BODILESS_STATUSES or status < 200:
            body = b""
        else:
            if content_type is not None:
                lines.append(f"Content-Type: {content_type}")
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        self._record(status)
        # Out of flight before the client can read the answer, so that a client sending
        # one request after another is never counted twice.
        self._leave_post()
        pause_s = self._faults.trickle_s
        if pause_s > 0:
            if not trickle(self.wfile.write, data, pause_s, self.server.emulator._stopping):
                self.close_connection = True  # the emulator is stopping: abandon the answer
        else:
            self.wfile.write(data)
        logger.debug("pagent emulator: %s %s -> %d", self.command, self.path, status)


# --------------------------------------------------------------------------- the emulator


class IngestEmulator(BackgroundServer):
    """A local HTTP server that behaves like pagent's ingest API.

    It checks the ``Authorization: Bearer <key>`` header first (401 on a
    missing or unknown key, before looking at the body), then applies the
    configured :class:`Faults` (in the order documented there), then
    validates the body with the documented rules
    (400 ``{"error": "events[3].revenue must be an integer, not 9.99"}``) and
    answers ``200 {"accepted": n}``, storing the events.

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
        fast_sink: Benchmark mode: auth, latency, faults and hostile modes
            (``max_body_bytes`` included) still apply, but bodies are not
            parsed (events are counted cheaply and only :attr:`accepted_count`
            is kept; no events or request records are stored and bodies are
            not validated beyond the 1..100 count).
    """

    _thread_name = "pagent-emulator"

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
        super().__init__(host=host, port=port)
        self.fast_sink = fast_sink
        self._faults = faults if faults is not None else Faults()

        self._lock = threading.Lock()
        self._accepted: list[AcceptedEvent] = []
        self._requests: list[RequestRecord] = []
        self._accepted_count = 0
        self._post_counter = 0
        self._in_flight = 0
        self._peak_in_flight = 0

        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition(threading.Lock())
        self._stopping = threading.Event()

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
        self._stopping = threading.Event()
        self._serve(_Server((self.host, self._requested_port), self, address_family(self.host)))
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
        return [normalize(a.endpoint, a.event) for a in self.accepted()]

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

    @property
    def in_flight(self) -> int:
        """POSTs to a conversions endpoint being handled right now (fast-sink mode included).

        A request counts from the moment its body has been read until its answer
        starts to be written (so a client sending one request after another
        never sees two), or until its connection is closed without one (drop and
        hang faults): the latency fault's wait, validation and storing are inside.
        Inspection requests and answers to unknown paths or other methods never
        count.
        """
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most :attr:`in_flight` POSTs there have been at once since the start or :meth:`reset`.

        How many concurrent requests the clients sent, as pagent would see them:
        e.g. the bound that Airflow pools put on the tasks of many workers.
        """
        with self._lock:
            return self._peak_in_flight

    def reset(self) -> None:
        """Forget accepted events, request records, the fault counter and the peak in flight.

        The peak starts again from the POSTs still in flight.
        """
        with self._lock:
            self._accepted.clear()
            self._requests.clear()
            self._accepted_count = 0
            self._post_counter = 0
            self._peak_in_flight = self._in_flight

    # -- internals used by the handler

    def _begin_post(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _end_post(self) -> None:
        with self._lock:
            self._in_flight -= 1

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
