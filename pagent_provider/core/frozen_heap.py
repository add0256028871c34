"""Keeping the objects that exist when a sync starts out of the garbage collector's full passes.

A sync allocates millions of short-lived objects (rows, events, encoded
texts), and enough of them survive for a while (the chunk being prepared, the
window being sent) that CPython runs a full collection every few seconds. A
full collection walks every tracked object of the process: the modules of
Airflow, pandas and SQLAlchemy, the DAGs, the connections. Measured here
(200,000 rows, SQLite ledger, a process holding about 100,000 objects before
the sync, as the benchmark's does; an Airflow worker holds several times more):
10 full collections took 0.67-0.70 s, all of it holding the GIL that the
senders and the ledger wait for, and 0.08 s once the objects that existed
before the sync were frozen (:func:`gc.freeze`). Nothing they hold is garbage
the sync makes, so nothing is lost by not walking them; reference counting
still frees every object at once, and the sync's own objects are collected as
before.

:func:`frozen_heap` freezes on entry and unfreezes when the last sync of the
process ends. A process that had already frozen objects itself (a server
that forks workers from a frozen parent) keeps its freeze: it is not undone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_syncs = 0
_unfreeze_at_end = False


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects tracked by the garbage collector for as long as the block runs (see the module docstring).

    Safe to nest and to enter from several threads: the first entry freezes,
    the last exit unfreezes, unless the process had frozen objects of its own
    before the first entry.
    """
    global _syncs, _unfreeze_at_end
    with _lock:
        if _syncs == 0:
            _unfreeze_at_end = gc.get_freeze_count() == 0
        gc.freeze()  # also the objects a sync started meanwhile has built: they live as long as it
        _syncs += 1
    try:
        yield
    finally:
        with _lock:
            _syncs -= 1
            if _syncs == 0 and _unfreeze_at_end:
                gc.unfreeze()
