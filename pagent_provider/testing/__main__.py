"""Run the pagent ingest emulator from a shell.

Example::

    python -m pagent_provider.testing --port 8080 --key my-key --fail-every 5

It prints ``pagent emulator listening on http://HOST:PORT``, serves until
SIGINT (Ctrl-C) or SIGTERM, then prints a one-line summary and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from pagent_provider.testing.emulator import Faults, IngestEmulator


def build_arg_parser(
    prog: str | None = "python -m pagent_provider.testing",
) -> argparse.ArgumentParser:
    """Build the command-line parser of the emulator.

    Args:
        prog: Program name shown in the help.

    Returns:
        A parser whose namespace :func:`emulator_from_args` turns into an emulator.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local emulator of pagent's server-side conversions ingest API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (default %(default)s)")
    parser.add_argument(
        "--key",
        dest="keys",
        action="append",
        metavar="KEY",
        help='accepted API key; repeatable (default "test-key")',
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="N", help="delay before every answer")
    parser.add_argument("--fail-every", type=int, default=0, metavar="K", help="answer every K-th POST with 500")
    parser.add_argument("--rate-limit-every", type=int, default=0, metavar="K", help="answer every K-th POST with 429")
    parser.add_argument(
        "--retry-after",
        default="1",
        metavar="S",
        help='Retry-After header of a 429, seconds or an HTTP date; "" for none (default %(default)s)',
    )
    parser.add_argument(
        "--drop-every",
        type=int,
        default=0,
        metavar="K",
        help="store every K-th POST's events, then close the connection without answering",
    )
    parser.add_argument("--hang-every", type=int, default=0, metavar="K", help="never answer every K-th POST")
    parser.add_argument(
        "--hang-s",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a hanging POST waits (default %(default)s)",
    )
    parser.add_argument(
        "--fast-sink",
        action="store_true",
        help="benchmark mode: count events without parsing or storing them",
    )
    return parser


def emulator_from_args(args: argparse.Namespace) -> IngestEmulator:
    """Create (not start) an emulator from parsed :func:`build_arg_parser` arguments."""
    faults = Faults(
        latency_s=args.latency_ms / 1000.0,
        fail_every=args.fail_every,
        rate_limit_every=args.rate_limit_every,
        retry_after=args.retry_after or None,
        drop_every=args.drop_every,
        hang_every=args.hang_every,
        hang_s=args.hang_s,
    )
    return IngestEmulator(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.keys or ("test-key",)),
        faults=faults,
        fast_sink=args.fast_sink,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM.

    Args:
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit status: 0 after a clean stop.
    """
    args = build_arg_parser().parse_args(argv)
    emulator = emulator_from_args(args)
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    previous = {}
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        emulator.start()
        print(f"pagent emulator listening on {emulator.url}", flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        emulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if emulator.fast_sink:
        summary = f"pagent emulator stopped: accepted {emulator.accepted_count} events"
    else:
        requests = emulator.requests()
        summary = (
            f"pagent emulator stopped: accepted {emulator.accepted_count} events "
            f"in {sum(1 for r in requests if r.status == 200)} successful of {len(requests)} requests"
        )
    print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
