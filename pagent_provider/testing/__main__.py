"""Run the pagent ingest emulator from a shell.

Example::

    python -m pagent_provider.testing --port 8765 --key my-key --fail-every 5

Every field of :class:`~pagent_provider.testing.faults.Faults` that can be
written on a command line has a flag (``--help`` lists them), hostile modes
included: ``--partial-ack 1``, ``--ack-body '<html>...</html>'``,
``--redirect-to URL``, ``--trickle-ms 20``, ...  Only ``refuse`` (a Python
predicate) has none. ``pagent-conversions emulator`` takes the same flags:
:func:`add_arguments` is their one definition.

It prints ``pagent emulator listening on http://HOST:PORT``, serves until
SIGINT (Ctrl-C) or SIGTERM, then prints a one-line summary and exits 0. A bad
flag value is a usage error (exit status 2).

The default port, 8765, stays clear of Airflow's api-server (8080). What it
received can be read while it runs, ``GET /_emulator/events``,
``/_emulator/requests`` and ``/_emulator/summary`` (JSON; the emulator's
own, not part of pagent's API), and ``--dump FILE`` writes it all as JSON
when it stops (:mod:`pagent_provider.testing.inspection`).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pagent_provider.testing.emulator import Faults, IngestEmulator
from pagent_provider.testing.inspection import write_dump

#: The program name of ``python -m pagent_provider.testing`` in help and errors.
DEFAULT_PROG = "python -m pagent_provider.testing"

#: What ``--help`` says the emulator is.
DESCRIPTION = "Serve a local emulator of pagent's server-side conversions ingest API."

#: The port it listens on by default: not Airflow's api-server's (8080).
DEFAULT_PORT = 8765

#: The statuses ``--redirect-status`` accepts: the redirects that carry a ``Location``.
REDIRECT_STATUSES = (301, 302, 303, 307, 308)

_DEFAULT_REDIRECT_STATUS = Faults.redirect_status

_FAULTS_DESCRIPTION = """\
Every authorized POST gets a number n (1, 2, 3, ...); the first rule whose K
divides n applies, in this order: hang, drop, fail, unavailable, rate limit.
K = 0 (the default) turns a rule off."""

_HOSTILE_DESCRIPTION = """\
Servers, proxies and misconfigurations that answer strangely. Under
--partial-ack, --ack-body or --ack-json a valid POST's events are all stored,
whatever the answer says."""


# --------------------------------------------------------------------------- flag value types


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _count(text: str) -> int:
    """A ``K`` or ``N`` that must not be negative (0 = off)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0 = off), got {text!r}")
    return value


def _duration(text: str) -> float:
    """A non-negative, finite number of seconds or milliseconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def _ack_status(text: str) -> int:
    value = _whole_number(text)
    if not 200 <= value <= 299:
        raise argparse.ArgumentTypeError(f"expected a 2xx status (200 to 299), got {text!r}")
    return value


def _redirect_status(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in REDIRECT_STATUSES:
        expected = ", ".join(map(str, REDIRECT_STATUSES))
        raise argparse.ArgumentTypeError(f"expected one of {expected}, got {text!r}")
    return value


def _header_value(text: str) -> str:
    """Text sent in a header: no control characters (a line break would split the answer)."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"expected ASCII or Latin-1 text for an HTTP header, got {text!r}") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError(f"expected text without control characters or line breaks, got {text!r}")
    return text


def _url(text: str) -> str:
    """A ``Location``: absolute (``http://...``) or relative (``/login``), visible ASCII only."""
    if not text or not all(33 <= ord(c) <= 126 for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a non-empty URL of visible ASCII characters (percent-encode spaces and the rest), got {text!r}"
        )
    return text


def _partial_ack(text: str) -> PartialAck:
    return PartialAck(_whole_number(text))


def _html_ack(text: str) -> FixedAck:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"expected text that can be sent as UTF-8, got {text!r}") from None
    return FixedAck(text)


def _json_ack(text: str) -> FixedAck:
    try:
        return FixedAck(json.loads(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r} ({exc})") from None


# --------------------------------------------------------------------------- acknowledgements


@dataclass(frozen=True)
class PartialAck:
    """An ``ack_override`` acknowledging ``missing`` events fewer than were stored (``--partial-ack``)."""

    missing: int

    def __call__(self, n_events: int) -> dict:
        return {"accepted": n_events - self.missing}


@dataclass(frozen=True)
class FixedAck:
    """An ``ack_override`` answering the same body whatever was stored (``--ack-body``, ``--ack-json``).

    A ``str`` is sent as HTML, anything else as JSON (see :attr:`Faults.ack_override`).
    """

    body: object

    def __call__(self, n_events: int) -> object:
        return self.body


# --------------------------------------------------------------------------- the parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags to ``parser``: their one definition.

    ``python -m pagent_provider.testing`` and ``pagent-conversions emulator``
    both call it; :func:`emulator_from_args` reads the namespace.
    """
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default %(default)s; Airflow's api-server has 8080)",
    )
    parser.add_argument(
        "--key",
        dest="keys",
        action="append",
        metavar="KEY",
        help='accepted API key; repeatable (default "test-key")',
    )
    parser.add_argument(
        "--dump",
        metavar="FILE",
        help="on exit, write what it received (events, requests) to FILE as JSON (while running: GET /_emulator/events)",
    )
    parser.add_argument(
        "--fast-sink",
        action="store_true",
        help="benchmark mode: count events without parsing or storing them",
    )

    faults = parser.add_argument_group("faults", _FAULTS_DESCRIPTION)
    faults.add_argument(
        "--latency-ms",
        type=_duration,
        default=0.0,
        metavar="MS",
        help="wait MS milliseconds before answering each authorized POST",
    )
    faults.add_argument(
        "--hang-every", type=_count, default=0, metavar="K", help="never answer every K-th POST; store nothing"
    )
    faults.add_argument(
        "--hang-s",
        type=_duration,
        default=Faults.hang_s,
        metavar="S",
        help="seconds a hanging POST waits before its connection is closed (default %(default)s)",
    )
    faults.add_argument(
        "--drop-every",
        type=_count,
        default=0,
        metavar="K",
        help="store every K-th POST's events, then close the connection without answering",
    )
    faults.add_argument(
        "--fail-every", type=_count, default=0, metavar="K", help="answer every K-th POST 500; store nothing"
    )
    faults.add_argument(
        "--unavailable-every",
        type=_count,
        default=0,
        metavar="K",
        help="answer every K-th POST 503 with Retry-After; store nothing",
    )
    faults.add_argument(
        "--rate-limit-every",
        type=_count,
        default=0,
        metavar="K",
        help="answer every K-th POST 429 (empty body) with Retry-After; store nothing",
    )
    faults.add_argument(
        "--retry-after",
        type=_header_value,
        default=Faults.retry_after,
        metavar="S",
        help='Retry-After of a 429 or 503: seconds or an HTTP date, "" for none (default %(default)s)',
    )

    hostile = parser.add_argument_group("hostile modes", _HOSTILE_DESCRIPTION)
    ack = hostile.add_mutually_exclusive_group()
    # One destination: the Faults.ack_override of whichever flag is given.
    ack.add_argument(
        "--partial-ack",
        dest="ack_override",
        type=_partial_ack,
        metavar="K",
        help='store all n events but answer {"accepted": n - K}; a negative K over-acknowledges',
    )
    ack.add_argument(
        "--ack-body",
        dest="ack_override",
        type=_html_ack,
        metavar="TEXT",
        help="store all events but answer this literal TEXT as text/html, e.g. an HTML error page",
    )
    ack.add_argument(
        "--ack-json",
        dest="ack_override",
        type=_json_ack,
        metavar="JSON",
        help="store all events but answer this literal JSON, e.g. '{}' or '{\"accepted\": 0}'",
    )
    hostile.add_argument(
        "--ack-status",
        type=_ack_status,
        default=Faults.ack_status,
        metavar="N",
        help="status of every successful answer, 200 to 299; a 204 has no body (default %(default)s)",
    )
    hostile.add_argument(
        "--redirect-to",
        type=_url,
        metavar="URL",
        help="redirect every authorized POST to URL (Location header, HTML body); store nothing",
    )
    hostile.add_argument(
        "--redirect-status",
        type=_redirect_status,
        metavar="N",
        help=f"status of the --redirect-to redirect: 301, 302, 303, 307 or 308 (default {_DEFAULT_REDIRECT_STATUS})",
    )
    hostile.add_argument(
        "--max-body-bytes",
        type=_count,
        default=0,
        metavar="N",
        help="answer 413 to a POST whose body is over N bytes; store nothing (0 = no limit)",
    )
    hostile.add_argument(
        "--echo-credentials",
        action="store_true",
        help="leak the request's Authorization header into error answers and --ack-body pages",
    )
    hostile.add_argument(
        "--trickle-ms",
        type=_duration,
        default=0.0,
        metavar="MS",
        help="write every answer one byte at a time, MS milliseconds apart (a slow-loris server)",
    )


def build_arg_parser(prog: str | None = DEFAULT_PROG) -> argparse.ArgumentParser:
    """Build the command-line parser of the emulator.

    Args:
        prog: Program name shown in the help and in usage errors.

    Returns:
        A parser whose namespace :func:`emulator_from_args` turns into an emulator.
    """
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, allow_abbrev=False)
    add_arguments(parser)
    return parser


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The :class:`Faults` of parsed :func:`add_arguments` flags.

    Raises:
        ValueError: If the flags describe no valid :class:`Faults`, e.g.
            ``--redirect-status`` without ``--redirect-to``.
    """
    if args.redirect_status is not None and args.redirect_to is None:
        raise ValueError("argument --redirect-status: only applies with --redirect-to")
    return Faults(
        latency_s=args.latency_ms / 1000.0,
        fail_every=args.fail_every,
        rate_limit_every=args.rate_limit_every,
        retry_after=args.retry_after or None,
        drop_every=args.drop_every,
        hang_every=args.hang_every,
        hang_s=args.hang_s,
        ack_override=args.ack_override,
        ack_status=args.ack_status,
        redirect_to=args.redirect_to,
        redirect_status=_DEFAULT_REDIRECT_STATUS if args.redirect_status is None else args.redirect_status,
        max_body_bytes=args.max_body_bytes,
        echo_credentials=args.echo_credentials,
        trickle_s=args.trickle_ms / 1000.0,
        unavailable_every=args.unavailable_every,
    )


def emulator_from_args(args: argparse.Namespace) -> IngestEmulator:
    """Create (not start) an emulator from parsed :func:`build_arg_parser` arguments.

    Raises:
        ValueError: As :func:`faults_from_args`.
    """
    return IngestEmulator(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.keys or ("test-key",)),
        faults=faults_from_args(args),
        fast_sink=args.fast_sink,
    )


def main(argv: Sequence[str] | None = None, *, prog: str = DEFAULT_PROG) -> int:
    """Run the emulator until SIGINT or SIGTERM.

    Args:
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.
        prog: Program name shown in the help and in usage errors.

    Returns:
        The exit status: 0 after a clean stop. A usage error exits 2 (``SystemExit``).
    """
    parser = build_arg_parser(prog)
    args = parser.parse_args(argv)
    try:
        emulator = emulator_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
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
            f"in {sum(1 for r in requests if 200 <= r.status <= 299)} successful of {len(requests)} requests"
        )
    print(summary, flush=True)
    if args.dump:
        write_dump(emulator, args.dump)
        print(f"pagent emulator: wrote what it received to {args.dump}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
