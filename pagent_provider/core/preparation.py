"""From a DataFrame chunk to the events a sync must still send, one chunk ahead of the senders.

:class:`ChunkPreparer` transforms a chunk, encodes each valid event once
(canonical JSON, content hash, ledger key), drops keys repeated within the
chunk and those the ledger says pagent already has. :func:`prepare_ahead` runs
it in a helper thread, one chunk ahead, so the senders are not left idle while
the next chunk is read and transformed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pagent_provider.core.delivery import PendingEvent
from pagent_provider.core.encoding import content_hash, encode_event, ledger_key
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.transform import RowReject, TransformConfig, check_columns, transform_chunk


@dataclass
class PreparedChunk:
    """A chunk's events still to send, and what was counted on the way."""

    pending: list[PendingEvent]
    rows: int
    valid: int
    rejects: list[RowReject]
    duplicate_keys: int = 0
    already_sent: int = 0
    changed_after_send: int = 0


class ChunkPreparer:
    """Prepares chunks in order; see the module docstring.

    Args:
        transform: how rows become events.
        ledger: asked which keys pagent already has (``None``: no ledger).
        dry_run: in a dry run the ledger is only read, and only if it exists.
    """

    def __init__(self, transform: TransformConfig, ledger: Ledger | None, *, dry_run: bool) -> None:
        self.transform = transform
        self.ledger = ledger
        self.dry_run = dry_run
        self._rows_seen = 0

    def prepare(self, chunk: pd.DataFrame) -> PreparedChunk:
        """Transform, encode, de-duplicate and skip what was sent, for one chunk."""
        if self._rows_seen == 0:
            check_columns(list(chunk.columns), self.transform)
        transformed = transform_chunk(chunk, self.transform, row_offset=self._rows_seen)
        self._rows_seen += transformed.rows
        prepared = PreparedChunk(
            pending=[], rows=transformed.rows, valid=len(transformed.events), rejects=transformed.rejects
        )
        unique = self._drop_duplicates(self._encode(transformed.events, transformed.keys), prepared)
        prepared.pending = self._skip_sent(unique, prepared)
        return prepared

    @staticmethod
    def _encode(events: list[dict[str, Any]], keys: list[str] | None) -> list[PendingEvent]:
        pending = []
        for index, event in enumerate(events):
            encoded = encode_event(event)
            digest = content_hash(encoded)
            source_key = keys[index] if keys is not None else None
            key = ledger_key(source_key) if source_key is not None else digest
            pending.append(PendingEvent(key, digest, encoded, source_key or f"hash {digest}"))
        return pending

    @staticmethod
    def _drop_duplicates(pending: list[PendingEvent], prepared: PreparedChunk) -> list[PendingEvent]:
        seen: set[str] = set()
        unique = []
        for event in pending:
            if event.key in seen:
                prepared.duplicate_keys += 1
                continue
            seen.add(event.key)
            unique.append(event)
        return unique

    def _skip_sent(self, pending: list[PendingEvent], prepared: PreparedChunk) -> list[PendingEvent]:
        # One bulk lookup per chunk, so re-runs and overlapping intervals skip
        # what was sent before without claiming it batch by batch.
        if self.ledger is None or not pending:
            return pending
        if self.dry_run and not self.ledger.tables_exist():
            return pending
        sent = self.ledger.sent_hashes([event.key for event in pending])
        remaining = []
        for event in pending:
            sent_hash = sent.get(event.key)
            if sent_hash is None:
                remaining.append(event)
                continue
            prepared.already_sent += 1
            if sent_hash != event.content_hash:
                prepared.changed_after_send += 1
        return remaining


_DONE = object()


def prepare_ahead(
    chunks: Iterable[pd.DataFrame], preparer: ChunkPreparer, *, poll_s: float, on_idle: Any
) -> Iterator[PreparedChunk]:
    """Yield prepared chunks in order, preparing the next one in a helper thread meanwhile.

    At most one prepared chunk waits beyond the one being consumed, so memory
    stays bounded by a few chunks. An error while reading or preparing is
    raised here, in the consumer. ``on_idle`` is called every ``poll_s``
    seconds while the consumer waits (the sync collects answers then).
    """
    ahead: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=poll_s)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not offer(preparer.prepare(chunk)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            offer(error)
            return
        finally:
            close = getattr(chunks, "close", None)  # a generator holding a database cursor
            if close is not None:
                close()
        offer(_DONE)

    worker = threading.Thread(target=produce, name="pagent-prepare", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = ahead.get(timeout=poll_s)
            except queue.Empty:
                on_idle()
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
