"""The watchdog expires every deadline on time, whether or not a new request woke its thread.

A request whose deadline is later than the watchdog's next look does not wake
its thread (that saved a thread switch per request); these tests hold the
thread to every deadline anyway, with real threads and real clocks.
"""

from __future__ import annotations

import time

from pagent_provider.core.deadlines import Deadline, Watchdog


def wait_expired(deadline: Deadline, within_s: float) -> float:
    """Seconds until ``deadline`` expired (fails past ``within_s``)."""
    started = time.monotonic()
    while not deadline.expired:
        assert time.monotonic() - started < within_s, "the deadline was never expired"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_later_deadline_is_expired_without_waking_the_thread() -> None:
    dog = Watchdog()
    with dog.watch(0.2) as first, dog.watch(0.6) as second:
        assert 0.1 < wait_expired(first, 2) < 0.5
        assert not second.expired
        assert 0.2 < wait_expired(second, 2) < 0.8


def test_an_earlier_deadline_wakes_the_thread() -> None:
    dog = Watchdog()
    with dog.watch(30) as long, dog.watch(0.2) as short:
        assert wait_expired(short, 2) < 1.0
        assert not long.expired


def test_a_request_after_a_finished_one_is_watched() -> None:
    dog = Watchdog()
    with dog.watch(0.3):
        pass  # finished early: the thread still sleeps until 0.3 s
    started = time.monotonic()
    with dog.watch(0.8) as later:
        wait_expired(later, 3)
    assert 0.7 < time.monotonic() - started < 1.6


def test_finished_requests_are_never_expired() -> None:
    dog = Watchdog()
    finished = []
    for _ in range(50):
        with dog.watch(0.05) as deadline:
            finished.append(deadline)
    time.sleep(0.2)
    assert not any(deadline.expired for deadline in finished)
