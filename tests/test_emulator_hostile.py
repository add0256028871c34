"""Tests of the emulator's hostile modes and of the web-app stand-in, over real HTTP on 127.0.0.1.

Each test checks both sides: what the emulator stored (``events()``,
``accepted_count``, ``requests()``) and what it answered (status, headers, body).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from pagent_provider.testing import Faults, IngestEmulator, WebAppRequest, WebAppServer
from pagent_provider.testing.emulator import NO_RESPONSE

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
V1 = "/v1/conversions"
V2 = "/v2/conversions"
BULK = "/v2/conversions/bulk"
HTML = "text/html; charset=utf-8"


def v1_event(i: int = 0, **extra: object) -> dict:
    return {"session_id": f"s{i}", "user_id": f"u{i}", "conversion_id": "goal", **extra}


def v1_body(n: int) -> dict:
    return {"events": [v1_event(i) for i in range(n)]}


@pytest.fixture
def emulator() -> Iterator[IngestEmulator]:
    with IngestEmulator() as em:
        yield em


@pytest.fixture
def webapp() -> Iterator[WebAppServer]:
    with WebAppServer() as app:
        yield app


def post(
    em: IngestEmulator,
    path: str,
    body: object,
    *,
    headers: dict | None = None,
    timeout: float = 5,
    allow_redirects: bool = False,
) -> requests.Response:
    return requests.post(
        em.url + path,
        json=body,
        headers=AUTH if headers is None else headers,
        timeout=timeout,
        allow_redirects=allow_redirects,
    )


def statuses(em: IngestEmulator) -> list[int]:
    return [r.status for r in em.requests()]


# ----------------------------------------------------------------------------- raw sockets


def send_raw_post(em: IngestEmulator, body: bytes, *, path: str = V1, timeout: float = 10) -> socket.socket:
    """Send one POST on a fresh socket without reading the answer."""
    sock = socket.create_connection((em.host, em.port), timeout=timeout)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {em.host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)
    return sock


def read_whole_answer(sock: socket.socket) -> bytes:
    """Read one answer framed by Content-Length (the emulator always sends it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-headers after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return head + b"\r\n\r\n" + rest


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ----------------------------------------------------------------------------- ack_override / ack_status


def test_partial_ack_stores_all_events_but_answers_fewer(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(ack_override=lambda n: {"accepted": n - 1})
    r = post(emulator, V1, v1_body(3))
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"accepted": 2}  # what the client is told
    assert [e["session_id"] for e in emulator.events()] == ["s0", "s1", "s2"]  # what was stored
    assert emulator.accepted_count == 3
    [record] = emulator.requests()
    assert (record.status, record.n_events) == (200, 3)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (lambda n: {"accepted": 0}, {"accepted": 0}),
        (lambda n: {}, {}),
        (lambda n: {"accepted": n, "error": "degraded"}, {"accepted": 2, "error": "degraded"}),
        (lambda n: {"accepted": str(n)}, {"accepted": "2"}),
        (lambda n: [n], [2]),
        (lambda n: None, None),
    ],
    ids=["zero", "empty", "with-error", "string-count", "list", "null"],
)
def test_ack_override_json_bodies(
    emulator: IngestEmulator, override: Callable[[int], object], expected: object
) -> None:
    emulator.faults = Faults(ack_override=override)
    r = post(emulator, BULK, {"events": [{"session_data": v1_event(i)} for i in range(2)]})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.json() == expected
    assert emulator.accepted_count == 2
    assert statuses(emulator) == [200]


def test_ack_override_html_page(emulator: IngestEmulator) -> None:
    page = "<html><body><h1>Service degraded</h1><p>Nothing was lost (probably).</p></body></html>"
    emulator.faults = Faults(ack_override=lambda n: page)
    r = post(emulator, V2, {"session_data": v1_event(7)})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == HTML
    assert r.text == page
    assert emulator.events() == [v1_event(7)]


def test_ack_override_bytes(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(ack_override=lambda n: b"\x00\xffnot json")
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == b"\x00\xffnot json"
    assert emulator.accepted_count == 1


def test_ack_override_is_called_with_the_number_of_events(emulator: IngestEmulator) -> None:
    calls: list[int] = []

    def override(n: int) -> dict:
        calls.append(n)
        return {"accepted": n}

    emulator.faults = Faults(ack_override=override)
    post(emulator, V1, v1_body(5))
    post(emulator, V2, {"session_data": v1_event()})
    assert calls == [5, 1]


def test_ack_override_only_replaces_successful_answers(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(ack_override=lambda n: {"accepted": 99}, fail_every=3)
    assert post(emulator, V1, {"events": []}).json() == {"error": "events must contain 1 to 100 items"}
    assert post(emulator, V1, v1_body(1), headers={}).status_code == 401
    assert post(emulator, V1, v1_body(1)).json() == {"accepted": 99}
    assert post(emulator, V1, v1_body(1)).status_code == 500  # the 3rd authorized POST
    assert statuses(emulator) == [400, 401, 200, 500]
    assert emulator.accepted_count == 1


def test_ack_override_that_raises_stores_nothing(emulator: IngestEmulator) -> None:
    def broken(n: int) -> object:
        raise RuntimeError("oops")

    emulator.faults = Faults(ack_override=broken)
    r = post(emulator, V1, v1_body(2))
    assert r.status_code == 500
    assert "oops" in r.json()["error"]
    assert emulator.events() == []
    assert statuses(emulator) == [500]


def test_ack_status_202_with_and_without_override(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(ack_status=202)
    r = post(emulator, V1, v1_body(2))
    assert (r.status_code, r.json()) == (202, {"accepted": 2})
    emulator.faults = Faults(ack_status=202, ack_override=lambda n: {"queued": n})
    r = post(emulator, V1, v1_body(1))
    assert (r.status_code, r.json()) == (202, {"queued": 1})
    assert emulator.accepted_count == 3
    assert statuses(emulator) == [202, 202]


def test_ack_204_has_no_body_and_keeps_the_connection_usable(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(ack_status=204, ack_override=lambda n: b"")
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=5)
    try:
        for i in range(2):
            conn.request("POST", V1, body=json.dumps(v1_body(i + 1)), headers=AUTH)
            resp = conn.getresponse()
            assert resp.status == 204
            assert resp.read() == b""
            assert resp.getheader("Content-Length") is None
            assert resp.getheader("Content-Type") is None
            assert not resp.will_close
        emulator.faults = Faults()
        conn.request("POST", V1, body=json.dumps(v1_body(1)), headers=AUTH)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"accepted": 1})
    finally:
        conn.close()
    assert emulator.accepted_count == 4
    assert statuses(emulator) == [204, 204, 200]


def test_ack_override_in_fast_sink_mode() -> None:
    with IngestEmulator(fast_sink=True, faults=Faults(ack_override=lambda n: {"accepted": n // 2})) as em:
        r = post(em, V1, v1_body(10))
        assert r.json() == {"accepted": 5}
        assert em.accepted_count == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ack_status": 500},
        {"ack_status": 302},
        {"redirect_status": 200},
        {"redirect_status": 404},
        {"max_body_bytes": -1},
        {"trickle_s": -0.1},
    ],
)
def test_faults_refuse_impossible_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)


# ----------------------------------------------------------------------------- redirect_to


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_stores_nothing_and_carries_location(emulator: IngestEmulator, status: int) -> None:
    target = "https://www.example.com/login?next=%2Fapp"
    emulator.faults = Faults(redirect_to=target, redirect_status=status)
    r = post(emulator, V1, v1_body(3))
    assert r.status_code == status
    assert r.headers["Location"] == target
    assert r.headers["Content-Type"] == HTML
    assert "<html>" in r.text and "/login" in r.text
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert emulator.events() == [] and emulator.accepted_count == 0
    [record] = emulator.requests()
    assert (record.status, record.n_events) == (status, 3)


def test_redirect_comes_after_auth_and_before_validation_and_faults(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(redirect_to="http://elsewhere.invalid/", fail_every=1, max_body_bytes=1)
    assert post(emulator, V1, v1_body(1), headers={}).status_code == 401
    assert post(emulator, V1, {"events": []}).status_code == 302  # an invalid body is not even looked at
    assert post(emulator, V1, v1_body(50)).status_code == 302
    assert statuses(emulator) == [401, 302, 302]
    assert emulator.accepted_count == 0


def test_redirected_posts_count_for_the_every_faults(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(redirect_to="http://elsewhere.invalid/", fail_every=2)
    assert post(emulator, V1, v1_body(1)).status_code == 302  # n = 1
    emulator.faults.redirect_to = None
    assert post(emulator, V1, v1_body(1)).status_code == 500  # n = 2
    assert post(emulator, V1, v1_body(1)).status_code == 200  # n = 3


def test_redirect_followed_to_the_web_app(emulator: IngestEmulator, webapp: WebAppServer) -> None:
    emulator.faults = Faults(redirect_to=webapp.url + "/login", redirect_status=302)
    # A 302 turns the POST into a GET (what browsers and requests do) ...
    r = post(emulator, V1, v1_body(2), allow_redirects=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == HTML
    assert "<html" in r.text
    assert [h.status_code for h in r.history] == [302]
    # ... a 307 re-sends the POST with its body.
    emulator.faults = Faults(redirect_to=webapp.url + "/login", redirect_status=307)
    body = json.dumps(v1_body(2)).encode()
    r = requests.post(emulator.url + V1, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == HTML
    assert webapp.requests() == [
        WebAppRequest("GET", "/login", 0, webapp.requests()[0].received_at),
        WebAppRequest("POST", "/login", len(body), webapp.requests()[1].received_at),
    ]
    assert emulator.events() == []
    assert statuses(emulator) == [302, 307]


def test_redirect_in_fast_sink_mode(webapp: WebAppServer) -> None:
    with IngestEmulator(fast_sink=True, faults=Faults(redirect_to=webapp.url)) as em:
        r = post(em, V1, v1_body(4))
        assert (r.status_code, r.headers["Location"]) == (302, webapp.url)
        assert em.accepted_count == 0


# ----------------------------------------------------------------------------- WebAppServer


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_web_app_answers_200_html_to_any_method(webapp: WebAppServer, method: str) -> None:
    r = requests.request(method, webapp.url + "/v1/conversions?x=1", data=b"0123456789", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == HTML
    assert r.text.startswith("<!DOCTYPE html>")
    assert int(r.headers["Content-Length"]) == len(r.content)
    [seen] = webapp.requests()
    assert (seen.method, seen.path, seen.body_length) == (method, "/v1/conversions", 10)


def test_web_app_head_chunked_custom_page_and_lifecycle() -> None:
    app = WebAppServer(page="<html>login</html>").start()
    try:
        assert app.running and app.port > 0 and app.url == f"http://127.0.0.1:{app.port}"
        with pytest.raises(RuntimeError):
            app.start()
        r = requests.head(app.url + "/", timeout=5)
        assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"", str(len("<html>login</html>")))
        r = requests.post(app.url + "/hook", data=iter([b"abc", b"defg"]), timeout=5)  # chunked
        assert r.text == "<html>login</html>"
        with requests.Session() as session:  # the web app closes each connection; a session copes
            assert [session.get(app.url + f"/{i}", timeout=5).status_code for i in range(3)] == [200] * 3
        assert [(q.method, q.path, q.body_length) for q in app.requests()] == [
            ("HEAD", "/", 0),
            ("POST", "/hook", 7),
            ("GET", "/0", 0),
            ("GET", "/1", 0),
            ("GET", "/2", 0),
        ]
        app.reset()
        assert app.requests() == []
    finally:
        started = time.perf_counter()
        app.stop()
        app.stop()
    assert time.perf_counter() - started < 2.0
    assert not app.running
    with pytest.raises(requests.ConnectionError):
        requests.get(app.url, timeout=2)


# ----------------------------------------------------------------------------- max_body_bytes


def test_max_body_bytes_boundary(emulator: IngestEmulator) -> None:
    data = json.dumps(v1_body(3)).encode()
    emulator.faults = Faults(max_body_bytes=len(data))
    headers = {**AUTH, "Content-Type": "application/json"}
    with requests.Session() as session:
        r = session.post(emulator.url + V1, data=data, headers=headers, timeout=5)
        assert (r.status_code, r.json()) == (200, {"accepted": 3})  # exactly at the limit
        bigger = json.dumps(v1_body(4)).encode()
        r = session.post(emulator.url + V1, data=bigger, headers=headers, timeout=5)
        assert r.status_code == 413
        assert r.json() == {"error": f"payload too large: {len(bigger)} bytes > {len(data)}"}
        # The connection stays usable after a 413.
        assert session.post(emulator.url + V1, data=data, headers=headers, timeout=5).status_code == 200
    assert emulator.accepted_count == 6
    assert [(q.status, q.n_events) for q in emulator.requests()] == [(200, 3), (413, 4), (200, 3)]


def test_max_body_bytes_applies_after_auth_and_before_the_every_faults(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(max_body_bytes=10, fail_every=1)
    assert post(emulator, V1, v1_body(1), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(emulator, V1, v1_body(1)).status_code == 413
    assert post(emulator, V2, {}).status_code == 500  # 2 bytes: under the limit, then fail_every
    assert statuses(emulator) == [401, 413, 500]


def test_max_body_bytes_counts_chunked_bodies(emulator: IngestEmulator) -> None:
    data = json.dumps(v1_body(2)).encode()
    emulator.faults = Faults(max_body_bytes=len(data) - 1)
    r = requests.post(emulator.url + V1, data=iter([data[:5], data[5:]]), headers=AUTH, timeout=5)
    assert r.status_code == 413
    assert emulator.events() == []


def test_max_body_bytes_in_fast_sink_mode() -> None:
    data = json.dumps(v1_body(5)).encode()
    with IngestEmulator(fast_sink=True, faults=Faults(max_body_bytes=len(data) - 1)) as em:
        r = requests.post(em.url + V1, data=data, headers=AUTH, timeout=5)
        assert r.status_code == 413
        assert r.json()["error"] == f"payload too large: {len(data)} bytes > {len(data) - 1}"
        assert em.accepted_count == 0
        em.faults = Faults(max_body_bytes=len(data))
        assert requests.post(em.url + V1, data=data, headers=AUTH, timeout=5).json() == {"accepted": 5}
        assert em.accepted_count == 5


# ----------------------------------------------------------------------------- echo_credentials


def test_echo_credentials_leaks_the_header_into_every_error(emulator: IngestEmulator) -> None:
    secret = "Bearer test-key"
    emulator.faults = Faults(echo_credentials=True)
    r = post(emulator, V1, {"events": []})
    assert r.status_code == 400
    assert r.json() == {"error": f"events must contain 1 to 100 items; debug: Authorization={secret}"}

    wrong = "Bearer sk_live_wrong key\twith odd chars"
    r = post(emulator, V1, v1_body(1), headers={"Authorization": wrong})
    assert r.status_code == 401
    assert r.json()["error"].endswith(f"; debug: Authorization={wrong}")  # verbatim

    r = requests.get(emulator.url + V1, headers=AUTH, timeout=5)
    assert r.status_code == 405 and secret in r.json()["error"]
    r = requests.post(emulator.url + "/nowhere", headers=AUTH, timeout=5)
    assert r.status_code == 404 and secret in r.json()["error"]

    emulator.faults = Faults(echo_credentials=True, max_body_bytes=5)
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 413 and r.json()["error"].endswith(f"; debug: Authorization={secret}")

    emulator.faults = Faults(echo_credentials=True, fail_every=1)
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 500 and secret in r.json()["error"]

    emulator.faults = Faults(echo_credentials=True, unavailable_every=1)
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 503 and secret in r.json()["error"]

    emulator.faults = Faults(echo_credentials=True, ack_override=lambda n: "<html><body>ok</body></html>")
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 200
    assert r.text == f"<!-- debug: Authorization={secret} -->\n<html><body>ok</body></html>"

    # The request records still never hold credentials.
    assert "test-key" not in repr(emulator.requests()) and "wrong" not in repr(emulator.requests())
    assert statuses(emulator) == [400, 401, 405, 404, 413, 500, 503, 200]
    assert emulator.accepted_count == 1  # only the ack_override one


def test_echo_credentials_leaves_other_answers_alone(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(echo_credentials=True)
    assert post(emulator, V1, v1_body(2)).json() == {"accepted": 2}
    assert post(emulator, V1, v1_body(1), headers={}).json() == {"error": "missing, invalid or expired API key"}
    emulator.faults = Faults(echo_credentials=True, rate_limit_every=1)
    r = post(emulator, V1, v1_body(1))
    assert (r.status_code, r.content) == (429, b"")  # the documented empty body
    emulator.faults = Faults(echo_credentials=True, ack_override=lambda n: {"accepted": n})
    assert "Bearer" not in post(emulator, V1, v1_body(1)).text  # only str pages are echoed into


def test_echo_credentials_in_fast_sink_mode() -> None:
    with IngestEmulator(fast_sink=True, faults=Faults(echo_credentials=True)) as em:
        r = post(em, V1, {"events": []})
        assert r.status_code == 400 and "Authorization=Bearer test-key" in r.json()["error"]


# ----------------------------------------------------------------------------- trickle_s


def test_trickle_delivers_the_answer_one_byte_at_a_time(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(trickle_s=0.01)
    sock = send_raw_post(emulator, json.dumps(v1_body(2)).encode())
    try:
        started = time.perf_counter()
        answer = read_whole_answer(sock)
        elapsed = time.perf_counter() - started
    finally:
        sock.close()
    assert len(answer) >= 100
    assert elapsed >= 1.0  # at least (len - 1) pauses of 10 ms
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"accepted": 2}')
    assert emulator.accepted_count == 2
    assert statuses(emulator) == [200]


def test_trickled_answers_are_valid_http_and_keep_alive(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(trickle_s=0.0005)
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=10)
    try:
        conn.request("POST", V1, body=json.dumps(v1_body(1)), headers=AUTH)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"accepted": 1})
        conn.request("POST", V1, body=json.dumps(v1_body(1)), headers={})  # 401s trickle too
        resp = conn.getresponse()
        assert resp.status == 401 and "error" in json.loads(resp.read())
        assert not resp.will_close
    finally:
        conn.close()
    assert statuses(emulator) == [200, 401]


def test_trickle_lets_a_client_deadline_fire() -> None:
    with IngestEmulator(faults=Faults(trickle_s=0.05)) as em:
        # A byte arrives every 50 ms, far within any per-read timeout, so only an
        # overall deadline stops a client: half a second in, the answer is still
        # a few bytes long.
        sock = send_raw_post(em, json.dumps(v1_body(1)).encode())
        try:
            deadline = time.monotonic() + 0.5
            received = b""
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    received += sock.recv(4096)
                except TimeoutError:
                    break
        finally:
            sock.close()
    assert 0 < len(received) < 50  # a trickle, not an answer


def test_stop_ends_a_trickle_promptly() -> None:
    em = IngestEmulator(faults=Faults(trickle_s=0.5)).start()
    sock = send_raw_post(em, json.dumps(v1_body(1)).encode())
    try:
        assert sock.recv(1) == b"H"  # the trickle has started
        started = time.perf_counter()
        em.stop()
        stop_s = time.perf_counter() - started
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    finally:
        sock.close()
        em.stop()
    assert stop_s < 2.0
    assert len(received) < 10  # ended, far from the ~150 bytes of the whole answer
    assert em.accepted_count == 1  # the request had succeeded; only its answer was cut
    assert statuses(em) == [200]


def test_a_client_hanging_up_ends_the_trickle(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(trickle_s=0.1)
    sock = send_raw_post(emulator, json.dumps(v1_body(1)).encode())
    assert sock.recv(1) == b"H"
    sock.close()
    # The handler notices on its next writes and releases its connection, long
    # before the ~15 s the whole answer would take. (No public API shows a
    # handler's end, hence the private set of open connections.)
    assert wait_until(lambda: not emulator._connections, timeout=5)


# ----------------------------------------------------------------------------- unavailable_every


def test_unavailable_every_503_with_retry_after_stores_nothing(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(unavailable_every=2, retry_after="5")
    answers = [post(emulator, V1, {"events": [v1_event(i)]}) for i in range(4)]
    assert [r.status_code for r in answers] == [200, 503, 200, 503]
    for r in answers[1::2]:
        assert r.json() == {"error": "service unavailable (emulated)"}
        assert r.headers["Retry-After"] == "5"
        assert r.headers["Content-Type"] == "application/json"
    assert "Retry-After" not in answers[0].headers
    assert [e["session_id"] for e in emulator.events()] == ["s0", "s2"]
    assert [(q.status, q.n_events) for q in emulator.requests()] == [(200, 1), (503, 1), (200, 1), (503, 1)]

    emulator.faults = Faults(unavailable_every=1, retry_after=None)
    r = post(emulator, V1, v1_body(1))
    assert r.status_code == 503 and "Retry-After" not in r.headers


def test_unavailable_sits_between_fail_and_rate_limit(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(fail_every=2, unavailable_every=3, rate_limit_every=5)
    codes = [post(emulator, V1, v1_body(1)).status_code for _ in range(6)]
    assert codes == [200, 500, 503, 500, 429, 500]  # 6: fail wins over unavailable
    emulator.reset()
    emulator.faults = Faults(unavailable_every=1, rate_limit_every=1)
    assert post(emulator, V1, v1_body(1)).status_code == 503  # unavailable wins over rate limit
    emulator.faults = Faults(drop_every=1, unavailable_every=1)
    with pytest.raises(requests.ConnectionError):
        post(emulator, V1, v1_body(1))  # drop wins over unavailable
    assert statuses(emulator) == [503, NO_RESPONSE]
    assert emulator.accepted_count == 1  # the dropped one was stored


def test_unavailable_skips_validation_and_works_in_fast_sink() -> None:
    with IngestEmulator(fast_sink=True, faults=Faults(unavailable_every=2)) as em:
        assert [post(em, V1, {"events": []}).status_code for _ in range(2)] == [400, 503]
        r = post(em, V1, v1_body(3))
        assert r.status_code == 200
        r = post(em, V1, v1_body(3))
        assert (r.status_code, r.headers["Retry-After"]) == (503, "1")
        assert em.accepted_count == 3


def test_hostile_modes_can_be_switched_while_running(emulator: IngestEmulator) -> None:
    emulator.faults = Faults()
    assert post(emulator, V1, v1_body(1)).status_code == 200
    emulator.faults.ack_override = lambda n: {"accepted": 0}
    assert post(emulator, V1, v1_body(1)).json() == {"accepted": 0}
    emulator.faults.echo_credentials = True
    emulator.faults.unavailable_every = 1
    assert "Bearer test-key" in post(emulator, V1, v1_body(1)).json()["error"]
    emulator.faults = None
    assert post(emulator, V1, v1_body(1)).json() == {"accepted": 1}
    assert emulator.accepted_count == 3


def test_many_trickling_clients_do_not_block_others(emulator: IngestEmulator) -> None:
    # Each request reads the faults once: slow answers in flight do not slow later ones.
    emulator.faults = Faults(trickle_s=0.2)
    slow = [send_raw_post(emulator, json.dumps(v1_body(1)).encode()) for _ in range(3)]
    try:
        assert all(s.recv(1) == b"H" for s in slow)
        emulator.faults = Faults()
        done = threading.Event()
        result: list[int] = []

        def fast_client() -> None:
            result.append(post(emulator, V1, v1_body(1)).status_code)
            done.set()

        threading.Thread(target=fast_client).start()
        assert done.wait(5)
        assert result == [200]
    finally:
        for s in slow:
            s.close()
