"""Issue 9: rows another live run holds are re-checked at the end; a run never succeeds while they are open.

A second owner (another run token, alive: this very process, heartbeat fresh)
claims some keys of the query in a real ledger; the sync then runs over real
HTTP. Whatever the other owner does meanwhile (nothing, release, get them
acknowledged), the counts must add up: stored by the server, sent in the
ledger, reported in the summary.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentClaimedElsewhereError, PagentRetriableError
from pagent_provider.testing import IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions, load_conversions

ROWS = 400
HELD = 7
NAMESPACE = "pagent_default"
TRANSFORM = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id", properties_columns=["order_id"]
)


@pytest.fixture(params=["sqlite", "postgres"])
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine, list[int]]]:
    warehouse = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    frame = generate_conversions(ROWS, start=datetime(2026, 1, 1), end=datetime(2026, 1, 3), seed=4)
    load_conversions(warehouse, frame)
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    ledger_engine = sa.create_engine(url)
    yield warehouse, ledger_engine, frame["order_id"].tolist()
    warehouse.dispose()
    ledger_engine.dispose()


def other_run(ledger_engine: sa.Engine, keys: list[int]) -> tuple[Ledger, str]:
    """A live owner (not this sync) holding ``keys``: same process, fresh heartbeat."""
    other = Ledger(ledger_engine, namespace=NAMESPACE, owner=ClaimOwner(run_token="0" * 32))
    other.create_tables()
    claim = other.claim([(str(key), "other-run-hash") for key in keys])
    assert claim.claimed == {str(key) for key in keys}
    return other, claim.claim_id


def sync(warehouse: sa.Engine, ledger_engine: sa.Engine, emulator: IngestEmulator, wait_s: float) -> dict:
    ledger = Ledger(ledger_engine, namespace=NAMESPACE)
    options = SyncOptions(max_workers=2, claimed_elsewhere_wait_s=wait_s)
    with PagentClient("test-key", base_url=emulator.url, policy=RetryPolicy(max_retries=1)) as client:
        engine = ConversionSync(client, TRANSFORM, options, ledger=ledger)
        sql = "SELECT * FROM conversions ORDER BY order_id"
        return engine.run(read_sql_chunks(warehouse, sql, None, chunksize=100)).as_dict()


def after(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def stored(emulator: IngestEmulator) -> Counter[int]:
    return Counter(event["properties"]["order_id"] for event in emulator.events())


def test_rows_still_held_at_the_end_fail_the_run_with_a_retriable_error(engines, pagent_emulator) -> None:
    warehouse, ledger_engine, order_ids = engines
    held = order_ids[100 : 100 + HELD]
    other_run(ledger_engine, held)

    with pytest.raises(PagentClaimedElsewhereError) as raised:
        sync(warehouse, ledger_engine, pagent_emulator, wait_s=1.0)

    assert isinstance(raised.value, PagentRetriableError)  # Airflow's next try checks them again
    summary = raised.value.summary  # type: ignore[attr-defined]
    assert summary["claimed_elsewhere"] == HELD and summary["sent"] == ROWS - HELD
    assert stored(pagent_emulator) == Counter(set(order_ids) - set(held))
    statuses = Ledger(ledger_engine, namespace=NAMESPACE).count_by_status()
    assert statuses == {"sent": ROWS - HELD, "claimed": HELD}


def test_rows_the_other_run_releases_are_sent_by_this_run(engines, pagent_emulator) -> None:
    warehouse, ledger_engine, order_ids = engines
    held = order_ids[250 : 250 + HELD]
    other, claim_id = other_run(ledger_engine, held)

    timer = after(0.5, lambda: other.release(claim_id))  # its request failed definitely
    try:
        summary = sync(warehouse, ledger_engine, pagent_emulator, wait_s=20.0)
    finally:
        timer.cancel()

    assert summary["sent"] == ROWS and summary["claimed_elsewhere"] == 0
    assert summary["waited_for_elsewhere"] == HELD
    assert stored(pagent_emulator) == Counter(order_ids)  # each exactly once
    assert Ledger(ledger_engine, namespace=NAMESPACE).count_by_status() == {"sent": ROWS}


def test_rows_the_other_run_gets_acknowledged_count_as_already_sent(engines, pagent_emulator) -> None:
    warehouse, ledger_engine, order_ids = engines
    held = order_ids[:HELD]
    other, claim_id = other_run(ledger_engine, held)

    timer = after(0.5, lambda: other.mark_sent(claim_id))  # its batch was acknowledged
    try:
        summary = sync(warehouse, ledger_engine, pagent_emulator, wait_s=20.0)
    finally:
        timer.cancel()

    assert summary["sent"] == ROWS - HELD and summary["already_sent"] == HELD
    assert summary["claimed_elsewhere"] == 0 and summary["waited_for_elsewhere"] == HELD
    assert stored(pagent_emulator) == Counter(set(order_ids) - set(held))  # the other run sent those
    assert Ledger(ledger_engine, namespace=NAMESPACE).count_by_status() == {"sent": ROWS}
