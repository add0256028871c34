"""The emulator's command line: every fault flag, over real HTTP to a real emulator process.

``python -m pagent_provider.testing`` and ``pagent-conversions emulator`` share
one definition of the flags (``add_arguments``); both are checked here: what
``--help`` says, which values are usage errors (exit status 2), and what an
emulator started with the flags answers (status, headers, body) before it is
stopped with SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from pagent_provider.cli import main as cli_main
from pagent_provider.cli.parser import build_parser
from pagent_provider.testing import Faults
from pagent_provider.testing.__main__ import (
    FixedAck,
    PartialAck,
    build_arg_parser,
    emulator_from_args,
    faults_from_args,
)
from pagent_provider.testing.__main__ import main as emulator_main

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
V1 = "/v1/conversions"
BULK = "/v2/conversions/bulk"
MODULE = [sys.executable, "-m", "pagent_provider.testing"]
CLI = [sys.executable, "-m", "pagent_provider.cli", "emulator"]

#: Every flag of the emulator, in the order of ``--help``.
FLAGS = [
    "--host",
    "--port",
    "--key",
    "--dump",
    "--fast-sink",
    "--latency-ms",
    "--hang-every",
    "--hang-s",
    "--drop-every",
    "--fail-every",
    "--unavailable-every",
    "--rate-limit-every",
    "--retry-after",
    "--partial-ack",
    "--ack-body",
    "--ack-json",
    "--ack-status",
    "--redirect-to",
    "--redirect-status",
    "--max-body-bytes",
    "--echo-credentials",
    "--trickle-ms",
]


def v1_event(i: int = 0) -> dict:
    return {"session_id": f"s{i}", "user_id": f"u{i}", "conversion_id": "goal"}


def events(n: int) -> dict:
    return {"events": [v1_event(i) for i in range(n)]}


@dataclass
class Emulator:
    """An emulator process: its URL while it runs, its output once stopped."""

    proc: subprocess.Popen
    url: str = ""
    out: str = ""
    err: str = ""
    log: list[str] = field(default_factory=list)

    def post(self, path: str = V1, body: object = None, *, headers: dict | None = None, **kwargs: object):
        kwargs.setdefault("timeout", 10)
        return requests.post(
            self.url + path,
            json=events(1) if body is None else body,
            headers=AUTH if headers is None else headers,
            **kwargs,
        )


@contextmanager
def emulator_process(*flags: str, command: list[str] = MODULE) -> Iterator[Emulator]:
    """Start an emulator on a free port (``--port 0``) with ``flags``; SIGTERM it after the block.

    After the block, ``out``/``err`` hold what it printed and ``proc.returncode`` its exit status.
    """
    proc = subprocess.Popen(
        [*command, "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=Path(__file__).parent,
    )
    em = Emulator(proc)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"pagent emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        if not match:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the emulator did not start: {line!r} {err}")
        em.url = match.group(1)
        yield em
        proc.send_signal(signal.SIGTERM)
        em.out, em.err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_clean_exit(em: Emulator, *, accepted: int, successful: int, requests_: int) -> None:
    assert em.proc.returncode == 0, em.err
    assert em.err == ""
    assert em.out == (
        f"pagent emulator stopped: accepted {accepted} events in {successful} successful of {requests_} requests\n"
    )


# --------------------------------------------------------------------------- parsing, in process


def test_every_flag_maps_onto_its_fault() -> None:
    args = build_arg_parser().parse_args(
        [
            *("--latency-ms", "50", "--hang-every", "7", "--hang-s", "0.5", "--drop-every", "6"),
            *("--fail-every", "5", "--unavailable-every", "4", "--rate-limit-every", "3", "--retry-after", "9"),
            *("--partial-ack", "2", "--ack-status", "202", "--redirect-to", "http://web.invalid/login"),
            *("--redirect-status", "308", "--max-body-bytes", "1000", "--echo-credentials", "--trickle-ms", "20"),
        ]
    )
    assert faults_from_args(args) == Faults(
        latency_s=0.05,
        hang_every=7,
        hang_s=0.5,
        drop_every=6,
        fail_every=5,
        unavailable_every=4,
        rate_limit_every=3,
        retry_after="9",
        ack_override=PartialAck(2),
        ack_status=202,
        redirect_to="http://web.invalid/login",
        redirect_status=308,
        max_body_bytes=1000,
        echo_credentials=True,
        trickle_s=0.02,
    )
    assert PartialAck(2)(5) == {"accepted": 3}
    assert PartialAck(-1)(5) == {"accepted": 6}  # over-acknowledged
    assert PartialAck(3)(1) == {"accepted": -2}  # literally n - K


def test_defaults_are_the_faults_defaults() -> None:
    args = build_arg_parser().parse_args([])
    assert faults_from_args(args) == Faults()
    em = emulator_from_args(args)
    assert (em.host, em.port, em.api_keys, em.fast_sink) == ("127.0.0.1", 8765, ("test-key",), False)


@pytest.mark.parametrize(
    ("flags", "ack"),
    [
        (["--ack-body", "<html><body>Bad gateway</body></html>"], FixedAck("<html><body>Bad gateway</body></html>")),
        (["--ack-body", ""], FixedAck("")),
        (["--ack-json", "{}"], FixedAck({})),
        (["--ack-json", '{"accepted": 3, "error": "degraded"}'], FixedAck({"accepted": 3, "error": "degraded"})),
        (["--ack-json", "null"], FixedAck(None)),
        (["--partial-ack", "0"], PartialAck(0)),
        (["--partial-ack", "-2"], PartialAck(-2)),
    ],
)
def test_acknowledgement_flags(flags: list[str], ack: object) -> None:
    assert faults_from_args(build_arg_parser().parse_args(flags)).ack_override == ack


def test_empty_retry_after_sends_none() -> None:
    assert faults_from_args(build_arg_parser().parse_args(["--retry-after", ""])).retry_after is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fail-every", "-1"], "argument --fail-every: expected a whole number >= 0 (0 = off), got '-1'"),
        (["--hang-every", "two"], "argument --hang-every: expected a whole number, got 'two'"),
        (["--drop-every", "1.5"], "argument --drop-every: expected a whole number, got '1.5'"),
        (["--rate-limit-every", "-3"], "argument --rate-limit-every: expected a whole number >= 0"),
        (["--unavailable-every", "x"], "argument --unavailable-every: expected a whole number, got 'x'"),
        (["--latency-ms", "-5"], "argument --latency-ms: expected a finite number >= 0, got '-5'"),
        (["--latency-ms", "nan"], "argument --latency-ms: expected a finite number >= 0, got 'nan'"),
        (["--hang-s", "inf"], "argument --hang-s: expected a finite number >= 0, got 'inf'"),
        (["--trickle-ms", "soon"], "argument --trickle-ms: expected a number, got 'soon'"),
        (["--retry-after", "1\r\nX-Injected: 1"], "argument --retry-after: expected text without control characters"),
        (["--partial-ack", "one"], "argument --partial-ack: expected a whole number, got 'one'"),
        (["--ack-json", "{accepted: 1}"], "argument --ack-json: expected JSON, got '{accepted: 1}'"),
        (["--ack-status", "500"], "argument --ack-status: expected a 2xx status (200 to 299), got '500'"),
        (["--ack-status", "ok"], "argument --ack-status: expected a whole number, got 'ok'"),
        (["--redirect-to", ""], "argument --redirect-to: expected a non-empty URL of visible ASCII characters"),
        (["--redirect-to", "http://x/a b"], "argument --redirect-to: expected a non-empty URL of visible ASCII"),
        (
            ["--redirect-to", "http://x", "--redirect-status", "304"],
            "argument --redirect-status: expected one of 301, 302, 303, 307, 308, got '304'",
        ),
        (["--redirect-status", "301"], "argument --redirect-status: only applies with --redirect-to"),
        (["--max-body-bytes", "-1"], "argument --max-body-bytes: expected a whole number >= 0 (0 = off), got '-1'"),
        (["--port", "65536"], "argument --port: expected a port from 0 to 65535, got '65536'"),
        (["--partial-ack", "1", "--ack-body", "x"], "argument --ack-body: not allowed with argument --partial-ack"),
        (["--ack-body", "x", "--ack-json", "{}"], "argument --ack-json: not allowed with argument --ack-body"),
        (["--echo-credentials=yes"], "argument --echo-credentials: ignored explicit argument 'yes'"),
        (["--trickle", "5"], "unrecognized arguments: --trickle 5"),  # no abbreviations
    ],
)
def test_bad_values_are_usage_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as module_exit:
        emulator_main(flags)
    module_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as cli_exit:
        cli_main(["emulator", *flags])
    cli_err = capsys.readouterr().err

    assert module_exit.value.code == 2 and cli_exit.value.code == 2
    assert f"python -m pagent_provider.testing: error: {message}" in module_err
    # argparse reports an unknown flag with the top-level program's name
    cli_prog = "pagent-conversions" if message.startswith("unrecognized") else "pagent-conversions emulator"
    assert f"{cli_prog}: error: {message}" in cli_err


# --------------------------------------------------------------------------- help


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"]


def test_cli_subcommand_has_the_same_flags() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cli_emulator = commands.choices["emulator"]

    assert option_strings(build_arg_parser()) == FLAGS
    assert option_strings(cli_emulator) == FLAGS

    # the same help text, one definition
    def described(parser: argparse.ArgumentParser) -> list[tuple]:
        return [(a.option_strings, a.dest, a.type, a.default, a.help) for a in parser._actions]

    assert described(cli_emulator) == described(build_arg_parser())


@pytest.mark.parametrize("command", [MODULE, CLI], ids=["module", "cli"])
def test_help_documents_every_flag_in_one_line(command: list[str]) -> None:
    result = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},  # wide enough that no help text is wrapped
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    parser = build_arg_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        [flag] = action.option_strings
        assert any(re.match(rf"  {flag}\b", line) for line in lines), flag
        assert action.help and "\n" not in action.help, flag
        text = formatter._expand_help(action)
        assert any(line.endswith(text) for line in lines), f"{flag}: {text!r} not on one line of the help"
    for text in ("faults:", "hostile modes:", '{"accepted": n - K}', "text/html", "301, 302, 303, 307 or 308"):
        assert text in result.stdout
    assert ("examples:" in result.stdout) == (command is CLI)


# --------------------------------------------------------------------------- real processes


def test_partial_ack_status_echo_size_limit_unavailable() -> None:
    flags = ["--partial-ack", "1", "--ack-status", "202", "--echo-credentials", "--max-body-bytes", "600"]
    with emulator_process(*flags, "--unavailable-every", "3", "--retry-after", "7") as em:
        first = em.post(body=events(2))
        second = em.post(BULK, {"events": [{"session_data": v1_event(5)}]})
        third = em.post(body=events(2))  # the 3rd authorized POST: 503
        big = em.post(body=events(20))  # the 4th, over 600 bytes: 413 (before the faults)
        unauthorized = em.post(headers={"Authorization": "Bearer nope"})

    assert (first.status_code, first.headers["Content-Type"], first.json()) == (
        202,
        "application/json",
        {"accepted": 1},
    )
    assert (second.status_code, second.json()) == (202, {"accepted": 0})
    assert third.status_code == 503
    assert third.headers["Retry-After"] == "7"
    assert third.json() == {"error": "service unavailable (emulated); debug: Authorization=Bearer test-key"}
    assert big.status_code == 413
    assert re.fullmatch(
        r"payload too large: \d+ bytes > 600; debug: Authorization=Bearer test-key", big.json()["error"]
    ), big.text
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"].endswith("; debug: Authorization=Bearer nope")
    assert_clean_exit(em, accepted=3, successful=2, requests_=5)


def test_ack_body_is_a_literal_html_page_with_the_echoed_key() -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    with emulator_process("--ack-body", page, "--echo-credentials", "--key", "secret-key") as em:
        r = em.post(body=events(3), headers={"Authorization": "Bearer secret-key"})

    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.text == f"<!-- debug: Authorization=Bearer secret-key -->\n{page}"
    assert_clean_exit(em, accepted=3, successful=1, requests_=1)


def test_ack_json_and_a_bodiless_204() -> None:
    with emulator_process("--ack-json", '{"accepted": 2, "error": "degraded"}') as em:
        r = em.post(body=events(5))
    assert (r.status_code, r.headers["Content-Type"], r.json()) == (
        200,
        "application/json",
        {"accepted": 2, "error": "degraded"},
    )
    assert_clean_exit(em, accepted=5, successful=1, requests_=1)

    with emulator_process("--ack-status", "204", "--partial-ack", "1") as em:
        r = em.post(body=events(2))
    assert (r.status_code, r.content) == (204, b"")
    assert "Content-Length" not in r.headers
    assert_clean_exit(em, accepted=2, successful=1, requests_=1)


def test_redirect_stores_nothing() -> None:
    target = "http://127.0.0.1:9/app/login?next=%2Fv1"
    with emulator_process("--redirect-to", target, "--redirect-status", "307") as em:
        r = em.post(body=events(2), allow_redirects=False)
        unauthorized = em.post(headers={}, allow_redirects=False)  # no key: 401, not redirected

    assert r.status_code == 307
    assert r.headers["Location"] == target
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "The document has moved" in r.text
    assert unauthorized.status_code == 401
    assert_clean_exit(em, accepted=0, successful=0, requests_=2)


def test_default_redirect_status_is_302() -> None:
    with emulator_process("--redirect-to", "/login") as em:
        r = em.post(allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (302, "/login")
    assert_clean_exit(em, accepted=0, successful=0, requests_=1)


def test_existing_faults_in_order() -> None:
    flags = ["--latency-ms", "100", "--fail-every", "2", "--rate-limit-every", "3", "--retry-after", ""]
    with emulator_process(*flags, "--drop-every", "5", "--hang-every", "7", "--hang-s", "0.3") as em:
        with requests.Session() as session:

            def post() -> requests.Response:
                return session.post(em.url + V1, json=events(1), headers=AUTH, timeout=10)

            started = time.monotonic()
            answers = [post() for _ in range(4)]  # n = 1..4
            elapsed = time.monotonic() - started
            with pytest.raises(requests.ConnectionError):
                post()  # n = 5: stored, then dropped
            sixth = post()  # n = 6: fail (every 2) comes before rate limit (every 3)
            started = time.monotonic()
            with pytest.raises(requests.ConnectionError):
                post()  # n = 7: hangs 0.3 s, then closed
            hung = time.monotonic() - started

    assert [r.status_code for r in answers] == [200, 500, 429, 500]
    assert answers[1].json() == {"error": "internal server error (emulated fault)"}
    assert answers[2].content == b"" and "Retry-After" not in answers[2].headers  # --retry-after ""
    assert sixth.status_code == 500
    assert elapsed >= 0.4  # 100 ms before each answer
    assert hung >= 0.3
    assert_clean_exit(em, accepted=2, successful=1, requests_=7)


def test_rate_limit_retry_after_header() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    with emulator_process("--rate-limit-every", "1", "--retry-after", date) as em:
        r = em.post()
    assert (r.status_code, r.content, r.headers.get("Retry-After")) == (429, b"", date)
    assert_clean_exit(em, accepted=0, successful=0, requests_=1)


def test_trickle_slows_every_answer_and_sigterm_interrupts_it() -> None:
    with emulator_process("--trickle-ms", "4") as em:
        started = time.monotonic()
        r = em.post(body=events(2))
        elapsed = time.monotonic() - started
    assert r.json() == {"accepted": 2}
    # about 150 bytes (status line, headers, body) 4 ms apart
    assert elapsed >= 0.4, elapsed
    assert_clean_exit(em, accepted=2, successful=1, requests_=1)

    outcome: list[object] = []
    with emulator_process("--trickle-ms", "1000") as em:  # a whole answer would take minutes
        client = threading.Thread(target=lambda: outcome.append(_post_catching(em)), daemon=True)
        client.start()
        time.sleep(1.0)  # the answer is trickling
        stopped = time.monotonic()
    assert time.monotonic() - stopped < 5  # SIGTERM ends the trickle at once
    client.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], requests.RequestException)
    assert em.proc.returncode == 0, em.err
    assert em.err == ""
    assert em.out.startswith("pagent emulator stopped: accepted 1 events"), em.out


def _post_catching(em: Emulator) -> object:
    try:
        return em.post(timeout=30)
    except requests.RequestException as exc:
        return exc


def test_fast_sink_with_a_size_limit() -> None:
    with emulator_process("--fast-sink", "--max-body-bytes", "300", "--partial-ack", "1") as em:
        small = em.post(body=events(2))
        big = em.post(body=events(10))
    assert (small.status_code, small.json()) == (200, {"accepted": 1})
    assert big.status_code == 413
    assert em.proc.returncode == 0, em.err
    assert em.out == "pagent emulator stopped: accepted 2 events\n"


def test_cli_emulator_subcommand_takes_the_flags() -> None:
    flags = ["--partial-ack", "2", "--ack-status", "201", "--unavailable-every", "2", "--echo-credentials"]
    with emulator_process(*flags, command=CLI) as em:
        first = em.post(body=events(3))
        second = em.post()

    assert (first.status_code, first.json()) == (201, {"accepted": 1})
    assert second.status_code == 503
    assert second.json()["error"].endswith("; debug: Authorization=Bearer test-key")
    assert second.headers["Retry-After"] == "1"
    assert_clean_exit(em, accepted=3, successful=1, requests_=2)


def test_usage_error_of_a_process() -> None:
    for command, prog in ((MODULE, "python -m pagent_provider.testing"), (CLI, "pagent-conversions emulator")):
        result = subprocess.run(
            [*command, "--redirect-status", "302"], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.startswith("usage: ")
        assert result.stderr.endswith(f"{prog}: error: argument --redirect-status: only applies with --redirect-to\n")
