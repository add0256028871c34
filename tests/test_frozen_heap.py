"""A sync keeps the objects that existed before it out of full garbage collections, and gives the process back as it was."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from datetime import datetime

import pandas as pd
import pytest

from pagent_provider.core.client import PagentClient
from pagent_provider.core.frozen_heap import frozen_heap
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.testing import IngestEmulator
from pagent_provider.testing.sample_warehouse import generate_conversions

CONFIG = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"}, key_column="order_id")


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def chunks_noting_the_freeze(frame: pd.DataFrame, seen: list[int]) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), 100):
        seen.append(gc.get_freeze_count())  # asked from the sync's preparation thread, mid-run
        yield frame.iloc[start : start + 100]


def test_a_sync_runs_with_the_earlier_objects_frozen_and_unfreezes_them_when_it_ends():
    frame = generate_conversions(300, start=datetime(2026, 11, 1), end=datetime(2026, 11, 2), seed=3)
    before = len(gc.get_objects())
    seen: list[int] = []
    with IngestEmulator() as emulator, PagentClient("test-key", base_url=emulator.url) as client:
        summary = ConversionSync(client, CONFIG, SyncOptions(max_workers=2)).run(chunks_noting_the_freeze(frame, seen))
        assert summary.sent == 300 == len(emulator.events())
    assert len(seen) == 3 and min(seen) >= before * 0.9  # the process's objects, not a handful
    assert gc.get_freeze_count() == 0  # and back in the collector's generations afterwards


def test_a_sync_that_fails_unfreezes_too():
    def failing() -> Iterator[pd.DataFrame]:
        assert gc.get_freeze_count() > 0
        raise RuntimeError("the warehouse went away")
        yield  # pragma: no cover - a generator

    with IngestEmulator() as emulator, PagentClient("test-key", base_url=emulator.url) as client:
        with pytest.raises(RuntimeError, match="went away"):
            ConversionSync(client, CONFIG).run(failing())
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_itself_keeps_them_frozen():
    gc.freeze()  # a pre-fork server's own freeze
    frozen = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() >= frozen
    assert gc.get_freeze_count() >= frozen > 0


def test_overlapping_syncs_unfreeze_only_when_the_last_one_ends():
    first_inside, second_inside, first_may_leave, second_may_leave = (threading.Event() for _ in range(4))
    counts: dict[str, int] = {}

    def first() -> None:
        with frozen_heap():
            first_inside.set()
            first_may_leave.wait(10)
        counts["after first"] = gc.get_freeze_count()
        second_may_leave.set()

    def second() -> None:
        first_inside.wait(10)
        with frozen_heap():
            second_inside.set()
            second_may_leave.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    second_inside.wait(10)
    first_may_leave.set()
    for thread in threads:
        thread.join(10)
    assert counts["after first"] > 0  # the second sync was still running
    assert gc.get_freeze_count() == 0
