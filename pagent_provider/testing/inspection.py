"""What an emulator running as a process received, readable from outside it: HTTP and a dump file.

Not part of pagent's API: these paths exist only on the emulator, for tests
and demos that start it as a process (``python -m pagent_provider.testing``,
``pagent-conversions emulator``) and cannot call its Python methods:

``GET /_emulator/events``
    ``{"count": n, "events": [...]}``: the accepted events normalized to the v1
    shape, in order (:meth:`IngestEmulator.events`).
``GET /_emulator/requests``
    ``{"count": n, "requests": [{"method", "path", "status", "n_events",
    "received_at"}, ...]}`` (:meth:`IngestEmulator.requests`; never a header,
    so never a key).
``GET /_emulator/summary``
    ``{"accepted_count": n, "requests": n, "in_flight": n, "peak_in_flight": n}``,
    cheap enough to poll: ``in_flight`` is the number of POSTs to a conversions
    endpoint being handled at this moment, ``peak_in_flight`` the most there have
    been at once (:attr:`IngestEmulator.in_flight`, :attr:`IngestEmulator.peak_in_flight`).

These answer without an API key (the emulator listens on 127.0.0.1 by
default), whatever fault is configured, and are not recorded as requests,
so that looking does not change what is looked at. ``--dump FILE`` writes
:func:`snapshot` as JSON when the process stops.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pagent_provider.testing.emulator import IngestEmulator

#: Every inspection path starts with this (no pagent endpoint does).
PREFIX = "/_emulator/"


def snapshot(emulator: IngestEmulator) -> dict[str, Any]:
    """Everything the emulator received: accepted count, peak in flight, events (v1 shape), requests."""
    events = emulator.events()
    requests = [asdict(record) for record in emulator.requests()]
    return {
        "accepted_count": emulator.accepted_count,
        "peak_in_flight": emulator.peak_in_flight,
        "events": events,
        "requests": requests,
    }


def inspection_document(emulator: IngestEmulator, path: str) -> dict[str, Any] | None:
    """The JSON document of an inspection ``path``, or ``None`` when there is no such path."""
    name = path[len(PREFIX) :] if path.startswith(PREFIX) else None
    if name == "events":
        events = emulator.events()
        return {"count": len(events), "events": events}
    if name == "requests":
        requests = [asdict(record) for record in emulator.requests()]
        return {"count": len(requests), "requests": requests}
    if name == "summary":
        return {
            "accepted_count": emulator.accepted_count,
            "requests": len(emulator.requests()),
            "in_flight": emulator.in_flight,
            "peak_in_flight": emulator.peak_in_flight,
        }
    return None


def write_dump(emulator: IngestEmulator, path: str | Path) -> None:
    """Write :func:`snapshot` to ``path`` as JSON (through a temporary file, so a reader never sees half)."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(snapshot(emulator), indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    partial.replace(target)
