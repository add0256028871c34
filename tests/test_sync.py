"""The sync engine over real HTTP: batching, bisection of refused rows, the shared 429 pause, dry runs."""

from __future__ import annotations

import logging
import math
from datetime import datetime

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagent_provider.core.batching import batched
from pagent_provider.core.client import PagentClient
from pagent_provider.core.delivery import PendingEvent, deliver_batch
from pagent_provider.core.encoding import content_hash, encode_event
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.testing import Faults, IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions

CONFIG = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id")


@pytest.fixture(scope="module")
def emulator():
    with IngestEmulator() as running:
        yield running


@pytest.fixture
def client(emulator):
    emulator.reset()
    emulator.faults = Faults()
    with PagentClient("test-key", base_url=emulator.url, policy=RetryPolicy(backoff_initial_s=0.01)) as pagent:
        yield pagent


def purchases(rows: int, seed: int = 1) -> pd.DataFrame:
    return generate_conversions(rows, start=datetime(2026, 11, 1), end=datetime(2026, 11, 3), seed=seed)


@given(st.lists(st.integers(), max_size=400), st.integers(min_value=1, max_value=100))
def test_batched_keeps_order_and_sizes(items, size):
    batches = list(batched(items, size))
    assert [item for batch in batches for item in batch] == items
    assert all(1 <= len(batch) <= size for batch in batches)
    assert all(len(batch) == size for batch in batches[:-1])
    assert len(batches) == math.ceil(len(items) / size)


def pending(n: int) -> list[PendingEvent]:
    events = []
    for i in range(n):
        encoded = encode_event({"session_id": f"s{i}", "user_id": "u", "conversion_id": "g"})
        events.append(PendingEvent(f"k{i}", content_hash(encoded), encoded, f"row {i}"))
    return events


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bisection_isolates_exactly_the_refused_rows(client, emulator, data):
    emulator.reset()
    size = data.draw(st.integers(min_value=1, max_value=100), label="batch size")
    refused = data.draw(st.sets(st.integers(min_value=0, max_value=size - 1), max_size=4), label="refused")
    emulator.faults = Faults(refuse=lambda e: "unknown session" if int(e["session_id"][1:]) in refused else None)

    outcome = deliver_batch(client.send_encoded_v1, pending(size), claim_id="c")

    assert sorted(int(e.key[1:]) for e, _ in outcome.refused) == sorted(refused)
    assert all(message.endswith("unknown session") for _, message in outcome.refused)
    delivered = sorted(int(e["session_id"][1:]) for e in emulator.events())
    assert delivered == sorted(set(range(size)) - refused)
    assert outcome.accepted == len(delivered) and not outcome.failed and not outcome.unknown
    bound = 1 + 2 * len(refused) * max(1, math.ceil(math.log2(size)))
    assert outcome.requests == len(emulator.requests()) <= bound


def test_rate_limit_pauses_every_worker(client, emulator):
    emulator.faults = Faults(rate_limit_every=15, retry_after="1")
    sync = ConversionSync(client, CONFIG, SyncOptions(max_workers=4, batch_size=10))

    summary = sync.run([purchases(400)])

    assert summary.sent == 400
    requests = emulator.requests()
    limited = [r.received_at for r in requests if r.status == 429]
    assert limited
    for at in limited:
        # requests already on the wire may land just after the 429; none start during the pause
        during_pause = [r for r in requests if at + 0.25 < r.received_at < at + 0.9]
        assert during_pause == []


def test_dry_run_sends_nothing_and_counts(client, emulator):
    frame = purchases(250)
    frame.loc[3, "session_id"] = ""
    summary = ConversionSync(client, CONFIG, SyncOptions(dry_run=True, max_invalid_rows=5)).run([frame])
    assert emulator.requests() == []
    assert (summary.rows, summary.valid, summary.invalid, summary.sent, summary.batches) == (250, 249, 1, 0, 3)
    assert summary.dry_run is True


def test_duplicate_keys_in_the_source_are_sent_once(client, emulator, tmp_path):
    import sqlalchemy as sa

    from pagent_provider.core.ledger import Ledger

    frame = purchases(120)
    doubled = pd.concat([frame, frame.iloc[:30], frame.iloc[110:]], ignore_index=True)  # across and within chunks
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, namespace="test")
    summary = ConversionSync(client, CONFIG, ledger=ledger).run([doubled.iloc[:100], doubled.iloc[100:]])
    engine.dispose()
    assert summary.sent == 120
    assert summary.duplicate_keys == 40
    assert sorted(e["session_id"] for e in emulator.events()) == sorted(frame.session_id)


def test_invalid_rows_beyond_the_limit_fail_after_delivering_the_rest(client, emulator):
    from pagent_provider.exceptions import PagentDeliveryError

    frame = purchases(50)
    frame.loc[[4, 9], "conversion_id"] = None
    with pytest.raises(PagentDeliveryError, match="2 invalid and 0 refused rows exceed max_invalid_rows=1") as raised:
        ConversionSync(client, CONFIG, SyncOptions(max_invalid_rows=1)).run([frame])
    assert len(emulator.events()) == 48
    assert raised.value.summary["invalid"] == 2
    assert "no configured goal" in str(raised.value)


def test_progress_is_logged(client, emulator, caplog):
    caplog.set_level(logging.INFO, logger="pagent_provider")
    chunks = [purchases(100, seed=n) for n in range(3)]
    ConversionSync(client, CONFIG, SyncOptions(progress_interval_s=0)).run(chunks)
    progress = [r.getMessage() for r in caplog.records if "rows read" in r.getMessage()]
    assert progress and "300 rows read" in progress[-1]


def test_a_failing_source_still_records_the_batches_in_flight(client, emulator, tmp_path):
    import sqlalchemy as sa

    from pagent_provider.core.ledger import Ledger

    emulator.faults = Faults(latency_s=0.05)

    def chunks():
        yield purchases(400)
        raise RuntimeError("the warehouse connection dropped")

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, namespace="test")
    with pytest.raises(RuntimeError, match="dropped") as raised:
        ConversionSync(client, CONFIG, SyncOptions(max_workers=4), ledger=ledger).run(chunks())
    statuses = ledger.count_by_status()
    engine.dispose()
    sent = raised.value.summary["sent"]
    assert 0 < sent == len(emulator.events()) <= 400
    assert statuses == {"sent": sent}  # nothing left claimed for a later run to resend


def test_acknowledged_batches_are_recorded_while_the_next_chunk_is_read(client, emulator, tmp_path):
    import time

    import sqlalchemy as sa

    from pagent_provider.core.ledger import Ledger

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, namespace="test")
    first, second = purchases(250, seed=1), purchases(250, seed=2)
    second["order_id"] += 1_000
    seen_while_reading = {}

    def slow_warehouse():
        yield first
        deadline = time.monotonic() + 10  # the second chunk takes long to read
        while time.monotonic() < deadline and ledger.count_by_status() != {"sent": 250}:
            time.sleep(0.05)
        seen_while_reading.update(ledger.count_by_status())
        yield second

    summary = ConversionSync(client, CONFIG, SyncOptions(max_workers=4), ledger=ledger).run(slow_warehouse())
    engine.dispose()
    assert seen_while_reading == {"sent": 250}  # nothing acknowledged was left "claimed" during the read
    assert summary.sent == 500


def test_the_first_chunk_is_prepared_head_first_and_later_chunks_whole():
    from pagent_provider.core.preparation import HEAD_ROWS, ChunkPreparer

    preparer = ChunkPreparer(CONFIG, None, dry_run=False)
    first = [len(piece.pending) for piece in preparer.pieces(purchases(3 * HEAD_ROWS))]
    later = [len(piece.pending) for piece in preparer.pieces(purchases(3 * HEAD_ROWS, seed=2))]
    small = [len(piece.pending) for piece in ChunkPreparer(CONFIG, None, dry_run=False).pieces(purchases(HEAD_ROWS))]
    assert (first, later, small) == ([HEAD_ROWS, 2 * HEAD_ROWS], [3 * HEAD_ROWS], [HEAD_ROWS])


def test_keys_repeated_across_the_first_chunks_head_and_rest_are_sent_once_without_a_ledger(client, emulator):
    from pagent_provider.core.preparation import HEAD_ROWS

    frame = purchases(HEAD_ROWS + 500)
    straddling = frame.iloc[HEAD_ROWS - 50 : HEAD_ROWS + 50]  # keys of both pieces, repeated at the end
    summary = ConversionSync(client, CONFIG).run([pd.concat([frame, straddling], ignore_index=True)])
    assert (summary.rows, summary.duplicate_keys, summary.sent) == (HEAD_ROWS + 600, 100, HEAD_ROWS + 500)
    assert sorted(e["session_id"] for e in emulator.events()) == sorted(frame.session_id)
