"""Issue 4's delivery guarantees, end to end: real processes, real HTTP, real databases.

Every test drives :class:`~pagent_provider.core.sync.ConversionSync` against the
pagent emulator over HTTP and judges the outcome by what the EMULATOR stored,
counted per warehouse order id (each event carries its ``order_id`` in its
properties), not by the engine's own summary.

* re-runs and overlapping intervals send only what was never sent;
* a sync killed with SIGKILL mid-run: the re-run delivers every row, with at
  most the in-flight batches twice (``resend``) or never twice (``skip``);
* an answer lost after the server stored the events is reported as unknown,
  and the next run applies the policy to exactly those events;
* 500s and 429 storms (``Retry-After`` honoured) still deliver each row once;
* four OS processes syncing overlapping intervals at once against one
  PostgreSQL ledger deliver each row exactly once;
* a row the server refuses inside a batch of 100 is isolated and recorded,
  the other 99 are delivered.

The fault tests run through both ingest APIs (``api="v1"`` and the v2 bulk
endpoint): the guarantees must not depend on the endpoint.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import V1_PATH, V2_BULK_PATH
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.sync import SyncSummary
from pagent_provider.exceptions import PagentDeliveryError, PagentUnknownOutcomeError
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.emulator import NO_RESPONSE
from pagent_provider.testing.sample_warehouse import generate_conversions, load_conversions

WORKER_PATH = Path(__file__).parent / "workers" / "sync_worker.py"
API_PATHS = {"v1": V1_PATH, "v2": V2_BULK_PATH}
START = datetime(2026, 1, 1)
DAY = timedelta(days=1)
DAYS = 4
END = START + DAYS * DAY


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pagent_sync_worker", WORKER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()  # runs in the test process are built exactly like runs in the children


# --------------------------------------------------------------------------- helpers


def fill_warehouse(engine: sa.Engine, rows: int, *, seed: int = 7) -> pd.DataFrame:
    frame = generate_conversions(rows, start=START, end=END, seed=seed)
    load_conversions(engine, frame)
    return frame


def ids_between(frame: pd.DataFrame, start: datetime, end: datetime) -> set[int]:
    inside = (frame["converted_at"] >= pd.Timestamp(start)) & (frame["converted_at"] < pd.Timestamp(end))
    return set(frame.loc[inside, "order_id"].tolist())


BOTH_APIS = pytest.mark.parametrize("api", ["v1", "v2"])


def posted_paths(emulator: IngestEmulator) -> set[str]:
    """The paths the run's batches went to."""
    return {record.path for record in emulator.requests() if record.method == "POST"}


def received(emulator: IngestEmulator) -> Counter[int]:
    """How often the emulator stored each order id."""
    return Counter(event["properties"]["order_id"] for event in emulator.events())


def sync_once(
    engine: sa.Engine,
    emulator: IngestEmulator,
    start: datetime = START,
    end: datetime = END,
    **options: object,
) -> SyncSummary:
    """One run in this process; errors propagate with ``error.summary`` attached."""
    sync, client, _ = worker.build_sync(engine, emulator.url, **options)
    try:
        return worker.run_interval(engine, sync, start, end)
    finally:
        client.close()


def ledger_of(engine: sa.Engine) -> Ledger:
    return Ledger(engine, namespace=worker.NAMESPACE)


def keys_with_status(engine: sa.Engine, status: str) -> set[int]:
    return {int(key) for key in ledger_of(engine).keys_with_status(status)}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = worker.make_engine(sqlite_url)
    yield engine
    engine.dispose()


class Children:
    """Worker processes started by a test; whatever is still running at the end is killed and reaped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **config: object) -> tuple[subprocess.Popen[bytes], Path]:
        result_file = self.directory / f"{name}.result.json"
        config_file = self.directory / f"{name}.config.json"
        config_file.write_text(json.dumps({**config, "result_file": str(result_file)}, default=str))
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, str(WORKER_PATH), str(config_file)], stdout=log, stderr=log)
        self.processes.append(process)
        return process, result_file

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


# --------------------------------------------------------------------------- re-runs


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_rerun_sends_nothing_and_an_overlapping_interval_sends_only_new_rows(
    request, tmp_path, pagent_emulator, dialect
):
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'warehouse.db'}",
        "postgresql": lambda: request.getfixturevalue("postgres_url"),
        "mariadb": lambda: request.getfixturevalue("mariadb_url"),
    }[dialect]()
    engine = worker.make_engine(url)
    try:
        frame = fill_warehouse(engine, 1200)
        first_days, overlap_days = (START, START + 2 * DAY), (START + DAY, START + 3 * DAY)
        first_ids = ids_between(frame, *first_days)

        first = sync_once(engine, pagent_emulator, *first_days)
        assert received(pagent_emulator) == Counter(first_ids)
        assert first.sent == len(first_ids) and first.already_sent == 0

        requests_before = len(pagent_emulator.requests())
        again = sync_once(engine, pagent_emulator, *first_days)
        assert again.sent == 0 and again.already_sent == len(first_ids)
        assert len(pagent_emulator.requests()) == requests_before, "a re-run sent requests"
        assert received(pagent_emulator) == Counter(first_ids)

        overlapping = sync_once(engine, pagent_emulator, *overlap_days)
        new_ids = ids_between(frame, START + 2 * DAY, START + 3 * DAY)
        assert overlapping.sent == len(new_ids)
        assert overlapping.already_sent == len(ids_between(frame, START + DAY, START + 2 * DAY))
        assert received(pagent_emulator) == Counter(first_ids | new_ids), "some row sent twice, or not at all"
        assert ledger_of(engine).count_by_status() == {"sent": len(first_ids | new_ids)}
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- a killed sync

CRASH_ROWS, CRASH_BATCH, CRASH_WORKERS = 3000, 50, 4


@pytest.mark.parametrize("policy", ["resend", "skip"])
@pytest.mark.parametrize("kill_after_batches", [2, 10, 25])
def test_a_sync_killed_mid_run_is_completed_by_the_next_run(
    sqlite_url, sqlite_engine, pagent_emulator, children, policy, kill_after_batches
):
    frame = fill_warehouse(sqlite_engine, CRASH_ROWS)
    every_id = set(frame["order_id"].tolist())
    # Claimed and not yet acknowledged: max_workers batches being sent plus at
    # most max_workers batches queued behind them (see ConversionSync._flush_window).
    in_flight_bound = 2 * CRASH_WORKERS * CRASH_BATCH
    pagent_emulator.faults = Faults(latency_s=0.03)  # so that the kill lands with requests in flight

    child, _ = children.start(
        "crashing",
        warehouse_url=sqlite_url,
        ledger_url=sqlite_url,
        emulator_url=pagent_emulator.url,
        start=START.isoformat(),
        end=END.isoformat(),
        policy=policy,
        max_workers=CRASH_WORKERS,
        batch_size=CRASH_BATCH,
    )
    wait_until(
        lambda: pagent_emulator.accepted_count >= kill_after_batches * CRASH_BATCH or child.poll() is not None,
        timeout_s=60,
        what=f"{kill_after_batches} batches to reach the emulator",
    )
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child ended before the kill:\n{children.log('crashing')}"
    accepted_at_kill = pagent_emulator.accepted_count
    assert kill_after_batches * CRASH_BATCH <= accepted_at_kill < CRASH_ROWS

    pagent_emulator.faults = Faults()
    rerun = sync_once(sqlite_engine, pagent_emulator, policy=policy, max_workers=CRASH_WORKERS, batch_size=CRASH_BATCH)
    pagent_emulator.stop()  # lets the handlers of the killed child's last requests finish storing
    counts = received(pagent_emulator)
    report = f"accepted at kill {accepted_at_kill}, re-run {rerun.describe()}"

    assert set(counts) <= every_id
    if policy == "resend":
        assert set(counts) == every_id, f"rows lost: {sorted(every_id - set(counts))[:10]}; {report}"
        duplicates = sum(count - 1 for count in counts.values())
        assert duplicates <= rerun.unknown_resent <= in_flight_bound, report
        assert ledger_of(sqlite_engine).count_by_status() == {"sent": CRASH_ROWS}
        assert rerun.sent == CRASH_ROWS - rerun.already_sent
    else:
        assert max(counts.values()) == 1, f"sent twice under skip: {report}"
        unknown = keys_with_status(sqlite_engine, "unknown")
        missing = every_id - set(counts)
        assert missing <= unknown, f"rows lost without being reported unknown: {sorted(missing - unknown)[:10]}"
        assert len(unknown) == rerun.unknown <= in_flight_bound, report
        expected = {"sent": CRASH_ROWS - len(unknown), "unknown": len(unknown)}
        assert ledger_of(sqlite_engine).count_by_status() == expected


# --------------------------------------------------------------------------- lost answers


@BOTH_APIS
@pytest.mark.parametrize("policy", ["resend", "skip"])
def test_a_lost_answer_is_unknown_stops_the_run_and_the_next_run_honours_the_policy(
    sqlite_engine, pagent_emulator, policy, api
):
    # 30 batches: the run stops at the 4th request's lost answer, and the batches already
    # claimed then (at most 2 x max_workers = 8, more if other answers overtake the lost
    # one) must not be all of them, or "the run stopped" could not be seen (10 batches
    # were once all sent before the lost answer was collected)
    frame = fill_warehouse(sqlite_engine, 3000)
    every_id = set(frame["order_id"].tolist())
    pagent_emulator.faults = Faults(drop_every=4)  # stored by the server, then the connection drops

    # whatever the policy, the run stops at the first lost answer (after draining what is in flight)
    with pytest.raises(PagentUnknownOutcomeError, match="stopped there") as raised:
        sync_once(sqlite_engine, pagent_emulator, policy=policy, api=api)
    first = raised.value.summary  # type: ignore[attr-defined]
    dropped = [record for record in pagent_emulator.requests() if record.status == NO_RESPONSE]
    lost = sum(record.n_events for record in dropped)
    assert dropped and first["unknown"] == lost
    unknown = keys_with_status(sqlite_engine, "unknown")
    assert len(unknown) == lost
    # nothing acknowledged is left unrecorded: the server holds exactly what is sent or unknown
    assert set(received(pagent_emulator)) == keys_with_status(sqlite_engine, "sent") | unknown
    assert first["sent"] + lost < len(every_id), "the run did not stop"
    in_flight_bound = 2 * 4 * 100  # 2 x max_workers (build_sync: 4) batches of 100
    assert lost <= in_flight_bound

    pagent_emulator.faults = Faults()
    second = sync_once(sqlite_engine, pagent_emulator, policy=policy, api=api)
    assert posted_paths(pagent_emulator) == {API_PATHS[api]}
    counts = received(pagent_emulator)
    assert set(counts) == every_id, "rows lost"
    if policy == "resend":
        assert second.unknown_resent == lost
        assert {order_id for order_id, count in counts.items() if count == 2} == unknown
        assert set(counts.values()) == {1, 2}
        assert ledger_of(sqlite_engine).count_by_status() == {"sent": len(every_id)}
    else:
        assert second.unknown == lost and second.unknown_resent == 0
        assert counts == Counter(every_id), "a skipped unknown outcome was sent again"
        assert keys_with_status(sqlite_engine, "unknown") == unknown


# --------------------------------------------------------------------------- server errors and rate limits


@BOTH_APIS
def test_every_third_request_failing_with_500_still_delivers_each_row_once(sqlite_engine, pagent_emulator, api):
    frame = fill_warehouse(sqlite_engine, 1500)
    pagent_emulator.faults = Faults(fail_every=3)
    summary = sync_once(sqlite_engine, pagent_emulator, api=api)
    assert posted_paths(pagent_emulator) == {API_PATHS[api]}
    assert received(pagent_emulator) == Counter(frame["order_id"].tolist())
    assert summary.sent == 1500
    assert sum(record.status == 500 for record in pagent_emulator.requests()) >= 5


@pytest.mark.parametrize(
    ("retry_after", "every", "rows", "api"),
    [("0", 2, 1500, "v1"), ("1", 3, 800, "v1"), ("0", 2, 1500, "v2")],
    ids=["retry-after-0-every-2nd", "retry-after-1-every-3rd", "v2-retry-after-0-every-2nd"],
)
def test_429_storms_still_deliver_each_row_once_and_retry_after_is_honoured(
    sqlite_engine, pagent_emulator, retry_after, every, rows, api
):
    frame = fill_warehouse(sqlite_engine, rows)
    pagent_emulator.faults = Faults(rate_limit_every=every, retry_after=retry_after)
    # every k-th request of the whole run is refused, so one request may meet several 429s in a row
    summary = sync_once(sqlite_engine, pagent_emulator, max_retries=25, api=api)
    assert received(pagent_emulator) == Counter(frame["order_id"].tolist())
    assert summary.sent == rows
    records = pagent_emulator.requests()
    limited = [record.received_at for record in records if record.status == 429]
    assert len(limited) >= 2
    if retry_after == "1":
        # every sender waits out Retry-After: nothing starts in the second after a 429,
        # except requests that had already left when the pause began
        for refused_at in limited:
            early = [r for r in records if refused_at + 0.25 < r.received_at < refused_at + 0.85]
            assert not early, f"requests sent {[round(r.received_at - refused_at, 3) for r in early]}s after a 429"


# --------------------------------------------------------------------------- concurrent processes


def test_four_processes_syncing_overlapping_intervals_deliver_each_row_exactly_once(
    postgres_url, pagent_emulator, children, tmp_path
):
    engine = worker.make_engine(postgres_url)
    try:
        frame = fill_warehouse(engine, 2000)
    finally:
        engine.dispose()
    pagent_emulator.faults = Faults(latency_s=0.005)
    go_file = tmp_path / "go"
    intervals = [(0, 2), (1, 3), (2, 4), (0, 4)]
    started = []
    for number, (first_day, last_day) in enumerate(intervals):
        name = f"worker{number}"
        process, result_file = children.start(
            name,
            warehouse_url=postgres_url,
            ledger_url=postgres_url,
            emulator_url=pagent_emulator.url,
            start=(START + first_day * DAY).isoformat(),
            end=(START + last_day * DAY).isoformat(),
            max_workers=3,
            batch_size=50,
            chunksize=200,
            descending=number % 2 == 1,  # half of them read newest first
            ready_file=str(tmp_path / f"{name}.ready"),
            go_file=str(go_file),
        )
        started.append((name, process, result_file))
    wait_until(
        lambda: all((tmp_path / f"{n}.ready").exists() or process.poll() is not None for n, process, _ in started),
        timeout_s=60,
        what="the workers to be ready",
    )
    go_file.touch()  # all four start sending at the same moment
    for name, process, _ in started:
        assert process.wait(timeout=60) == 0, children.log(name)
    summaries = [json.loads(result_file.read_text())["summary"] for _, _, result_file in started]

    counts = received(pagent_emulator)
    assert counts == Counter(frame["order_id"].tolist()), (
        f"duplicates: {sum(c - 1 for c in counts.values())}, missing: {len(set(frame['order_id']) - set(counts))}"
    )
    rows_read = sum(len(ids_between(frame, START + a * DAY, START + b * DAY)) for a, b in intervals)
    assert sum(s["rows"] for s in summaries) == rows_read
    assert sum(s["sent"] for s in summaries) == 2000
    # rows another worker held were waited for and end as already sent: none is left unaccounted for
    assert sum(s["already_sent"] for s in summaries) == rows_read - 2000
    assert all(s["claimed_elsewhere"] == 0 for s in summaries)
    assert any(s["waited_for_elsewhere"] for s in summaries), "the workers never competed for a key"
    engine = worker.make_engine(postgres_url)
    try:
        assert ledger_of(engine).count_by_status() == {"sent": 2000}
    finally:
        engine.dispose()


def test_a_retry_beside_an_orphaned_earlier_try_still_sending_sends_nothing_twice(
    sqlite_url, sqlite_engine, pagent_emulator, children
):
    """A lost Celery worker can leave its task process running, orphaned, while the scheduler starts try 2."""
    frame = fill_warehouse(sqlite_engine, 2000)
    pagent_emulator.faults = Faults(latency_s=0.05)
    common = {
        "warehouse_url": sqlite_url,
        "ledger_url": sqlite_url,
        "emulator_url": pagent_emulator.url,
        "start": START.isoformat(),
        "end": END.isoformat(),
        "max_workers": 2,
        "batch_size": 50,
        "chunksize": 200,
        "task": "backfill/sync_partition/manual__1/3",
    }
    orphan, orphan_result = children.start("try1", **common, try_number=1)
    wait_until(lambda: len(pagent_emulator.events()) >= 300, timeout_s=60, what="try 1 to be well under way")
    retry, retry_result = children.start("try2", **common, try_number=2)

    assert retry.wait(timeout=120) == 0, children.log("try2")
    assert orphan.wait(timeout=120) == 0, children.log("try1")

    counts = received(pagent_emulator)
    assert counts == Counter(frame["order_id"].tolist()), (
        f"duplicates: {sum(c - 1 for c in counts.values())}, missing: {len(set(frame['order_id']) - set(counts))}"
    )
    first, second = (json.loads(path.read_text())["summary"] for path in (orphan_result, retry_result))
    assert first["sent"] + second["sent"] == 2000
    assert first["sent"] >= 300 and second["unknown_resent"] == 0
    assert ledger_of(sqlite_engine).count_by_status() == {"sent": 2000}


# --------------------------------------------------------------------------- a refused row


@pytest.mark.parametrize(("max_invalid_rows", "api"), [(0, "v1"), (1, "v1"), (1, "v2")])
def test_one_refused_row_in_a_batch_of_100_is_isolated_and_recorded(
    sqlite_engine, pagent_emulator, max_invalid_rows, api
):
    frame = fill_warehouse(sqlite_engine, 100)
    bad = frame.iloc[37]
    assert (frame["session_id"] == bad["session_id"]).sum() == 1
    pagent_emulator.faults = Faults(
        refuse=lambda event: "unknown session" if event["session_id"] == bad["session_id"] else None
    )

    if max_invalid_rows == 0:
        with pytest.raises(PagentDeliveryError, match="1 refused rows exceed max_invalid_rows=0") as raised:
            sync_once(sqlite_engine, pagent_emulator, max_invalid_rows=0, api=api)
        summary = raised.value.summary  # type: ignore[attr-defined]
    else:
        summary = sync_once(sqlite_engine, pagent_emulator, max_invalid_rows=1, api=api).as_dict()
    assert posted_paths(pagent_emulator) == {API_PATHS[api]}

    good_ids = set(frame["order_id"].tolist()) - {int(bad["order_id"])}
    assert received(pagent_emulator) == Counter(good_ids)
    assert summary["sent"] == 99 and summary["rejected"] == 1 and summary["batches"] == 1
    assert any("unknown session" in example for example in summary["reject_examples"])

    ledger = ledger_of(sqlite_engine)
    with sqlite_engine.connect() as conn:
        rejects = conn.execute(sa.select(ledger.rejects_table)).all()
    bad_key = str(bad["order_id"])
    assert [(r.source, r.event_key, r.row_ref) for r in rejects] == [("refused", bad_key, bad_key)]
    assert "unknown session" in rejects[0].reason
    assert bad_key not in ledger.lookup([bad_key]), "a refused row stays claimed"
    assert ledger.count_by_status() == {"sent": 99}
