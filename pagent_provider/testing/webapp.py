"""A stand-in for a web application: answers ``200`` with an HTML page to anything.

A misconfigured base URL (``https://pagent.ai`` instead of
``https://ingest.pagent.ai``) typically ends at a web app or a login page that
answers every request, ``POST`` included, with ``200`` and HTML. Point
``Faults(redirect_to=webapp.url + "/login")`` of the ingest emulator at a
:class:`WebAppServer` to test that a client following the redirect does not
take such a page for an acknowledgement::

    with WebAppServer() as webapp, IngestEmulator(faults=Faults(redirect_to=webapp.url)) as emulator:
        ...  # send to emulator.url
        assert emulator.events() == []
        print(webapp.requests())  # what the client sent to the web app

Only the standard library is used; nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from pagent_provider.testing.background_server import BackgroundServer, LocalHTTPServer, address_family
from pagent_provider.testing.request_body import ClientGone, read_request_body

__all__ = ["DEFAULT_PAGE", "WebAppRequest", "WebAppServer"]

logger = logging.getLogger(__name__)

#: The page answered when :class:`WebAppServer` is given none.
DEFAULT_PAGE = (
    "<!DOCTYPE html>\n"
    '<html lang="en"><head><meta charset="utf-8"><title>pagent</title></head>\n'
    "<body><h1>Welcome to pagent</h1><p>Please sign in to continue.</p></body></html>\n"
)


@dataclass(frozen=True)
class WebAppRequest:
    """One request the web app received. Headers, credentials included, are never recorded.

    Attributes:
        method: HTTP method, e.g. ``"GET"`` or ``"POST"``.
        path: Request path without the query string.
        body_length: Length of the request body in bytes (0 without one).
        received_at: ``time.time()`` when the request started being handled.
    """

    method: str
    path: str
    body_length: int
    received_at: float


class _Server(LocalHTTPServer):
    block_on_close = False  # every answer closes its connection, so no handler lingers

    def __init__(self, address: tuple, webapp: WebAppServer, family: int) -> None:
        self.address_family = family
        self.webapp = webapp
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away
            logger.debug("web app stand-in: connection from %s ended: %r", client_address, exc)
        else:
            logger.exception("web app stand-in: error while handling %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webapp-standin"
    sys_version = ""
    # A connection that never sends a request must not keep a thread forever.
    timeout = 10
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("web app stand-in %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        received_at = time.time()
        try:
            body = read_request_body(self.headers, self.rfile)
        except ClientGone:
            self.close_connection = True
            return
        webapp = self.server.webapp
        webapp._record(
            WebAppRequest(self.command, self.path.split("?", 1)[0], len(body or b""), received_at),
        )
        page = webapp.page.encode("utf-8")
        head = (
            f"{self.protocol_version} 200 OK\r\n"
            f"Server: {self.server_version}\r\n"
            f"Date: {self.date_time_string()}\r\n"
            "Content-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(page)}\r\n"
            # Closing after each answer is what lets stop() return at once
            # without tracking idle keep-alive connections.
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        self.close_connection = True
        self.wfile.write(head if self.command == "HEAD" else head + page)

    do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET


class WebAppServer(BackgroundServer):
    """A local HTTP server answering ``200`` with an HTML page to every request.

    It stores nothing but a record of each request (method, path, body
    length). Use it as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        host: Address to listen on.
        port: Port to listen on; 0 picks a free port (see :attr:`port`).
        page: The HTML answered (UTF-8); default :data:`DEFAULT_PAGE`.
    """

    _thread_name = "webapp-standin"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, page: str = DEFAULT_PAGE) -> None:
        super().__init__(host=host, port=port)
        self.page = page
        self._lock = threading.Lock()
        self._requests: list[WebAppRequest] = []

    def start(self) -> WebAppServer:
        """Bind the socket and serve in a background (daemon) thread.

        Returns:
            The server itself.

        Raises:
            RuntimeError: If it is already running.
            OSError: If the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the web app stand-in is already running")
        self._serve(_Server((self.host, self._requested_port), self, address_family(self.host)))
        return self

    def stop(self) -> None:
        """Stop serving. Request records stay readable. Calling it twice is fine."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2.0)
        self._server = self._thread = None

    def requests(self) -> list[WebAppRequest]:
        """Every request received, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the request records."""
        with self._lock:
            self._requests.clear()

    def _record(self, record: WebAppRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<WebAppServer {self.url} {state} requests={len(self.requests())}>"
