"""The v2 bulk endpoint from the sync engine: the same ledger, keys and hashes as v1.

Runs go to the real emulator over HTTP and are judged by what it stored (raw,
as received, and normalised to the v1 shape) and by the ledger's rows. The
fault runs (500s, 429s, lost answers, a refused row) through v2 are in
``test_delivery_guarantees.py``, parametrised over both APIs.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.apis import check_api, v2_event
from pagent_provider.core.client import V1_PATH, V2_BULK_PATH, PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentConfigError
from pagent_provider.testing import IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions

KEYED = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"},
    key_column="order_id",
    properties_columns=["order_id", "channel"],
)
#: Without a key column the ledger key is the content hash itself.
UNKEYED = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, properties_columns=["order_id"])
ROWS = 750


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_conversions(ROWS, start=datetime(2026, 3, 1), end=datetime(2026, 3, 3), seed=5)


@pytest.fixture
def ledger_engine(tmp_path: Path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.dispose()


def sync(
    emulator: IngestEmulator, engine: sa.Engine, frame: pd.DataFrame, api: str, transform: TransformConfig = KEYED
) -> dict:
    """One run of ``frame`` in chunks of 200 through ``api``; the summary dict."""
    policy = RetryPolicy(backoff_initial_s=0.01)
    with PagentClient("test-key", base_url=emulator.url, policy=policy) as client:
        engine_sync = ConversionSync(
            client,
            transform,
            SyncOptions(api=api, max_workers=3),  # type: ignore[arg-type]
            ledger=Ledger(engine, namespace="shop"),
        )
        chunks = (frame.iloc[start : start + 200] for start in range(0, len(frame), 200))
        return engine_sync.run(chunks).as_dict()


def stored_digests(engine: sa.Engine) -> dict[str, int]:
    ledger = Ledger(engine, namespace="shop")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.table.c.event_key, ledger.table.c.content_digest)).all()
    return dict(rows)


def test_a_v2_run_posts_session_data_to_the_bulk_endpoint_and_stores_the_same_events_as_v1(
    pagent_emulator, tmp_path, frame
):
    v1_engine = sa.create_engine(f"sqlite:///{tmp_path / 'v1.db'}")
    v2_engine = sa.create_engine(f"sqlite:///{tmp_path / 'v2.db'}")
    try:
        assert sync(pagent_emulator, v1_engine, frame, "v1")["sent"] == ROWS
        as_v1 = pagent_emulator.events()
        pagent_emulator.reset()
        summary = sync(pagent_emulator, v2_engine, frame, "v2")
        raw = [accepted.event for accepted in pagent_emulator.accepted()]

        assert summary["sent"] == summary["accepted"] == ROWS and summary["batches"] == 8
        assert {record.path for record in pagent_emulator.requests()} == {V2_BULK_PATH}
        assert all(set(event["session_data"]) == {"session_id", "user_id", "conversion_id"} for event in raw)
        assert not any("session_id" in event or "user_id" in event for event in raw)
        # the same conversions, field for field, whichever endpoint carried them
        key = lambda event: event["properties"]["order_id"]  # noqa: E731
        assert sorted(pagent_emulator.events(), key=key) == sorted(as_v1, key=key)
        # and the same ledger: keys and content digests of the v1 event
        assert stored_digests(v2_engine) == stored_digests(v1_engine)
        assert len(stored_digests(v2_engine)) == ROWS
    finally:
        v1_engine.dispose()
        v2_engine.dispose()


@pytest.mark.parametrize(("first", "then"), [("v1", "v2"), ("v2", "v1")])
@pytest.mark.parametrize("transform", [KEYED, UNKEYED], ids=["key_column", "content-hash-keys"])
def test_switching_api_on_an_existing_ledger_resends_nothing(
    pagent_emulator, ledger_engine, frame, first, then, transform
):
    history, today = frame.iloc[:500], frame
    assert sync(pagent_emulator, ledger_engine, history, first, transform)["sent"] == 500

    summary = sync(pagent_emulator, ledger_engine, today, then, transform)

    assert summary["already_sent"] == 500 and summary["changed_after_send"] == 0
    assert summary["sent"] == ROWS - 500
    received = Counter(event["properties"]["order_id"] for event in pagent_emulator.events())
    assert received == Counter(frame["order_id"].tolist()), "a row was sent twice or lost"
    paths = Counter(record.path for record in pagent_emulator.requests())
    assert set(paths) == {V1_PATH, V2_BULK_PATH}


def test_v2_event_moves_the_session_variables_and_visit_id_into_session_data():
    event = {"session_id": "s", "user_id": "u", "conversion_id": "g", "label": "buy", "revenue": 999, "time": 1}

    assert v2_event(event, "v_1") == {
        "session_data": {"session_id": "s", "user_id": "u", "conversion_id": "g", "visit_id": "v_1"},
        "label": "buy",
        "revenue": 999,
        "time": 1,
    }
    assert v2_event(event)["session_data"] == {"session_id": "s", "user_id": "u", "conversion_id": "g"}
    assert event["session_id"] == "s", "the v1 event (and so its hash) must stay as it was"


@pytest.mark.parametrize("api", ["v3", "V2", "", None, 2])
def test_an_unknown_api_is_a_config_error_naming_the_choices(api):
    with pytest.raises(PagentConfigError, match="api must be one of 'v1', 'v2'"):
        check_api(api)
    with pytest.raises(PagentConfigError, match="api must be one of"):
        SyncOptions(api=api)  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_visit_ids_are_sent_by_v2_and_a_v1_run_that_reads_them_warns_it_cannot(pagent_emulator, ledger_engine, api):
    objects = [
        '{"session_id": "s1", "user_id": "u1", "visit_id": "v_1", "conversion_id": "g"}',
        '{"session_id": "s2", "user_id": "u2", "conversion_id": "g"}',
    ]
    frame = pd.DataFrame({"order_id": [1, 2], "pagent": objects, "time": [1_767_225_600_000] * 2})
    transform = TransformConfig(key_column="order_id", session_data_column="pagent")

    summary = sync(pagent_emulator, ledger_engine, frame, api, transform)

    assert summary["sent"] == 2
    sessions = [accepted.event.get("session_data") for accepted in pagent_emulator.accepted()]
    warned = [warning for warning in summary["warnings"] if "visit_id" in warning]
    if api == "v2":
        assert sessions == [
            {"session_id": "s1", "user_id": "u1", "visit_id": "v_1", "conversion_id": "g"},
            {"session_id": "s2", "user_id": "u2", "conversion_id": "g"},
        ]
        assert warned == []
    else:
        assert sessions == [None, None]
        assert [event["session_id"] for event in pagent_emulator.events()] == ["s1", "s2"]
        assert warned and "api='v2'" in warned[0]
