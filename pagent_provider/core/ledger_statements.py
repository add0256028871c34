"""The statements the ledger runs for every window and chunk: claims, marks and lookups.

A key's row in the events table names its claim; the claim's row in the
claims table holds what all of its keys share: the owner, the heartbeat and,
unless a key says otherwise, the status. So a window's claims write one short
row per key and one row per batch, and marking a batch sent writes one row,
not a hundred. A key's status is ``COALESCE(events.status, claims.status)``:
a key whose fate differs from its batch's (a refused row, a lost answer
during a bisection, a key taken over) carries its own.

:class:`LedgerStatements` runs them through SQLAlchemy Core (MySQL/MariaDB,
DuckDB, and every database on SQLAlchemy 1.4 where a fast path needs 2.x);
:class:`ArrayStatements` (PostgreSQL) and :class:`SqliteStatements` run the
same statements in fewer, cached round trips: one ``unnest``/``= ANY`` array
statement per window on PostgreSQL, plain SQL built once and found in
sqlite3's statement cache on SQLite. Which class a database gets is part of
its entry in :data:`pagent_provider.core.ledger_dialects.DIALECTS`;
``tests/test_ledger_statements.py`` holds the fast paths to the Core one.
"""

from __future__ import annotations

import enum
import itertools
import re
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pagent_provider.core.ledger_retry import RetryAtOnce

if TYPE_CHECKING:
    from pagent_provider.core.ledger_dialects import LedgerDialect
    from pagent_provider.core.owner import ClaimOwner

T = TypeVar("T")

CLAIMED, SENT, UNKNOWN = "claimed", "sent", "unknown"
#: SQLAlchemy 2 runs an INSERT ... RETURNING with many rows as batched multi-row
#: statements and returns every row ("insertmanyvalues"); 1.4 (Airflow 2.11 to 3.1) does not.
SQLALCHEMY_2 = int(sa.__version__.split(".")[0]) >= 2
#: One row to claim: ``(event_key, content digest, claim_id)`` (see :func:`content_digest`).
ClaimRow = tuple[str, int, int]
#: The namespace id of a namespace not registered yet: no key has it (ids start at 1).
UNREGISTERED = 0
#: What a lookup returns per key, in this order (the fields of ``LedgerRow``):
#: ``(table, column)``, ``status`` being the key's own or else its claim's.
LOOKUP_COLUMNS = (
    ("e", "event_key"),
    ("", "status"),
    ("e", "content_digest"),
    ("e", "claim_id"),
    ("c", "owner_run"),
    ("c", "owner_host"),
    ("c", "owner_pid"),
    ("c", "owner_task"),
    ("c", "owner_try"),
    ("c", "heartbeat_at"),
)
#: The columns of a claim's own row, in the order the fast paths write them.
CLAIM_COLUMNS = (
    "claim_id",
    "namespace",
    "status",
    "owner_run",
    "owner_host",
    "owner_pid",
    "owner_task",
    "owner_try",
    "claimed_at",
    "heartbeat_at",
)
#: The status of a key in SQL: its own, else its claim's (a claim row that is gone: unknown, to be safe).
STATUS_SQL = f"COALESCE(e.status, c.status, '{UNKNOWN}')"
# Keys per IN (...) list: SQLite before 3.32 allows 999 parameters, and shorter lists plan better.
LOOKUP_SLICE = 500
#: Windows claimed with ``ON CONFLICT`` after one met a taken key (runs overlapping, as
#: they will for a while): an optimistic statement that fails costs its round trip.
TOLERANT_WINDOWS_AFTER_CONFLICT = 16
# Rows per multi-row VALUES claim on SQLAlchemy 1.4, well below PostgreSQL's 65,535 bind parameters.
_VALUES_SLICE = 1000


class LedgerTables(NamedTuple):
    """The ledger's tables: keys, their claims, the rows that will not be delivered, and the namespaces' ids."""

    metadata: sa.MetaData
    events: sa.Table
    claims: sa.Table
    rejects: sa.Table
    namespaces: sa.Table


def content_digest(content_hash: str) -> int:
    """The 32 bits of an event's content hash that its key's row keeps (a signed 4-byte integer).

    The digest only tells whether a sent key's row has changed since
    (``changed_after_send``, reported, never resent); the key alone decides
    what is sent. A changed row passes unnoticed once in 2**32, and the
    ledger saves 28 bytes a key (its text hash took 33). Any string has one,
    so hashes of every release and of every test compare the same way.
    """
    return zlib.crc32(content_hash.encode()) - 0x8000_0000


def slices(items: Sequence[T], size: int = LOOKUP_SLICE) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EveryRow(enum.Enum):
    """A count-only insert inserted every row it was given."""

    INSERTED = "every row inserted"


#: What a count-only insert reports when it inserted every row.
EVERY_ROW = EveryRow.INSERTED
#: What an insert-if-absent reports: the ``(key, claim id)`` pairs it inserted,
#: :data:`EVERY_ROW`, or ``None`` (only a count, and not every row: look the keys up).
Inserted = set[tuple[str, int]] | EveryRow | None


def inserted_if_all(rows: Sequence[ClaimRow], rowcount: int) -> Inserted:
    """:data:`EVERY_ROW` when a count-only insert inserted every row, else ``None`` (look up).

    Not a set of the rows: building one per window cost the sync's main thread
    more than the rest of the claim's Python.
    """
    return EVERY_ROW if rowcount == len(rows) else None


def key_status(tables: LedgerTables) -> sa.ColumnElement[str]:
    """A key's status as a SQL expression over the events table joined to its claim (see the module docstring)."""
    return sa.func.coalesce(tables.events.c.status, tables.claims.c.status, UNKNOWN)


def joined(tables: LedgerTables) -> sa.Join:
    """Every key with its claim (outer: a key whose claim row is gone still shows)."""
    events, claims = tables.events, tables.claims
    return events.outerjoin(claims, claims.c.claim_id == events.c.claim_id)


class LedgerStatements:
    """The statements a sync runs for every window and chunk, on SQLAlchemy Core (MySQL/MariaDB, DuckDB).

    One object per ledger: it knows the tables, the namespace (by its name in
    the claims table, by its id, :attr:`namespace_id`, in the events table)
    and the owner written on claims. The subclasses run the same statements in fewer, cached
    round trips on PostgreSQL (:class:`ArrayStatements`) and SQLite
    (:class:`SqliteStatements`); every one of them keeps this class's
    semantics, which the tests hold them to.

    Args:
        capabilities: what the database offers (its insert-if-absent).
        tables: the ledger's tables.
        namespace: scope of the keys.
        owner: written on every claim.
        sql_dialect: the engine's SQLAlchemy dialect (quoting of names).
    """

    def __init__(
        self,
        capabilities: LedgerDialect,
        tables: LedgerTables,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        self.tables = tables
        self.table = tables.events
        self.namespace = namespace
        #: set by the ledger once the namespace is registered; until then no key matches
        self.namespace_id = UNREGISTERED
        self.owner = owner
        self.returns_rows = capabilities.insert_returns_rows
        # One statement, compiled once and run with a list of rows (executemany):
        # building a new multi-row VALUES per batch costs more than the database work.
        events = tables.events
        self._claim = capabilities.insert_if_absent(events)
        if self.returns_rows:
            self._claim = self._claim.returning(events.c.event_key, events.c.claim_id)
        # a retry after a commit whose answer was lost finds its claim rows there
        self._insert_claims = capabilities.insert_if_absent(tables.claims)
        preparer = sql_dialect.identifier_preparer
        self._quoted = preparer.format_table(tables.events)
        self._quoted_claims = preparer.format_table(tables.claims)
        self._sent_claims: set[int] = set()
        self._lookup_columns = ", ".join(
            STATUS_SQL if not table else f"{table}.{name}" for table, name in LOOKUP_COLUMNS
        )
        self._from = f"{self._quoted} e LEFT JOIN {self._quoted_claims} c ON c.claim_id = e.claim_id"

    # --- claims

    def claim_window(
        self,
        conn: sa.Connection,
        claim_ids: Sequence[int],
        rows: Sequence[ClaimRow],
        mark_sent: Sequence[int],
        stamp: int,
    ) -> Inserted:
        """A window's claims: the claims' rows, then the free keys (``rows`` in key order), then the marks.

        Insert first, mark after: a transaction that is marking its own rows
        then waits for nobody, so two runs' transactions cannot wait on each
        other. ``mark_sent`` names earlier claims, never one of ``claim_ids``.
        """
        self.insert_claims(conn, claim_ids, stamp)
        inserted = self.insert_if_absent(conn, rows, stamp)
        if mark_sent:
            self.mark_claims_sent(conn, mark_sent, stamp)
        return inserted

    def insert_claims(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        """One row per claim: its owner and heartbeat, status ``claimed``."""
        owner = self.owner
        fixed = {
            "namespace": self.namespace,
            "status": CLAIMED,
            "owner_run": owner.run_token,
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_task": owner.task,
            "owner_try": owner.try_number,
            "claimed_at": stamp,
            "heartbeat_at": stamp,
        }
        if claim_ids:
            conn.execute(self._insert_claims, [{**fixed, "claim_id": claim_id} for claim_id in claim_ids])

    def insert_if_absent(self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int) -> Inserted:
        """Insert the keys that are free (``rows`` in key order); what was inserted (see :data:`Inserted`)."""
        namespace_id = self.namespace_id
        params = [
            {"namespace_id": namespace_id, "event_key": key, "content_digest": digest, "claim_id": claim}
            for key, digest, claim in rows
        ]
        if self.returns_rows and not SQLALCHEMY_2:
            # SQLAlchemy 1.4: the same insert-if-absent as one multi-row VALUES per slice,
            # so that RETURNING names exactly the rows inserted, as SQLAlchemy 2 gives it
            # from an executemany. Same statement, same transaction, same key order.
            inserted: set[tuple[str, int]] = set()
            for part in slices(params, _VALUES_SLICE):
                inserted.update((row[0], row[1]) for row in conn.execute(self._claim.values(list(part))))
            return inserted
        result = conn.execute(self._claim, params)
        if self.returns_rows:
            return {(row[0], row[1]) for row in result}
        return inserted_if_all(rows, result.rowcount)

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        """Every key of these claims is sent (keys with a status of their own keep it)."""
        c = self.tables.claims
        update = c.update().values(status=SENT, sent_at=stamp, detail=None)
        for ids_slice in slices(claim_ids):
            conn.execute(update.where(c.c.namespace == self.namespace, c.c.claim_id.in_(ids_slice)))

    # --- reads

    def sent_digests(self, conn: sa.Connection, keys: Sequence[str]) -> list[tuple[str, int]]:
        """``(key, content digest)`` of the keys among ``keys`` that are sent.

        The question every chunk asks: the keys' rows, then the status of
        their claims not yet known to be sent (a hundred keys share one), not
        a join per key. A claim once sent stays sent, so it is asked once.
        Rows are fetched whole and filtered in one comprehension: a re-run asks
        this of every row, and iterating results row by row cost it twice the
        database's own work.
        """
        rows = self.key_rows(conn, keys)
        sent_claims = self._sent_claims
        unsettled = sorted({claim for _, _, claim, own in rows if own is None} - sent_claims)
        if unsettled:
            sent_claims.update(claim for claim, status in self.claim_statuses(conn, unsettled) if status == SENT)
        return [
            (key, digest) for key, digest, claim, own in rows if own == SENT or (own is None and claim in sent_claims)
        ]

    def key_rows(self, conn: sa.Connection, keys: Sequence[str]) -> list[tuple[str, int, int, str | None]]:
        """``(key, content digest, claim id, the key's own status)`` of the keys among ``keys`` that have a row."""
        e = self.table
        columns = (e.c.event_key, e.c.content_digest, e.c.claim_id, e.c.status)
        rows: list[Any] = []
        for keys_slice in slices(keys):
            query = sa.select(*columns).where(e.c.namespace_id == self.namespace_id, e.c.event_key.in_(keys_slice))
            rows += conn.execute(query).fetchall()
        return rows

    def claim_statuses(self, conn: sa.Connection, claim_ids: Sequence[int]) -> list[tuple[int, str]]:
        """``(claim id, status)`` of the claims among ``claim_ids`` that have a row."""
        c = self.tables.claims
        rows: list[Any] = []
        for ids_slice in slices(claim_ids):
            query = sa.select(c.c.claim_id, c.c.status).where(
                c.c.namespace == self.namespace, c.c.claim_id.in_(ids_slice)
            )
            rows += conn.execute(query).fetchall()
        return rows

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """The :data:`LOOKUP_COLUMNS` of every key among ``keys`` that has a row."""
        e, c = self.table, self.tables.claims
        columns = [
            key_status(self.tables) if not table else (e if table == "e" else c).c[name]
            for table, name in LOOKUP_COLUMNS
        ]
        for keys_slice in slices(keys):
            yield from conn.execute(
                sa.select(*columns)
                .select_from(joined(self.tables))
                .where(e.c.namespace_id == self.namespace_id, e.c.event_key.in_(keys_slice))
            )

    def on_keys(self, statement: sa.Update | sa.Delete, keys: Sequence[str]) -> Iterator[sa.Update | sa.Delete]:
        """``statement`` (on the events table) restricted to ``keys``: as many statements as it takes."""
        for keys_slice in slices(keys):
            yield statement.where(self.table.c.event_key.in_(keys_slice))


class ArrayStatements(LedgerStatements):
    """PostgreSQL: each statement of a window or a chunk is ONE statement, its keys in array parameters.

    ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` and
    ``key = ANY(...)`` carry any number of keys in three parameters, so the
    statement text is the same for every window: the driver parses it once
    (psycopg caches short queries, and prepares them after a few runs) and
    the database plans it once, where a multi-row VALUES of a window was
    parsed anew every time, and an ``executemany`` paid a round trip, and a
    wait for the GIL, per row. The rows are inserted in the order given (key
    order): two runs claiming overlapping keys lock them in the same order,
    so they never deadlock. A window's keys go in without ``ON CONFLICT``
    unless a recent window met a taken key (see :meth:`claim_window`).
    psycopg 3 gets the statements as they are, its
    arrays in binary (``%(keys)b``: text arrays are quoted element by element
    with a regular expression, four times the work); other drivers (psycopg2
    on SQLAlchemy 1.4) through ``sqlalchemy.text``, which passes a list as an
    array too.
    """

    _ARRAYS = frozenset({"keys", "digests", "claims", "key_claims", "marks"})

    def __init__(
        self,
        capabilities: LedgerDialect,
        tables: LedgerTables,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        super().__init__(capabilities, tables, namespace, owner, sql_dialect)
        self._driver_sql = sql_dialect.driver == "psycopg"
        insert_keys = (
            f"INSERT INTO {self._quoted} (namespace_id, event_key, content_digest, claim_id)"
            " SELECT CAST(:namespace_id AS SMALLINT), k.event_key, k.content_digest, k.claim_id"
            " FROM unnest(CAST(:keys AS TEXT[]), CAST(:digests AS INTEGER[]), CAST(:key_claims AS BIGINT[]))"
            " WITH ORDINALITY AS k(event_key, content_digest, claim_id, n)"
            " {after_claims}ORDER BY k.n"
            " ON CONFLICT DO NOTHING"
        )
        insert_claims = (
            f"INSERT INTO {self._quoted_claims} ({', '.join(CLAIM_COLUMNS)})"
            " SELECT k.claim_id, CAST(:namespace AS VARCHAR), 'claimed', CAST(:owner_run AS VARCHAR),"
            " CAST(:owner_host AS VARCHAR), CAST(:owner_pid AS INTEGER), CAST(:owner_task AS VARCHAR),"
            " CAST(:owner_try AS INTEGER), CAST(:stamp AS BIGINT), CAST(:stamp AS BIGINT)"
            " FROM unnest(CAST(:claims AS BIGINT[])) AS k(claim_id)"
            " ON CONFLICT DO NOTHING"
        )
        mark = (
            f"UPDATE {self._quoted_claims} SET status = 'sent', sent_at = CAST(:stamp AS BIGINT), detail = NULL"
            " WHERE namespace = CAST(:namespace AS VARCHAR) AND claim_id = ANY(CAST(:marks AS BIGINT[]))"
        )
        self._insert_sql = self._statement(insert_keys.format(after_claims=""))
        self._claims_sql = self._statement(insert_claims)
        self._mark_sql = self._statement(mark)
        # The sub-statements of a WITH run in an order of the planner's choosing: each one is
        # made to wait for the one before by an uncorrelated subquery on its result (run once,
        # first), so the claims' rows go in, then the keys in key order, then the marks.
        window = (
            f"WITH new_claims AS ({insert_claims} RETURNING 1),"
            f" new_keys AS ({insert_keys.format(after_claims='WHERE (SELECT count(*) FROM new_claims) >= 0 ')}"
            " RETURNING 1),"
            f" marked AS ({mark} AND (SELECT count(*) FROM new_keys) >= 0 RETURNING 1)"
            " SELECT (SELECT count(*) FROM new_keys), (SELECT count(*) FROM marked)"
        )
        self._window_sql = self._statement(window)
        # The same without ON CONFLICT for its keys: speculative insertion costs the server
        # about 40% of the keys' insert, and a window's keys are nearly always free (the
        # sync looked them up first). A key that is not fails the whole statement.
        self._optimistic_window_sql = self._statement(
            window.replace("ORDER BY k.n ON CONFLICT DO NOTHING", "ORDER BY k.n", 1)
        )
        #: Windows still to claim with ``ON CONFLICT`` since the last one that met a taken key.
        self._tolerant_windows = 0
        self._keys_sql = self._statement(
            f"SELECT event_key, content_digest, claim_id, status FROM {self._quoted}"
            " WHERE namespace_id = CAST(:namespace_id AS SMALLINT) AND event_key = ANY(CAST(:keys AS TEXT[]))"
        )
        self._claim_status_sql = self._statement(
            f"SELECT claim_id, status FROM {self._quoted_claims}"
            " WHERE namespace = CAST(:namespace AS VARCHAR) AND claim_id = ANY(CAST(:claims AS BIGINT[]))"
        )
        self._lookup_sql = self._statement(
            f"SELECT {self._lookup_columns} FROM {self._from}"
            " WHERE e.namespace_id = CAST(:namespace_id AS SMALLINT) AND e.event_key = ANY(CAST(:keys AS TEXT[]))"
        )

    def _statement(self, sql: str) -> str | sa.TextClause:
        """``sql`` (``:name`` parameters) as psycopg 3 takes it, arrays in binary; else as ``sqlalchemy.text``."""
        if not self._driver_sql:
            return sa.text(sql)
        return re.sub(r"(?<!:):(\w+)", lambda m: f"%({m[1]}){'b' if m[1] in self._ARRAYS else 's'}", sql)

    def _run(self, conn: sa.Connection, statement: str | sa.TextClause, params: dict[str, Any]) -> sa.CursorResult:
        if isinstance(statement, str):
            return conn.exec_driver_sql(statement, params)
        return conn.execute(statement, params)

    def claim_window(
        self,
        conn: sa.Connection,
        claim_ids: Sequence[int],
        rows: Sequence[ClaimRow],
        mark_sent: Sequence[int],
        stamp: int,
    ) -> Inserted:
        """The window in one statement: three round trips (BEGIN, it, COMMIT) where there were five.

        The keys go in without ``ON CONFLICT`` first; a window that meets a
        taken key raises :class:`RetryAtOnce`, and it and the next
        :data:`TOLERANT_WINDOWS_AFTER_CONFLICT` windows are claimed with it.

        Every wait on the database is a wait for the GIL afterwards, behind a
        busy preparation thread. Run in autocommit it would be one round trip,
        but SQLAlchemy resets a pooled connection's isolation level as it goes
        back to its pool, and on a connection the server had just terminated
        that reset raised the driver's own error, outside the ledger's retries
        (SQLAlchemy 1.4, psycopg2; see benchmarks/README).
        """
        params = {**self._claim_params(claim_ids, stamp), **self._key_params(rows)}
        params["marks"] = list(mark_sent)
        if self._tolerant_windows > 0:
            self._tolerant_windows -= 1
            inserted, _ = self._run(conn, self._window_sql, params).one()
            return inserted_if_all(rows, inserted)
        try:
            inserted, _ = self._run(conn, self._optimistic_window_sql, params).one()
        except sa.exc.IntegrityError as error:
            # A key taken already (another run's, or this claim's own when a lost commit is
            # retried): the transaction is void, and run again at once, with ON CONFLICT.
            # Any integrity error does (the drivers name it each their own way): one that
            # is not a taken key fails the tolerant statement as well, and is raised there.
            self._tolerant_windows = TOLERANT_WINDOWS_AFTER_CONFLICT
            raise RetryAtOnce("a key of the window was taken: claimed again with ON CONFLICT") from error
        return inserted_if_all(rows, inserted)

    def _claim_params(self, claim_ids: Sequence[int], stamp: int) -> dict[str, Any]:
        owner = self.owner
        return {
            "namespace": self.namespace,
            "owner_run": owner.run_token,
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_task": owner.task,
            "owner_try": owner.try_number,
            "stamp": stamp,
            "claims": list(claim_ids),
        }

    def _key_params(self, rows: Sequence[ClaimRow]) -> dict[str, Any]:
        keys, digests, claims = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [])
        return {"namespace_id": self.namespace_id, "keys": keys, "digests": digests, "key_claims": claims}

    def insert_if_absent(self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int) -> Inserted:
        if not rows:
            return set()
        # the count, not RETURNING: a window's 400 returned rows cost more client time than the
        # rest of its claim, and a window that did not insert them all is looked up anyway
        return inserted_if_all(rows, self._run(conn, self._insert_sql, self._key_params(rows)).rowcount)

    def insert_claims(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        if claim_ids:
            self._run(conn, self._claims_sql, self._claim_params(claim_ids, stamp))

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        if claim_ids:
            self._run(conn, self._mark_sql, {"namespace": self.namespace, "marks": list(claim_ids), "stamp": stamp})

    def key_rows(self, conn: sa.Connection, keys: Sequence[str]) -> list[tuple[str, int, int, str | None]]:
        if not keys:
            return []
        return list(self._run(conn, self._keys_sql, {"namespace_id": self.namespace_id, "keys": list(keys)}).fetchall())

    def claim_statuses(self, conn: sa.Connection, claim_ids: Sequence[int]) -> list[tuple[int, str]]:
        if not claim_ids:
            return []
        params = {"namespace": self.namespace, "claims": list(claim_ids)}
        return list(self._run(conn, self._claim_status_sql, params).fetchall())

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        if keys:
            yield from self._run(conn, self._lookup_sql, {"namespace_id": self.namespace_id, "keys": list(keys)})

    def on_keys(self, statement: sa.Update | sa.Delete, keys: Sequence[str]) -> Iterator[sa.Update | sa.Delete]:
        if keys:
            array = sa.bindparam("b_keys", list(keys), type_=postgresql.ARRAY(sa.String))
            yield statement.where(self.table.c.event_key == sa.any_(array))


class SqliteStatements(LedgerStatements):
    """SQLite: the statements as plain SQL text, built once, run through sqlite3 with tuples.

    SQLAlchemy's per-execution work (compiling an expanding ``IN``, a
    parameter dictionary per row) costs more than SQLite's own. Here each
    statement text is built once per size and kept, so sqlite3 finds it
    prepared in its statement cache; claims go in multi-row ``VALUES`` of
    up to :attr:`ROWS_PER_INSERT` rows (as many as the library's limit on
    parameters allows) with the namespace bound once (``?1``), and each
    ``IN`` list is padded (with its last key) to one of a few sizes. One
    ``sqlite3_step``, and one release of the GIL, per statement rather than
    per row. Durability is unchanged: the same transactions, the same commits.
    """

    #: Rows of one claiming INSERT at most: 1 + 3 x 1,000 parameters (SQLite 3.32+ allows 32,766).
    ROWS_PER_INSERT = 1_000
    #: Claims' own rows per INSERT at most: 7 + 1 parameters per row stay below the 999 of old libraries.
    CLAIMS_PER_INSERT = 900
    #: The sizes an IN list is padded to; lists longer than the last go in slices of it.
    IN_SIZES = (1, 8, 64, LOOKUP_SLICE)

    def __init__(
        self,
        capabilities: LedgerDialect,
        tables: LedgerTables,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        super().__init__(capabilities, tables, namespace, owner, sql_dialect)
        self._inserts: dict[int, str] = {}
        self._claim_rows_sql: dict[int, str] = {}
        self._rows_per_insert: int | None = None
        self._in_statements: dict[tuple[str, int], str] = {}
        self._heads = {
            "keys": f"SELECT event_key, content_digest, claim_id, status FROM {self._quoted}"
            " WHERE namespace_id = ? AND event_key IN",
            "claims": f"SELECT claim_id, status FROM {self._quoted_claims} WHERE namespace = ? AND claim_id IN",
            "lookup": f"SELECT {self._lookup_columns} FROM {self._from} WHERE e.namespace_id = ? AND e.event_key IN",
            "mark": f"UPDATE {self._quoted_claims} SET status = 'sent', sent_at = ?, detail = NULL"
            " WHERE namespace = ? AND claim_id IN",
        }

    def _insert_sql(self, rows: int) -> str:
        sql = self._inserts.get(rows)
        if sql is None:
            # ?1: the namespace id; then key, digest, claim id per row
            values = ",".join(f"(?1,?{2 + 3 * i},?{3 + 3 * i},?{4 + 3 * i})" for i in range(rows))
            sql = (
                f"INSERT INTO {self._quoted} (namespace_id, event_key, content_digest, claim_id)"
                f" VALUES {values} ON CONFLICT DO NOTHING"
            )
            self._inserts[rows] = sql
        return sql

    def insert_claims(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        owner = self.owner
        fixed = (self.namespace, owner.run_token, owner.host, owner.pid, owner.task, owner.try_number, stamp)
        for part in slices(claim_ids, self.CLAIMS_PER_INSERT):
            sql = self._claim_rows_sql.get(len(part))
            if sql is None:
                # ?1..?7: namespace, owner (run, host, pid, task, try), stamp; then one claim id per row
                values = ",".join(f"(?{8 + i},?1,'claimed',?2,?3,?4,?5,?6,?7,?7)" for i in range(len(part)))
                sql = f"INSERT INTO {self._quoted_claims} ({', '.join(CLAIM_COLUMNS)}) VALUES {values} ON CONFLICT DO NOTHING"
                self._claim_rows_sql[len(part)] = sql
            conn.exec_driver_sql(sql, fixed + tuple(part))

    def insert_if_absent(self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int) -> Inserted:
        inserted = 0
        for part in slices(rows, self._rows_per_statement(conn)):
            params = (self.namespace_id, *itertools.chain.from_iterable(part))
            inserted += conn.exec_driver_sql(self._insert_sql(len(part)), params).rowcount
        return inserted_if_all(rows, inserted)

    def _rows_per_statement(self, conn: sa.Connection) -> int:
        if self._rows_per_insert is None:
            # SQLite before 3.32 (Ubuntu 20.04's 3.31, say) allows 999 parameters per statement
            raw = getattr(conn.connection, "dbapi_connection", None)
            getlimit = getattr(raw, "getlimit", None)
            limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
            self._rows_per_insert = max(1, min(self.ROWS_PER_INSERT, (limit - 1) // 3))
        return self._rows_per_insert

    def _padded(self, kind: str, values: Sequence[Any]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """One ``(sql, values)`` per slice of ``values``, each padded to one of :attr:`IN_SIZES`."""
        largest = self.IN_SIZES[-1]
        for part in slices(values, largest):
            size = next(size for size in self.IN_SIZES if size >= len(part))
            sql = self._in_statements.get((kind, size))
            if sql is None:
                sql = f"{self._heads[kind]} ({','.join('?' * size)})"
                self._in_statements[(kind, size)] = sql
            yield sql, (*part, *(part[-1],) * (size - len(part)))

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[int], stamp: int) -> None:
        for sql, ids in self._padded("mark", claim_ids):
            conn.exec_driver_sql(sql, (stamp, self.namespace, *ids))

    def key_rows(self, conn: sa.Connection, keys: Sequence[str]) -> list[tuple[str, int, int, str | None]]:
        return self._fetch_padded(conn, "keys", self.namespace_id, keys)

    def claim_statuses(self, conn: sa.Connection, claim_ids: Sequence[int]) -> list[tuple[int, str]]:
        return self._fetch_padded(conn, "claims", self.namespace, claim_ids)

    def _fetch_padded(self, conn: sa.Connection, kind: str, first: Any, values: Sequence[Any]) -> list[Any]:
        """Every row of the ``kind`` statement over ``values`` (``first``: its first parameter), as plain tuples."""
        rows: list[Any] = []
        for sql, padded in self._padded(kind, values):
            rows += _fetch_tuples(conn, sql, (first, *padded))
        return rows

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        for sql, padded in self._padded("lookup", keys):
            yield from conn.exec_driver_sql(sql, (self.namespace_id, *padded))


def _fetch_tuples(conn: sa.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` as the plain tuples sqlite3 returns.

    A re-run looks up every key it reads: SQLAlchemy's ``Row`` objects, built
    and unpacked one per key, cost more than SQLite's own probing of the index.
    An error while fetching is raised as SQLAlchemy raises any database error,
    so the ledger's retries treat it alike.
    """
    result = conn.exec_driver_sql(sql, params)
    try:
        return list(result.cursor.fetchall())
    except sqlite3.Error as error:
        raise sa.exc.DBAPIError.instance(sql, params, error, sqlite3.Error) from error
    finally:
        result.close()
