"""The benchmark's baseline is honest: it sends exactly the events the sync sends, and the sink checks them.

No timing is asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import requests

from benchmarks import baselines, datagen, engine_runs
from benchmarks.sink import InvalidBodies, SinkProcess, validating_counter
from pagent_provider.testing.emulator import IngestEmulator


def test_the_hand_written_pipeline_sends_the_events_the_sync_sends(tmp_path: Path) -> None:
    source = datagen.load_sqlite(tmp_path / "warehouse.db", datagen.make_rows(1_234))
    try:
        with IngestEmulator(api_keys=("test-key",)) as emulator:  # validating, and keeping every event
            engine_runs.sync_ledger_off(source, datagen.select_rows(1_234), emulator.url)
            by_sync = sorted(json.dumps(event.event, sort_keys=True) for event in emulator.accepted())
            emulator.reset()
            timing = baselines.minimal_pipeline(source, datagen.select_rows(1_234), emulator.url)
            by_pipeline = sorted(json.dumps(event.event, sort_keys=True) for event in emulator.accepted())
    finally:
        source.dispose()
    assert timing.events == timing.rows == 1_234 and timing.requests == 13  # batches of 100
    assert len(by_sync) == 1_234
    assert by_pipeline == by_sync
    event = json.loads(by_sync[0])
    assert set(event) == {"conversion_id", "label", "revenue", "session_id", "time", "user_id"}
    assert isinstance(event["revenue"], int) and isinstance(event["time"], int) and event["time"] > 1.7e12


def test_the_sink_refuses_what_pagent_would_refuse_or_misread() -> None:
    event = {"session_id": "s", "user_id": "u", "conversion_id": "c", "label": "purchase"}
    refused = InvalidBodies()
    count = validating_counter(refused)

    def body(*events: dict[str, object]) -> bytes:
        return json.dumps({"events": list(events)}).encode()

    assert count("/v1/conversions", body({**event, "revenue": 3119, "time": 1790822479000}, event)) == 2
    assert count("/v1/conversions", body({**event, "revenue": 31.19})) == 0  # pagent's 400
    assert count("/v1/conversions", body({**event, "time": "2026-10-01 02:41:19.000000"})) == 0  # pagent's 400
    assert count("/v1/conversions", body({**event, "time": 1790822479.5})) == 0  # seconds, not milliseconds
    # a warehouse row posted as it is: pagent takes it, as a conversion without revenue or time
    assert count("/v1/conversions", body({**event, "amount_usd": 31.19, "converted_at": "2026-10-01"})) == 0
    assert refused.bodies == 4
    assert refused.first == "events[0].revenue must be an integer, not 31.19"

    with SinkProcess() as sink:  # the child process does the same, answers 400 and says why
        headers = {"Authorization": "Bearer test-key"}
        data = body({**event, "amount_usd": 31.19})
        assert requests.post(sink.url + "/v1/conversions", data=data, headers=headers, timeout=10).status_code == 400
        assert sink.accepted() == 0
        assert sink.invalid() == (1, "events[0] has fields pagent does not document: amount_usd")
        sink.reset()
        assert sink.invalid() == (0, None)
