"""From a DataFrame chunk to the events a sync must still send, one chunk ahead of the senders.

:class:`ChunkPreparer` transforms a chunk, encodes each valid event once
(canonical JSON, content hash, ledger key), drops keys repeated within the
chunk and those the ledger says pagent already has. An event that cannot be
encoded (a value the transform let through that JSON or UTF-8 cannot carry)
becomes a :class:`~pagent_provider.core.transform.RowReject` of its row, like
any invalid row: the rest of the chunk goes on. :func:`prepare_ahead` runs
it in a helper thread, one chunk ahead, so the senders are not left idle while
the next chunk is read and transformed; the first chunk goes in two pieces
(:meth:`ChunkPreparer.pieces`), so that the first request does not wait for a
whole chunk to be transformed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pagent_provider.core.apis import IngestApi, v2_event
from pagent_provider.core.delivery import PendingEvent
from pagent_provider.core.encoding import ENCODING_ERRORS, content_hash, encode_event, ledger_key
from pagent_provider.core.events import event_json_problem
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.transform import RowReject, TransformConfig, TransformedChunk, check_columns, transform_chunk


@dataclass
class PreparedChunk:
    """A chunk's events still to send, and what was counted on the way.

    ``rejects`` holds the transform's rejects in row order, then those of the
    (rare) events that failed to encode; ``valid`` counts neither.
    """

    pending: list[PendingEvent]
    rows: int
    valid: int
    rejects: list[RowReject]
    duplicate_keys: int = 0
    already_sent: int = 0
    changed_after_send: int = 0


#: Rows of the first chunk prepared on their own before the rest of it: ten batches, about 15 ms.
HEAD_ROWS = 1_000


class ChunkPreparer:
    """Prepares chunks in order; see the module docstring.

    Args:
        transform: how rows become events.
        ledger: asked which keys pagent already has (``None``: no ledger).
        dry_run: in a dry run the ledger is only read, and only if it exists.
        api: the API the events go to; their content hash is that of the v1
            event either way, so a ledger serves both.
    """

    def __init__(
        self, transform: TransformConfig, ledger: Ledger | None, *, dry_run: bool, api: IngestApi = "v1"
    ) -> None:
        self.transform = transform
        self.ledger = ledger
        self.dry_run = dry_run
        self.api = api
        self._rows_seen = 0

    def pieces(self, chunk: pd.DataFrame) -> Iterator[PreparedChunk]:
        """``chunk`` prepared, the first chunk of all as its first :data:`HEAD_ROWS` rows and then the rest.

        The sync's first request waits for the head only (at 20 µs a row, a
        chunk of 10,000 takes 0.2 s to prepare). A key repeated across the
        two pieces is dropped as one repeated within a chunk is.
        """
        if self._rows_seen or len(chunk) <= HEAD_ROWS:
            yield self.prepare(chunk)
            return
        seen: set[str] = set()
        yield self.prepare(chunk.iloc[:HEAD_ROWS], seen)
        yield self.prepare(chunk.iloc[HEAD_ROWS:], seen)

    def prepare(self, chunk: pd.DataFrame, seen: set[str] | None = None) -> PreparedChunk:
        """Transform, encode, de-duplicate and skip what was sent, for one chunk.

        ``seen``: keys of an earlier piece of the same chunk (they count as
        repeated); this chunk's keys are added to it.
        """
        if self._rows_seen == 0:
            check_columns(list(chunk.columns), self.transform)
        row_offset = self._rows_seen
        transformed = transform_chunk(chunk, self.transform, row_offset=row_offset)
        self._rows_seen += transformed.rows
        pending, unencodable = self._encode(transformed, row_offset, self.api)
        prepared = PreparedChunk(
            pending=[],
            rows=transformed.rows,
            valid=len(transformed.events) - len(unencodable),
            rejects=transformed.rejects + unencodable,
        )
        unique = self._drop_duplicates(pending, prepared, set() if seen is None else seen)
        prepared.pending = self._skip_sent(unique, prepared)
        return prepared

    @staticmethod
    def _encode(
        transformed: TransformedChunk, row_offset: int, api: IngestApi
    ) -> tuple[list[PendingEvent], list[RowReject]]:
        """Encode each event once (v2: also in its v2 shape); an event that cannot be encoded becomes a reject.

        The ``try`` costs nothing until an event fails (zero-cost exceptions),
        so the common case stays one C-level encode and hash per event.
        """
        keys = transformed.keys
        visit_ids = transformed.visit_ids
        pending = []
        rejects = []
        for index, event in enumerate(transformed.events):
            source_key = keys[index] if keys is not None else None
            try:
                encoded = encode_event(event)
                digest = content_hash(encoded)
                if api == "v2":
                    encoded = encode_event(v2_event(event, visit_ids[index] if visit_ids is not None else None))
            except ENCODING_ERRORS as error:
                row = source_key if source_key is not None else f"row {row_offset + transformed.positions[index]}"
                rejects.append(_unencodable(row, event, error))
                continue
            key = ledger_key(source_key) if source_key is not None else digest
            pending.append(PendingEvent(key, digest, encoded, source_key or f"hash {digest}"))
        return pending, rejects

    @staticmethod
    def _drop_duplicates(pending: list[PendingEvent], prepared: PreparedChunk, seen: set[str]) -> list[PendingEvent]:
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
        sent = self.ledger.sent_digests([event.key for event in pending])
        remaining = []
        for event in pending:
            sent_digest = sent.get(event.key)
            if sent_digest is None:
                remaining.append(event)
                continue
            prepared.already_sent += 1
            if sent_digest != content_digest(event.content_hash):
                prepared.changed_after_send += 1
        return remaining


def _unencodable(row: str, event: dict[str, Any], error: Exception) -> RowReject:
    """The reject of an event that failed to encode, naming the field at fault when it can be found."""
    found = event_json_problem(event)
    if found is not None:
        field, problem = found
        return RowReject(row=row, field=field.partition(".")[0].partition("[")[0], reason=f"{field} {problem}")
    # Not expected: every failure the encoder has is one event_json_problem finds.
    shown = ascii(f"{type(error).__name__}: {error}")[1:-1]
    return RowReject(row=row, field="event", reason=f"the event cannot be encoded as JSON ({shown})")


_DONE = object()


def prepare_ahead(
    chunks: Iterable[pd.DataFrame],
    preparer: ChunkPreparer,
    *,
    poll_s: float,
    on_idle: Any,
    abandon_after_s: float = 1.0,
) -> Generator[PreparedChunk, None, None]:
    """Yield prepared chunks in order, preparing the next one in a helper thread meanwhile.

    At most one prepared chunk waits beyond the one being consumed, so memory
    stays bounded by a few chunks. An error while reading or preparing is
    raised here, in the consumer. ``on_idle`` is called every ``poll_s``
    seconds while the consumer waits (the sync collects answers then); it may
    raise to leave early.

    Leaving early (the consumer stops, or ``on_idle`` raises) waits at most
    ``abandon_after_s`` for the helper thread: it may be blocked in a slow
    warehouse read that nothing can interrupt, and a stopping sync must not
    wait for it before recording the answers in flight. The thread is a
    daemon, finishes that read, closes the query and ends on its own.
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
                for prepared in preparer.pieces(chunk):
                    if not offer(prepared):
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
        worker.join(timeout=abandon_after_s)
