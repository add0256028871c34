"""Tests of the local pagent ingest emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from pagent_provider.testing import AcceptedEvent, Faults, IngestEmulator, RequestRecord
from pagent_provider.testing.__main__ import build_arg_parser, emulator_from_args

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def v1_event(i: int = 0, **extra: object) -> dict:
    return {"session_id": f"s{i}", "user_id": f"u{i}", "conversion_id": "goal", **extra}


def v2_event(i: int = 0, visit_id: str | None = None, **extra: object) -> dict:
    session_data = {"session_id": f"s{i}", "user_id": f"u{i}", "conversion_id": "goal"}
    if visit_id is not None:
        session_data["visit_id"] = visit_id
    return {"session_data": session_data, **extra}


@pytest.fixture
def emulator() -> Iterator[IngestEmulator]:
    with IngestEmulator() as em:
        yield em


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def post(em: IngestEmulator, path: str, body: object, *, headers: dict | None = None, timeout: float = 5):
    return requests.post(em.url + path, json=body, headers=AUTH if headers is None else headers, timeout=timeout)


def post_raw(em: IngestEmulator, path: str, data: bytes) -> requests.Response:
    return requests.post(em.url + path, data=data, headers={**AUTH, "Content-Type": "application/json"}, timeout=5)


# ----------------------------------------------------------------------------- happy paths


def test_v1_accepts_and_records(emulator: IngestEmulator) -> None:
    events = [v1_event(0, label="purchase", revenue=2499), v1_event(1, properties={"a": 1})]
    r = post(emulator, "/v1/conversions", {"events": events})
    assert r.status_code == 200
    assert r.json() == {"accepted": 2}
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)

    accepted = emulator.accepted()
    assert [a.event for a in accepted] == events
    assert all(isinstance(a, AcceptedEvent) and a.endpoint == "/v1/conversions" for a in accepted)
    assert emulator.events() == events
    assert emulator.accepted_count == 2
    [record] = emulator.requests()
    assert isinstance(record, RequestRecord)
    assert (record.method, record.path, record.status, record.n_events) == (
        "POST",
        "/v1/conversions",
        200,
        2,
    )
    assert abs(record.received_at - time.time()) < 5


def test_v2_single_and_bulk_are_normalized(emulator: IngestEmulator) -> None:
    single = v2_event(0, visit_id="v_1", label="purchase", revenue=100, time=1_700_000_000_000)
    assert post(emulator, "/v2/conversions", single).json() == {"accepted": 1}
    bulk = [v2_event(1), v2_event(2, visit_id="v_2", properties=[{"x": 1}], unknown="kept")]
    assert post(emulator, "/v2/conversions/bulk", {"events": bulk}).json() == {"accepted": 2}

    assert [a.endpoint for a in emulator.accepted()] == [
        "/v2/conversions",
        "/v2/conversions/bulk",
        "/v2/conversions/bulk",
    ]
    assert [a.event for a in emulator.accepted()] == [single, *bulk]  # stored as received
    assert emulator.events() == [
        {
            "session_id": "s0",
            "user_id": "u0",
            "conversion_id": "goal",
            "visit_id": "v_1",
            "label": "purchase",
            "revenue": 100,
            "time": 1_700_000_000_000,
        },
        {"session_id": "s1", "user_id": "u1", "conversion_id": "goal"},
        {
            "session_id": "s2",
            "user_id": "u2",
            "conversion_id": "goal",
            "visit_id": "v_2",
            "properties": [{"x": 1}],
            "unknown": "kept",
        },
    ]
    assert [(r.path, r.n_events) for r in emulator.requests()] == [
        ("/v2/conversions", 1),
        ("/v2/conversions/bulk", 2),
    ]


@pytest.mark.parametrize(
    "event",
    [
        v1_event(label=None, revenue=None, properties=None, time=None),  # optional nulls
        v1_event(revenue=0),
        v1_event(revenue=-500),  # refunds are not forbidden by the docs
        v1_event(properties=[{"a": 1}, {"b": [1, 2]}]),
        v1_event(properties={}),
        v1_event(time=1_700_000_000_000.5),
        v1_event(extra_field={"ignored": True}),
        v1_event(session_id=" "),  # not empty; no trimming
    ],
)
def test_v1_valid_variants(emulator: IngestEmulator, event: dict) -> None:
    r = post(emulator, "/v1/conversions", {"events": [event]})
    assert r.status_code == 200, r.text
    assert emulator.events() == [event]


def test_query_string_is_ignored(emulator: IngestEmulator) -> None:
    r = post(emulator, "/v1/conversions?debug=1", {"events": [v1_event()]})
    assert r.status_code == 200
    assert emulator.requests()[0].path == "/v1/conversions"


def test_batch_boundary_100_accepted_101_refused(emulator: IngestEmulator) -> None:
    assert post(emulator, "/v1/conversions", {"events": [v1_event(i) for i in range(100)]}).json() == {"accepted": 100}
    r = post(emulator, "/v2/conversions/bulk", {"events": [v2_event(i) for i in range(101)]})
    assert r.status_code == 400
    assert r.json() == {"error": "events must contain 1 to 100 items"}
    r = post(emulator, "/v1/conversions", {"events": [v1_event(i) for i in range(101)]})
    assert r.status_code == 400
    assert emulator.accepted_count == 100
    assert [r.n_events for r in emulator.requests()] == [100, 101, 101]


# ----------------------------------------------------------------------------- routing and auth


def test_unknown_path_404_and_wrong_method_405(emulator: IngestEmulator) -> None:
    r = requests.post(emulator.url + "/v3/conversions", json={}, headers=AUTH, timeout=5)
    assert r.status_code == 404
    assert "error" in r.json()
    r = requests.get(emulator.url + "/v1/conversions", headers=AUTH, timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert "error" in r.json()
    r = requests.put(emulator.url + "/v2/conversions/bulk", json={}, headers=AUTH, timeout=5)
    assert r.status_code == 405
    assert [(q.method, q.status) for q in emulator.requests()] == [
        ("POST", 404),
        ("GET", 405),
        ("PUT", 405),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY} "},  # no trimming
        {"Authorization": f"Bearer  {KEY}"},
        {"Authorization": "Bearer "},
    ],
)
@pytest.mark.parametrize("path", ["/v1/conversions", "/v2/conversions", "/v2/conversions/bulk"])
def test_401_without_a_valid_key(emulator: IngestEmulator, headers: dict, path: str) -> None:
    body = {
        "/v1/conversions": {"events": [v1_event()]},
        "/v2/conversions": v2_event(),
        "/v2/conversions/bulk": {"events": [v2_event()]},
    }[path]
    r = post(emulator, path, body, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "missing, invalid or expired API key"}
    assert emulator.accepted() == []
    assert emulator.requests()[0].status == 401


def test_auth_is_checked_before_validation(emulator: IngestEmulator) -> None:
    # This is how a client tests its key without recording anything.
    r = post(emulator, "/v1/conversions", {"events": []}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = post_raw(emulator, "/v1/conversions", b"not json")
    assert r.status_code == 400
    r = requests.post(emulator.url + "/v1/conversions", data=b"not json", timeout=5)
    assert r.status_code == 401
    r = post(emulator, "/v1/conversions", {"events": []})
    assert r.status_code == 400
    assert r.json() == {"error": "events must contain 1 to 100 items"}
    assert emulator.accepted() == []


def test_several_keys_and_no_key_recorded() -> None:
    with IngestEmulator(api_keys=("k1", "k2")) as em:
        for key in ("k1", "k2"):
            r = post(em, "/v1/conversions", {"events": [v1_event()]}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        r = post(em, "/v1/conversions", {"events": [v1_event()]}, headers=AUTH)
        assert r.status_code == 401
        dumped = repr(em.requests()) + repr(em.accepted())
        assert "k1" not in dumped and "k2" not in dumped and "Bearer" not in dumped


# ----------------------------------------------------------------------------- validation (400)

V1 = "/v1/conversions"
V2 = "/v2/conversions"
BULK = "/v2/conversions/bulk"

INVALID_BODIES = [
    # (path, body, expected error substring)
    (V1, [v1_event()], "request body must be a JSON object"),
    (V1, "events", "request body must be a JSON object"),
    (V1, {}, "events is required"),
    (V1, {"events": None}, "events is required"),
    (V1, {"events": {"0": v1_event()}}, "events must be an array of 1 to 100 items"),
    (V1, {"events": []}, "events must contain 1 to 100 items"),
    (BULK, {"events": []}, "events must contain 1 to 100 items"),
    (BULK, {"session_data": v2_event()["session_data"]}, "events is required"),
    (V1, {"events": [v1_event(), "x"]}, "events[1] must be an object"),
    (V1, {"events": [{"user_id": "u", "conversion_id": "c"}]}, "events[0].session_id is required"),
    (V1, {"events": [v1_event(user_id="")]}, "events[0].user_id must be a non-empty string"),
    (V1, {"events": [v1_event(conversion_id=None)]}, "events[0].conversion_id is required"),
    (V1, {"events": [v1_event(conversion_id=123)]}, "events[0].conversion_id must be a non-empty string, not 123"),
    (
        V1,
        {"events": [v1_event(), v1_event(), v1_event(), v1_event(revenue=9.99)]},
        "events[3].revenue must be an integer, not 9.99",
    ),
    (V1, {"events": [v1_event(revenue=2499.0)]}, "events[0].revenue must be an integer, not 2499.0"),
    (V1, {"events": [v1_event(revenue=True)]}, "events[0].revenue must be an integer, not true"),
    (V1, {"events": [v1_event(revenue="2499")]}, 'events[0].revenue must be an integer, not "2499"'),
    (V1, {"events": [v1_event(label=5)]}, "events[0].label must be a string"),
    (V1, {"events": [v1_event(properties="x")]}, "events[0].properties must be an object or an array of objects"),
    (V1, {"events": [v1_event(properties=[{"a": 1}, 2])]}, "events[0].properties[1] must be an object"),
    (V1, {"events": [v1_event(time="2024-01-01")]}, "events[0].time must be a number"),
    (V1, {"events": [v1_event(time=False)]}, "events[0].time must be a number"),
    (V1, {"events": [v2_event()]}, "events[0].session_id is required"),  # v2 shape on v1
    (V2, {"label": "x"}, "session_data must be an object containing session_id, user_id and conversion_id"),
    (V2, {"session_data": "abc"}, "session_data must be an object"),
    (V2, v1_event(), "session_data must be an object"),  # v1 shape on v2
    (V2, {"session_data": {"session_id": "s", "user_id": "u"}}, "session_data.conversion_id is required"),
    (
        V2,
        {"session_data": {"session_id": "", "user_id": "u", "conversion_id": "c"}},
        "session_data.session_id must be a non-empty string",
    ),
    (V2, v2_event(revenue=9.99), "revenue must be an integer, not 9.99"),
    (V2, {"session_data": {**v2_event()["session_data"], "visit_id": 5}}, "session_data.visit_id must be a string"),
    (V2, {"events": [v2_event()]}, "session_data must be an object"),  # bulk body on single endpoint
    (BULK, {"events": [v2_event(), v2_event(revenue=1.5)]}, "events[1].revenue must be an integer, not 1.5"),
    (BULK, {"events": [v2_event(), {"session_data": None}]}, "events[1].session_data must be an object"),
    (
        BULK,
        {"events": [v2_event(session_data={"session_id": "s", "user_id": "u", "conversion_id": 7})]},
        "events[0].session_data.conversion_id must be a non-empty string, not 7",
    ),
]


@pytest.mark.parametrize(("path", "body", "message"), INVALID_BODIES)
def test_400_rules(emulator: IngestEmulator, path: str, body: object, message: str) -> None:
    r = post(emulator, path, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert emulator.accepted() == []  # the whole request is refused
    assert emulator.requests()[0].status == 400


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b'{"events": [NaN]}', b"\xff\xfe{}", b'{"events": [{"time": Infinity}]}'],
)
def test_400_invalid_json(emulator: IngestEmulator, data: bytes) -> None:
    r = post_raw(emulator, "/v1/conversions", data)
    assert r.status_code == 400
    assert "error" in r.json()


def test_non_finite_time_refused(emulator: IngestEmulator) -> None:
    r = post_raw(
        emulator,
        "/v1/conversions",
        b'{"events": [{"session_id": "s", "user_id": "u", "conversion_id": "c", "time": 1e400}]}',
    )
    assert r.status_code == 400
    assert "events[0].time must be a finite number" in r.json()["error"]


def test_refuse_predicate(emulator: IngestEmulator) -> None:
    seen: list[dict] = []

    def refuse(event: dict) -> str | None:
        seen.append(event)
        return "unknown goal" if event["conversion_id"] == "bad-goal" else None

    emulator.faults = Faults(refuse=refuse)
    bad = {"session_data": {"session_id": "s", "user_id": "u", "conversion_id": "bad-goal"}}
    r = post(emulator, BULK, {"events": [v2_event(0), bad]})
    assert r.status_code == 400
    assert r.json() == {"error": "events[1]: unknown goal"}
    assert emulator.accepted() == []
    assert seen[0] == {"session_id": "s0", "user_id": "u0", "conversion_id": "goal"}  # v1 shape
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 200
    r = post(emulator, V2, {"session_data": {"session_id": "s", "user_id": "u", "conversion_id": "bad-goal"}})
    assert r.json() == {"error": "events[0]: unknown goal"}
    assert emulator.accepted_count == 1


# ----------------------------------------------------------------------------- HTTP behaviour


def test_keep_alive_and_content_length_on_every_answer(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(rate_limit_every=3)  # the 3rd authorized POST
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=5)
    try:
        bodies = [
            ("POST", V1, json.dumps({"events": [v1_event()]}), AUTH, 200),
            ("POST", V1, json.dumps({"events": []}), AUTH, 400),
            ("POST", V1, "{}", {}, 401),
            ("POST", V1, json.dumps({"events": [v1_event()]}), AUTH, 429),
            ("GET", V1, None, AUTH, 405),
            ("POST", "/nowhere", "{}", AUTH, 404),
            ("POST", V2, json.dumps(v2_event()), AUTH, 200),
        ]
        sock = None
        for method, path, body, headers, status in bodies:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == status
            assert resp.getheader("Content-Length") == str(len(data))
            assert resp.getheader("Connection") is None
            assert resp.version == 11
            assert not resp.will_close
            if sock is None:
                sock = conn.sock
            assert conn.sock is sock  # the same TCP connection throughout
    finally:
        conn.close()
    assert emulator.accepted_count == 2


def test_chunked_request_body(emulator: IngestEmulator) -> None:
    body = json.dumps({"events": [v1_event(i) for i in range(3)]}).encode()
    chunks = iter([body[:10], body[10:]])
    r = requests.post(emulator.url + V1, data=chunks, headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert r.json() == {"accepted": 3}


def test_sequential_requests_are_fast(emulator: IngestEmulator, session: requests.Session) -> None:
    # Without disable_nagle_algorithm / one-piece writes each answer costs ~40 ms.
    body = {"events": [v1_event()]}
    session.post(emulator.url + V1, json=body, headers=AUTH, timeout=5)
    durations = []
    for _ in range(31):
        started = time.perf_counter()
        assert session.post(emulator.url + V1, json=body, headers=AUTH, timeout=5).status_code == 200
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[15] < 0.025  # median; a Nagle stall is ~40 ms every time


def test_concurrent_requests(emulator: IngestEmulator) -> None:
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with requests.Session() as s:
                for i in range(10):
                    r = s.post(emulator.url + V1, json={"events": [v1_event(w * 100 + i)] * 2}, headers=AUTH, timeout=5)
                    assert r.status_code == 200
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert emulator.accepted_count == 200
    assert len(emulator.events()) == 200
    assert len(emulator.requests()) == 100


def wait_until_idle(emulator: IngestEmulator, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while emulator.in_flight:
        assert time.monotonic() < deadline, f"{emulator.in_flight} requests still in flight"
        time.sleep(0.01)


def test_in_flight_and_peak_in_flight(emulator: IngestEmulator) -> None:
    # Four POSTs held by the latency fault are in flight together; a hung one and a dropped
    # one leave the count when their connection closes; 401s and inspection never count.
    emulator.faults = Faults(latency_s=0.4)
    assert (emulator.in_flight, emulator.peak_in_flight) == (0, 0)
    with ThreadPoolExecutor(4) as pool:
        posts = [pool.submit(post, emulator, V1, {"events": [v1_event(i)]}) for i in range(4)]
        deadline = time.monotonic() + 5
        while emulator.in_flight < 4:
            assert time.monotonic() < deadline, emulator.in_flight
            time.sleep(0.01)
        assert [p.result().status_code for p in posts] == [200] * 4
    # a handler leaves the count just after writing its answer, which the client may read first
    wait_until_idle(emulator)
    assert (emulator.in_flight, emulator.peak_in_flight) == (0, 4)
    assert post(emulator, V1, {"events": [v1_event()]}, headers={}).status_code == 401
    wait_until_idle(emulator)
    assert emulator.peak_in_flight == 4

    emulator.reset()
    assert emulator.peak_in_flight == 0
    emulator.faults = Faults(hang_every=1, hang_s=0.3)
    with pytest.raises(requests.ConnectionError):
        post(emulator, V1, {"events": [v1_event(7)]}, timeout=5)
    emulator.faults = Faults(drop_every=1)
    with pytest.raises(requests.ConnectionError):
        post(emulator, V1, {"events": [v1_event(8)]}, timeout=5)
    deadline = time.monotonic() + 5
    while emulator.in_flight:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert emulator.peak_in_flight == 1


# ----------------------------------------------------------------------------- faults


def test_latency(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(latency_s=0.2)
    started = time.perf_counter()
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 200
    assert time.perf_counter() - started >= 0.2
    # Latency applies to authorized POSTs only.
    started = time.perf_counter()
    assert post(emulator, V1, {"events": [v1_event()]}, headers={}).status_code == 401
    assert time.perf_counter() - started < 0.15


def test_fail_every(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(fail_every=3)
    statuses = []
    for i in range(6):
        r = post(emulator, V1, {"events": [v1_event(i)]})
        statuses.append(r.status_code)
        if r.status_code == 500:
            assert "error" in r.json()
    assert statuses == [200, 200, 500, 200, 200, 500]
    assert [e["session_id"] for e in emulator.events()] == ["s0", "s1", "s3", "s4"]
    assert [(q.status, q.n_events) for q in emulator.requests()][2] == (500, 1)


def test_unauthorized_posts_do_not_count(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(fail_every=2)
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 200
    assert post(emulator, V1, {"events": [v1_event()]}, headers={}).status_code == 401
    assert requests.get(emulator.url + V1, headers=AUTH, timeout=5).status_code == 405
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 500


def test_rate_limit_with_retry_after(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(rate_limit_every=2, retry_after="7")
    r1 = post(emulator, V1, {"events": [v1_event(1)]})
    r2 = post(emulator, V1, {"events": [v1_event(2)]})
    assert (r1.status_code, r2.status_code) == (200, 429)
    assert r2.content == b""
    assert r2.headers["Retry-After"] == "7"
    assert r2.headers["Content-Length"] == "0"
    emulator.faults.retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"  # mutate while running
    post(emulator, V1, {"events": [v1_event(3)]})
    r4 = post(emulator, V1, {"events": [v1_event(4)]})
    assert r4.status_code == 429
    assert r4.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    emulator.faults = Faults(rate_limit_every=1, retry_after=None)
    r5 = post(emulator, V1, {"events": [v1_event(5)]})
    assert r5.status_code == 429
    assert "Retry-After" not in r5.headers
    assert [e["session_id"] for e in emulator.events()] == ["s1", "s3"]


def test_fault_order_and_reset(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(fail_every=2, rate_limit_every=3)
    statuses = [post(emulator, V1, {"events": [v1_event()]}).status_code for _ in range(6)]
    assert statuses == [200, 500, 429, 500, 200, 500]  # 6: fail wins over rate limit
    emulator.reset()
    assert emulator.requests() == [] and emulator.accepted() == [] and emulator.accepted_count == 0
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 200  # counter restarted at 1
    assert post(emulator, V1, {"events": [v1_event()]}).status_code == 500


def test_faults_skip_validation(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(fail_every=1)
    assert post(emulator, V1, {"events": []}).status_code == 500


def test_drop_stores_events_but_never_answers(emulator: IngestEmulator, session: requests.Session) -> None:
    emulator.faults = Faults(drop_every=2)
    assert session.post(emulator.url + V1, json={"events": [v1_event(1)]}, headers=AUTH, timeout=5).ok
    with pytest.raises(requests.ConnectionError):
        session.post(emulator.url + V1, json={"events": [v1_event(2), v1_event(3)]}, headers=AUTH, timeout=5)
    # The server stored them: the client cannot know.
    assert [e["session_id"] for e in emulator.events()] == ["s1", "s2", "s3"]
    assert emulator.requests()[1].status == 0
    assert emulator.requests()[1].n_events == 2
    # The session recovers on a new connection.
    assert session.post(emulator.url + V1, json={"events": [v1_event(4)]}, headers=AUTH, timeout=5).ok
    # An invalid body on a drop turn gets its normal 400.
    r = session.post(emulator.url + V1, json={"events": []}, headers=AUTH, timeout=5)
    assert r.status_code == 400


def test_drop_with_http_client(emulator: IngestEmulator) -> None:
    emulator.faults = Faults(drop_every=1)
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=5)
    try:
        conn.request("POST", V2, body=json.dumps(v2_event(9)), headers=AUTH)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()
    assert emulator.events() == [{"session_id": "s9", "user_id": "u9", "conversion_id": "goal"}]


def test_hang_times_out_and_stop_is_prompt() -> None:
    em = IngestEmulator(faults=Faults(hang_every=2, hang_s=0.5)).start()
    try:
        assert post(em, V1, {"events": [v1_event(1)]}).status_code == 200
        started = time.perf_counter()
        with pytest.raises(requests.ReadTimeout):
            post(em, V1, {"events": [v1_event(2)]}, timeout=0.3)
        assert time.perf_counter() - started < 0.5
        assert [e["session_id"] for e in em.events()] == ["s1"]  # nothing stored

        # A hanging request is released by stop(), long before hang_s.
        em.faults = Faults(hang_every=1, hang_s=30)
        started_hang = threading.Event()
        outcome: list[BaseException | int] = []

        def client() -> None:
            started_hang.set()
            try:
                outcome.append(post(em, V1, {"events": [v1_event(3)]}, timeout=10).status_code)
            except requests.RequestException as exc:
                outcome.append(exc)

        t = threading.Thread(target=client)
        t.start()
        started_hang.wait()
        time.sleep(0.2)
    finally:
        started = time.perf_counter()
        em.stop()
        stop_s = time.perf_counter() - started
    t.join(5)
    assert stop_s < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
    assert [e["session_id"] for e in em.events()] == ["s1"]
    assert [r.status for r in em.requests()] == [200, 0, 0]


def test_stop_with_idle_keep_alive_connections_is_prompt() -> None:
    em = IngestEmulator().start()
    sessions = [requests.Session() for _ in range(5)]
    try:
        for s in sessions:
            assert s.post(em.url + V1, json={"events": [v1_event()]}, headers=AUTH, timeout=5).ok
        started = time.perf_counter()
        em.stop()
        assert time.perf_counter() - started < 1.0
        assert not em.running
        assert em.accepted_count == 5  # records survive stop
        with pytest.raises(requests.ConnectionError):
            requests.post(em.url + V1, json={"events": [v1_event()]}, headers=AUTH, timeout=2)
    finally:
        for s in sessions:
            s.close()
        em.stop()


def test_restart_on_the_same_port() -> None:
    em = IngestEmulator().start()
    port = em.port
    em.stop()
    em2 = IngestEmulator(port=port).start()
    try:
        assert post(em2, V1, {"events": [v1_event()]}).status_code == 200
    finally:
        em2.stop()


# ----------------------------------------------------------------------------- fast sink


def test_fast_sink_counts_without_storing() -> None:
    with IngestEmulator(fast_sink=True) as em:
        assert post(em, V1, {"events": [v1_event(i) for i in range(7)]}).json() == {"accepted": 7}
        assert post(em, BULK, {"events": [v2_event(i) for i in range(5)]}).json() == {"accepted": 5}
        assert post(em, V2, v2_event()).json() == {"accepted": 1}
        assert post(em, V1, {"events": [v1_event()]}, headers={}).status_code == 401
        assert post(em, V1, {"events": []}).status_code == 400
        assert em.accepted_count == 13
        assert em.accepted() == [] and em.events() == [] and em.requests() == []
        em.reset()
        em.faults = Faults(fail_every=2, rate_limit_every=3)
        assert [post(em, V1, {"events": [v1_event()]}).status_code for _ in range(3)] == [200, 500, 429]
        em.faults = Faults(drop_every=1)
        with pytest.raises(requests.ConnectionError):
            post(em, V1, {"events": [v1_event(), v1_event()]})
        assert em.accepted_count == 3
        em.reset()
        assert em.accepted_count == 0


# ----------------------------------------------------------------------------- misc API


def test_url_port_and_connection_json(emulator: IngestEmulator) -> None:
    assert emulator.port > 0
    assert emulator.host == "127.0.0.1"
    assert emulator.url == f"http://127.0.0.1:{emulator.port}"
    assert json.loads(emulator.airflow_connection_json()) == {
        "conn_type": "pagent",
        "host": "http://127.0.0.1",
        "port": emulator.port,
        "password": KEY,
    }
    assert json.loads(emulator.airflow_connection_json("other"))["password"] == "other"


def test_start_twice_raises(emulator: IngestEmulator) -> None:
    with pytest.raises(RuntimeError):
        emulator.start()


def test_package_imports_nothing_else_from_pagent_provider() -> None:
    code = (
        "import sys, pagent_provider.testing, pagent_provider.testing.__main__;"
        "mods = sorted(m for m in sys.modules if m.startswith(('pagent_provider', 'airflow')));"
        "print(mods)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == str(
        [
            "pagent_provider",
            "pagent_provider.testing",
            "pagent_provider.testing.__main__",
            "pagent_provider.testing.background_server",
            "pagent_provider.testing.emulator",
            "pagent_provider.testing.faults",
            "pagent_provider.testing.inspection",
            "pagent_provider.testing.request_body",
            "pagent_provider.testing.validation",
            "pagent_provider.testing.webapp",
        ]
    )


# ----------------------------------------------------------------------------- command line


def test_arg_parser() -> None:
    args = build_arg_parser().parse_args(
        [
            "--port",
            "0",
            "--key",
            "a",
            "--key",
            "b",
            "--latency-ms",
            "50",
            "--fail-every",
            "3",
            "--rate-limit-every",
            "4",
            "--retry-after",
            "",
            "--drop-every",
            "5",
            "--hang-every",
            "6",
            "--fast-sink",
        ]
    )
    em = emulator_from_args(args)
    assert em.api_keys == ("a", "b")
    assert em.fast_sink
    assert em.faults == Faults(
        latency_s=0.05, fail_every=3, rate_limit_every=4, retry_after=None, drop_every=5, hang_every=6
    )
    default = emulator_from_args(build_arg_parser().parse_args([]))
    assert default.api_keys == ("test-key",) and default.port == 8765 and default.faults == Faults()


def test_command_line_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagent_provider.testing", "--port", "0", "--key", "cli-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"pagent emulator listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        url = match.group(1)
        r = requests.post(
            url + V1, json={"events": [v1_event(), v1_event(1)]}, headers={"Authorization": "Bearer cli-key"}, timeout=5
        )
        assert r.json() == {"accepted": 2}
        assert requests.post(url + V1, json={"events": []}, headers=AUTH, timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.startswith("pagent emulator stopped: accepted 2 events"), out
    assert len(out.strip().splitlines()) == 1
    assert err == ""


# ----------------------------------------------------------------------------- pytest plugin


def test_pagent_emulator_fixture(pagent_emulator: IngestEmulator) -> None:
    assert pagent_emulator.running
    assert pagent_emulator.host == "127.0.0.1"
    assert post(pagent_emulator, V1, {"events": [v1_event()]}).status_code == 200
    assert pagent_emulator.accepted_count == 1


def test_pagent_connection_fixture(pagent_connection: IngestEmulator) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_PAGENT_DEFAULT"])
    assert conn == {
        "conn_type": "pagent",
        "host": "http://127.0.0.1",
        "port": pagent_connection.port,
        "password": "test-key",
    }
    url = f"{conn['host']}:{conn['port']}/v2/conversions"
    r = requests.post(url, json=v2_event(), headers={"Authorization": f"Bearer {conn['password']}"}, timeout=5)
    assert r.json() == {"accepted": 1}
    assert pagent_connection.events()[0]["session_id"] == "s0"
