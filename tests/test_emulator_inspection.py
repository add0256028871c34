"""Issue 12: the emulator as a process can be inspected: ``GET /_emulator/...`` while it runs, ``--dump FILE`` on exit.

Each test starts the emulator as a real subprocess (``python -m pagent_provider.testing``
or ``pagent-conversions emulator``), talks to it over HTTP and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from test_emulator_cli import CLI, MODULE, emulator_process  # the tests directory is on sys.path

from pagent_provider.testing.__main__ import DEFAULT_PORT, build_arg_parser

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def batch(n: int, first: int = 0) -> dict:
    return {
        "events": [
            {"session_id": f"s{first + i}", "user_id": f"u{first + i}", "conversion_id": "goal"} for i in range(n)
        ]
    }


@pytest.mark.parametrize("command", [MODULE, CLI], ids=["module", "cli"])
def test_what_the_process_received_is_served_as_json(command):
    with emulator_process("--fail-every", "3", "--echo-credentials", command=command) as emulator:
        url = emulator.url
        assert requests.post(f"{url}/v1/conversions", json=batch(2), headers=AUTH, timeout=10).status_code == 200
        assert requests.post(f"{url}/v1/conversions", json=batch(1), headers={}, timeout=10).status_code == 401
        assert requests.post(f"{url}/v1/conversions", json=batch(3, 2), headers=AUTH, timeout=10).status_code == 200

        events = requests.get(f"{url}/_emulator/events", timeout=10)
        assert events.status_code == 200 and events.headers["Content-Type"] == "application/json"
        assert events.json()["count"] == 5
        assert [e["session_id"] for e in events.json()["events"]] == ["s0", "s1", "s2", "s3", "s4"]

        seen = requests.get(f"{url}/_emulator/requests", timeout=10).json()
        assert [(r["method"], r["path"], r["status"], r["n_events"]) for r in seen["requests"]] == [
            ("POST", "/v1/conversions", 200, 2),
            ("POST", "/v1/conversions", 401, 1),
            ("POST", "/v1/conversions", 200, 3),
        ]  # the inspection requests themselves are not recorded, and never a header (no key)
        assert KEY not in json.dumps(seen)
        # the inspection is not subject to faults: this would be the 3rd POST's 500 otherwise
        assert requests.get(f"{url}/_emulator/summary", timeout=10).json() == {
            "accepted_count": 5,
            "requests": 3,
            "in_flight": 0,
            "peak_in_flight": 1,
        }

        assert requests.get(f"{url}/_emulator/nothing", timeout=10).status_code == 404
        assert requests.post(f"{url}/_emulator/events", timeout=10).status_code == 405


def test_dump_writes_what_was_received_on_exit(tmp_path: Path):
    dump = tmp_path / "received.json"
    with emulator_process("--dump", str(dump)) as emulator:
        url = emulator.url
        requests.post(f"{url}/v1/conversions", json=batch(4), headers=AUTH, timeout=10).raise_for_status()
        requests.post(f"{url}/v1/conversions", json={"events": [{"revenue": 1}]}, headers=AUTH, timeout=10)
        assert not dump.exists()  # written when it stops
    assert emulator.proc.returncode == 0
    document = json.loads(dump.read_text(encoding="utf-8"))
    assert document["accepted_count"] == 4 and len(document["events"]) == 4
    assert [r["status"] for r in document["requests"]] == [200, 400]


def test_the_summary_counts_the_posts_in_flight_and_their_peak():
    # Three clients at once against a 0.4 s latency: all three are in flight together, and
    # an inspection request meanwhile neither waits for them nor counts among them.
    with emulator_process("--latency-ms", "400") as emulator:
        url = emulator.url
        with ThreadPoolExecutor(3) as pool:
            posts = [
                pool.submit(requests.post, f"{url}/v1/conversions", json=batch(1, i), headers=AUTH, timeout=10)
                for i in range(3)
            ]
            deadline = time.monotonic() + 5
            while (summary := requests.get(f"{url}/_emulator/summary", timeout=10).json())["in_flight"] < 3:
                assert time.monotonic() < deadline, summary
                time.sleep(0.02)
            assert [post.result().status_code for post in posts] == [200, 200, 200]
        summary = requests.get(f"{url}/_emulator/summary", timeout=10).json()
        assert summary == {"accepted_count": 3, "requests": 3, "in_flight": 0, "peak_in_flight": 3}
        # one at a time: the peak stays where it was
        requests.post(f"{url}/v1/conversions", json=batch(1, 3), headers=AUTH, timeout=10).raise_for_status()
        assert requests.get(f"{url}/_emulator/summary", timeout=10).json()["peak_in_flight"] == 3


def test_the_default_port_is_clear_of_airflows_api_server():
    assert DEFAULT_PORT == 8765
    assert build_arg_parser().parse_args([]).port == 8765
