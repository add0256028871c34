"""An overall deadline for each HTTP request: connect, send and read together.

``requests`` only knows per-operation timeouts: a server that trickles its
answer one byte every few seconds never trips a 30-second read timeout and can
hold a sender for hours. Here every request runs under a :class:`Deadline`; one
watchdog thread per session shuts the request's socket down once its deadline
passes, which makes the blocked read fail at once. The request then ends as an
unknown outcome (it was sent; the answer never completed).

The socket is found through :class:`DeadlineHTTPConnection`, which notes
itself on the deadline of the thread that is using it. The adapter built by
:func:`deadline_adapter` makes every pooled connection one of these.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()
#: How often a deadline that has passed is looked at again while its request still runs.
_OVERDUE_POLL_S = 0.05


class Deadline:
    """The deadline of one request in one thread."""

    __slots__ = ("at", "connection", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.connection: HTTPConnection | None = None
        self.expired = False

    def expire(self) -> None:
        """Mark the deadline passed and cut the request's socket, waking the blocked read.

        Called again while the request still runs: cutting twice is harmless.
        """
        self.expired = True
        connection = self.connection
        if connection is None or getattr(connection, "pagent_deadline", None) is not self:
            return  # finished, or already back in the pool and serving another request
        # An answer that closes its connection (Connection: close, HTTP/1.0, no length)
        # is read after http.client dropped conn.sock: the socket noted at connect is cut.
        sock = getattr(connection, "sock", None) or getattr(connection, "pagent_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the request is over anyway


class _NotingConnection:
    """Mixin: note this connection on the calling thread's deadline before it connects or sends.

    urllib3 opens an HTTPS connection (TCP, TLS handshake, proxy CONNECT)
    before ``request()``, so both are noted: a deadline that passes during the
    handshake cuts it too. A deadline already passed refuses to start either.
    """

    def _note(self) -> None:
        deadline: Deadline | None = getattr(_current, "deadline", None)
        self.pagent_deadline = deadline  # whoever uses the connection now owns it
        if deadline is None:
            return
        deadline.connection = self  # type: ignore[assignment]
        if deadline.expired:
            raise TimeoutError("the request's overall deadline passed before it could be sent")

    def connect(self) -> None:
        self._note()
        super().connect()  # type: ignore[misc]
        self.pagent_sock = self.sock  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._note()
        return super().request(*args, **kwargs)  # type: ignore[misc]


class DeadlineHTTPConnection(_NotingConnection, HTTPConnection):
    """An HTTP connection that a :class:`Deadline` can cut."""


class DeadlineHTTPSConnection(_NotingConnection, HTTPSConnection):
    """An HTTPS connection that a :class:`Deadline` can cut."""


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_DEADLINE_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Requests through an HTTP(S) proxy use a pool manager of their own: the same
        # connections, so the deadline holds there too (SOCKS managers keep their own pools).
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_DEADLINE_POOLS)
        return manager


def deadline_adapter(pool_size: int) -> HTTPAdapter:
    """An adapter whose connections honour :meth:`Watchdog.watch`; it never retries by itself."""
    return _DeadlineAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)


class Watchdog:
    """One thread that expires the deadlines of every request of a session.

    Only requests in flight are watched (at most one per sending thread), so a
    request that finishes in time costs a dict insert and a delete, and no
    thread of its own. The thread sleeps while nothing is in flight.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._active: dict[int, Deadline] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        #: When the thread looks at the deadlines next (infinity: it sleeps until notified).
        self._wakes_at = math.inf

    @contextmanager
    def watch(self, seconds: float) -> Iterator[Deadline]:
        """Run the body under a deadline ``seconds`` from now; check ``deadline.expired`` after an error."""
        deadline = Deadline(time.monotonic() + seconds)
        token = next(self._tokens)
        with self._changed:
            self._active[token] = deadline
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pagent-deadlines", daemon=True)
                self._thread.start()
            if deadline.at < self._wakes_at:
                # Only a deadline earlier than the thread's next look wakes it: every
                # request would otherwise cost a thread switch (about 40 µs of CPU).
                self._changed.notify()
        _current.deadline = deadline
        try:
            yield deadline
        finally:
            _current.deadline = None
            with self._changed:
                del self._active[token]
            deadline.connection = None  # the connection goes back to the pool: never cut it later

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                overdue = False
                for deadline in self._active.values():
                    if deadline.at <= now:
                        # again on every pass: a connection noted after the deadline passed
                        # (one still connecting) must be cut as soon as it shows up
                        deadline.expire()
                        overdue = True
                pending = [d.at - now for d in self._active.values() if d.at > now]
                if overdue:
                    pending.append(_OVERDUE_POLL_S)
                timeout = min(pending) if pending else None
                self._wakes_at = now + timeout if timeout is not None else math.inf
                self._changed.wait(timeout=timeout)
