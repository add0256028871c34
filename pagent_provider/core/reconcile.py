"""Reconciliation: did every conversion of a window reach pagent?

:func:`reconcile` reads the warehouse rows of a query (the chunks that
:func:`~pagent_provider.core.reading.read_sql_chunks` yields), turns them into
keys and content hashes with the sync's own code
(:class:`~pagent_provider.core.preparation.ChunkPreparer`, so the keys are
exactly the sync's) and puts every row in exactly one category:

``sent``
    the ledger holds its key as ``sent``, with the same content hash.
``changed_after_send``
    sent, but the row has changed since (its content hash differs); pagent has
    no update, so the sync does not resend it.
``unknown``
    the ledger holds it as ``unknown``: it may or may not have reached pagent.
``in_flight``
    a run holds it (``claimed``) right now, or died holding it (the reason
    says when its heartbeat is older than the ledger's claim timeout).
``refused``
    no ledger row, and ``<ledger_table>_rejects`` records that pagent refused
    its key (``source = 'refused'``; the reason is pagent's latest message).
``invalid``
    the transform rejects the row (the reason says why); it is never sent.
``never_sent``
    valid, no ledger row, not refused: no run sent it (a run stopped before
    it, or no run selected it).
``duplicate_key``
    a later row with the key of an earlier row of the same query: the first
    one is classified as above, each repeat here (the sync sends one of them).

Everything but ``sent`` is unaccounted for: :attr:`ReconcileReport.ok` is
true when every row is ``sent``. The ledger is only read, never changed.

Memory stays bounded by one chunk, the counts and ``examples`` examples per
category, plus 8 bytes per distinct key of the query: finding a key repeated
across chunks needs every key seen, kept as a 64-bit digest. Two different
keys share a digest with a probability of about ``n**2 / 2**65`` (3 in a
million for 10 million rows); such a key would be reported as a
``duplicate_key``, never as ``sent``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pagent_provider.core.delivery import PendingEvent
from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, Ledger, LedgerRow, now_ms
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.preparation import ChunkPreparer, PreparedChunk
from pagent_provider.core.transform import TransformConfig

SENT_OK = "sent"
CHANGED_AFTER_SEND = "changed_after_send"
UNKNOWN_OUTCOME = "unknown"
IN_FLIGHT = "in_flight"
REFUSED = "refused"
INVALID = "invalid"
NEVER_SENT = "never_sent"
DUPLICATE_KEY = "duplicate_key"
#: Every category, in the order reports list them.
CATEGORIES = (SENT_OK, CHANGED_AFTER_SEND, UNKNOWN_OUTCOME, IN_FLIGHT, REFUSED, INVALID, NEVER_SENT, DUPLICATE_KEY)
#: Keys per ``IN (...)`` list of a rejects lookup (the ledger's lookup slices its own).
_LOOKUP_SLICE = 500


@dataclass(frozen=True)
class ReconcileExample:
    """One row of a category, to show.

    Attributes:
        row: the row's reference: its ``key_column`` value, ``"row N"`` (an
            invalid row without one) or ``"hash <content hash>"``.
        key: its ledger key (``None`` for an invalid row).
        reason: why it is in its category.
    """

    row: str
    key: str | None
    reason: str


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(CATEGORIES, 0)


def _no_examples() -> dict[str, list[ReconcileExample]]:
    return {category: [] for category in CATEGORIES}


@dataclass
class ReconcileReport:
    """What :func:`reconcile` found: every row in exactly one category.

    Attributes:
        namespace: the ledger namespace compared with.
        rows: rows the query returned.
        counts: rows per category (every category present, 0 when empty).
        examples: up to ``example_limit`` rows per category.
        example_limit: how many examples a category keeps.
        ledger_exists: false when the ledger table does not exist (nothing was
            ever sent with it: every valid row is ``never_sent``).
    """

    namespace: str
    rows: int = 0
    counts: dict[str, int] = field(default_factory=_zero_counts)
    examples: dict[str, list[ReconcileExample]] = field(default_factory=_no_examples)
    example_limit: int = 10
    ledger_exists: bool = True

    def add(self, category: str, example: ReconcileExample | None = None) -> None:
        """Count one row in ``category``, keeping ``example`` while there is room."""
        self.counts[category] += 1
        kept = self.examples[category]
        if example is not None and len(kept) < self.example_limit:
            kept.append(example)

    @property
    def unaccounted(self) -> int:
        """Rows that are not ``sent``."""
        return self.rows - self.counts[SENT_OK]

    @property
    def ok(self) -> bool:
        """True when every row of the query is ``sent``."""
        return self.unaccounted == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "namespace": self.namespace,
            "rows": self.rows,
            "counts": dict(self.counts),
            "unaccounted": self.unaccounted,
            "ok": self.ok,
            "ledger_exists": self.ledger_exists,
            "examples": {
                category: [asdict(example) for example in examples]
                for category, examples in self.examples.items()
                if examples
            },
        }

    def describe(self) -> str:
        """A table of the counts, then the examples of the unaccounted rows, for a terminal or a task log."""
        width = max(map(len, CATEGORIES))
        lines = [f"{'category':<{width}}  {'rows':>10}"]
        lines += [f"{category:<{width}}  {self.counts[category]:>10}" for category in CATEGORIES]
        lines.append(f"{'total':<{width}}  {self.rows:>10}")
        verdict = "every row was sent" if self.ok else f"{self.unaccounted} of {self.rows} rows are unaccounted for"
        lines.append(f"namespace {self.namespace!r}: {verdict}")
        for category, examples in self.examples.items():
            for example in examples if category != SENT_OK else ():
                lines.append(f"  {category}: {example.row}: {example.reason}")
        return "\n".join(lines)


class _SeenKeys:
    """64-bit digests of every key seen, 8 bytes a key, in sorted runs of decreasing size.

    A new run is merged into the last one while it is at least as large, so
    there are at most ``log2(n)`` runs and each digest is merged ``log2(n)``
    times at most: ``O(n log n)`` in all, where one sorted array re-sorted per
    chunk would cost ``O(n)`` per chunk.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    @staticmethod
    def digests(keys: Sequence[str]) -> np.ndarray:
        # surrogatepass: a key is whatever the source held; the digest must not fail on it
        return np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                for key in keys
            ),
            dtype=np.uint64,
            count=len(keys),
        )

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``digests`` were added before."""
        found = np.zeros(len(digests), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, digests), len(run) - 1)
            found |= run[at] == digests
        return found

    def add(self, digests: np.ndarray) -> None:
        """Add digests not seen before (none repeated)."""
        if not len(digests):
            return
        run = np.sort(digests)
        while self._runs and len(self._runs[-1]) <= len(run):
            # two sorted runs: the stable sort (timsort) merges them in linear time
            run = np.sort(np.concatenate((self._runs.pop(), run)), kind="stable")
        self._runs.append(run)


class _RepeatsKept(ChunkPreparer):
    """The sync's preparer without its de-duplication: reconcile classifies each repeated key itself."""

    @staticmethod
    def _drop_duplicates(pending: list[PendingEvent], prepared: PreparedChunk, seen: set[str]) -> list[PendingEvent]:
        return pending


class Reconciler:
    """Classifies the rows of a query chunk by chunk; :func:`reconcile` drives it.

    Args:
        transform: the transform of the sync being checked (the same
            ``TransformConfig``, or the keys and hashes differ).
        ledger: the ledger and namespace the sync used; only read.
        examples: how many examples each category keeps.
    """

    def __init__(self, transform: TransformConfig, ledger: Ledger, *, examples: int = 10) -> None:
        self.ledger = ledger
        self._preparer = _RepeatsKept(transform, None, dry_run=True)
        self._seen = _SeenKeys()
        self._ledger_exists = ledger.tables_exist()
        inspector = sa.inspect(ledger.engine)
        rejects = ledger.rejects_table
        self._rejects_exist = self._ledger_exists and inspector.has_table(rejects.name, schema=rejects.schema)
        self.report = ReconcileReport(
            namespace=ledger.namespace, example_limit=examples, ledger_exists=self._ledger_exists
        )

    def add(self, chunk: pd.DataFrame) -> None:
        """Classify every row of ``chunk`` (chunks in the query's order)."""
        prepared = self._preparer.prepare(chunk)
        if len(prepared.pending) + len(prepared.rejects) != prepared.rows:
            # the preparer dropped rows it should have kept (its de-duplication changed?)
            raise RuntimeError(
                f"reconcile lost rows: {prepared.rows} rows became {len(prepared.pending)} events "
                f"and {len(prepared.rejects)} rejects"
            )
        report = self.report
        report.rows += prepared.rows
        for reject in prepared.rejects:
            report.add(INVALID, ReconcileExample(reject.row, None, f"{reject.field}: {reject.reason}"))
        self._classify(self._first_occurrences(prepared.pending))

    def _first_occurrences(self, pending: list[PendingEvent]) -> list[PendingEvent]:
        """The events whose key no earlier row had; each repeat is counted a ``duplicate_key``."""
        digests = _SeenKeys.digests([event.key for event in pending])
        seen_before = self._seen.contains(digests)
        in_chunk: set[str] = set()
        first: list[PendingEvent] = []
        new_digests = []
        for index, event in enumerate(pending):
            if seen_before[index] or event.key in in_chunk:
                self.report.add(DUPLICATE_KEY, ReconcileExample(event.row, event.key, "an earlier row has this key"))
                continue
            in_chunk.add(event.key)
            first.append(event)
            new_digests.append(digests[index])
        self._seen.add(np.array(new_digests, dtype=np.uint64))
        return first

    def _classify(self, events: list[PendingEvent]) -> None:
        if not events:
            return
        keys = [event.key for event in events]
        rows = self.ledger.lookup(keys) if self._ledger_exists else {}
        absent = [key for key in keys if key not in rows]
        refusals = self._refusals(absent) if absent and self._rejects_exist else {}
        stamp = now_ms()
        for event in events:
            row = rows.get(event.key)
            if row is not None:
                category, reason = self._by_ledger(row, event, stamp)
            elif event.key in refusals:
                category, reason = REFUSED, f"refused by pagent: {refusals[event.key]}"
            else:
                category, reason = NEVER_SENT, self._never_sent_reason()
            self.report.add(category, ReconcileExample(event.row, event.key, reason))

    def _never_sent_reason(self) -> str:
        if not self._ledger_exists:
            return f"the ledger table {self.ledger.table_name!r} does not exist: nothing was sent with it"
        return "no ledger row: no run sent it (a run stopped before it, or none selected it)"

    def _by_ledger(self, row: LedgerRow, event: PendingEvent, stamp: int) -> tuple[str, str]:
        if row.status == SENT:
            if row.content_digest == content_digest(event.content_hash):
                return SENT_OK, "sent"
            return CHANGED_AFTER_SEND, "sent, and the row has changed since (pagent has no update: not resent)"
        if row.status == UNKNOWN:
            return UNKNOWN_OUTCOME, "the answer was lost: it may or may not have reached pagent"
        if row.status == CLAIMED:
            return IN_FLIGHT, self._claim_reason(row, stamp)
        return UNKNOWN_OUTCOME, f"the ledger holds it with an unexpected status {row.status!r}"

    def _claim_reason(self, row: LedgerRow, stamp: int) -> str:
        heartbeat_at = row.heartbeat_at or 0  # 0: its claim's row is gone
        age_s = max(0, stamp - heartbeat_at) / 1000
        owner = f"run {row.owner_run} on {row.owner_host or '?'}"
        if row.owner_task:
            owner += f" (task {row.owner_task}, try {row.owner_try})"
        reason = f"claimed by {owner}, heartbeat {age_s:.0f}s ago"
        if stamp - heartbeat_at > self.ledger.claim_timeout_ms:
            reason += ": abandoned, the next run treats it as an unknown outcome"
        return reason

    def _refusals(self, keys: Sequence[str]) -> dict[str, str]:
        """pagent's latest refusal message for each of ``keys`` that it refused."""
        t = self.ledger.rejects_table
        found: dict[str, str] = {}
        with self.ledger.engine.connect() as conn:
            for start in range(0, len(keys), _LOOKUP_SLICE):
                query = (
                    sa.select(t.c.event_key, t.c.reason)
                    .where(
                        t.c.namespace == self.ledger.namespace,
                        t.c.source == "refused",
                        t.c.event_key.in_(keys[start : start + _LOOKUP_SLICE]),
                    )
                    .order_by(t.c.recorded_at, t.c.id)
                )
                found.update((key, reason) for key, reason in conn.execute(query))  # the latest wins
        return found


def reconcile(
    chunks: Iterable[pd.DataFrame], transform: TransformConfig, ledger: Ledger, *, examples: int = 10
) -> ReconcileReport:
    """Compare the warehouse rows of a query with the ledger; see the module docstring.

    Args:
        chunks: the query's rows, as :func:`~pagent_provider.core.reading.read_sql_chunks` yields them.
        transform: the transform of the sync being checked.
        ledger: the ledger and namespace the sync used; only read.
        examples: how many examples each category keeps.

    Raises:
        PagentConfigError: the query lacks a column the transform needs.
        PagentLedgerUnavailableError: the ledger database kept failing.
    """
    reconciler = Reconciler(transform, ledger, examples=examples)
    try:
        for chunk in chunks:
            reconciler.add(chunk)
    finally:
        close = getattr(chunks, "close", None)  # a generator holding a database cursor
        if close is not None:
            close()
    return reconciler.report
