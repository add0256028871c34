"""Hostile servers, proxies and threads against PreparedPost, side by side with ``session.post``.

``Transport._send`` used to call ``session.post(url, data=body, headers=...,
timeout=..., allow_redirects=False, proxies=dict(session.proxies),
verify=session.verify, cert=session.cert)``; :func:`old_post` is that exact call,
so each test can hold the prepared path to what it replaced: the bytes on the
wire, the proxy chosen, the TLS verification, the exception classes, the
deadline, connection reuse, thread safety, and the key never showing.
Every server here is a real socket on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pagent_provider.core.client import PagentClient
from pagent_provider.core.prepared_post import PreparedPost, PreparedPosts
from pagent_provider.core.redaction import Redactor
from pagent_provider.core.transport import HttpOptions, RetryPolicy, Transport, _never_sent, build_session
from pagent_provider.exceptions import (
    PagentConfigError,
    PagentError,
    PagentRedirectError,
    PagentServerError,
    PagentUnknownOutcomeError,
)

KEY = "attack-key-5f1c0a9e77"
HEADERS = {
    "Authorization": f"Bearer {KEY}",
    "Content-Type": "application/json",
    "User-Agent": "airflow-provider-pagent",
}
PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)
OK = b'{"accepted":1}'


def old_post(session: requests.Session, url: str, body: bytes, timeout: tuple[float, float]) -> requests.Response:
    """What ``Transport._send`` called before b726948."""
    return session.post(
        url,
        data=body,
        headers=HEADERS,
        timeout=timeout,
        allow_redirects=False,
        proxies=dict(session.proxies),
        verify=session.verify,
        cert=session.cert,
    )


def answer(status: int = 200, body: bytes = OK, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


class Request:
    def __init__(self, head: bytes, body: bytes) -> None:
        self.raw = head + body
        lines = head.decode("latin-1").split("\r\n")
        self.line = lines[0]
        self.headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if line]
        self.body = body

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, f"header {name} sent {len(found)} times"
        return found[0] if found else None


#: handler(connection, request, index of the request on the server) -> keep the connection open?
Handler = Callable[[socket.socket, Request, int], bool]


def replying(*answers: bytes) -> Handler:
    """Answers in turn (the last one again and again), keeping the connection alive."""

    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        conn.sendall(answers[min(index, len(answers) - 1)])
        return True

    return handle


class RawServer:
    """A threaded HTTP/1.1 server on raw sockets: what it writes is exactly what the handler writes."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[Request] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/v1/conversions") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                self._listener.close()  # closed by the thread that used it: its number is never reused under it
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._open.append(conn)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                head += b"\r\n\r\n"
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(buffer) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                request = Request(head, body)
                with self._lock:
                    index = len(self.requests)
                    self.requests.append(request)
                if not self.handler(conn, request, index):
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        # shut down, never close, from here: a serving thread still writing would otherwise
        # write into whatever socket the next test gets under the same file descriptor
        self._stopped = True
        with self._lock:
            for sock in (self._listener, *self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(handler, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def transport(session: requests.Session, **policy: Any) -> Transport:
    settings: dict[str, Any] = {"max_retries": 0, "connect_timeout_s": 2.0, "read_timeout_s": 5.0}
    settings.update(policy)
    return Transport(session, dict(HEADERS), RetryPolicy(**settings), redact=Redactor([KEY]))


# --- the bytes on the wire -------------------------------------------------------------------------


def test_every_byte_on_the_wire_is_what_session_post_sent(serve: Callable[..., RawServer]) -> None:
    server = serve(replying(answer()))
    session = build_session(2, HttpOptions(trust_env=False))
    post = PreparedPost(session, server.url(), HEADERS)
    bodies = [b'{"events":[' + b"1," * 3000 + b"1]}", b"", b'{"events":[]}', '{"é":"ü"}'.encode(), b"x"]
    for body in bodies:
        old_post(session, server.url(), body, (2, 2))
        session.cookies.clear()
        post.send(body, (2, 2))
    pairs = list(zip(server.requests[0::2], server.requests[1::2], strict=True))
    for (old, new), body in zip(pairs, bodies, strict=True):
        assert new.raw == old.raw  # request line, every header in order, the body
        assert new.header("Content-Length") == str(len(body))  # never the template's, never the last body's
        assert new.header("Transfer-Encoding") is None
        assert new.header("Accept-Encoding") and new.header("Connection") == "keep-alive"
        assert new.header("Cookie") is None and new.body == body
    assert server.connections == 1  # both paths share the pooled connection


def test_a_memoryview_or_bytearray_body_travels_as_session_post_sends_it(serve: Callable[..., RawServer]) -> None:
    server = serve(replying(answer()))
    session = build_session(1, HttpOptions(trust_env=False))
    post = PreparedPost(session, server.url(), HEADERS)
    for body in (bytearray(b'{"a":1}'), memoryview(b'{"bb":22}')):
        old_post(session, server.url(), body, (2, 2))  # type: ignore[arg-type]
        post.send(body, (2, 2))  # type: ignore[arg-type]
    old_a, new_a, old_b, new_b = server.requests
    assert (new_a.raw, new_b.raw) == (old_a.raw, old_b.raw)
    assert new_a.body == b'{"a":1}' and new_b.body == b'{"bb":22}'


# --- what the server answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda data: data)],
)
def test_a_compressed_answer_is_decoded_as_before(
    serve: Callable[..., RawServer], encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    server = serve(replying(answer(body=compress(b'{"accepted":3}'), headers=(("Content-Encoding", encoding),))))
    session = build_session(1, HttpOptions(trust_env=False))
    assert old_post(session, server.url(), b"{}", (2, 2)).json() == {"accepted": 3}
    assert transport(session).post(server.url(), b"{}", 3) == {"accepted": 3}


def test_a_chunked_answer_is_read_whole(serve: Callable[..., RawServer]) -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"acc\r\n9\r\nepted":1}\r\n0\r\n\r\n'
    server = serve(replying(chunked, answer()))
    session = build_session(1, HttpOptions(trust_env=False))
    t = transport(session)
    assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert server.connections == 1  # the chunked answer was read to its end, the connection reused


def _close_after(data: bytes) -> Handler:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        conn.sendall(data)
        return False

    return handle


def _silent(seconds: float) -> Handler:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        time.sleep(seconds)
        return False

    return handle


def _stall_after(data: bytes, seconds: float) -> Handler:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        conn.sendall(data)
        time.sleep(seconds)
        return False

    return handle


HOSTILE_ANSWERS: dict[str, Handler] = {
    "closes without answering": _close_after(b""),
    "garbage status line": _close_after(b"SPAM SPAM SPAM\r\n\r\n"),
    "truncated content-length body": _close_after(b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"accep'),
    "truncated chunked body": _close_after(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"acc\r\n'),
    "bad chunk size": _close_after(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n"),
    "broken gzip": _close_after(answer(body=b"not gzip at all", headers=(("Content-Encoding", "gzip"),))),
    "never answers (read timeout)": _silent(1.0),
    "stalls mid-body (read timeout)": _stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", 1.0),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ANSWERS))
def test_a_hostile_answer_raises_the_exception_session_post_raised(serve: Callable[..., RawServer], name: str) -> None:
    server = serve(HOSTILE_ANSWERS[name])

    def session() -> requests.Session:  # one each: the server closes after answering, however it answers
        return build_session(1, HttpOptions(trust_env=False))

    with pytest.raises(requests.RequestException) as old:
        old_post(session(), server.url(), b"{}", (1, 0.3))
    with pytest.raises(requests.RequestException) as new:
        PreparedPost(session(), server.url(), HEADERS).send(b"{}", (1, 0.3))
    assert type(new.value) is type(old.value)
    if isinstance(new.value, requests.ConnectionError):
        assert _never_sent(new.value) is _never_sent(old.value) is False  # the request went out
    assert KEY not in str(new.value) and KEY not in repr(new.value)
    with pytest.raises(PagentUnknownOutcomeError) as mapped:  # sent, answer broken: unknown, not retried
        transport(session(), connect_timeout_s=1.0, read_timeout_s=0.3).post(server.url(), b"{}", 1)
    assert KEY not in str(mapped.value)


def test_a_refused_connection_is_a_connection_error_never_sent(serve: Callable[..., RawServer]) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/conversions"
    closed.close()
    session = build_session(1, HttpOptions(trust_env=False))
    with pytest.raises(requests.ConnectionError) as old:
        old_post(session, url, b"{}", (1, 1))
    with pytest.raises(requests.ConnectionError) as new:
        PreparedPost(session, url, HEADERS).send(b"{}", (1, 1))
    assert type(new.value) is type(old.value) and _never_sent(new.value) and _never_sent(old.value)
    assert KEY not in str(new.value)


def test_a_redirect_with_a_hostile_location_is_a_redirect_error(serve: Callable[..., RawServer]) -> None:
    # session.post's own redirect bookkeeping (resolve_redirects) decoded Location as UTF-8
    # and raised UnicodeDecodeError here; the prepared path reads the Location as given.
    hostile = b"HTTP/1.1 302 Found\r\nLocation: /\xff\xfe?key=" + KEY.encode() + b"\r\nContent-Length: 0\r\n\r\n"
    server = serve(replying(hostile, answer()))
    session = build_session(1, HttpOptions(trust_env=False))
    t = transport(session)
    with pytest.raises(PagentRedirectError) as error:
        t.post(server.url(), b"{}", 1)
    assert KEY not in str(error.value)
    assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert len(server.requests) == 2 and server.connections == 1  # not followed; connection reused


# --- the overall deadline ---------------------------------------------------------------------------


def _trickle(prefix: bytes, drip: bytes, gap_s: float, total_s: float) -> Handler:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        conn.sendall(prefix)
        ends = time.monotonic() + total_s
        while time.monotonic() < ends:
            time.sleep(gap_s)
            conn.sendall(drip)
        return False

    return handle


@pytest.mark.parametrize(
    ("prefix", "drip"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{", b" "),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5000\r\n\r\n\x1f\x8b", b"\x00"),
        (b"", b"H"),
    ],
    ids=["content-length body", "chunked body", "gzip body", "status line"],
)
def test_the_deadline_cuts_a_trickling_answer(serve: Callable[..., RawServer], prefix: bytes, drip: bytes) -> None:
    # every gap (0.1 s) is well under the read timeout (5 s): only the deadline can end this
    server = serve(_trickle(prefix, drip, 0.1, 2.5))
    t = transport(build_session(1, HttpOptions(trust_env=False)), read_timeout_s=5.0, deadline_s=0.6)
    started = time.monotonic()
    with pytest.raises(PagentUnknownOutcomeError, match="deadline"):
        t.post(server.url(), b"{}", 1)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "prefix",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5000\r\n\r\n{",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{",
    ],
    ids=["connection close", "http/1.0", "no length, read until close"],
)
def test_the_deadline_cuts_an_answer_that_announces_it_closes_the_connection(
    serve: Callable[..., RawServer], prefix: bytes
) -> None:
    """Found by this review, older than PreparedPost; fixed (the socket noted at connect is cut).

    For an answer that will close its connection (``Connection: close``, HTTP/1.0,
    no length), http.client's ``getresponse`` calls ``HTTPConnection.close()``,
    which sets ``connection.sock = None`` (the response reads through its own
    ``makefile`` of the socket). ``Deadline.expire`` then finds no socket to shut
    down and cut nothing: a server trickling one byte every 0.1 s holds the
    sender for as long as it liked (here the whole 2.5 s trickle, against a
    0.6 s deadline; in production, hours).
    """
    server = serve(_trickle(prefix, b" ", 0.1, 2.5))
    t = transport(build_session(1, HttpOptions(trust_env=False)), read_timeout_s=5.0, deadline_s=0.6)
    started = time.monotonic()
    with pytest.raises(PagentUnknownOutcomeError, match="deadline"):
        t.post(server.url(), b"{}", 1)
    assert time.monotonic() - started < 2.0


def test_an_answer_cut_by_the_deadline_is_never_taken_for_a_whole_one(serve: Callable[..., RawServer]) -> None:
    """Found by this review, older than PreparedPost; fixed (``_send`` checks the deadline after the answer).

    The watchdog shuts the socket down while http.client reads header lines; the
    reader sees a clean end of stream, which ends the headers: the cut answer
    parses as a complete 200 with an empty body. ``Transport._send`` returns it
    without looking at ``deadline.expired``, so the key check (``expected=None``)
    takes it as a success (and a batch ends as PagentUnacknowledgedError instead
    of the deadline's PagentUnknownOutcomeError).
    """
    server = serve(_trickle(b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n", 0.1, 2.5))
    t = transport(build_session(1, HttpOptions(trust_env=False)), read_timeout_s=5.0, deadline_s=0.6)
    started = time.monotonic()
    with pytest.raises(PagentUnknownOutcomeError, match="deadline"):
        t.post(server.url(), b"{}", None)
    assert time.monotonic() - started < 2.0


def test_the_deadline_of_one_request_never_cuts_the_next_on_the_same_connection(
    serve: Callable[..., RawServer],
) -> None:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        time.sleep(0.15)
        conn.sendall(answer())
        return True

    server = serve(handle)
    t = transport(build_session(1, HttpOptions(trust_env=False)), deadline_s=0.4)
    for _ in range(6):  # 6 * 0.15 s: far past one deadline, every request within its own
        assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert server.connections == 1


# --- connection reuse after an error -----------------------------------------------------------------


def test_an_error_body_is_read_and_the_connection_reused(serve: Callable[..., RawServer]) -> None:
    server = serve(replying(answer(500, b'{"error":"busy"}'), answer(503, b"<html>down</html>"), answer()))
    t = transport(
        build_session(1, HttpOptions(trust_env=False)), max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.02
    )
    assert t.post(server.url(), b'{"events":[1]}', 1) == {"accepted": 1}
    assert len(server.requests) == 3 and server.connections == 1
    assert {request.body for request in server.requests} == {b'{"events":[1]}'}


def test_after_a_truncated_answer_the_next_request_gets_a_fresh_connection(serve: Callable[..., RawServer]) -> None:
    def handle(conn: socket.socket, request: Request, index: int) -> bool:
        if index == 0:
            conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{"acc')
            return False
        conn.sendall(answer())
        return True

    server = serve(handle)
    t = transport(build_session(1, HttpOptions(trust_env=False)))
    with pytest.raises(PagentUnknownOutcomeError):
        t.post(server.url(), b"{}", 1)
    assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert server.connections == 2


def test_a_server_that_closes_each_connection_is_answered_each_time(serve: Callable[..., RawServer]) -> None:
    server = serve(_close_after(answer(headers=(("Connection", "close"),))))
    t = transport(build_session(1, HttpOptions(trust_env=False)))
    for _ in range(3):
        assert t.post(server.url(), b"{}", 1) == {"accepted": 1}
    assert server.connections == 3


# --- proxies and TLS from the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "options", "expected"),
    [
        ({"HTTP_PROXY": "A"}, {"trust_env": True}, "A"),
        ({"http_proxy": "A", "ALL_PROXY": "B"}, {"trust_env": True}, "A"),
        ({"ALL_PROXY": "B"}, {"trust_env": True}, "B"),
        ({"HTTP_PROXY": "A", "NO_PROXY": "127.0.0.1"}, {"trust_env": True}, "target"),
        ({"HTTP_PROXY": "A", "NO_PROXY": "*"}, {"trust_env": True}, "target"),
        ({"HTTP_PROXY": "A"}, {"trust_env": False}, "target"),
        ({"HTTP_PROXY": "A"}, {"trust_env": True, "proxies": {"http": "B"}}, "B"),
        ({"HTTP_PROXY": "A"}, {"trust_env": False, "proxies": {"http": "B"}}, "B"),
        # requests reads a proxies' no_proxy only against the environment's proxies, never its own
        ({}, {"trust_env": True, "proxies": {"http": "B", "no_proxy": "127.0.0.1"}}, "B"),
        ({"HTTP_PROXY": "A"}, {"trust_env": True, "proxies": {"no_proxy": "127.0.0.1"}}, "target"),
        ({"HTTP_PROXY": "A"}, {"trust_env": True, "proxies": {"http": "creds@B"}}, "B"),
    ],
)
def test_the_proxy_chosen_and_what_it_receives_are_as_before(
    serve: Callable[..., RawServer],
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    options: dict[str, Any],
    expected: str,
) -> None:
    servers = {name: serve(replying(answer())) for name in ("target", "A", "B")}

    def address(value: str) -> str:
        if value.startswith("creds@"):
            return f"http://user:p%40ss@127.0.0.1:{servers[value[6:]].port}"
        return f"http://127.0.0.1:{servers[value].port}" if value in servers else value

    for name, value in environment.items():
        monkeypatch.setenv(name, address(value))
    if "proxies" in options:
        options = {**options, "proxies": {key: address(value) for key, value in options["proxies"].items()}}
    session = build_session(1, HttpOptions(**options))
    url = servers["target"].url()
    old_post(session, url, b'{"n":1}', (2, 2))
    assert transport(session).post(url, b'{"n":1}', 1) == {"accepted": 1}
    for name, server in servers.items():
        assert len(server.requests) == (2 if name == expected else 0), name
    old, new = servers[expected].requests
    assert new.raw == old.raw
    if expected != "target":
        assert new.line == f"POST {url} HTTP/1.1"  # absolute URI: it went through the proxy
    if "creds@" in str(options.get("proxies")):
        assert new.header("Proxy-Authorization") == "Basic dXNlcjpwQHNz"  # user:p@ss


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    made: dict[str, Path] = {}
    for name in ("server", "other"):
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        made[name], made[f"{name}.key"] = cert, key
    return made


@pytest.fixture
def tls_server(serve: Callable[..., RawServer], certificates: dict[str, Path]) -> RawServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["server"], certificates["server.key"])
    return serve(replying(answer()), tls=context)


@pytest.mark.parametrize(
    ("bundle", "options", "trusted"),
    [
        ("other", {"verify": False}, True),  # verify=False wins over REQUESTS_CA_BUNDLE
        ("server", {}, True),  # verify=True takes the environment's bundle when trusted
        ("server", {"trust_env": False}, False),  # ... and not when not
        ("other", {"verify": "server"}, True),  # an explicit bundle wins over the environment's
        ("server", {"verify": "other"}, False),
        ("other", {}, False),
    ],
)
def test_tls_verification_follows_the_same_rules(
    tls_server: RawServer,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    bundle: str,
    options: dict[str, Any],
    trusted: bool,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates[bundle]))
    if isinstance(options.get("verify"), str):
        options = {**options, "verify": str(certificates[options["verify"]])}
    session = build_session(1, HttpOptions(**options))
    url = tls_server.url()
    if trusted:
        assert old_post(session, url, b"{}", (2, 2)).status_code == 200
        assert transport(session).post(url, b"{}", 1) == {"accepted": 1}
        assert len(tls_server.requests) == 2
        return
    with pytest.raises(requests.exceptions.SSLError):
        old_post(session, url, b"{}", (2, 2))
    with pytest.raises(requests.exceptions.SSLError):
        PreparedPost(session, url, HEADERS).send(b"{}", (2, 2))
    with pytest.raises(PagentError) as error:
        transport(session).post(url, b"{}", 1)
    assert KEY not in str(error.value)
    assert tls_server.requests == []


# --- threads ---------------------------------------------------------------------------------------


def test_threads_sharing_one_prepared_post_never_mix_their_requests(serve: Callable[..., RawServer]) -> None:
    mismatches: list[str] = []

    def echo(conn: socket.socket, request: Request, index: int) -> bool:
        if (
            request.header("Content-Length") != str(len(request.body))
            or request.header("Authorization") != HEADERS["Authorization"]
        ):
            mismatches.append(request.raw.decode("latin-1")[:300])
        events = json.loads(request.body)["events"]
        digest = hashlib.sha256(request.body).hexdigest()
        conn.sendall(answer(body=json.dumps({"accepted": len(events), "digest": digest}).encode()))
        return True

    server = serve(echo)
    threads_n, per_thread = 12, 30
    t = transport(build_session(threads_n, HttpOptions(trust_env=False)))
    url = server.url()
    failures: list[str] = []
    start = threading.Barrier(threads_n)

    def sender(number: int) -> None:
        start.wait()
        for i in range(per_thread):
            count = 1 + (number * 7 + i) % 13
            body = json.dumps({"events": [f"t{number}-r{i}-{j}" * (1 + j % 5) for j in range(count)]}).encode()
            try:
                got = t.post(url, body, count)
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                failures.append(f"{number}/{i}: {type(error).__name__}: {error}")
                continue
            if got != {"accepted": count, "digest": hashlib.sha256(body).hexdigest()}:
                failures.append(f"{number}/{i}: {got}")

    workers = [threading.Thread(target=sender, args=(number,)) for number in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    assert failures == [] and mismatches == []
    assert len(server.requests) == threads_n * per_thread
    assert server.connections <= threads_n  # the pool kept one connection per sender at most
    assert len({request.body for request in server.requests}) == threads_n * per_thread


def test_threads_racing_to_prepare_one_url_share_one_prepared_post(serve: Callable[..., RawServer]) -> None:
    server = serve(replying(answer()))
    posts = PreparedPosts(build_session(8, HttpOptions(trust_env=False)), HEADERS)
    start = threading.Barrier(8)
    seen: list[PreparedPost] = []

    def race() -> None:
        start.wait()
        seen.append(posts(server.url()))

    workers = [threading.Thread(target=race) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(5)
    assert len(seen) == 8 and len({id(post) for post in seen}) == 1


# --- the key ---------------------------------------------------------------------------------------


def test_the_key_never_shows_in_errors_or_reprs(serve: Callable[..., RawServer]) -> None:
    def echo_key(conn: socket.socket, request: Request, index: int) -> bool:
        leaked = f'{{"error":"denied for {request.header("Authorization")}"}}'.encode()
        conn.sendall(
            answer(500 if index % 2 == 0 else 502, leaked, (("X-Debug", request.header("Authorization") or ""),))
        )
        return True

    server = serve(echo_key)
    session = build_session(1, HttpOptions(trust_env=False))
    t = transport(session)
    with pytest.raises(PagentServerError) as server_error:
        t.post(server.url(), b"{}", 1)
    with pytest.raises(PagentUnknownOutcomeError) as unknown:
        t.post(server.url(), b"{}", 1)
    post = t._posts(server.url())
    texts = [str(server_error.value), str(unknown.value), repr(t), repr(t._posts), repr(post), str(post)]
    assert "denied for" in texts[0]  # the server's text is there, its key is not
    assert all(KEY not in text for text in texts), texts


# --- a base URL requests cannot parse ------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["http://ex ample.com", "http://%zz", "http://\u3002"])
def test_a_url_requests_cannot_parse_is_refused_as_configuration(base_url: str) -> None:
    """Found by this review: such a URL escaped ``Transport.post`` as a raw ``InvalidURL``.

    ``normalize_base_url`` now prepares the URL as every request will and refuses
    it with a :class:`PagentConfigError` before anything is sent; a transport
    given one directly still raises a PagentError, never requests' own.
    """
    with pytest.raises(PagentConfigError, match="requests cannot use"):
        PagentClient(KEY, base_url=base_url)
    transport = PagentClient(KEY, base_url="http://127.0.0.1:9").transport
    with pytest.raises(PagentError) as error:
        transport.post(base_url + "/v1/conversions", b"{}", 1)
    assert KEY not in str(error.value)
