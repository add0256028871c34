"""The sync engine: DataFrame chunks in, delivered conversions and a summary out.

``transform -> validate -> dedupe -> ledger claim -> send (concurrently) ->
mark -> summarize``. It knows nothing about Airflow: the operator and the CLI
both drive it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pagent_provider.core import defaults
from pagent_provider.core.apis import EncodedSender, IngestApi, check_api, send_function, visit_id_dropped_warning
from pagent_provider.core.batching import batched
from pagent_provider.core.delivery import BatchOutcome, PendingEvent, RefusalBudget, deliver_batch
from pagent_provider.core.events import MAX_EVENTS_PER_REQUEST
from pagent_provider.core.frozen_heap import frozen_heap
from pagent_provider.core.ledger import Ledger, RejectRecord
from pagent_provider.core.loggers import TaskLogger
from pagent_provider.core.owner import heartbeat_interval_s
from pagent_provider.core.preparation import ChunkPreparer, PreparedChunk, prepare_ahead
from pagent_provider.core.silent_success import date_time_warning
from pagent_provider.core.transform import RowReject, TransformConfig
from pagent_provider.exceptions import (
    PagentClaimedElsewhereError,
    PagentConfigError,
    PagentDeliveryError,
    PagentError,
    PagentInterruptedError,
    PagentUnknownOutcomeError,
)

log = logging.getLogger(__name__)

KEY_COLUMN_WARNING = (
    "key_column is not set: each event's ledger key is a hash of its content, so adding a property "
    "column, a constant label or any other field changes every key and resends every row of history. "
    "Set key_column to a stable unique id of the row (an order id)"
)


@dataclass(frozen=True)
class SyncOptions:
    """How a sync runs.

    Attributes:
        batch_size: events per request, 1 to 100.
        max_workers: concurrent requests.
        max_invalid_rows: the sync fails when more rows than this are invalid or refused.
        dry_run: read, transform and validate everything, send nothing, write nothing.
        progress_interval_s: seconds between progress lines in the log.
        reject_examples: how many reasons the failure message and the log list.
        claimed_elsewhere_wait_s: at the end of a run, how long to wait for rows
            that another live run was sending to be confirmed sent (or released,
            then sent by this run) before failing with a retriable error.
        api: the ingest API the batches go to, ``"v1"`` or ``"v2"`` (bulk);
            see :mod:`pagent_provider.core.apis`.
    """

    batch_size: int = defaults.BATCH_SIZE
    max_workers: int = defaults.MAX_WORKERS
    max_invalid_rows: int = 0
    dry_run: bool = False
    progress_interval_s: float = 30.0
    reject_examples: int = 10
    claimed_elsewhere_wait_s: float = defaults.CLAIMED_ELSEWHERE_WAIT_S
    api: IngestApi = defaults.API  # type: ignore[assignment]

    def __post_init__(self) -> None:
        check_api(self.api)
        if not 1 <= self.batch_size <= MAX_EVENTS_PER_REQUEST:
            raise PagentConfigError(f"batch_size must be 1 to {MAX_EVENTS_PER_REQUEST}, got {self.batch_size}")
        if self.max_workers < 1:
            raise PagentConfigError(f"max_workers must be at least 1, got {self.max_workers}")
        if self.max_invalid_rows < 0:
            raise PagentConfigError("max_invalid_rows must be 0 or more")
        if self.claimed_elsewhere_wait_s < 0:
            raise PagentConfigError("claimed_elsewhere_wait_s must be 0 or more seconds")


@dataclass
class SyncSummary:
    """Counts of one sync; ``as_dict()`` is what the operator returns (XCom)."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicate_keys: int = 0
    already_sent: int = 0
    changed_after_send: int = 0
    claimed_elsewhere: int = 0
    waited_for_elsewhere: int = 0
    unknown: int = 0
    unknown_resent: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    duration_s: float = 0.0
    dry_run: bool = False
    reject_examples: list[str] = field(default_factory=list)
    #: What looked wrong without failing the run (see :mod:`pagent_provider.core.silent_success`).
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """The summary as a few short lines, grouped, for a log view."""
        d = self.as_dict()
        lines = [f"pagent sync summary ({d['duration_s']:g}s{', dry run' if self.dry_run else ''}):"]
        for title, names in _SUMMARY_GROUPS:
            lines.append(f"  {title:<9} " + "  ".join(f"{name}={d[name]}" for name in names))
        lines.extend(f"  warning   {warning}" for warning in self.warnings)
        return "\n".join(lines)


_SUMMARY_GROUPS = (
    ("read", ("rows", "valid", "invalid", "duplicate_keys")),
    ("delivered", ("sent", "accepted", "already_sent", "changed_after_send")),
    ("not sent", ("rejected", "unknown", "unknown_resent", "failed", "claimed_elsewhere", "waited_for_elsewhere")),
    ("requests", ("batches", "requests", "retries", "rate_limited")),
)


class _StopReading(Exception):
    """Internal: leave the reading loop because the sync is stopping."""


class ConversionSync:
    """Uploads DataFrame chunks of warehouse rows to pagent, each conversion once.

    Args:
        sender: the pagent client (anything with ``send_encoded_v1`` and ``send_encoded_v2_bulk``).
        transform: how rows become events.
        options: batching, concurrency and limits.
        ledger: the delivery ledger; ``None`` sends without deduplication.
        logger: where progress goes (the operator passes its task logger).
    """

    def __init__(
        self,
        sender: EncodedSender,
        transform: TransformConfig,
        options: SyncOptions | None = None,
        ledger: Ledger | None = None,
        logger: TaskLogger | None = None,
    ) -> None:
        self.sender = sender
        self.transform = transform
        self.options = options or SyncOptions()
        self.ledger = ledger
        self.log = logger or log
        self.summary = SyncSummary(dry_run=self.options.dry_run)
        self._new_unknown = 0
        self._budget = RefusalBudget(self.options.max_invalid_rows)
        self._elsewhere: dict[str, PendingEvent] = {}
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self._stop_error: BaseException | None = None
        self._answered = False
        self._window: list[list[PendingEvent]] = []
        self._sent_claims: list[int] = []
        self._inflight: dict[Future[BatchOutcome], int | None] = {}
        self._started = 0.0
        self._last_progress = 0.0
        self._last_heartbeat = 0.0

    # --- public -----------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop gracefully: read and send nothing more, record the answers in flight, raise.

        Safe to call from a signal handler or another thread. :meth:`run` then
        raises :class:`~pagent_provider.exceptions.PagentInterruptedError`.
        """
        if not self._stop_reason:
            self._stop_reason = reason
        self._stop_requested.set()

    def warn(self, message: str) -> None:
        """Log ``message`` as a warning and keep it in the summary's ``warnings`` (once)."""
        if message not in self.summary.warnings:
            self.summary.warnings.append(message)
            self.log.warning("%s", message)

    def run(self, chunks: Iterable[pd.DataFrame]) -> SyncSummary:
        """Sync every chunk; return the summary or raise with ``error.summary`` set.

        Raises:
            PagentFatalError: a fatal error stopped the sync (bad key, bad config),
                or more rows than ``max_invalid_rows`` were invalid or refused
                (:class:`~pagent_provider.exceptions.PagentDeliveryError`).
            PagentRetriableError: pagent stayed unavailable; a retry continues where this stopped.
            PagentUnknownOutcomeError: some answers were lost; under the ``"resend"``
                policy the next try resends them.
        """
        self._started = self._last_progress = self._last_heartbeat = time.monotonic()
        if self.transform.key_column is None:
            self.log.warning(KEY_COLUMN_WARNING)
        dropped = visit_id_dropped_warning(self.transform, self.options.api)
        if dropped is not None:
            self.warn(dropped)
        if self.ledger is not None and not self.options.dry_run:
            self.ledger.create_tables()
        try:
            with frozen_heap(), ThreadPoolExecutor(self.options.max_workers, thread_name_prefix="pagent-send") as pool:
                try:
                    self._sync_chunks(chunks, pool)
                    self._settle_claimed_elsewhere(pool)
                finally:
                    # Whatever stopped the reading (a failing query, a ledger error,
                    # Ctrl-C), record the answers of the batches already on the wire:
                    # otherwise accepted events stay claimed and a later run resends them.
                    self._drain()
        except BaseException as error:
            error.summary = self.summary.as_dict()  # type: ignore[attr-defined]
            raise
        finally:
            self.summary.duration_s = round(time.monotonic() - self._started, 3)
            self._count_transport()
        self.log.info("%s", self.summary.describe())
        self._raise_for_outcome()
        return self.summary

    def _count_transport(self) -> None:
        counters = getattr(getattr(self.sender, "transport", None), "counters", None)
        if counters is not None:
            self.summary.retries = counters.retries
            self.summary.rate_limited = counters.rate_limited

    # --- reading and preparing ---------------------------------------------

    def _sync_chunks(self, chunks: Iterable[pd.DataFrame], pool: ThreadPoolExecutor) -> None:
        preparer = ChunkPreparer(self.transform, self.ledger, dry_run=self.options.dry_run, api=self.options.api)
        prepared_chunks = prepare_ahead(self._checked(chunks), preparer, poll_s=0.05, on_idle=self._while_reading)
        try:
            self._send_prepared(prepared_chunks, pool)
        except _StopReading:
            return

    def _checked(self, chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # The first non-empty chunk tells what the time column holds; the rest pass untouched.
        checked = False
        for chunk in chunks:
            if not checked and len(chunk):
                checked = True
                warning = date_time_warning(chunk, self.transform.column_for("time"))
                if warning is not None:
                    self.warn(warning)
            yield chunk

    def _send_prepared(self, prepared_chunks: Generator[PreparedChunk, None, None], pool: ThreadPoolExecutor) -> None:
        for prepared in prepared_chunks:
            self._count_prepared(prepared)
            for batch in batched(prepared.pending, self.options.batch_size):
                self.summary.batches += 1
                if self.options.dry_run:
                    continue
                self._window.append(batch)
                if len(self._window) >= self._window_size():
                    self._flush_window(pool)
                if self._stopping:
                    prepared_chunks.close()  # stops the helper thread
                    return
            self._flush_window(pool)  # the whole chunk goes out while the next one is read
            self._record_sent_claims()
            self._log_progress()
            if self._stopping:
                prepared_chunks.close()
                return

    @property
    def _stopping(self) -> bool:
        return self._stop_error is not None or self._stop_requested.is_set()

    def _while_reading(self) -> None:
        # Waiting for the next chunk (a slow warehouse): keep collecting answers,
        # record what was acknowledged at once, and keep the claims heartbeating.
        self._collect(block=False)
        self._record_sent_claims()
        if self._stopping:
            raise _StopReading  # leaves prepare_ahead, which stops its helper thread

    def _count_prepared(self, prepared: PreparedChunk) -> None:
        s = self.summary
        s.rows += prepared.rows
        s.valid += prepared.valid
        s.duplicate_keys += prepared.duplicate_keys
        s.already_sent += prepared.already_sent
        s.changed_after_send += prepared.changed_after_send
        self._record_invalid(prepared.rejects)

    # --- sending ------------------------------------------------------------

    def _window_size(self) -> int:
        # Until pagent has answered once, one batch at a time: a wrong key or base
        # URL then costs one request, not max_workers of them.
        return self.options.max_workers if self._answered else 1

    def _flush_window(self, pool: ThreadPoolExecutor) -> None:
        """Claim the batches of the window in one statement and hand them to the senders.

        The next window is claimed while the current one is still being sent (the
        senders do not idle during the claim: at 8 workers and 50 ms, 0.84 of the
        ideal instead of 0.62 with a PostgreSQL ledger); at most ``max_workers``
        batches wait behind the ``max_workers`` being sent, so the claims not yet
        acknowledged are bounded by ``2 * max_workers`` batches. Before pagent has
        answered once, one batch at a time (see :meth:`_window_size`).
        """
        limit = self._window_size() if self._answered else 0
        while self._window and len(self._inflight) > limit:
            self._collect(block=True)
        window, self._window = self._window, []
        if not window or self._stopping:
            return  # nothing of it was claimed yet, so nothing is lost
        for claim_id, batch in self._claim(window):
            if batch:
                future = pool.submit(
                    deliver_batch, send_function(self.sender, self.options.api), batch, claim_id, self._budget
                )
                self._inflight[future] = claim_id

    def _claim(self, window: list[list[PendingEvent]]) -> list[tuple[int | None, list[PendingEvent]]]:
        if self.ledger is None:
            return [(None, batch) for batch in window]
        sent_claims, self._sent_claims = self._sent_claims, []
        claims = self.ledger.claim_batches(
            [[(event.key, event.content_hash) for event in batch] for batch in window], mark_sent=sent_claims
        )
        s = self.summary
        claimed: list[tuple[int | None, list[PendingEvent]]] = []
        for claim, batch in zip(claims, window, strict=True):
            s.already_sent += len(claim.already_sent)
            s.changed_after_send += len(claim.changed_after_send)
            s.claimed_elsewhere += len(claim.claimed_elsewhere)
            if claim.claimed_elsewhere:
                held = set(claim.claimed_elsewhere)
                self._elsewhere.update((event.key, event) for event in batch if event.key in held)
            s.duplicate_keys += len(claim.duplicate_keys)
            s.unknown += len(claim.unknown_skipped) + len(claim.unknown_taken_over)
            s.unknown_resent += len(claim.unknown_taken_over)
            # claimed is a subset of the batch's keys: as many means every event of it
            if len(claim.claimed) == len(batch):
                claimed.append((claim.claim_id, batch))
            else:
                claimed.append((claim.claim_id, [event for event in batch if event.key in claim.claimed]))
        return claimed

    def _collect(self, *, block: bool) -> None:
        if not self._inflight:
            return
        timeout = self._heartbeat_interval() if block else 0
        done, _ = wait(list(self._inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        outcomes = [future.result() for future in done]
        for future in done:
            self._inflight.pop(future)
        self._mark_fully_sent(outcomes)
        for outcome in outcomes:
            self._apply(outcome)
        self._heartbeat_if_due()

    def _mark_fully_sent(self, outcomes: list[BatchOutcome]) -> None:
        # The common case, every event of a batch acknowledged, is recorded with the
        # next window's claims, in the same transaction. The acknowledged batches not
        # yet recorded stay within the 2 * max_workers batches a crash can repeat.
        self._sent_claims.extend(
            o.claim_id for o in outcomes if o.claim_id and o.sent and not (o.refused or o.unknown or o.failed)
        )
        if len(self._sent_claims) >= 2 * self.options.max_workers:
            self._record_sent_claims()

    def _record_sent_claims(self) -> None:
        if self.ledger is not None and self._sent_claims:
            sent_claims, self._sent_claims = self._sent_claims, []
            self.ledger.mark_claims_sent(sent_claims)

    def _drain(self) -> None:
        while self._inflight:
            self._collect(block=True)
        self._record_sent_claims()

    def _apply(self, outcome: BatchOutcome) -> None:
        s = self.summary
        s.requests += outcome.requests
        self._answered = self._answered or bool(outcome.sent or outcome.refused)
        s.sent += len(outcome.sent)
        s.accepted += outcome.accepted
        ledger, claim_id = self.ledger, outcome.claim_id
        if ledger is not None and claim_id is not None:
            if outcome.sent and (outcome.refused or outcome.unknown or outcome.failed):
                ledger.mark_sent(claim_id, [event.key for event in outcome.sent])  # the rest: _mark_fully_sent
            if outcome.unknown:
                ledger.mark_unknown(claim_id, [event.key for event in outcome.unknown], outcome.unknown_reason)
            released = [event.key for event in outcome.failed] + [event.key for event, _ in outcome.refused]
            if released:
                ledger.release(claim_id, released)
        if outcome.refused:
            s.rejected += len(outcome.refused)
            self._record_refused(outcome.refused)
        if outcome.unknown:
            s.unknown += len(outcome.unknown)
            self._new_unknown += len(outcome.unknown)
            self.log.warning("%d events have an unknown outcome: %s", len(outcome.unknown), outcome.unknown_reason)
            # Stop sending: a server that loses answers may lose the next ones too, and
            # every unknown batch is either resent or possibly lost. Stopping bounds
            # that to the batches already in flight.
            self._stop_requested.set()
        if outcome.failed:
            s.failed += len(outcome.failed)
        if outcome.error is not None and self._stop_error is None:
            self._stop_error = outcome.error
            self.log.error("stopping the sync: %s", outcome.error)

    # --- rows another run holds ---------------------------------------------

    def _settle_claimed_elsewhere(self, pool: ThreadPoolExecutor) -> None:
        """Wait, within a bound, until the rows other live runs were sending are settled.

        Each round claims them again: a row the other run got acknowledged now
        counts as already sent, a row it released (or abandoned) is claimed and
        sent by this run. A run never reports success while rows of its query
        are held by someone else: after the bound it fails with a retriable error.
        """
        deadline = time.monotonic() + self.options.claimed_elsewhere_wait_s
        poll_s = max(0.05, min(1.0, self.options.claimed_elsewhere_wait_s / 20))
        first_round = True
        while self._elsewhere and not self._stopping:
            self._drain()
            if time.monotonic() >= deadline:
                break
            self._stop_requested.wait(poll_s)
            held, self._elsewhere = list(self._elsewhere.values()), {}
            self.summary.claimed_elsewhere -= len(held)
            self.summary.waited_for_elsewhere += len(held) if first_round else 0
            first_round = False
            for batch in batched(held, self.options.batch_size):
                self._window.append(batch)
                if len(self._window) >= self._window_size():
                    self._flush_window(pool)
            self._flush_window(pool)

    # --- bookkeeping --------------------------------------------------------

    def _record_invalid(self, rejects: list[RowReject]) -> None:
        if not rejects:
            return
        self.summary.invalid += len(rejects)
        self._remember_examples(f"{r.row}: {r.field}: {r.reason}" for r in rejects)
        if self.ledger is not None and not self.options.dry_run:
            self.ledger.record_rejects(
                [RejectRecord(row=r.row, field=r.field, reason=r.reason, source="invalid") for r in rejects]
            )

    def _record_refused(self, refused: list[tuple[PendingEvent, str]]) -> None:
        self._remember_examples(f"{event.row}: refused by pagent: {message}" for event, message in refused)
        if self.ledger is not None:
            self.ledger.record_rejects(
                [
                    RejectRecord(row=event.row, field="event", reason=message, source="refused", event_key=event.key)
                    for event, message in refused
                ]
            )

    def _remember_examples(self, reasons: Iterable[str]) -> None:
        examples = self.summary.reject_examples
        for reason in reasons:
            if len(examples) >= self.options.reject_examples:
                return
            examples.append(reason)

    def _heartbeat_interval(self) -> float:
        if self.ledger is None:
            return 30.0
        return heartbeat_interval_s(self.ledger.claim_timeout_ms / 1000)

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if self.ledger is None or now - self._last_heartbeat < self._heartbeat_interval():
            return
        self._last_heartbeat = now
        self.ledger.heartbeat(claim_id for claim_id in self._inflight.values() if claim_id)
        self._log_progress()

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.options.progress_interval_s:
            return
        self._last_progress = now
        elapsed = now - self._started
        s = self.summary
        self.log.info(
            "pagent sync: %d rows read, %d sent, %d already sent, %d invalid, %.0f rows/s, %.0fs elapsed",
            s.rows,
            s.sent,
            s.already_sent,
            s.invalid,
            s.rows / elapsed if elapsed else 0.0,
            elapsed,
        )

    def _unknown_message(self) -> str:
        if self.ledger is not None and self.ledger.unknown_outcome == "skip":
            then = "with unknown_outcome='skip' they are not sent again (at most once)"
        else:
            then = "with unknown_outcome='resend' the next try sends them again (at least once)"
        return (
            f"{self._new_unknown} events may or may not have reached pagent (the answer was lost). They are "
            f"recorded as unknown in the ledger; {then}. The sync stopped there, so that no more than the "
            "batches in flight share that fate: the next try sends the rest."
        )

    def _raise_for_outcome(self) -> None:
        s = self.summary
        error: BaseException | None = None
        if self._stop_reason and self._stop_error is None:
            error = PagentInterruptedError(
                f"the sync was stopped ({self._stop_reason}); the requests in flight were drained and what "
                "pagent acknowledged was recorded. Run it again to continue where it stopped"
            )
        elif isinstance(self._stop_error, PagentError):
            error = self._stop_error
        elif self._stop_error is not None:
            error = PagentDeliveryError(f"the sync stopped on an unexpected error: {self._stop_error!r}")
            error.__cause__ = self._stop_error
        elif self._new_unknown:
            error = PagentUnknownOutcomeError(self._unknown_message())
        elif s.invalid + s.rejected > self.options.max_invalid_rows:
            error = PagentDeliveryError(
                f"{s.invalid} invalid and {s.rejected} refused rows exceed max_invalid_rows="
                f"{self.options.max_invalid_rows}; "
                + ("dry run: nothing was sent" if self.options.dry_run else "the valid rows were delivered")
                + ". First reasons:\n  "
                + "\n  ".join(s.reject_examples)
            )
        elif self._elsewhere:
            error = PagentClaimedElsewhereError(
                f"{len(self._elsewhere)} rows of this run are being sent by another live run and were not "
                f"confirmed sent within {self.options.claimed_elsewhere_wait_s:g}s; this run cannot vouch for "
                "them, so it fails: a retry checks them again"
            )
        if error is not None:
            error.summary = s.as_dict()  # type: ignore[attr-defined]
            raise error
