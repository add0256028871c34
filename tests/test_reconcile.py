"""Issue 12: reconcile finds exactly the rows a faulty run left unsent, and nothing once they are fixed.

A real sync over real HTTP (the emulator refusing two rows and dropping an
answer, which stops the run early) leaves a warehouse whose rows are in every
category: sent, invalid (NULL conversion_id), refused, unknown, never sent;
another owner then claims a few (in flight) and two sent rows change. The sets
expected are computed from what was prepared and from what the server stored,
never from the reconciler, and compared with its report. The rows are then
fixed and the sync run again, until the report says every row was sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.reconcile import (
    CATEGORIES,
    ReconcileReport,
    _SeenKeys,
    reconcile,
)
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentConfigError, PagentError, PagentUnknownOutcomeError
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import GOAL_PURCHASE, generate_conversions, load_conversions

ROWS = 300
NAMESPACE = "pagent_default"
TRANSFORM = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id", properties_columns=["order_id"]
)
SQL = "SELECT * FROM conversions ORDER BY order_id"
INVALID = {4, 61, 280}  # NULL conversion_id: the goal label matched no goal
REFUSED = {2, 9}  # in the first batch, so that pagent refuses them before the run stops
DROP_EVERY = 20  # the 20th request's answer is lost: unknown, and the run stops there


# --------------------------------------------------------------------------- set-up


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def ledger_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue(f"{request.param}_url")
    )
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    frame = generate_conversions(ROWS, start=datetime(2026, 1, 1), end=datetime(2026, 1, 4), seed=12)
    frame["conversion_id"] = frame["conversion_id"].astype(object)
    frame.loc[frame["order_id"].isin(INVALID), "conversion_id"] = None
    load_conversions(engine, frame)
    yield engine
    engine.dispose()


def run_sync(
    warehouse: sa.Engine, ledger_engine: sa.Engine, emulator: IngestEmulator, max_invalid_rows: int = 0
) -> dict:
    """One sync of every row, one request at a time (so the run stops at a known point)."""
    ledger = Ledger(ledger_engine, namespace=NAMESPACE)
    options = SyncOptions(batch_size=25, max_workers=1, max_invalid_rows=max_invalid_rows)
    retry = RetryPolicy(max_retries=1, backoff_initial_s=0.05, backoff_max_s=0.5, read_timeout_s=5)
    with PagentClient("test-key", base_url=emulator.url, policy=retry) as client:
        sync = ConversionSync(client, TRANSFORM, options, ledger=ledger)
        try:
            return sync.run(read_sql_chunks(warehouse, SQL, None, chunksize=100)).as_dict()
        except PagentError as error:
            return {**error.summary, "error": error}  # type: ignore[attr-defined]


def reconcile_now(warehouse: sa.Engine, ledger_engine: sa.Engine, chunksize: int = 64) -> ReconcileReport:
    ledger = Ledger(ledger_engine, namespace=NAMESPACE)
    return reconcile(read_sql_chunks(warehouse, SQL, None, chunksize=chunksize), TRANSFORM, ledger, examples=ROWS)


def found(report: ReconcileReport) -> dict[str, set[int]]:
    """The order ids of every category (the report keeps every example: ``examples=ROWS``)."""
    return {category: {int(example.row) for example in report.examples[category]} for category in CATEGORIES}


def expect(**categories: set[int]) -> dict[str, set[int]]:
    """Every category's order ids: those named, the rest empty."""
    return {category: categories.get(category, set()) for category in CATEGORIES}


def stored(emulator: IngestEmulator) -> set[int]:
    return {int(event["properties"]["order_id"]) for event in emulator.events()}


def keys_with_status(engine: sa.Engine, status: str) -> set[int]:
    return {int(key) for key in Ledger(engine, namespace=NAMESPACE).keys_with_status(status)}


def set_amount(warehouse: sa.Engine, order_ids: set[int], delta: Decimal) -> None:
    with warehouse.begin() as conn:
        for order_id in order_ids:
            conn.execute(
                sa.text("UPDATE conversions SET amount_usd = amount_usd + :delta WHERE order_id = :id"),
                {"delta": float(delta), "id": order_id},
            )


def set_goal(warehouse: sa.Engine, order_ids: set[int]) -> None:
    with warehouse.begin() as conn:
        for order_id in order_ids:
            conn.execute(
                sa.text("UPDATE conversions SET conversion_id = :goal WHERE order_id = :id"),
                {"goal": GOAL_PURCHASE, "id": order_id},
            )


# --------------------------------------------------------------------------- the faulty run, then the fixes


def test_reconcile_finds_exactly_what_a_faulty_run_left_and_nothing_once_fixed(
    warehouse: sa.Engine, ledger_engine: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    every_id = set(range(1, ROWS + 1))
    pagent_emulator.faults = Faults(
        refuse=lambda event: "unknown goal" if int(event["properties"]["order_id"]) in REFUSED else None,
        drop_every=DROP_EVERY,
    )
    # max_invalid_rows: pagent may refuse (and the sync bisect) a few rows; the lost answer stops the run
    first = run_sync(warehouse, ledger_engine, pagent_emulator, max_invalid_rows=10)
    assert isinstance(first["error"], PagentUnknownOutcomeError)
    # it stopped before reading row 280: reconcile still finds it invalid
    assert first["rejected"] == len(REFUSED) and first["invalid"] == len(INVALID) - 1

    # What the faulty run left, from the server's side and from what was prepared.
    on_server = stored(pagent_emulator)
    sent = keys_with_status(ledger_engine, "sent")
    unknown = on_server - sent  # stored by the server, but the answer was lost
    assert unknown and unknown == keys_with_status(ledger_engine, "unknown")
    assert not on_server & (REFUSED | INVALID)
    never_sent = every_id - INVALID - REFUSED - on_server
    assert len(never_sent) > 50, "the run did not stop early"
    # another live run holds three of them; two sent rows get a corrected revenue
    held = set(sorted(never_sent)[:3])
    other = Ledger(ledger_engine, namespace=NAMESPACE, owner=ClaimOwner(run_token="0" * 32, task="dag/other/run/-1"))
    claim = other.claim([(str(key), "other-run-hash") for key in sorted(held)])
    changed = set(sorted(sent)[:2])
    set_amount(warehouse, changed, Decimal("1.00"))

    report = reconcile_now(warehouse, ledger_engine)

    assert found(report) == expect(
        sent=sent - changed,
        changed_after_send=changed,
        unknown=unknown,
        in_flight=held,
        refused=REFUSED,
        invalid=INVALID,
        never_sent=never_sent - held,
    )
    assert report.rows == ROWS == sum(report.counts.values())
    assert report.unaccounted == ROWS - len(sent - changed) and not report.ok
    reasons = {category: {e.reason for e in report.examples[category]} for category in CATEGORIES}
    assert all("conversion_id" in reason for reason in reasons["invalid"])
    assert all("unknown goal" in reason for reason in reasons["refused"])
    assert all("dag/other/run/-1" in reason and "abandoned" not in reason for reason in reasons["in_flight"])
    assert json.loads(json.dumps(report.as_dict()))["counts"] == report.counts

    # The server is healthy again and the other run gave its claims back; the
    # invalid rows are not fixed yet: they (and the changed rows) are all that is left.
    pagent_emulator.faults = Faults()
    other.release(claim.claim_id)
    second = run_sync(warehouse, ledger_engine, pagent_emulator)
    assert second["invalid"] == len(INVALID) and second["unknown_resent"] == len(unknown)
    report = reconcile_now(warehouse, ledger_engine, chunksize=1000)
    assert found(report) == expect(sent=every_id - INVALID - changed, changed_after_send=changed, invalid=INVALID)

    # The invalid rows fixed, the corrected revenue put back as it was sent: every row is sent.
    set_goal(warehouse, INVALID)
    set_amount(warehouse, changed, Decimal("-1.00"))
    third = run_sync(warehouse, ledger_engine, pagent_emulator)
    assert "error" not in third and third["sent"] == len(INVALID)
    report = reconcile_now(warehouse, ledger_engine)
    assert found(report) == expect(sent=every_id)
    assert report.ok and report.unaccounted == 0 and report.counts["sent"] == ROWS
    assert stored(pagent_emulator) == every_id


def test_an_abandoned_claim_is_in_flight_and_says_so(
    warehouse: sa.Engine, ledger_engine: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    dead = Ledger(ledger_engine, namespace=NAMESPACE, owner=ClaimOwner(run_token="1" * 32), claim_timeout_s=0.001)
    dead.create_tables()
    dead.claim([("7", "hash")])
    time.sleep(0.05)  # its heartbeat is now older than the claim timeout

    report = reconcile(
        read_sql_chunks(warehouse, SQL, None),
        TRANSFORM,
        Ledger(ledger_engine, namespace=NAMESPACE, claim_timeout_s=0.001),
    )

    assert report.counts["in_flight"] == 1 and report.counts["never_sent"] == ROWS - len(INVALID) - 1
    [example] = report.examples["in_flight"]
    assert example.row == example.key == "7" and "abandoned" in example.reason


# --------------------------------------------------------------------------- keys, chunks and memory


def frame(order_ids: list[int]) -> pd.DataFrame:
    rows = generate_conversions(len(order_ids), start=datetime(2026, 1, 1), end=datetime(2026, 1, 2), seed=5)
    rows["order_id"] = order_ids
    return rows


def test_a_key_repeated_within_a_chunk_or_across_chunks_is_a_duplicate_key(ledger_engine: sa.Engine) -> None:
    chunks = [frame([1, 2, 2, 3]), frame([3, 4, 1]), frame([5, 5, 5])]

    report = reconcile(iter(chunks), TRANSFORM, Ledger(ledger_engine, namespace=NAMESPACE))

    assert report.rows == 10
    assert report.counts["never_sent"] == 5 and report.counts["duplicate_key"] == 5
    assert sorted(int(e.row) for e in report.examples["duplicate_key"]) == [1, 2, 3, 5, 5]
    assert not report.ledger_exists  # nothing was ever synced: and reconcile created nothing
    assert not Ledger(ledger_engine, namespace=NAMESPACE).tables_exist()


def test_without_a_key_column_the_keys_are_content_hashes_as_in_the_sync(
    warehouse: sa.Engine, ledger_engine: sa.Engine, pagent_emulator: IngestEmulator
) -> None:
    unkeyed = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"})
    ledger = Ledger(ledger_engine, namespace=NAMESPACE)
    with PagentClient("test-key", base_url=pagent_emulator.url) as client:
        sync = ConversionSync(client, unkeyed, SyncOptions(max_invalid_rows=len(INVALID)), ledger=ledger)
        sync.run(read_sql_chunks(warehouse, SQL, None))

    report = reconcile(read_sql_chunks(warehouse, SQL, None, chunksize=50), unkeyed, ledger)

    assert report.counts["sent"] == ROWS - len(INVALID) and report.counts["invalid"] == len(INVALID)
    assert report.unaccounted == len(INVALID)
    assert {e.row for e in report.examples["invalid"]} == {f"row {order_id - 1}" for order_id in INVALID}


def test_examples_are_bounded_and_the_chunks_are_closed(ledger_engine: sa.Engine) -> None:
    closed = []

    def chunks() -> Iterator[pd.DataFrame]:
        try:
            for start in range(0, 1000, 100):
                yield frame(list(range(start, start + 100)))
        finally:
            closed.append(True)

    report = reconcile(chunks(), TRANSFORM, Ledger(ledger_engine, namespace=NAMESPACE), examples=3)

    assert report.counts["never_sent"] == 1000 and len(report.examples["never_sent"]) == 3
    assert closed == [True]
    text = report.describe()
    assert "never_sent" in text and "1000 of 1000 rows are unaccounted for" in text


def test_a_query_without_a_needed_column_fails_before_any_lookup(ledger_engine: sa.Engine) -> None:
    with pytest.raises(PagentConfigError, match="order_id"):
        reconcile(iter([frame([1]).drop(columns="order_id")]), TRANSFORM, Ledger(ledger_engine, namespace=NAMESPACE))


def test_seen_keys_agree_with_a_set_over_many_chunks() -> None:
    rng = np.random.default_rng(3)
    seen, reference = _SeenKeys(), set()
    for _ in range(200):
        keys = [str(k) for k in rng.integers(0, 20_000, size=int(rng.integers(1, 300)))]
        digests = _SeenKeys.digests(keys)
        assert seen.contains(digests).tolist() == [key in reference for key in keys]
        new = list(dict.fromkeys(key for key in keys if key not in reference))
        seen.add(_SeenKeys.digests(new))
        reference.update(new)
    assert len(seen._runs) <= 16  # merged as they grow: a few runs, not one per chunk
    assert sum(map(len, seen._runs)) == len(reference)
