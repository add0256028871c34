"""Turning SIGINT and SIGTERM into a graceful stop of a running sync.

cron, systemd, Kubernetes and ``docker stop`` send SIGTERM; a terminal sends
SIGINT; Airflow's supervisor sends SIGINT, then SIGTERM, then SIGKILL. Python's
default reaction (``KeyboardInterrupt`` wherever the main thread happens to
be, or death for SIGTERM) can land between pagent's acknowledgement and the
ledger write, and the next run then resends what pagent already has. Instead
the first signal asks the sync to stop (:meth:`ConversionSync.request_stop
<pagent_provider.core.sync.ConversionSync.request_stop>`): it reads and sends
nothing more, waits for the requests in flight, records their answers and
raises :class:`~pagent_provider.exceptions.PagentInterruptedError`. A second
signal interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_gracefully_on(
    request_stop: Callable[[str], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Within the block, the first of ``signals`` calls ``request_stop(name)``; the next raises KeyboardInterrupt.

    Outside the main thread (where Python allows no signal handlers) this does
    nothing. The previous handlers are restored on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            raise KeyboardInterrupt(f"second signal ({name}) while stopping")
        received.append(name)
        request_stop(f"{name} received")

    previous: dict[signal.Signals, Any] = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
