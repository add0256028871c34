"""The ingest emulator in its own process, standing in for pagent's servers.

The sync and the baselines talk to the sink over loopback. Running the sink in
a child process keeps its request handling off the measured process's GIL (a
real ingest API runs elsewhere, too), so what is measured is the client side
only; on a 2-core machine the sink gets one core and the measured process the
other.

The sink checks every event: each body is parsed and validated with the
emulator's rules of pagent's documented 400s
(:func:`pagent_provider.testing.validation.validate`: ids non-empty strings,
revenue an integer, time a number, ...), and, stricter than pagent, every
event may carry only the documented fields, with ``time`` in integer
milliseconds: warehouse rows posted as they are (``amount_usd``,
``converted_at``) would be accepted by pagent and counted as conversions
without revenue or time. A body that breaks a rule is answered 400 and
counted as invalid, so a run that sends what pagent would refuse, or rows
it would misread, fails the benchmark instead of being measured. (The emulator's fast-sink
mode on its own only counts events; parsing here costs the sink's core, not
the measured process's.)

The child is ``python -m benchmarks.sink --latency-ms N``: it prints
``URL <base url>`` once, then answers one line per command read on stdin
(``count`` -> the number of accepted events, ``invalid`` -> ``{"bodies": n,
"first": reason}`` as JSON, ``reset`` -> ``ok``) and stops at end of input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class SinkProcess:
    """A fast-sink :class:`~pagent_provider.testing.IngestEmulator` in a child process.

    Args:
        latency_s: seconds the sink waits before answering each request (the network).
        api_key: the key the sink accepts.

    Example:
        >>> with SinkProcess(latency_s=0.05) as sink:  # doctest: +SKIP
        ...     post_somewhere(sink.url)
        ...     print(sink.accepted())
    """

    def __init__(self, latency_s: float = 0.0, api_key: str = "test-key") -> None:
        self.latency_s = latency_s
        self.api_key = api_key
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> SinkProcess:
        command = [
            sys.executable,
            "-m",
            "benchmarks.sink",
            "--latency-ms",
            str(self.latency_s * 1000),
            "--key",
            self.api_key,
        ]
        self._process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = self._process.stdout.readline().strip() if self._process.stdout else ""
        if not line.startswith("URL "):
            self.stop()
            raise RuntimeError(f"the sink process did not start (it printed {line!r})")
        self.url = line[len("URL ") :]
        return self

    def _ask(self, command: str) -> str:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the sink is not running")
        process.stdin.write(command + "\n")
        process.stdin.flush()
        return process.stdout.readline().strip()

    def accepted(self) -> int:
        """Events the sink has accepted since it started or was last reset."""
        return int(self._ask("count"))

    def invalid(self) -> tuple[int, str | None]:
        """Bodies refused as invalid since the start or the last reset, and the first reason."""
        answer = json.loads(self._ask("invalid"))
        return int(answer["bodies"]), answer["first"]

    def reset(self) -> None:
        """Forget the accepted count and the invalid bodies."""
        self._ask("reset")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> SinkProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class InvalidBodies:
    """Bodies the validating counter refused, and the first reason."""

    bodies: int = 0
    first: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, reason: str) -> None:
        with self.lock:
            self.bodies += 1
            self.first = self.first or reason

    def reset(self) -> None:
        with self.lock:
            self.bodies, self.first = 0, None


#: The fields of an event in pagent's documentation, in the v1 shape (v2's session_data flattened).
DOCUMENTED_FIELDS = frozenset(
    {"session_id", "user_id", "conversion_id", "visit_id", "label", "revenue", "properties", "time"}
)


def _check_documented(events: list[dict[str, Any]]) -> str | None:
    for i, event in enumerate(events):
        unknown = sorted(set(event) - DOCUMENTED_FIELDS)
        if unknown:
            return f"events[{i}] has fields pagent does not document: {', '.join(unknown)}"
        if "time" in event and not isinstance(event["time"], int):
            return f"events[{i}].time must be integer Unix milliseconds, not {event['time']!r}"
    return None


def validating_counter(invalid: InvalidBodies) -> Callable[[str, bytes], int]:
    """A stand-in for the fast sink's event count that validates the whole body first.

    It returns 0 for an invalid body, which the emulator answers with 400.
    """
    from pagent_provider.testing.validation import Invalid, normalize, parse_json, validate

    def count(endpoint: str, raw: bytes) -> int:
        try:
            events = validate(endpoint, parse_json(raw))
        except Invalid as error:
            invalid.add(str(error))
            return 0
        problem = _check_documented([normalize(endpoint, event) for event in events])
        if problem is not None:
            invalid.add(problem)
            return 0
        return len(events)

    return count


def _serve(latency_ms: float, key: str) -> None:
    from pagent_provider.testing import emulator as emulator_module
    from pagent_provider.testing.emulator import Faults, IngestEmulator

    invalid = InvalidBodies()
    # The fast sink counts events without parsing; here every body is validated instead.
    emulator_module.fast_count = validating_counter(invalid)  # type: ignore[assignment]
    emulator = IngestEmulator(api_keys=(key,), faults=Faults(latency_s=latency_ms / 1000), fast_sink=True)
    with emulator:
        print(f"URL {emulator.url}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                print(emulator.accepted_count, flush=True)
            elif command == "invalid":
                with invalid.lock:
                    print(json.dumps({"bodies": invalid.bodies, "first": invalid.first}), flush=True)
            elif command == "reset":
                emulator.reset()
                invalid.reset()
                print("ok", flush=True)
            else:
                print(f"unknown command {command!r}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--key", default="test-key")
    args = parser.parse_args(argv)
    _serve(args.latency_ms, args.key)


if __name__ == "__main__":
    main()
