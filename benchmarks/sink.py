"""The ingest emulator in its own process, standing in for pagent's servers.

The sync and the baselines talk to the sink over loopback. Running the sink in
a child process keeps its request handling off the measured process's GIL (a
real ingest API runs elsewhere, too), so what is measured is the client side
only; on a 2-core machine the sink gets one core and the measured process the
other.

The child is ``python -m benchmarks.sink --latency-ms N``: it prints
``URL <base url>`` once, then answers one line per command read on stdin
(``count`` -> the number of accepted events, ``reset`` -> ``ok``) and stops at
end of input.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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

    def reset(self) -> None:
        """Forget the accepted count."""
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


def _serve(latency_ms: float, key: str) -> None:
    from pagent_provider.testing.emulator import Faults, IngestEmulator

    emulator = IngestEmulator(api_keys=(key,), faults=Faults(latency_s=latency_ms / 1000), fast_sink=True)
    with emulator:
        print(f"URL {emulator.url}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "count":
                print(emulator.accepted_count, flush=True)
            elif command == "reset":
                emulator.reset()
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
