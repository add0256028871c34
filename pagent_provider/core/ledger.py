"""The delivery ledger: which conversions were sent, are being sent, or have an unknown fate.

pagent has no idempotency key, so whatever is sent twice is counted twice. The
ledger is a table, kept in PostgreSQL, MySQL/MariaDB or SQLite (what each of
them offers, and why others are refused, is in
:mod:`pagent_provider.core.ledger_dialects`), with one row per
``(namespace, event_key)`` (the namespace by its id in ``<table>_namespaces``,
see :mod:`pagent_provider.core.ledger_namespaces`), keys compared byte for byte, beside a row per
claim (a batch) in ``<table>_claims`` that holds what its keys share: the
owner, the heartbeat and the status (a key whose fate differs from its
batch's carries its own). A key's status is one of:

``claimed``
    a run is sending it now. The claim is taken atomically (insert-if-absent
    under the primary key), so two workers can never both claim one key. Its
    claim records the owner (host, process, Airflow task instance and try) and
    a heartbeat.
``sent``
    pagent acknowledged it. Later runs skip it.
``unknown``
    it may or may not have reached pagent: the answer was lost, or its owner
    died (or stopped heartbeating) while it was claimed. The ``unknown_outcome``
    policy decides what the next run does: ``"resend"`` takes it over and sends
    it again (at least once), ``"skip"`` leaves it (at most once).

A definite failure deletes the claim, so the next run tries again. Rows that
cannot be delivered (invalid, or refused by pagent) are logged in a sibling
table, ``<table>_rejects``, with the reason. Every transaction is retried
while the database fails transiently (:mod:`pagent_provider.core.ledger_retry`).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from pagent_provider.core import defaults
from pagent_provider.core.ledger_dialects import LedgerDialect, ledger_dialect
from pagent_provider.core.ledger_migration import is_layout_1, migrate_layout_1
from pagent_provider.core.ledger_namespaces import find_namespace_id, register_namespace
from pagent_provider.core.ledger_retry import LedgerRetry
from pagent_provider.core.ledger_statements import (
    CLAIMED,
    EVERY_ROW,
    SENT,
    UNKNOWN,
    UNREGISTERED,
    ClaimRow,
    Inserted,
    LedgerStatements,
    LedgerTables,
    content_digest,
    joined,
    key_status,
    slices,
)
from pagent_provider.core.owner import ClaimOwner, silence_ms
from pagent_provider.exceptions import PagentConfigError, PagentLedgerError

log = logging.getLogger(__name__)

T = TypeVar("T")

UnknownOutcomePolicy = Literal["resend", "skip"]
UNKNOWN_OUTCOME_POLICIES = ("resend", "skip")

MAX_KEY_LENGTH = 255
#: The default time budget of a ledger transaction that keeps failing transiently.
WRITE_RETRY_S = 60.0
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Times a claim re-inserts keys released by another run between its insert and its lookup.
_VANISHED_ROUNDS = 3
_UNRECORDED_SENT = (
    "the ledger still holds them as claims, which the next run treats as an unknown outcome "
    "(with unknown_outcome='resend' it sends them again)"
)


def now_ms() -> int:
    """Current time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def _acknowledged(batches: int) -> str:
    return f"the events of {batches} batches were acknowledged by pagent but could not be recorded as sent: " + (
        _UNRECORDED_SENT
    )


def _all_inserted(inserted: Inserted, keys: set[str], claim_id: int) -> bool:
    """Whether the insert took every key of one batch (of claim ``claim_id``)."""
    if inserted is EVERY_ROW:
        return True
    # compare (key, claim id): a key repeated in two batches is inserted for one of them only
    return isinstance(inserted, set) and all((key, claim_id) in inserted for key in keys)


def _first(row: ClaimRow) -> str:
    return row[0]


def _examples(keys: Iterable[str], count: int = 3) -> str:
    return ", ".join(repr(key[:40]) for key in itertools.islice(sorted(keys), count))


@dataclass(frozen=True)
class LedgerRow:
    """What the ledger knows about one key."""

    event_key: str
    status: str
    content_digest: int
    claim_id: int
    owner_run: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_task: str | None
    owner_try: int | None
    heartbeat_at: int | None


@dataclass
class ClaimResult:
    """The outcome of claiming one batch's keys.

    Every key of the batch is in exactly one of ``claimed``, ``already_sent``,
    ``unknown_skipped``, ``claimed_elsewhere`` and ``duplicate_keys``;
    ``unknown_taken_over`` is part of ``claimed`` and ``changed_after_send`` of
    ``already_sent``.

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

    claim_id: int
    claimed: set[str] = field(default_factory=set)
    already_sent: list[str] = field(default_factory=list)
    changed_after_send: list[str] = field(default_factory=list)
    unknown_skipped: list[str] = field(default_factory=list)
    unknown_taken_over: set[str] = field(default_factory=set)
    claimed_elsewhere: list[str] = field(default_factory=list)
    duplicate_keys: list[str] = field(default_factory=list)

    def unaccounted(self, keys: Collection[str]) -> str | None:
        """What is wrong when ``keys`` are not split as the class docstring says, else ``None``."""
        parts = (self.claimed, self.already_sent, self.unknown_skipped, self.claimed_elsewhere, self.duplicate_keys)
        placed = set().union(*parts)
        if placed - set(keys):
            return f"keys that were not asked for: {_examples(placed - set(keys))}"
        if set(keys) - placed:
            return f"keys without an outcome: {_examples(set(keys) - placed)}"
        if sum(map(len, parts)) != len(placed):
            return "keys with two outcomes"
        if not self.unknown_taken_over <= self.claimed or not set(self.changed_after_send) <= set(self.already_sent):
            return "taken-over or changed keys outside their outcome"
        return None


@dataclass(frozen=True)
class RejectRecord:
    """A row that will not be delivered, and why."""

    row: str
    field: str
    reason: str
    source: Literal["invalid", "refused"]
    event_key: str | None = None


def _table_parts(table_name: str) -> tuple[str | None, str]:
    schema, _, name = table_name.rpartition(".")
    for part in filter(None, (schema, name)):
        if not _IDENTIFIER.match(part):
            raise PagentConfigError(
                f"ledger table name {table_name!r} is not a plain SQL identifier "
                "(letters, digits and underscores, optionally schema.table)"
            )
    return schema or None, name


#: Reasons and details may hold any character: on MySQL/MariaDB the tables are
#: utf8mb4 whatever the database's default (a latin1 database would refuse a
#: CJK reason with error 1366 in strict mode). Other dialects ignore these.
_TEXT_TABLE_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


def storable(text: str, limit: int) -> str:
    """``text`` as every ledger database can store it, cut to ``limit`` characters.

    A NUL (PostgreSQL text cannot hold one) and lone surrogates (no driver can
    encode them) are written as escapes; they come from rows and from server
    answers, which are not ours to trust.
    """
    safe = text.replace("\x00", "\\x00")
    if not safe.isascii():
        safe = safe.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe[:limit]


def build_tables(
    table_name: str, key: Callable[[int], sa.types.TypeEngine[str]], *, ids_from_sequence: bool = False
) -> LedgerTables:
    """The ledger's tables; ``key`` is the dialect's type of a byte-exact key column.

    ``ids_from_sequence``: the rejects' ids come from an explicit sequence
    (DuckDB has neither SERIAL nor AUTO_INCREMENT).
    """
    schema, name = _table_parts(table_name)
    id_default = (sa.Sequence(f"{name}_rejects_id_seq", schema=schema),) if ids_from_sequence else ()
    metadata = sa.MetaData(schema=schema)
    events = sa.Table(
        name,
        metadata,
        # widest first: PostgreSQL pads each column to its alignment (content_digest: see its function)
        sa.Column("claim_id", sa.BigInteger, nullable=False),
        sa.Column("content_digest", sa.Integer, nullable=False),
        # the namespace's id in <table>_namespaces: two bytes a key and its index entry, not its text
        sa.Column("namespace_id", sa.SmallInteger, nullable=False),
        sa.Column("event_key", key(MAX_KEY_LENGTH), nullable=False),
        # NULL: the status of its claim; set only where the key's fate differs from its batch's
        sa.Column("status", sa.String(16)),
        sa.Column("detail", sa.String(1000)),
        # named: a table renamed by the migration keeps its own primary key's name
        sa.PrimaryKeyConstraint("namespace_id", "event_key", name=f"pk_{name}"),
        # the rows are the primary key's b-tree, not a second copy beside it
        sqlite_with_rowid=False,
        **_TEXT_TABLE_OPTIONS,
    )
    claims = sa.Table(
        f"{name}_claims",
        metadata,
        sa.Column("claim_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("namespace", key(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner_run", key(32), nullable=False),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_task", sa.String(512)),
        sa.Column("owner_try", sa.Integer),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("detail", sa.String(1000)),
        **_TEXT_TABLE_OPTIONS,
    )
    rejects = sa.Table(
        f"{name}_rejects",
        metadata,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), *id_default, primary_key=True, autoincrement=True
        ),
        # byte-exact, as everywhere: a reconcile of 'shop' must not count the rejects of 'Shop'
        sa.Column("namespace", key(128), nullable=False),
        sa.Column("run_token", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event_key", key(MAX_KEY_LENGTH)),
        sa.Column("row_ref", sa.String(MAX_KEY_LENGTH), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Index(f"ix_{name}_rejects_ns", "namespace", "recorded_at"),
        **_TEXT_TABLE_OPTIONS,
    )
    namespaces = sa.Table(
        f"{name}_namespaces",
        metadata,
        sa.Column("namespace_id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("namespace", key(128), nullable=False),
        sa.UniqueConstraint("namespace", name=f"uq_{name}_namespaces"),
        **_TEXT_TABLE_OPTIONS,
    )
    return LedgerTables(metadata, events, claims, rejects, namespaces)


class Ledger:
    """Claims, marks and looks up conversions in a SQL table; see the module docstring.

    Every method works in bulk: one statement for a whole batch, never a round
    trip per row.

    Args:
        engine: where the table lives: PostgreSQL, MySQL/MariaDB or SQLite.
        namespace: scope of the keys; runs that upload to the same pagent account
            should share it (the operator defaults it to the pagent connection id).
        owner: written on the claims of this run.
        table_name: the ledger table (``schema.table`` works); rejects go to
            ``<table>_rejects``.
        claim_timeout_s: a claim whose heartbeat is older counts as abandoned.
        unknown_outcome: ``"resend"`` (at least once) or ``"skip"`` (at most once).
        write_retry_s: how long a ledger transaction is retried while the database
            fails transiently (locked, connection lost) before the run gives up.

    Raises:
        PagentLedgerError: the database cannot keep the ledger (it does not
            enforce primary keys, or the ledger has not been checked on it).
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
        write_retry_s: float = WRITE_RETRY_S,
    ) -> None:
        if unknown_outcome not in UNKNOWN_OUTCOME_POLICIES:
            raise PagentConfigError(f"unknown_outcome must be 'resend' or 'skip', got {unknown_outcome!r}")
        if not namespace or len(namespace) > 128:
            raise PagentConfigError("the ledger namespace must be 1 to 128 characters")
        if claim_timeout_s <= 0:
            raise PagentConfigError("claim_timeout_s must be a positive number of seconds")
        if write_retry_s < 0:
            raise PagentConfigError("write_retry_s must be 0 or more seconds")
        self.database: LedgerDialect = ledger_dialect(engine.dialect.name)
        self.engine = engine
        self.namespace = namespace
        self.owner = owner or ClaimOwner()
        self.table_name = table_name
        self.claim_timeout_ms = int(claim_timeout_s * 1000)
        self.unknown_outcome: UnknownOutcomePolicy = unknown_outcome
        self.tables = build_tables(
            table_name, self.database.key_type, ids_from_sequence=self.database.ids_from_sequence
        )
        self.metadata, self.table, self.claims_table, self.rejects_table, self.namespaces_table = self.tables
        self._retry = LedgerRetry(budget_s=write_retry_s, permanent=self.database.permanent, table=table_name)
        # Claims, marks and lookups: one statement per window or chunk, built once.
        self._sql: LedgerStatements = self.database.statements(
            self.database, self.tables, namespace, self.owner, engine.dialect
        )
        # the keys of this object's claims still in flight: whole-claim releases delete by key
        self._claim_keys: dict[int, set[str]] = {}
        if self.database.prepare_engine is not None:
            self.database.prepare_engine(engine)

    def __repr__(self) -> str:
        return f"Ledger(table={self.table_name!r}, namespace={self.namespace!r}, url={self.engine.url!r})"

    # --- transactions -------------------------------------------------------

    def _write(self, operation: str, consequence: Callable[[], str], work: Callable[[sa.Connection], T]) -> T:
        """``work`` in one transaction, retried as a whole while the database fails transiently."""

        def attempt() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return self._retry.run(operation, consequence, attempt)

    def _read(self, operation: str, work: Callable[[sa.Connection], T]) -> T:
        def attempt() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return self._retry.run(operation, lambda: "nothing was changed", attempt)

    # --- set-up -----------------------------------------------------------

    def create_tables(self) -> None:
        """Create the ledger and rejects tables when missing (safe when several workers race).

        Raises:
            PagentLedgerError: an existing table's key columns do not compare
                byte-exactly (made by an earlier version); the message says how
                to fix them.
        """
        before_create = self.database.before_create
        if before_create is not None:  # through the retry: a new SQLite file is locked while others switch it to WAL
            self._retry.run("set-up", lambda: "nothing was changed", lambda: before_create(self.engine))
        # through the retry: a pooled connection killed since the last run must not fail the start
        if self._read("layout check", lambda conn: is_layout_1(conn, self.table)):
            migrate_layout_1(self)
        self._create_missing_tables()
        if self.database.check_key_columns is not None:
            with self.engine.connect() as conn:
                self.database.check_key_columns(conn, self._key_columns())
        self.register_namespace()

    def register_namespace(self) -> int:
        """The id of this namespace in the events table, given to it first if no run has written to it.

        :meth:`create_tables` and the first claim do this; it is public for
        tools that write the tables themselves (the benchmark's prefill).
        """
        return self._ns(register=True)

    def _ns(self, *, register: bool = False) -> int:
        """This namespace's id in the events table; registered first when ``register`` (a write is coming).

        Unregistered and not ``register``: :data:`UNREGISTERED`, which no key
        has (a read finds nothing), not kept, so a later call looks again.
        """
        # one place holds the id, the statements that bind it: a thread finding it set finds it everywhere
        if self._sql.namespace_id == UNREGISTERED:
            namespaces = self.namespaces_table
            found = self._read("namespace", lambda conn: find_namespace_id(conn, namespaces, self.namespace))
            if found is None and register:
                found = register_namespace(self._namespace_transaction, self.table, namespaces, self.namespace)
            if found is None:
                return UNREGISTERED
            self._sql.namespace_id = found
        return self._sql.namespace_id

    def _namespace_transaction(self, work: Callable[[sa.Connection], T]) -> T:
        return self._write("namespace", lambda: "nothing was claimed", work)

    def _in_namespace(self) -> sa.ColumnElement[bool]:
        """The events table's rows of this namespace."""
        return self.table.c.namespace_id == self._ns()

    def _create_missing_tables(self) -> None:
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
                    if not all(inspector.has_table(t.name, schema=schema) for t in self.tables[1:]):
                        raise

    def _key_columns(self) -> list[sa.Column[str]]:
        """The columns that must compare byte-exactly, grouped by table."""
        t, c = self.table, self.claims_table
        return [
            self.namespaces_table.c.namespace,
            t.c.event_key,
            c.c.namespace,
            c.c.owner_run,
            self.rejects_table.c.event_key,
        ]

    def tables_exist(self) -> bool:
        """True when the ledger table is there."""
        return sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema)

    # --- reading ----------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> dict[str, LedgerRow]:
        """The ledger rows for ``keys`` (missing keys are absent from the result)."""
        self._ns()
        return self._read("lookup", lambda conn: {row[0]: LedgerRow(*row) for row in self._sql.lookup(conn, keys)})

    def sent_digests(self, keys: Sequence[str]) -> dict[str, int]:
        """The content digest of every key in ``keys`` that pagent acknowledged (others are absent).

        The cheap question a run asks of every chunk, so it reads few columns.
        Compare a row's :func:`~pagent_provider.core.ledger_statements.content_digest`
        with it to tell whether the row changed since it was sent.
        """
        self._ns()
        return self._read("lookup of sent keys", lambda conn: dict(self._sql.sent_digests(conn, keys)))

    def count_by_status(self) -> dict[str, int]:
        """How many keys of this namespace are in each status."""
        status = key_status(self.tables)
        query = (
            sa.select(status, sa.func.count())
            .select_from(joined(self.tables))
            .where(self._in_namespace())
            .group_by(status)
        )
        return self._read("count", lambda conn: {status: count for status, count in conn.execute(query)})

    def keys_with_status(self, status: str) -> set[str]:
        """Every key of this namespace whose status is ``status`` (a scan: for inspection, not a sync's path)."""
        query = (
            sa.select(self.table.c.event_key)
            .select_from(joined(self.tables))
            .where(self._in_namespace(), key_status(self.tables) == status)
        )
        return self._read("keys by status", lambda conn: set(conn.execute(query).scalars()))

    # --- claiming ---------------------------------------------------------

    def claim(self, entries: Sequence[tuple[str, str]]) -> ClaimResult:
        """Claim ``(event_key, content_hash)`` pairs for sending; see :class:`ClaimResult`."""
        return self.claim_batches([entries])[0]

    def claim_batches(
        self, batches: Sequence[Sequence[tuple[str, str]]], *, mark_sent: Sequence[int] = ()
    ) -> list[ClaimResult]:
        """Claim several batches in one statement and one transaction, one claim id per batch.

        Each batch is settled on its own (already sent, unknown, claimed
        elsewhere), exactly as :meth:`claim` would; doing them together only
        saves round trips and commits. ``mark_sent`` names earlier claims that
        pagent acknowledged in full: they are marked sent in the same transaction.

        Raises:
            PagentLedgerError: the ledger's answer cannot be accounted for (its
                key column does not compare byte-exactly); nothing stays claimed.
            PagentLedgerUnavailableError: the database kept failing.
        """
        # Claim ids are fixed before the first attempt: when a commit went through but
        # its answer was lost, the retry finds the rows carrying our claim id, ours.
        self._ns(register=True)
        results = [ClaimResult(claim_id=claim_id) for claim_id in self._new_claim_ids(len(batches))]
        stamp = now_ms()
        rows = [
            (key, content_digest(content_hash), result.claim_id)
            for result, entries in zip(results, batches, strict=True)
            for key, content_hash in entries
        ]
        if not rows:
            self.mark_claims_sent(mark_sent)
            return results
        inserted = self._claim_and_mark([result.claim_id for result in results], rows, mark_sent)
        batch_keys = [{key for key, _ in entries} for entries in batches]
        for result, keys in zip(results, batch_keys, strict=True):
            self._claim_keys[result.claim_id] = keys  # what a release names, should settling fail
        try:
            for result, entries, keys in zip(results, batches, batch_keys, strict=True):
                if _all_inserted(inserted, keys, result.claim_id):
                    result.claimed = set(keys)
                elif entries:
                    self._settle_conflicts(entries, result, stamp)
                    self._claim_keys[result.claim_id] = set(result.claimed)
        except PagentLedgerError:
            self._release_quietly([result.claim_id for result in results])
            raise
        return results

    def _claim_and_mark(self, claim_ids: Sequence[int], rows: list[ClaimRow], mark_sent: Sequence[int]) -> Inserted:
        def claim(conn: sa.Connection) -> Inserted:
            # Stamped at each attempt: a claim retried for a while must not look abandoned at once.
            # Keys in key order: each inserted key stays locked until commit, and two runs
            # inserting overlapping keys in different orders (overlapping intervals read in
            # a different order) deadlock on PostgreSQL and MariaDB.
            inserted = self._sql.claim_window(conn, claim_ids, sorted(rows, key=_first), mark_sent, now_ms())
            self._forget_claims(mark_sent)
            return inserted

        def consequence() -> str:
            text = f"{len(rows)} events could not be claimed, so none of them was sent"
            if mark_sent:
                text += f"; and {_acknowledged(len(mark_sent))}"
            return text

        return self._write("claim", consequence, claim)

    @staticmethod
    def _new_claim_ids(count: int) -> list[int]:
        """``count`` claim ids of 63 bits from the OS (a process forked from this one draws its own).

        One read for the whole window: each read releases the GIL, and getting
        it back from a busy preparation thread cost about 0.3 ms a claim.
        """
        drawn = secrets.token_bytes(8 * count)
        return [(int.from_bytes(drawn[i : i + 8], "big") >> 1) or 1 for i in range(0, 8 * count, 8)]

    def _insert_if_absent(self, conn: sa.Connection, rows: list[ClaimRow], stamp: int) -> Inserted:
        """Insert the rows whose key is free; what was inserted (see :data:`Inserted`)."""
        # Insert in key order: each inserted key stays locked until commit, and two
        # runs inserting overlapping keys in different orders (overlapping intervals
        # read in a different order) deadlock on PostgreSQL and MariaDB.
        return self._sql.insert_if_absent(conn, sorted(rows, key=_first), stamp)

    def _settle_conflicts(self, entries: Sequence[tuple[str, str]], result: ClaimResult, stamp: int) -> None:
        hashes = dict(entries)
        existing = self._existing_rows(hashes, result.claim_id)
        to_take_over: list[LedgerRow] = []
        to_mark_unknown: list[LedgerRow] = []
        for key, row in existing.items():
            if row.claim_id == result.claim_id:
                result.claimed.add(key)
            elif row.owner_run == self.owner.run_token:
                result.duplicate_keys.append(key)
            elif row.status == SENT:
                result.already_sent.append(key)
                if row.content_digest != content_digest(hashes[key]):
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
            taken = self._take_over(to_take_over, hashes, result.claim_id)
            result.unknown_taken_over = taken
            result.claimed |= taken
            lost_race = {row.event_key for row in to_take_over} - taken
            result.claimed_elsewhere.extend(sorted(lost_race))
        problem = result.unaccounted(hashes)
        if problem is not None:
            raise PagentLedgerError(
                f"the claim of {len(hashes)} keys in ledger table {self.table_name!r} does not add up ({problem}); "
                "nothing was sent for them"
            )

    def _existing_rows(self, hashes: dict[str, str], claim_id: int) -> dict[str, LedgerRow]:
        """The rows of every key in ``hashes``, re-claiming keys released meanwhile by another run.

        Raises:
            PagentLedgerError: the ledger answers for keys not asked for, or has
                no row for a key it was just asked to insert.
        """
        existing = self.lookup(list(hashes))
        for _ in range(_VANISHED_ROUNDS):
            self._check_asked(existing, hashes)
            vanished = [(key, content_hash) for key, content_hash in hashes.items() if key not in existing]
            if not vanished:
                return existing
            # released by another run between our insert and our lookup: try again
            self._reclaim([(key, content_digest(content_hash), claim_id) for key, content_hash in vanished])
            existing.update(self.lookup([key for key, _ in vanished]))
        self._check_asked(existing, hashes)
        missing = hashes.keys() - existing.keys()
        if missing:
            raise self._not_byte_exact(f"has no row for {len(missing)} keys it was just asked to insert", missing)
        return existing

    def _reclaim(self, rows: list[ClaimRow]) -> None:
        self._write(
            "claim",
            lambda: f"{len(rows)} events could not be claimed, so none of them was sent",
            lambda conn: self._insert_if_absent(conn, rows, now_ms()),
        )

    def _check_asked(self, existing: dict[str, LedgerRow], hashes: dict[str, str]) -> None:
        unexpected = existing.keys() - hashes.keys()
        if unexpected:
            raise self._not_byte_exact(f"answered for {len(unexpected)} keys that were not asked for", unexpected)

    def _not_byte_exact(self, problem: str, keys: Iterable[str]) -> PagentLedgerError:
        return PagentLedgerError(
            f"ledger table {self.table_name!r} {problem} (such as {_examples(keys)}): its key column probably does "
            f"not compare byte-exactly in {self.database.label} (a case- or accent-insensitive collation, one that "
            "ignores trailing spaces, or a character set that cannot hold these keys), so different keys would "
            "share one row. Nothing was sent for this batch; the start of a sync checks the table and says how to "
            "fix it."
        )

    def _release_quietly(self, claim_ids: Sequence[int]) -> None:
        # Nothing was sent for these claims: give them back so that they do not look
        # like an unknown outcome to the next run. A failure here changes nothing.
        try:
            with self.engine.begin() as conn:
                for claim_id in claim_ids:
                    self._delete_claimed(conn, claim_id, None)
        except sa.exc.DBAPIError as error:
            log.warning("could not release the claims of a failed claim: %s", type(error).__name__)

    def _is_abandoned(self, row: LedgerRow, stamp: int) -> bool:
        if row.status != CLAIMED:
            return False
        if row.heartbeat_at is None or row.heartbeat_at < stamp - self.claim_timeout_ms:
            return True
        silent = row.heartbeat_at < stamp - silence_ms(self.claim_timeout_ms / 1000)
        return self.owner.outlived(row.owner_host, row.owner_pid, row.owner_task, row.owner_try, silent=silent)

    def _settled_status(self) -> sa.ColumnElement[str]:
        """A key's status inside an UPDATE or DELETE of the events table (its claim's, read by a subquery)."""
        e, c = self.table, self.claims_table
        claim_status = sa.select(c.c.status).where(c.c.claim_id == e.c.claim_id).scalar_subquery()
        return sa.func.coalesce(e.c.status, claim_status, UNKNOWN)

    def _swap_claims(
        self, rows: Sequence[LedgerRow], extra_params: dict[str, dict[str, int]], **values: object
    ) -> None:
        """Update ``rows`` only where their claim is still the one we read (compare-and-swap).

        Of two runs racing for the same abandoned key, only the first UPDATE
        matches its old claim id, and a retry whose first commit went through
        matches nothing. Rows go in key order, like the claiming insert, so two
        runs never lock the same keys in opposite orders (no deadlock).
        """
        t = self.table
        status = self._settled_status()
        statement = (
            t.update()
            .where(
                self._in_namespace(),
                t.c.event_key == sa.bindparam("b_key"),
                t.c.claim_id == sa.bindparam("b_old_claim"),
                # not status.in_(...): an expanding IN cannot be used with executemany
                sa.or_(status == CLAIMED, status == UNKNOWN),
            )
            .values(**values)
        )
        params = [
            {"b_key": row.event_key, "b_old_claim": row.claim_id, **extra_params.get(row.event_key, {})}
            for row in sorted(rows, key=lambda row: row.event_key)
        ]
        self._write(
            "claim",
            lambda: f"{len(rows)} events could not be claimed, so none of them was sent",
            lambda conn: conn.execute(statement, params),
        )

    def _mark_abandoned_unknown(self, rows: Sequence[LedgerRow]) -> None:
        """The owner of these claimed keys stopped: their claims' outcome is unknown.

        Set on the claim, whose keys share one heartbeat, so that the owner's
        late acknowledgement (its answer was only slow) still makes every key
        sent; keys with a status of their own (moved from the first layout)
        get it on the key, compare-and-swap on the claim they were read with.
        """
        e, c = self.table, self.claims_table
        detail = "its owner stopped while it was claimed"
        claim_ids = sorted({row.claim_id for row in rows})
        keyed = [
            {"b_key": row.event_key, "b_old_claim": row.claim_id} for row in sorted(rows, key=lambda r: r.event_key)
        ]

        def mark(conn: sa.Connection) -> None:
            for ids_slice in slices(claim_ids):
                conn.execute(
                    c.update()
                    .where(c.c.namespace == self.namespace, c.c.claim_id.in_(ids_slice), c.c.status == CLAIMED)
                    .values(status=UNKNOWN, detail=detail)
                )
            own = e.update().where(
                self._in_namespace(),
                e.c.event_key == sa.bindparam("b_key"),
                e.c.claim_id == sa.bindparam("b_old_claim"),
                e.c.status == CLAIMED,
            )
            conn.execute(own.values(status=UNKNOWN, detail=detail), keyed)

        self._write("claim", lambda: f"{len(rows)} events could not be claimed, so none of them was sent", mark)

    def _take_over(self, rows: Sequence[LedgerRow], hashes: dict[str, str], claim_id: int) -> set[str]:
        # The keys move to this run's claim (its row holds owner and heartbeat) and
        # follow its status again.
        self._swap_claims(
            rows,
            {row.event_key: {"b_digest": content_digest(hashes[row.event_key])} for row in rows},
            status=None,
            claim_id=claim_id,
            content_digest=sa.bindparam("b_digest"),
            detail="taken over: earlier outcome unknown",
        )
        self.heartbeat([claim_id])  # not the claim's start: its transactions may have been retried for a while
        won = self.lookup([row.event_key for row in rows])
        return {key for key, row in won.items() if row.claim_id == claim_id}

    # --- after sending ----------------------------------------------------

    def _on_keys(
        self, conn: sa.Connection, claim_id: int, keys: Sequence[str], statement: sa.Update | sa.Delete
    ) -> None:
        """Run ``statement`` on the events table, on the given ``keys`` of one claim."""
        t = self.table
        statement = statement.where(self._in_namespace(), t.c.claim_id == claim_id)
        for restricted in self._sql.on_keys(statement, list(keys)):
            conn.execute(restricted)

    def _update_claim(
        self, conn: sa.Connection, claim_id: int, *conditions: sa.ColumnElement[bool], **values: object
    ) -> None:
        c = self.claims_table
        where = (c.c.namespace == self.namespace, c.c.claim_id == claim_id, *conditions)
        conn.execute(c.update().where(*where).values(**values))

    def _forget(self, claim_id: int, keys: list[str] | None) -> None:
        """These keys of a claim are settled: no whole-claim release needs them any more."""
        if keys is None:
            self._claim_keys.pop(claim_id, None)
        elif claim_id in self._claim_keys:
            self._claim_keys[claim_id].difference_update(keys)

    @staticmethod
    def _how_many(keys: list[str] | None) -> str:
        return "the" if keys is None else str(len(keys))

    def mark_sent(self, claim_id: int, keys: Iterable[str] | None = None) -> None:
        """pagent acknowledged these keys (all of the claim when ``keys`` is None).

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        self._ns()  # before the transaction: the keys are found by their namespace id
        key_list = None if keys is None else list(keys)
        stamp = now_ms()

        def mark(conn: sa.Connection) -> None:
            if key_list is None:
                self._sql.mark_claims_sent(conn, [claim_id], stamp)
                return
            # the keys say so themselves; the claim's time tells a prune when they were sent
            self._on_keys(conn, claim_id, key_list, self.table.update().values(status=SENT, detail=None))
            c = self.claims_table
            self._update_claim(conn, claim_id, sent_at=sa.func.coalesce(c.c.sent_at, stamp))

        self._write(
            "mark_sent",
            lambda: (
                f"{self._how_many(key_list)} events of claim {claim_id} were acknowledged by pagent but "
                f"could not be recorded as sent: {_UNRECORDED_SENT}"
            ),
            mark,
        )
        self._forget(claim_id, key_list)

    def mark_claims_sent(self, claim_ids: Sequence[int]) -> None:
        """pagent acknowledged every key of these claims: one statement for all of them.

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        if claim_ids:
            self._write(
                "mark_claims_sent",
                lambda: _acknowledged(len(claim_ids)),
                lambda conn: self._mark_claims_sent(conn, claim_ids),
            )

    def _mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[int]) -> None:
        if claim_ids:
            self._sql.mark_claims_sent(conn, claim_ids, now_ms())
            self._forget_claims(claim_ids)

    def _forget_claims(self, claim_ids: Sequence[int]) -> None:
        for claim_id in claim_ids:
            self._claim_keys.pop(claim_id, None)

    def mark_unknown(self, claim_id: int, keys: Iterable[str] | None, detail: str) -> None:
        """The answer for these keys was lost: they may or may not have been recorded.

        ``keys`` None: all of the claim, unless it was already acknowledged as a
        whole (a claim once sent stays sent).

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        self._ns()  # before the transaction: the keys are found by their namespace id
        key_list = None if keys is None else list(keys)
        values = {"status": UNKNOWN, "detail": storable(detail, 1000)}

        def mark(conn: sa.Connection) -> None:
            if key_list is None:
                # a claim once sent stays sent: its answer came, whatever is said of it later
                self._update_claim(conn, claim_id, self.claims_table.c.status != SENT, **values)
            else:
                self._on_keys(conn, claim_id, key_list, self.table.update().values(**values))

        self._write(
            "mark_unknown",
            lambda: (
                f"{self._how_many(key_list)} events of claim {claim_id} whose answer was lost could not be "
                "recorded as unknown: they stay claimed, which the next run treats as an unknown outcome too"
            ),
            mark,
        )
        self._forget(claim_id, key_list)

    def release(self, claim_id: int, keys: Iterable[str] | None = None) -> None:
        """A definite failure: drop the claim so that a later run sends these keys again.

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        self._ns()  # before the transaction: the keys are found by their namespace id
        key_list = None if keys is None else list(keys)
        self._write(
            "release",
            lambda: (
                f"{self._how_many(key_list)} events of claim {claim_id} that were not delivered could not be "
                "released: they stay claimed, which the next run treats as an unknown outcome"
            ),
            lambda conn: self._delete_claimed(conn, claim_id, key_list),
        )
        self._forget(claim_id, key_list)

    def _delete_claimed(self, conn: sa.Connection, claim_id: int, keys: list[str] | None) -> None:
        """Delete the still-claimed keys of a claim: ``keys`` of it, or all of it."""
        t = self.table
        delete = t.delete().where(self._settled_status() == CLAIMED)
        if keys is None and claim_id in self._claim_keys:
            keys = sorted(self._claim_keys[claim_id])  # by primary key: no scan for the claim's keys
        if keys is None:  # another object's claim: the table has no index on claim ids, so this scans
            conn.execute(delete.where(self._in_namespace(), t.c.claim_id == claim_id))
        else:
            self._on_keys(conn, claim_id, keys, delete)

    def heartbeat(self, claim_ids: Iterable[int]) -> None:
        """Tell other workers that the owner of these claims is still alive.

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        ids = list(claim_ids)
        if not ids:
            return
        c = self.claims_table
        stamp = now_ms()

        def beat(conn: sa.Connection) -> None:
            for ids_slice in slices(ids):
                conn.execute(
                    c.update()
                    .where(c.c.namespace == self.namespace, c.c.claim_id.in_(ids_slice), c.c.status == CLAIMED)
                    .values(heartbeat_at=stamp)
                )

        self._write(
            "heartbeat",
            lambda: (
                f"the {len(ids)} claims being sent could not be kept alive: once claim_timeout has passed, "
                "another run may take them over and send them again"
            ),
            beat,
        )

    def record_rejects(self, rejects: Sequence[RejectRecord]) -> None:
        """Log rows that will not be delivered, with the reason, in ``<table>_rejects``.

        Raises:
            PagentLedgerUnavailableError: the database kept failing.
        """
        if not rejects:
            return
        stamp = now_ms()
        rows = [
            {
                "namespace": self.namespace,
                "run_token": self.owner.run_token,
                "source": reject.source,
                "event_key": reject.event_key,
                "row_ref": storable(reject.row, MAX_KEY_LENGTH),
                "field": storable(reject.field, 128),
                "reason": storable(reject.reason, 2000),
                "recorded_at": stamp,
            }
            for reject in rejects
        ]
        self._write(
            "record_rejects",
            lambda: (
                f"{len(rows)} rows that will not be delivered could not be logged in {self.rejects_table.name!r} "
                "(this run still counts and reports them)"
            ),
            lambda conn: conn.execute(self.rejects_table.insert(), rows),
        )

    # --- retention ----------------------------------------------------------

    def _prunable(self, before_ms: int) -> sa.ColumnElement[bool]:
        # a claim records when its keys were sent; a key sent on its own says so itself
        return sa.and_(key_status(self.tables) == SENT, self.claims_table.c.sent_at < before_ms)

    def prunable_sent(self, before_ms: int) -> int:
        """How many ``sent`` keys of this namespace :meth:`prune_sent` would delete for ``before_ms``."""
        query = (
            sa.select(sa.func.count())
            .select_from(joined(self.tables))
            .where(self._in_namespace(), self._prunable(before_ms))
        )
        return int(self._read("count of prunable keys", lambda conn: conn.execute(query).scalar_one()))

    def prune_sent(self, before_ms: int, batch: int = 1000) -> int:
        """Delete the ``sent`` keys of this namespace acknowledged before ``before_ms``; return how many.

        ``claimed`` and ``unknown`` keys are never deleted: they are runs in
        flight and answers still to settle. A key deleted here and selected
        again (by a lookback, a backfill, a re-run) is SENT AGAIN: the horizon
        must be longer than any window a run may select again.

        The keys go in batches of ``batch``, each its own short transaction, so
        that a large prune never holds locks for long against running syncs;
        the scan walks the primary key once (``event_key`` greater than the
        last one seen), not the table once per batch. Then the claims of that
        age that no key names any more go too.

        Raises:
            PagentConfigError: ``batch`` is not a positive number.
            PagentLedgerUnavailableError: the database kept failing.
        """
        if batch < 1:
            raise PagentConfigError(f"batch must be at least 1, got {batch}")
        with self.engine.connect() as conn:
            if is_layout_1(conn, self.table):
                raise PagentLedgerError(
                    f"ledger table {self.table_name!r} has the layout of release 0.1: run one sync with this "
                    "release first, which moves it to the current layout, then prune"
                )
        t = self.table
        deleted, last_key = 0, None
        still_named: set[int] = set()  # the claims of the keys that stay
        while True:
            after = () if last_key is None else (t.c.event_key > last_key,)
            page = (
                sa.select(t.c.event_key, t.c.claim_id, self._prunable(before_ms))
                .select_from(joined(self.tables))
                .where(self._in_namespace(), *after)
                .order_by(t.c.event_key)
                .limit(batch)
            )

            def find(conn: sa.Connection, page: sa.Select[Any] = page) -> list[tuple[str, int, bool]]:
                return [(key, claim_id, bool(prunable)) for key, claim_id, prunable in conn.execute(page)]

            rows = self._read("prune (find keys)", find)
            keys = [key for key, _, prunable in rows if prunable]
            still_named.update(claim_id for _, claim_id, prunable in rows if not prunable)

            def delete(conn: sa.Connection, keys: list[str] = keys) -> int:
                # the conditions again: a key re-claimed since it was read stays
                status = self._settled_status()
                c = self.claims_table
                sent_at = sa.select(c.c.sent_at).where(c.c.claim_id == t.c.claim_id).scalar_subquery()
                old_sent = (self._in_namespace(), status == SENT, sent_at < before_ms)
                return sum(
                    conn.execute(t.delete().where(*old_sent, t.c.event_key.in_(keys_slice))).rowcount
                    for keys_slice in slices(keys)
                )

            def consequence(done: int = deleted) -> str:
                return f"{done} sent keys were deleted before it failed"

            if keys:
                deleted += self._write("prune", consequence, delete)
            if len(rows) < batch:
                break
            last_key = rows[-1][0]
        self._prune_claims(before_ms, still_named)
        return deleted

    def _prune_claims(self, before_ms: int, still_named: set[int]) -> None:
        """Delete the claims made before ``before_ms`` that no key names any more.

        A claim that old is never named again: a key taken over moves to a new claim.
        """
        c = self.claims_table
        # and quiet since well before the prune: a claim made (or heartbeating) while the keys were scanned stays
        quiet_since = min(before_ms, now_ms()) - self.claim_timeout_ms
        query = sa.select(c.c.claim_id).where(
            c.c.namespace == self.namespace, c.c.claimed_at < before_ms, c.c.heartbeat_at < quiet_since
        )
        unnamed = [
            claim_id
            for claim_id in self._read("prune (find claims)", lambda conn: list(conn.execute(query).scalars()))
            if claim_id not in still_named
        ]

        def delete(conn: sa.Connection) -> None:
            for ids_slice in slices(unnamed):
                conn.execute(c.delete().where(c.c.namespace == self.namespace, c.c.claim_id.in_(ids_slice)))

        if unnamed:
            self._write("prune", lambda: "the sent keys were deleted, their claims' rows not", delete)
