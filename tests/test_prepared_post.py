"""A prepared POST sends what ``session.post`` would: the same request line, headers and body."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
import requests

from pagent_provider.core.prepared_post import PreparedPost, PreparedPosts
from pagent_provider.core.transport import HttpOptions, build_session

HEADERS = {"Authorization": "Bearer test-key-0001", "Content-Type": "application/json", "User-Agent": "x"}


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, list[tuple[str, str]], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.requestline, [(k.lower(), v) for k, v in self.headers.items()], body))
        answer = b'{"accepted":1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Set-Cookie", "sticky=abc")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/conversions"
    server.shutdown()
    server.server_close()


def test_the_server_receives_what_session_post_sends(recorder: str) -> None:
    session = build_session(2, HttpOptions(trust_env=False))
    body = '{"events":[{"label":"naïve"}]}'.encode()
    session.post(recorder, data=body, headers=HEADERS, allow_redirects=False, timeout=5)
    session.cookies.clear()  # the first answer set one; the prepared post neither keeps nor sends cookies
    post = PreparedPost(session, recorder, HEADERS)
    assert post.send(body, (5, 5)).json() == {"accepted": 1}
    assert post.send(b'{"events":[]}', (5, 5)).status_code == 200
    (line_a, headers_a, body_a), (line_b, headers_b, body_b), (_, headers_c, body_c) = Recorder.seen
    assert (line_b, headers_b, body_b) == (line_a, headers_a, body_a)
    assert dict(headers_c)["content-length"] == str(len(b'{"events":[]}')) and body_c == b'{"events":[]}'
    assert "cookie" not in dict(headers_c)


def test_the_environment_proxy_is_taken_once_when_trusted(monkeypatch: pytest.MonkeyPatch, recorder: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a closed port: going through it fails
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    trusting = PreparedPost(build_session(1, HttpOptions(trust_env=True)), recorder, HEADERS)
    with pytest.raises(requests.ConnectionError):
        trusting.send(b"{}", (2, 2))
    direct = PreparedPost(build_session(1, HttpOptions(trust_env=False)), recorder, HEADERS)
    assert direct.send(b"{}", (2, 2)).status_code == 200


def test_one_prepared_post_per_url() -> None:
    posts = PreparedPosts(requests.Session(), HEADERS)
    assert posts("http://127.0.0.1:1/a") is posts("http://127.0.0.1:1/a")
    assert posts("http://127.0.0.1:1/a") is not posts("http://127.0.0.1:1/b")
    assert "Bearer" not in repr(posts)
