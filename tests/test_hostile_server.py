"""Issue 9: servers that answer strangely never make a conversion count as delivered when it was not.

Every test runs real syncs over real HTTP against the emulator in a hostile
mode (or a web app a redirect points at), with a real ledger, and compares
three counts: the events the server STORED, the keys the ledger records as
``sent``, and what the summary reports; then a re-run against a healthy
server shows the duplicates and losses that remain. Each case ends with
nothing lost silently and nothing sent twice, or with the documented
at-least-once bound (``unknown_outcome="resend"``) and a loud failure.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import (
    PagentConfigError,
    PagentDeliveryError,
    PagentRedirectError,
    PagentUnacknowledgedError,
    PagentUnknownOutcomeError,
)
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions, load_conversions
from pagent_provider.testing.webapp import WebAppServer

API_KEY = "test-key"
ROWS = 300
TRANSFORM = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"},
    key_column="order_id",
    properties_columns=["order_id"],
)
ALL_ROWS_SQL = "SELECT * FROM conversions ORDER BY order_id"
START, END = datetime(2026, 1, 1), datetime(2026, 1, 5)


def conversions(rows: int, seed: int) -> pd.DataFrame:
    return generate_conversions(rows, start=START, end=END, seed=seed)


# --------------------------------------------------------------------------- set-up


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ledger database: each hostile answer is judged on all three."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[tuple[sa.Engine, pd.DataFrame]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    frame = conversions(ROWS, seed=3)
    load_conversions(engine, frame)
    yield engine, frame
    engine.dispose()


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.dispose()


def run_sync(
    warehouse: sa.Engine,
    ledger_engine: sa.Engine,
    base_url: str,
    *,
    policy: str = "resend",
    transform: TransformConfig = TRANSFORM,
    max_invalid_rows: int = 0,
    retry: RetryPolicy | None = None,
    key: str = API_KEY,
) -> dict:
    """One sync of every warehouse row; returns the summary, from the result or from the error."""
    retry = retry or RetryPolicy(max_retries=2, backoff_initial_s=0.05, backoff_max_s=2, read_timeout_s=5)
    ledger = Ledger(ledger_engine, namespace="pagent_default", unknown_outcome=policy)  # type: ignore[arg-type]
    options = SyncOptions(max_workers=2, max_invalid_rows=max_invalid_rows)
    with PagentClient(key, base_url=base_url, policy=retry) as client:
        sync = ConversionSync(client, transform, options, ledger=ledger)
        return sync.run(read_sql_chunks(warehouse, ALL_ROWS_SQL, None, chunksize=100)).as_dict()


def stored(emulator: IngestEmulator) -> Counter[int]:
    """How often the server stored each warehouse order id."""
    return Counter(event["properties"]["order_id"] for event in emulator.events())


def ledger_statuses(engine: sa.Engine) -> Counter[str]:
    return Counter(Ledger(engine, namespace="pagent_default").count_by_status())


def sent_keys(engine: sa.Engine) -> set[int]:
    return {int(key) for key in Ledger(engine, namespace="pagent_default").keys_with_status("sent")}


# --------------------------------------------------------------------------- 2xx that acknowledge nothing

NOT_AN_ACKNOWLEDGEMENT = {
    "partial": lambda n: {"accepted": n - 1},
    "zero": lambda n: {"accepted": 0},
    "no_count": lambda n: {"status": "ok"},
    "error_body": lambda n: {"accepted": n, "error": "degraded: events queued"},
    "html_page": lambda n: "<html><body><h1>Welcome</h1></body></html>",
    "count_as_text": lambda n: {"accepted": str(n)},
    "count_as_float": lambda n: {"accepted": float(n)},
    "deeply_nested": lambda n: f'{{"accepted": {n}, "x": {"[" * 50_000 + "]" * 50_000}}}',
}


@pytest.mark.parametrize("answer", sorted(NOT_AN_ACKNOWLEDGEMENT))
def test_a_2xx_that_does_not_acknowledge_every_event_marks_nothing_sent(
    answer: str, warehouse, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    engine, _ = warehouse
    pagent_emulator.faults = Faults(ack_override=NOT_AN_ACKNOWLEDGEMENT[answer])

    with pytest.raises(PagentUnacknowledgedError) as raised:
        run_sync(engine, sqlite_ledger, pagent_emulator.url)
    summary = raised.value.summary  # type: ignore[attr-defined]

    # the first answer stops the sync: one batch was stored by the server, none counts as sent
    server = stored(pagent_emulator)
    assert sum(server.values()) == 100 and summary["requests"] == 1
    assert summary["sent"] == 0 and summary["accepted"] == 0 and summary["unknown"] == 100
    assert ledger_statuses(sqlite_ledger) == Counter({"unknown": 100})
    assert sent_keys(sqlite_ledger) == set()


@pytest.mark.parametrize("policy", ["resend", "skip"])
def test_after_a_partial_acknowledgement_a_rerun_applies_the_unknown_policy(
    policy: str, warehouse, ledger_url: str, pagent_emulator: IngestEmulator
) -> None:
    engine, frame = warehouse
    ledger_engine = sa.create_engine(ledger_url)
    try:
        pagent_emulator.faults = Faults(ack_override=lambda n: {"accepted": n - 1})
        with pytest.raises(PagentUnacknowledgedError):
            run_sync(engine, ledger_engine, pagent_emulator.url, policy=policy)
        first = stored(pagent_emulator)
        assert sent_keys(ledger_engine) == set() and sum(first.values()) == 100

        pagent_emulator.faults = Faults()  # a healthy server again
        summary = run_sync(engine, ledger_engine, pagent_emulator.url, policy=policy)
    finally:
        ledger_engine.dispose()

    everything = set(frame["order_id"].tolist())
    after = stored(pagent_emulator)
    twice = {key for key, count in after.items() if count > 1}
    assert set(after) == everything  # nothing lost
    if policy == "resend":
        # at least once: exactly the 100 events of the unacknowledged batch, reported as unknown_resent
        assert twice == set(first) and summary["unknown_resent"] == 100
        assert summary["sent"] == ROWS
    else:
        # at most once: never twice; the unknown batch is skipped (it had been stored)
        assert twice == set() and summary["unknown"] == 100
        assert summary["sent"] == ROWS - 100


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_fatal_configuration_error_and_nothing_counts_as_sent(
    status: int, warehouse, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    engine, _ = warehouse
    with WebAppServer() as webapp:
        login = f"{webapp.url}/login"
        pagent_emulator.faults = Faults(redirect_to=login, redirect_status=status)
        with pytest.raises(PagentRedirectError) as raised:
            run_sync(engine, sqlite_ledger, pagent_emulator.url)
        assert webapp.requests() == []  # never followed: the web app saw nothing

    error = raised.value
    assert isinstance(error, PagentConfigError)
    assert error.status_code == status and error.location == login
    assert pagent_emulator.url in str(error) and login in str(error)
    summary = error.summary  # type: ignore[attr-defined]
    assert summary["sent"] == 0 and summary["requests"] == 1 and summary["failed"] == 100
    assert pagent_emulator.events() == []
    assert ledger_statuses(sqlite_ledger) == Counter()  # the claims were released


def test_a_base_url_that_is_a_web_app_answering_200_marks_nothing_sent(warehouse, sqlite_ledger) -> None:
    engine, _ = warehouse
    with WebAppServer() as webapp, pytest.raises(PagentUnacknowledgedError):
        run_sync(engine, sqlite_ledger, webapp.url)
    assert sent_keys(sqlite_ledger) == set()
    assert ledger_statuses(sqlite_ledger) == Counter({"unknown": 100})


# --------------------------------------------------------------------------- statuses the docs do not list


def test_413_rejects_just_the_oversized_event_and_delivers_the_rest(
    tmp_path: Path, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    frame = conversions(250, seed=5)
    huge = int(frame["order_id"].iloc[120])
    frame["coupon"] = frame["coupon"].astype(object)
    frame.loc[frame["order_id"] == huge, "coupon"] = "x" * 150_000  # one row with a 150 KB property
    load_conversions(engine, frame)
    transform = TransformConfig(
        columns=TRANSFORM.columns, key_column="order_id", properties_columns=["order_id", "coupon"]
    )
    pagent_emulator.faults = Faults(max_body_bytes=64_000)
    try:
        summary = run_sync(engine, sqlite_ledger, pagent_emulator.url, transform=transform, max_invalid_rows=1)
        rerun = run_sync(engine, sqlite_ledger, pagent_emulator.url, transform=transform, max_invalid_rows=1)
    finally:
        engine.dispose()

    everything = set(frame["order_id"].tolist())
    assert stored(pagent_emulator) == Counter(everything - {huge})
    assert summary["sent"] == 249 and summary["rejected"] == 1
    assert rerun["sent"] == 0 and rerun["already_sent"] == 249 and rerun["rejected"] == 1
    assert sent_keys(sqlite_ledger) == everything - {huge}
    ledger = Ledger(sqlite_ledger, namespace="pagent_default")
    with sqlite_ledger.connect() as conn:
        reasons = conn.execute(sa.select(ledger.rejects_table.c.event_key, ledger.rejects_table.c.reason)).all()
    assert {key for key, _ in reasons} == {str(huge)}
    assert all("payload too large" in reason for _, reason in reasons)


def test_503_honours_retry_after_and_delivers_each_row_once(
    warehouse, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    engine, frame = warehouse
    pagent_emulator.faults = Faults(unavailable_every=2, retry_after="1")
    started = time.monotonic()
    summary = run_sync(engine, sqlite_ledger, pagent_emulator.url)
    elapsed = time.monotonic() - started

    assert stored(pagent_emulator) == Counter(frame["order_id"].tolist())
    assert summary["sent"] == ROWS and sent_keys(sqlite_ledger) == set(frame["order_id"].tolist())
    answered_503 = [r for r in pagent_emulator.requests() if r.status == 503]
    assert answered_503, "the fault never fired"
    assert elapsed >= 1.0  # Retry-After: 1 was waited out, not ignored


def test_404_stays_fatal_and_sends_nothing_more(warehouse, sqlite_ledger, pagent_emulator) -> None:
    engine, _ = warehouse
    with pytest.raises(PagentConfigError.__mro__[1]) as raised:  # PagentFatalError
        run_sync(engine, sqlite_ledger, pagent_emulator.url + "/wrong-prefix")
    assert "404" in str(raised.value) and raised.value.summary["requests"] == 1  # type: ignore[attr-defined]
    assert ledger_statuses(sqlite_ledger) == Counter()


# --------------------------------------------------------------------------- a trickling server


def test_a_trickled_answer_cannot_hold_a_sender_past_the_deadline(
    warehouse, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = warehouse
    # ~150 bytes at 0.2 s each: the answer would take ~30 s, every byte well within the read timeout
    pagent_emulator.faults = Faults(trickle_s=0.2)
    retry = RetryPolicy(max_retries=0, read_timeout_s=5, connect_timeout_s=1, deadline_s=1.5)
    started = time.monotonic()
    with pytest.raises(PagentUnknownOutcomeError) as raised:
        run_sync(engine, sqlite_ledger, pagent_emulator.url, retry=retry)
    elapsed = time.monotonic() - started

    # the first batch is cut at 1.5 s instead of ~30 s, and a lost answer stops the run
    assert elapsed < 10, f"the sender was held {elapsed:.1f}s by a trickling server"
    summary = raised.value.summary  # type: ignore[attr-defined]
    # the server stored the batch before trickling its answer: unknown, never sent
    assert sum(stored(pagent_emulator).values()) == 100
    assert summary["sent"] == 0 and summary["unknown"] == 100 and summary["requests"] == 1
    assert ledger_statuses(sqlite_ledger) == Counter({"unknown": 100})
    assert "deadline" in caplog.text


# --------------------------------------------------------------------------- bounded bisection


def test_a_server_refusing_everything_costs_a_bounded_number_of_requests(
    tmp_path: Path, sqlite_ledger: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    load_conversions(engine, conversions(2_000, seed=9))
    pagent_emulator.faults = Faults(refuse=lambda event: "unknown goal")
    try:
        with pytest.raises(PagentDeliveryError) as raised:
            run_sync(engine, sqlite_ledger, pagent_emulator.url, max_invalid_rows=5)
    finally:
        engine.dispose()

    summary = raised.value.summary  # type: ignore[attr-defined]
    requests = len(pagent_emulator.requests())
    # unbounded bisection costs about two requests per row (~4,000 here)
    assert requests == summary["requests"] < 100, requests
    assert summary["rejected"] == 6 and summary["sent"] == 0
    assert pagent_emulator.events() == []
    assert ledger_statuses(sqlite_ledger) == Counter()  # refused and unsent rows were all released


# --------------------------------------------------------------------------- the key never leaks


SECRET = "sk_live_9f8e7d6c5b4a3210"


def _everything_a_user_sees(error: BaseException, caplog: pytest.LogCaptureFixture, engine: sa.Engine) -> str:
    ledger = Ledger(engine, namespace="pagent_default")
    with engine.connect() as conn:
        rejects = conn.execute(sa.select(ledger.rejects_table)).all() if ledger.tables_exist() else []
        rows = conn.execute(sa.select(ledger.table)).all() if ledger.tables_exist() else []
    return "\n".join(
        [str(error), repr(error), repr(getattr(error, "summary", "")), caplog.text, repr(rejects), repr(rows)]
    )


@pytest.mark.parametrize(
    ("faults", "key", "error_type"),
    [
        (Faults(echo_credentials=True, refuse=lambda e: "unknown goal"), SECRET, PagentDeliveryError),
        (Faults(echo_credentials=True, fail_every=1), SECRET, Exception),
        (Faults(echo_credentials=True), SECRET + "-wrong", Exception),
        (Faults(echo_credentials=True, ack_override=lambda n: "<pre>Authorization: Bearer {key}</pre>"), SECRET, None),
    ],
    ids=["400", "500", "401", "200-html"],
)
def test_a_server_echoing_the_authorization_header_never_leaks_the_key(
    faults: Faults, key: str, error_type: type[BaseException] | None, warehouse, sqlite_ledger, caplog
) -> None:
    engine, _ = warehouse
    caplog.set_level(logging.DEBUG)
    with IngestEmulator(api_keys=(SECRET,), faults=faults) as emulator:
        with pytest.raises(error_type or PagentUnknownOutcomeError) as raised:
            run_sync(engine, sqlite_ledger, emulator.url, key=key, max_invalid_rows=5)
        answered = [r.status for r in emulator.requests()]
    assert answered, "the server was never asked"
    seen = _everything_a_user_sees(raised.value, caplog, sqlite_ledger)
    assert key not in seen and SECRET not in seen
    assert "***" in seen  # the echo arrived, redacted


def test_keys_that_are_not_printable_ascii_are_refused_without_being_repeated() -> None:
    for bad in ("sk_live_ключ", "sk live", "sk\tlive", "sk_live\u200b"):
        with pytest.raises(PagentConfigError) as raised:
            PagentClient(bad, base_url="http://127.0.0.1:9")
        assert bad not in str(raised.value) and "printable ASCII" in str(raised.value)


def test_base_urls_carrying_credentials_are_refused_without_repeating_them() -> None:
    with pytest.raises(PagentConfigError) as raised:
        PagentClient(API_KEY, base_url="https://user:hunter2secret@ingest.pagent.ai")
    assert "hunter2secret" not in str(raised.value) and "credentials" in str(raised.value)


# --------------------------------------------------------------------------- statuses nobody documents


class OneStatusServer:
    """A hostile server of our own: answers every request with one status line and a short body."""

    def __init__(self, status_line: str, body: bytes = b'{"error": "upstream timed out"}') -> None:
        self.answer = (
            f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        self.requests = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                conn.sendall(self.answer)

    def close(self) -> None:
        self._socket.close()


@pytest.mark.parametrize(
    "status_line",
    [
        "501 Not Implemented",
        "507 Insufficient Storage",
        "520 Unknown",
        "524 A Timeout Occurred",
        "502 Bad Gateway",
        "504 Gateway Timeout",
        "103 Early Hints",
    ],
)
def test_statuses_that_may_follow_a_stored_request_are_unknown_never_released(
    status_line: str, warehouse, sqlite_ledger: sa.Engine
) -> None:
    engine, _ = warehouse
    server = OneStatusServer(status_line)
    try:
        with pytest.raises(PagentUnknownOutcomeError) as raised:
            run_sync(engine, sqlite_ledger, server.url)
    finally:
        server.close()
    summary = raised.value.summary  # type: ignore[attr-defined]
    # released, a re-run would resend what the server behind a gateway may have stored
    assert server.requests == 1 and summary["unknown"] == 100 and summary["sent"] == 0
    assert ledger_statuses(sqlite_ledger) == Counter({"unknown": 100})


@pytest.mark.parametrize("status_line", ["408 Request Timeout", "409 Conflict", "422 Unprocessable Entity"])
def test_undocumented_client_errors_fail_at_once_and_release(status_line: str, warehouse, sqlite_ledger) -> None:
    engine, _ = warehouse
    server = OneStatusServer(status_line)
    try:
        with pytest.raises(PagentConfigError.__mro__[1]) as raised:  # PagentFatalError: a 4xx was not carried out
            run_sync(engine, sqlite_ledger, server.url)
    finally:
        server.close()
    assert status_line.split()[0] in str(raised.value)
    assert server.requests == 1 and ledger_statuses(sqlite_ledger) == Counter()
