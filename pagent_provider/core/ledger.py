"""The delivery ledger: which conversions were sent, are being sent, or have an unknown fate.

pagent has no idempotency key, so whatever is sent twice is counted twice. The
ledger is a table, kept in any SQL database SQLAlchemy reaches (SQLite,
PostgreSQL, MariaDB/MySQL), with one row per ``(namespace, event_key)``:

``claimed``
    a run is sending it now. The claim is taken atomically (insert-if-absent
    under the primary key), so two workers can never both claim one key. It
    records its owner (host, process, Airflow task instance and try) and a
    heartbeat.
``sent``
    pagent acknowledged it. Later runs skip it.
``unknown``
    it may or may not have reached pagent: the answer was lost, or its owner
    died (or stopped heartbeating) while it was claimed. The ``unknown_outcome``
    policy decides what the next run does: ``"resend"`` takes it over and sends
    it again (at least once), ``"skip"`` leaves it (at most once).

A definite failure deletes the claim, so the next run tries again. Rows that
cannot be delivered (invalid, or refused by pagent) are logged in a sibling
table, ``<table>_rejects``, with the reason.
"""

from __future__ import annotations

import itertools
import logging
import operator
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pagent_provider.core import defaults
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.exceptions import PagentConfigError

log = logging.getLogger(__name__)

UnknownOutcomePolicy = Literal["resend", "skip"]
UNKNOWN_OUTCOME_POLICIES = ("resend", "skip")

CLAIMED, SENT, UNKNOWN = "claimed", "sent", "unknown"
MAX_KEY_LENGTH = 255
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Bound every IN (...) list: SQLite allows 32,766 parameters, and shorter lists plan better.
_LOOKUP_SLICE = 500


def now_ms() -> int:
    """Current time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def _slices(items: Sequence[str], size: int = _LOOKUP_SLICE) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class LedgerRow:
    """What the ledger knows about one key."""

    event_key: str
    status: str
    content_hash: str
    claim_id: str
    owner_run: str
    owner_host: str | None
    owner_pid: int | None
    owner_task: str | None
    owner_try: int | None
    heartbeat_at: int


@dataclass
class ClaimResult:
    """The outcome of claiming one batch's keys.

    Attributes:
        claim_id: identifies this claim in later ``mark_*`` calls.
        claimed: keys this run now owns and must send.
        already_sent: keys pagent acknowledged before.
        changed_after_send: keys sent before whose content has changed since (not resent).
        unknown_skipped: keys with an unknown outcome, left alone under the ``"skip"`` policy.
        unknown_taken_over: keys with an unknown outcome now claimed for resending.
        claimed_elsewhere: keys a live owner is sending right now.
        duplicate_keys: keys this same run has already handled (the source repeats them).
    """

    claim_id: str
    claimed: set[str] = field(default_factory=set)
    already_sent: list[str] = field(default_factory=list)
    changed_after_send: list[str] = field(default_factory=list)
    unknown_skipped: list[str] = field(default_factory=list)
    unknown_taken_over: set[str] = field(default_factory=set)
    claimed_elsewhere: list[str] = field(default_factory=list)
    duplicate_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RejectRecord:
    """A row that will not be delivered, and why."""

    row: str
    field: str
    reason: str
    source: Literal["invalid", "refused"]
    event_key: str | None = None


def _inserted_if_all(rows: Sequence[dict[str, object]], rowcount: int) -> set[tuple[str, str]] | None:
    """Every row's ``(key, claim id)`` when a count-only insert inserted them all, else ``None`` (look up)."""
    if rowcount != len(rows):
        return None
    return {(str(row["event_key"]), str(row["claim_id"])) for row in rows}


def _table_parts(table_name: str) -> tuple[str | None, str]:
    schema, _, name = table_name.rpartition(".")
    for part in filter(None, (schema, name)):
        if not _IDENTIFIER.match(part):
            raise PagentConfigError(
                f"ledger table name {table_name!r} is not a plain SQL identifier "
                "(letters, digits and underscores, optionally schema.table)"
            )
    return schema or None, name


def _build_tables(table_name: str) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    schema, name = _table_parts(table_name)
    metadata = sa.MetaData(schema=schema)
    ledger = sa.Table(
        name,
        metadata,
        sa.Column("namespace", sa.String(128), primary_key=True),
        sa.Column("event_key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("claim_id", sa.String(32), nullable=False),
        sa.Column("owner_run", sa.String(32), nullable=False),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_task", sa.String(512)),
        sa.Column("owner_try", sa.Integer),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("detail", sa.String(1000)),
        sa.Index(f"ix_{name}_claim", "namespace", "claim_id"),
    )
    rejects = sa.Table(
        f"{name}_rejects",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(128), nullable=False),
        sa.Column("run_token", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event_key", sa.String(MAX_KEY_LENGTH)),
        sa.Column("row_ref", sa.String(MAX_KEY_LENGTH), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Index(f"ix_{name}_rejects_ns", "namespace", "recorded_at"),
    )
    return metadata, ledger, rejects


def _on_sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the ledger commit while the same file is being read in chunks,
    # and the busy timeout lets parallel workers queue instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _prepare_sqlite(engine: sa.Engine) -> None:
    # Once per engine: every Ledger built on a shared engine used to add one more
    # listener, and adding one while another thread opens a connection (which
    # iterates the listeners) fails with "deque mutated during iteration".
    if not sa.event.contains(engine, "connect", _on_sqlite_connect):
        sa.event.listen(engine, "connect", _on_sqlite_connect)


class Ledger:
    """Claims, marks and looks up conversions in a SQL table; see the module docstring.

    Every method works in bulk: one statement for a whole batch, never a round
    trip per row.

    Args:
        engine: where the table lives.
        namespace: scope of the keys; runs that upload to the same pagent account
            should share it (the operator defaults it to the pagent connection id).
        owner: written on the claims of this run.
        table_name: the ledger table (``schema.table`` works); rejects go to
            ``<table>_rejects``.
        claim_timeout_s: a claim whose heartbeat is older counts as abandoned.
        unknown_outcome: ``"resend"`` (at least once) or ``"skip"`` (at most once).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        namespace: str,
        owner: ClaimOwner | None = None,
        table_name: str = defaults.LEDGER_TABLE,
        claim_timeout_s: float = defaults.CLAIM_TIMEOUT_S,
        unknown_outcome: UnknownOutcomePolicy = defaults.UNKNOWN_OUTCOME,  # type: ignore[assignment]
    ) -> None:
        if unknown_outcome not in UNKNOWN_OUTCOME_POLICIES:
            raise PagentConfigError(f"unknown_outcome must be 'resend' or 'skip', got {unknown_outcome!r}")
        if not namespace or len(namespace) > 128:
            raise PagentConfigError("the ledger namespace must be 1 to 128 characters")
        if claim_timeout_s <= 0:
            raise PagentConfigError("claim_timeout_s must be a positive number of seconds")
        self.engine = engine
        self.namespace = namespace
        self.owner = owner or ClaimOwner()
        self.table_name = table_name
        self.claim_timeout_ms = int(claim_timeout_s * 1000)
        self.unknown_outcome: UnknownOutcomePolicy = unknown_outcome
        self.metadata, self.table, self.rejects_table = _build_tables(table_name)
        self._claim_statement = self._build_claim_statement()
        self._sqlite_claim: tuple[str, tuple[str, ...]] | None = None
        self._claim_prefix = uuid.uuid4().hex[:16]
        self._claim_counter = itertools.count()
        if engine.dialect.name == "sqlite":
            _prepare_sqlite(engine)

    def __repr__(self) -> str:
        return f"Ledger(table={self.table_name!r}, namespace={self.namespace!r}, url={self.engine.url!r})"

    # --- set-up -----------------------------------------------------------

    def create_tables(self) -> None:
        """Create the ledger and rejects tables when missing (safe when several workers race)."""
        if self.engine.dialect.name == "sqlite":
            # Switch the file to WAL now, before the sync reads its first chunk. The
            # connect hook cannot do it for a connection opened later while another
            # one (opened before this Ledger existed, e.g. the reader on a shared
            # engine) holds a read transaction: it would wait out the busy timeout
            # and fail with "database is locked". Once the file is WAL, it stays WAL.
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode = WAL")
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                # Another worker created a table between our check and our CREATE.
                # Where DDL is not transactional (SQLite, MariaDB) it may still be
                # creating the rejects table: check again and create what is missing,
                # rather than returning before both tables exist.
                if attempt == attempts:
                    inspector = sa.inspect(self.engine)
                    schema = self.table.schema
                    if not all(inspector.has_table(t.name, schema=schema) for t in (self.table, self.rejects_table)):
                        raise

    def tables_exist(self) -> bool:
        """True when the ledger table is there."""
        return sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema)

    # --- reading ----------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> dict[str, LedgerRow]:
        """The ledger rows for ``keys`` (missing keys are absent from the result)."""
        t = self.table
        found: dict[str, LedgerRow] = {}
        with self.engine.connect() as conn:
            for keys_slice in _slices(keys):
                rows = conn.execute(
                    sa.select(
                        t.c.event_key,
                        t.c.status,
                        t.c.content_hash,
                        t.c.claim_id,
                        t.c.owner_run,
                        t.c.owner_host,
                        t.c.owner_pid,
                        t.c.owner_task,
                        t.c.owner_try,
                        t.c.heartbeat_at,
                    ).where(t.c.namespace == self.namespace, t.c.event_key.in_(keys_slice))
                )
                found.update((row.event_key, LedgerRow(*row)) for row in rows)
        return found

    def sent_hashes(self, keys: Sequence[str]) -> dict[str, str]:
        """The content hash of every key in ``keys`` that pagent acknowledged (others are absent).

        The cheap question a run asks of every chunk, so it reads two columns only.
        """
        t = self.table
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for keys_slice in _slices(keys, 2 * _LOOKUP_SLICE):
                rows = conn.execute(
                    sa.select(t.c.event_key, t.c.content_hash).where(
                        t.c.namespace == self.namespace, t.c.status == SENT, t.c.event_key.in_(keys_slice)
                    )
                )
                found.update((key, content_hash) for key, content_hash in rows)
        return found

    def count_by_status(self) -> dict[str, int]:
        """How many keys of this namespace are in each status."""
        t = self.table
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.status, sa.func.count()).where(t.c.namespace == self.namespace).group_by(t.c.status)
            )
            return {status: count for status, count in rows}

    # --- claiming ---------------------------------------------------------

    def claim(self, entries: Sequence[tuple[str, str]]) -> ClaimResult:
        """Claim ``(event_key, content_hash)`` pairs for sending; see :class:`ClaimResult`."""
        return self.claim_batches([entries])[0]

    def claim_batches(
        self, batches: Sequence[Sequence[tuple[str, str]]], *, mark_sent: Sequence[str] = ()
    ) -> list[ClaimResult]:
        """Claim several batches in one statement and one transaction, one claim id per batch.

        Each batch is settled on its own (already sent, unknown, claimed
        elsewhere), exactly as :meth:`claim` would; doing them together only
        saves round trips and commits. ``mark_sent`` names earlier claims that
        pagent acknowledged in full: they are marked sent in the same transaction.
        """
        results = [ClaimResult(claim_id=self._new_claim_id()) for _ in batches]
        stamp = now_ms()
        rows = [
            self._claim_row(key, content_hash, result.claim_id, stamp)
            for result, entries in zip(results, batches, strict=True)
            for key, content_hash in entries
        ]
        if not rows:
            self.mark_claims_sent(mark_sent)
            return results
        with self.engine.begin() as conn:
            # Insert first, mark after: a transaction that is marking its own rows then
            # waits for nobody, so two runs' transactions cannot wait on each other
            # (marking first deadlocks against a run inserting the keys being marked).
            inserted = self._insert_if_absent(conn, rows)
            self._mark_claims_sent(conn, mark_sent)
        for result, entries in zip(results, batches, strict=True):
            keys = {key for key, _ in entries}
            # compare (key, claim id): a key repeated in two batches is inserted for one of them only
            if inserted is not None and {(key, result.claim_id) for key in keys} <= inserted:
                result.claimed = keys
            elif entries:
                self._settle_conflicts(entries, result, stamp)
        return results

    def _new_claim_id(self) -> str:
        # a random prefix per ledger object and a counter: unique, without a urandom call per batch
        return f"{self._claim_prefix}{next(self._claim_counter):016x}"

    def _claim_row(self, key: str, content_hash: str, claim_id: str, stamp: int) -> dict[str, object]:
        owner = self.owner
        return {
            "namespace": self.namespace,
            "event_key": key,
            "status": CLAIMED,
            "content_hash": content_hash,
            "claim_id": claim_id,
            "owner_run": owner.run_token,
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_task": owner.task,
            "owner_try": owner.try_number,
            "claimed_at": stamp,
            "heartbeat_at": stamp,
        }

    def _insert_if_absent(self, conn: sa.Connection, rows: list[dict[str, object]]) -> set[tuple[str, str]] | None:
        """Insert the rows whose key is free; return their ``(key, claim id)`` (``None``: not known, look up)."""
        # Insert in key order: each inserted key stays locked until commit, and two
        # runs inserting overlapping keys in different orders (overlapping intervals
        # read in a different order) deadlock on PostgreSQL and MariaDB.
        rows = sorted(rows, key=lambda row: str(row["event_key"]))
        if self._claim_statement is None:
            return self._insert_one_by_one(conn, rows)
        if self.engine.dialect.name == "sqlite":
            return self._insert_on_sqlite(conn, rows)
        result = conn.execute(self._claim_statement, rows)
        if result.returns_rows:
            return {(row[0], row[1]) for row in result}
        # MySQL/MariaDB's INSERT IGNORE reports only a count
        return _inserted_if_all(rows, result.rowcount)

    def _insert_on_sqlite(self, conn: sa.Connection, rows: list[dict[str, object]]) -> set[tuple[str, str]] | None:
        # sqlite3's own executemany, with the statement compiled once to text and
        # rows as tuples: SQLAlchemy's per-row parameter handling would cost more
        # than SQLite's work. Its rowcount sums the rows inserted.
        if self._sqlite_claim is None:
            compiled = self._claim_statement.compile(  # type: ignore[union-attr]
                dialect=self.engine.dialect, column_keys=list(rows[0])
            )
            self._sqlite_claim = (str(compiled), tuple(compiled.positiontup or ()))
        sql, names = self._sqlite_claim
        as_tuple = operator.itemgetter(*names)
        result = conn.exec_driver_sql(sql, [as_tuple(row) for row in rows])
        return _inserted_if_all(rows, result.rowcount)

    def _build_claim_statement(self) -> sa.Insert | None:
        # One statement, compiled once and run with a list of rows (executemany):
        # building a new multi-row VALUES per batch costs more than the database work.
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite_insert(self.table).on_conflict_do_nothing()  # see _insert_on_sqlite
        if dialect == "postgresql":
            return (
                postgresql_insert(self.table)
                .on_conflict_do_nothing()
                .returning(self.table.c.event_key, self.table.c.claim_id)
            )
        if dialect in ("mysql", "mariadb"):
            return self.table.insert().prefix_with("IGNORE")
        return None

    def _insert_one_by_one(self, conn: sa.Connection, rows: list[dict[str, object]]) -> set[tuple[str, str]]:
        # Portable fallback for dialects without insert-if-absent: the primary key still decides.
        inserted = set()
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(self.table.insert().values(row))
                inserted.add((str(row["event_key"]), str(row["claim_id"])))
            except sa.exc.IntegrityError:
                pass
        return inserted

    def _settle_conflicts(self, entries: Sequence[tuple[str, str]], result: ClaimResult, stamp: int) -> None:
        hashes = dict(entries)
        existing = self.lookup(list(hashes))
        vanished = [(key, hashes[key]) for key in hashes if key not in existing]
        if vanished:
            # released by another run between our insert and our lookup: try once more
            with self.engine.begin() as conn:
                self._insert_if_absent(conn, [self._claim_row(k, h, result.claim_id, stamp) for k, h in vanished])
            existing.update(self.lookup([key for key, _ in vanished]))
        to_take_over: list[LedgerRow] = []
        to_mark_unknown: list[LedgerRow] = []
        for key, row in existing.items():
            if row.claim_id == result.claim_id:
                result.claimed.add(key)
            elif row.owner_run == self.owner.run_token:
                result.duplicate_keys.append(key)
            elif row.status == SENT:
                result.already_sent.append(key)
                if row.content_hash != hashes[key]:
                    result.changed_after_send.append(key)
            elif row.status == UNKNOWN or self._is_abandoned(row, stamp):
                if self.unknown_outcome == "resend":
                    to_take_over.append(row)
                else:
                    to_mark_unknown.append(row)
                    result.unknown_skipped.append(key)
            else:
                result.claimed_elsewhere.append(key)
        if to_mark_unknown:
            self._mark_abandoned_unknown(to_mark_unknown)
        if to_take_over:
            taken = self._take_over(to_take_over, hashes, result.claim_id, stamp)
            result.unknown_taken_over = taken
            result.claimed |= taken
            lost_race = {row.event_key for row in to_take_over} - taken
            result.claimed_elsewhere.extend(sorted(lost_race))

    def _is_abandoned(self, row: LedgerRow, stamp: int) -> bool:
        if row.status != CLAIMED:
            return False
        if row.heartbeat_at < stamp - self.claim_timeout_ms:
            return True
        return self.owner.outlived(row.owner_host, row.owner_pid, row.owner_task, row.owner_try)

    def _swap_claims(
        self, rows: Sequence[LedgerRow], extra_params: dict[str, dict[str, str]], **values: object
    ) -> None:
        """Update ``rows`` only where their claim is still the one we read (compare-and-swap).

        Of two runs racing for the same abandoned key, only the first UPDATE
        matches its old claim id. Rows go in key order, like the claiming insert,
        so two runs never lock the same keys in opposite orders (no deadlock).
        """
        t = self.table
        statement = (
            t.update()
            .where(
                t.c.namespace == self.namespace,
                t.c.event_key == sa.bindparam("b_key"),
                t.c.claim_id == sa.bindparam("b_old_claim"),
                # not status.in_(...): an expanding IN cannot be used with executemany
                sa.or_(t.c.status == CLAIMED, t.c.status == UNKNOWN),
            )
            .values(**values)
        )
        params = [
            {"b_key": row.event_key, "b_old_claim": row.claim_id, **extra_params.get(row.event_key, {})}
            for row in sorted(rows, key=lambda row: row.event_key)
        ]
        with self.engine.begin() as conn:
            conn.execute(statement, params)

    def _mark_abandoned_unknown(self, rows: Sequence[LedgerRow]) -> None:
        self._swap_claims(rows, {}, status=UNKNOWN, detail="its owner stopped while it was claimed")

    def _take_over(self, rows: Sequence[LedgerRow], hashes: dict[str, str], claim_id: str, stamp: int) -> set[str]:
        owner = self.owner
        self._swap_claims(
            rows,
            {row.event_key: {"b_hash": hashes[row.event_key]} for row in rows},
            status=CLAIMED,
            claim_id=claim_id,
            content_hash=sa.bindparam("b_hash"),
            owner_run=owner.run_token,
            owner_host=owner.host,
            owner_pid=owner.pid,
            owner_task=owner.task,
            owner_try=owner.try_number,
            claimed_at=stamp,
            heartbeat_at=stamp,
            detail="taken over: earlier outcome unknown",
        )
        won = self.lookup([row.event_key for row in rows])
        return {key for key, row in won.items() if row.claim_id == claim_id}

    # --- after sending ----------------------------------------------------

    def _execute_on_claim(self, claim_id: str, keys: Iterable[str] | None, statement: sa.Update | sa.Delete) -> None:
        """Run ``statement`` on the rows of one claim: the given ``keys`` of it, or all of it."""
        t = self.table
        statement = statement.where(t.c.namespace == self.namespace, t.c.claim_id == claim_id)
        with self.engine.begin() as conn:
            if keys is None:
                conn.execute(statement)
                return
            for keys_slice in _slices(list(keys)):
                conn.execute(statement.where(t.c.event_key.in_(keys_slice)))

    def mark_sent(self, claim_id: str, keys: Iterable[str] | None = None) -> None:
        """pagent acknowledged these keys (all of the claim when ``keys`` is None)."""
        update = self.table.update().values(status=SENT, sent_at=now_ms(), detail=None)
        self._execute_on_claim(claim_id, keys, update)

    def mark_claims_sent(self, claim_ids: Sequence[str]) -> None:
        """pagent acknowledged every key of these claims: one statement for all of them."""
        if claim_ids:
            with self.engine.begin() as conn:
                self._mark_claims_sent(conn, claim_ids)

    def _mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[str]) -> None:
        t = self.table
        update = t.update().values(status=SENT, sent_at=now_ms(), detail=None)
        for ids_slice in _slices(claim_ids):
            conn.execute(update.where(t.c.namespace == self.namespace, t.c.claim_id.in_(ids_slice)))

    def mark_unknown(self, claim_id: str, keys: Iterable[str] | None, detail: str) -> None:
        """The answer for these keys was lost: they may or may not have been recorded."""
        self._execute_on_claim(claim_id, keys, self.table.update().values(status=UNKNOWN, detail=detail[:1000]))

    def release(self, claim_id: str, keys: Iterable[str] | None = None) -> None:
        """A definite failure: drop the claim so that a later run sends these keys again."""
        t = self.table
        self._execute_on_claim(claim_id, keys, t.delete().where(t.c.status == CLAIMED))

    def heartbeat(self, claim_ids: Iterable[str]) -> None:
        """Tell other workers that the owner of these claims is still alive."""
        ids = list(claim_ids)
        if not ids:
            return
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.namespace == self.namespace, t.c.claim_id.in_(ids), t.c.status == CLAIMED)
                .values(heartbeat_at=now_ms())
            )

    def record_rejects(self, rejects: Sequence[RejectRecord]) -> None:
        """Log rows that will not be delivered, with the reason, in ``<table>_rejects``."""
        if not rejects:
            return
        stamp = now_ms()
        rows = [
            {
                "namespace": self.namespace,
                "run_token": self.owner.run_token,
                "source": reject.source,
                "event_key": reject.event_key,
                "row_ref": reject.row[:MAX_KEY_LENGTH],
                "field": reject.field[:128],
                "reason": reject.reason[:2000],
                "recorded_at": stamp,
            }
            for reject in rejects
        ]
        with self.engine.begin() as conn:
            conn.execute(self.rejects_table.insert(), rows)
