"""What every local test server here shares: a socket served by a daemon thread, its address, ``with``.

Only the standard library is used; nothing here imports Airflow or the client.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self

#: Wildcard bind addresses, and the loopback address a client connects to instead.
_LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for an address with a colon, IPv4 otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class LocalHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that binds without a DNS lookup and serves daemon threads."""

    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may block on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port


class BackgroundServer:
    """Base of a server that runs in a background thread while a test or a demo talks to it.

    Subclasses build their ``socketserver`` server in ``start()`` and hand it to
    :meth:`_serve`; ``stop()`` is theirs too (what must be released differs).

    Args:
        host: Address to listen on.
        port: Port to listen on; 0 picks a free port (see :attr:`port`).
    """

    _thread_name = "background-server"

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _serve(self, server: socketserver.BaseServer) -> None:
        """Serve ``server`` in a daemon thread (polling for shutdown every 50 ms)."""
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self._thread_name}-{self.port_of(server)}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    @staticmethod
    def port_of(server: socketserver.BaseServer) -> int:
        return int(server.server_address[1])  # type: ignore[attr-defined, index]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port listened on (the real one once started, even if 0 was asked)."""
        if self._server is not None:
            return self.port_of(self._server)
        return self._requested_port

    @property
    def _connect_host(self) -> str:
        host = _LOOPBACK_FOR.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        """Base URL to send requests to, e.g. ``"http://127.0.0.1:54321"``.

        A wildcard bind address (``0.0.0.0``, ``::``) is replaced by loopback.
        """
        return f"http://{self._connect_host}:{self.port}"
