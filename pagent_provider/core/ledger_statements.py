"""The statements the ledger runs for every window and chunk: claims, marks and lookups.

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

import itertools
import re
import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

if TYPE_CHECKING:
    from pagent_provider.core.ledger_dialects import LedgerDialect
    from pagent_provider.core.owner import ClaimOwner

T = TypeVar("T")

CLAIMED, SENT, UNKNOWN = "claimed", "sent", "unknown"
#: SQLAlchemy 2 runs an INSERT ... RETURNING with many rows as batched multi-row
#: statements and returns every row ("insertmanyvalues"); 1.4 (Airflow 2.11 to 3.1) does not.
SQLALCHEMY_2 = int(sa.__version__.split(".")[0]) >= 2
#: One row to claim: ``(event_key, content_hash, claim_id)``.
ClaimRow = tuple[str, str, str]
#: What a lookup returns per key, in this order (the fields of ``LedgerRow``).
LOOKUP_COLUMNS = (
    "event_key",
    "status",
    "content_hash",
    "claim_id",
    "owner_run",
    "owner_host",
    "owner_pid",
    "owner_task",
    "owner_try",
    "heartbeat_at",
)
#: The columns a claim writes, in this order.
CLAIM_COLUMNS = (
    "namespace",
    "event_key",
    "status",
    "content_hash",
    "claim_id",
    "owner_run",
    "owner_host",
    "owner_pid",
    "owner_task",
    "owner_try",
    "claimed_at",
    "heartbeat_at",
)
# Keys per IN (...) list: SQLite before 3.32 allows 999 parameters, and shorter lists plan better.
LOOKUP_SLICE = 500
# Rows per multi-row VALUES claim on SQLAlchemy 1.4: 12 columns each, well below
# PostgreSQL's 65,535 bind parameters per statement.
_VALUES_SLICE = 1000


def slices(items: Sequence[T], size: int = LOOKUP_SLICE) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def inserted_if_all(rows: Sequence[ClaimRow], rowcount: int) -> set[tuple[str, str]] | None:
    """Every row's ``(key, claim id)`` when a count-only insert inserted them all, else ``None`` (look up)."""
    if rowcount != len(rows):
        return None
    return {(key, claim_id) for key, _, claim_id in rows}


class LedgerStatements:
    """The statements a sync runs for every window and chunk, on SQLAlchemy Core (MySQL/MariaDB, DuckDB).

    One object per ledger: it knows the table, the namespace and the owner
    written on claims. The subclasses run the same statements in fewer, cached
    round trips on PostgreSQL (:class:`ArrayStatements`) and SQLite
    (:class:`SqliteStatements`); every one of them keeps this class's
    semantics, which the tests hold them to.

    Args:
        capabilities: what the database offers (its insert-if-absent).
        table: the ledger table.
        namespace: scope of the keys.
        owner: written on every claim.
        sql_dialect: the engine's SQLAlchemy dialect (quoting of names).
    """

    def __init__(
        self,
        capabilities: LedgerDialect,
        table: sa.Table,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        self.table = table
        self.namespace = namespace
        self.owner = owner
        self.returns_rows = capabilities.insert_returns_rows
        # One statement, compiled once and run with a list of rows (executemany):
        # building a new multi-row VALUES per batch costs more than the database work.
        self._claim = capabilities.claim_insert(table)
        self._quoted = sql_dialect.identifier_preparer.format_table(table)

    # --- claims

    def _owner_values(self, stamp: int) -> dict[str, object]:
        owner = self.owner
        return {
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

    def insert_if_absent(
        self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int
    ) -> set[tuple[str, str]] | None:
        """Insert the rows whose key is free (``rows`` in key order); their ``(key, claim id)``, or ``None``.

        ``None``: the database gives a count only, and not every row was
        inserted; the caller looks the keys up.
        """
        fixed = self._owner_values(stamp)
        params = [{**fixed, "event_key": key, "content_hash": digest, "claim_id": claim} for key, digest, claim in rows]
        if self.returns_rows and not SQLALCHEMY_2:
            # SQLAlchemy 1.4: the same insert-if-absent as one multi-row VALUES per slice,
            # so that RETURNING names exactly the rows inserted, as SQLAlchemy 2 gives it
            # from an executemany. Same statement, same transaction, same key order.
            inserted: set[tuple[str, str]] = set()
            for part in slices(params, _VALUES_SLICE):
                inserted.update((row[0], row[1]) for row in conn.execute(self._claim.values(list(part))))
            return inserted
        result = conn.execute(self._claim, params)
        if self.returns_rows:
            return {(row[0], row[1]) for row in result}
        return inserted_if_all(rows, result.rowcount)

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[str], stamp: int) -> None:
        """Every key of these claims is sent."""
        t = self.table
        update = t.update().values(status=SENT, sent_at=stamp, detail=None)
        for ids_slice in slices(claim_ids):
            conn.execute(update.where(t.c.namespace == self.namespace, t.c.claim_id.in_(ids_slice)))

    # --- reads

    def sent_hashes(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[str, str]]:
        """``(key, content hash)`` of the keys among ``keys`` that are sent."""
        t = self.table
        for keys_slice in slices(keys):
            yield from conn.execute(
                sa.select(t.c.event_key, t.c.content_hash).where(
                    t.c.namespace == self.namespace, t.c.status == SENT, t.c.event_key.in_(keys_slice)
                )
            )

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """The :data:`LOOKUP_COLUMNS` of every key among ``keys`` that has a row."""
        t = self.table
        columns = [t.c[name] for name in LOOKUP_COLUMNS]
        for keys_slice in slices(keys):
            yield from conn.execute(
                sa.select(*columns).where(t.c.namespace == self.namespace, t.c.event_key.in_(keys_slice))
            )

    def on_keys(self, statement: sa.Update | sa.Delete, keys: Sequence[str]) -> Iterator[sa.Update | sa.Delete]:
        """``statement`` restricted to ``keys``: as many statements as it takes."""
        for keys_slice in slices(keys):
            yield statement.where(self.table.c.event_key.in_(keys_slice))


class ArrayStatements(LedgerStatements):
    """PostgreSQL: each statement of a window or a chunk is ONE statement, its keys in array parameters.

    ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` and
    ``key = ANY(...)`` carry any number of keys in three parameters, so the
    statement text is the same for every window: the driver parses it once
    (psycopg caches short queries, and prepares them after a few runs) and
    the database plans it once, where a multi-row VALUES of a window (4,800
    placeholders) was parsed anew every time, and an ``executemany`` paid a
    round trip, and a wait for the GIL, per row. The rows are inserted in the
    order given (key order): two runs claiming overlapping keys lock them in
    the same order, so they never deadlock. psycopg 3 gets the statements as
    they are, its arrays in binary (``%(keys)b``: text arrays are quoted
    element by element with a regular expression, four times the work);
    other drivers (psycopg2 on SQLAlchemy 1.4) through ``sqlalchemy.text``,
    which passes a list as an array too.
    """

    _ARRAYS = frozenset({"keys", "hashes", "claims"})

    def __init__(
        self,
        capabilities: LedgerDialect,
        table: sa.Table,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        super().__init__(capabilities, table, namespace, owner, sql_dialect)
        self._driver_sql = sql_dialect.driver == "psycopg"
        name = self._quoted
        self._insert_sql = self._statement(
            f"INSERT INTO {name} ({', '.join(CLAIM_COLUMNS)})"
            " SELECT CAST(:namespace AS VARCHAR), k.event_key, 'claimed', k.content_hash, k.claim_id,"
            " CAST(:owner_run AS VARCHAR), CAST(:owner_host AS VARCHAR), CAST(:owner_pid AS INTEGER),"
            " CAST(:owner_task AS VARCHAR), CAST(:owner_try AS INTEGER), CAST(:stamp AS BIGINT),"
            " CAST(:stamp AS BIGINT)"
            " FROM unnest(CAST(:keys AS TEXT[]), CAST(:hashes AS TEXT[]), CAST(:claims AS TEXT[]))"
            " WITH ORDINALITY AS k(event_key, content_hash, claim_id, n)"
            " ORDER BY k.n"
            " ON CONFLICT DO NOTHING"
            " RETURNING event_key, claim_id"
        )
        self._mark_sql = self._statement(
            f"UPDATE {name} SET status = 'sent', sent_at = CAST(:stamp AS BIGINT), detail = NULL"
            " WHERE namespace = CAST(:namespace AS VARCHAR) AND claim_id = ANY(CAST(:claims AS TEXT[]))"
        )
        self._sent_sql = self._statement(
            f"SELECT event_key, content_hash FROM {name}"
            " WHERE namespace = CAST(:namespace AS VARCHAR) AND status = 'sent'"
            " AND event_key = ANY(CAST(:keys AS TEXT[]))"
        )
        self._lookup_sql = self._statement(
            f"SELECT {', '.join(LOOKUP_COLUMNS)} FROM {name}"
            " WHERE namespace = CAST(:namespace AS VARCHAR) AND event_key = ANY(CAST(:keys AS TEXT[]))"
        )

    def _statement(self, sql: str) -> str | sa.TextClause:
        """``sql`` (``:name`` parameters) as psycopg 3 takes it, arrays in binary; else as ``sqlalchemy.text``."""
        if not self._driver_sql:
            return sa.text(sql)
        return re.sub(r":(\w+)", lambda m: f"%({m[1]}){'b' if m[1] in self._ARRAYS else 's'}", sql)

    def _run(self, conn: sa.Connection, statement: str | sa.TextClause, params: dict[str, Any]) -> sa.CursorResult:
        if isinstance(statement, str):
            return conn.exec_driver_sql(statement, params)
        return conn.execute(statement, params)

    def insert_if_absent(
        self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int
    ) -> set[tuple[str, str]] | None:
        if not rows:
            return set()
        keys, hashes, claims = (list(column) for column in zip(*rows, strict=True))
        owner = self.owner
        result = self._run(
            conn,
            self._insert_sql,
            {
                "namespace": self.namespace,
                "owner_run": owner.run_token,
                "owner_host": owner.host,
                "owner_pid": owner.pid,
                "owner_task": owner.task,
                "owner_try": owner.try_number,
                "stamp": stamp,
                "keys": keys,
                "hashes": hashes,
                "claims": claims,
            },
        )
        return {(key, claim_id) for key, claim_id in result}

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[str], stamp: int) -> None:
        if claim_ids:
            self._run(conn, self._mark_sql, {"namespace": self.namespace, "claims": list(claim_ids), "stamp": stamp})

    def sent_hashes(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[str, str]]:
        if keys:
            yield from self._run(conn, self._sent_sql, {"namespace": self.namespace, "keys": list(keys)})

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        if keys:
            yield from self._run(conn, self._lookup_sql, {"namespace": self.namespace, "keys": list(keys)})

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
    parameters allows) with the columns every row shares bound once
    (``?1`` to ``?7``), and each ``IN`` list is padded (with its last key) to
    one of a few sizes. One ``sqlite3_step``, and one release of the GIL, per
    statement rather than per row. Durability is unchanged: the same
    transactions, the same commits.
    """

    #: Rows of one claiming INSERT at most: 7 + 3 x 1,000 parameters (SQLite 3.32+ allows 32,766).
    ROWS_PER_INSERT = 1_000
    #: The sizes an IN list is padded to; lists longer than the last go in slices of it.
    IN_SIZES = (1, 8, 64, LOOKUP_SLICE)

    def __init__(
        self,
        capabilities: LedgerDialect,
        table: sa.Table,
        namespace: str,
        owner: ClaimOwner,
        sql_dialect: sa.Dialect,
    ) -> None:
        super().__init__(capabilities, table, namespace, owner, sql_dialect)
        self._inserts: dict[int, str] = {}
        self._rows_per_insert: int | None = None
        self._in_statements: dict[tuple[str, int], str] = {}
        name = self._quoted
        self._heads = {
            "sent": f"SELECT event_key, content_hash FROM {name} WHERE namespace = ? AND status = 'sent' AND event_key IN",
            "lookup": f"SELECT {', '.join(LOOKUP_COLUMNS)} FROM {name} WHERE namespace = ? AND event_key IN",
            "mark": f"UPDATE {name} SET status = 'sent', sent_at = ?, detail = NULL WHERE namespace = ? AND claim_id IN",
        }

    def _insert_sql(self, rows: int) -> str:
        sql = self._inserts.get(rows)
        if sql is None:
            # ?1..?7: namespace, owner (run, host, pid, task, try), stamp; then key, hash, claim id per row
            values = ",".join(
                f"(?1,?{8 + 3 * i},'claimed',?{9 + 3 * i},?{10 + 3 * i},?2,?3,?4,?5,?6,?7,?7)" for i in range(rows)
            )
            sql = f"INSERT INTO {self._quoted} ({', '.join(CLAIM_COLUMNS)}) VALUES {values} ON CONFLICT DO NOTHING"
            self._inserts[rows] = sql
        return sql

    def insert_if_absent(
        self, conn: sa.Connection, rows: Sequence[ClaimRow], stamp: int
    ) -> set[tuple[str, str]] | None:
        owner = self.owner
        fixed = (self.namespace, owner.run_token, owner.host, owner.pid, owner.task, owner.try_number, stamp)
        inserted = 0
        for part in slices(rows, self._rows_per_statement(conn)):
            params = fixed + tuple(itertools.chain.from_iterable(part))
            inserted += conn.exec_driver_sql(self._insert_sql(len(part)), params).rowcount
        return inserted_if_all(rows, inserted)

    def _rows_per_statement(self, conn: sa.Connection) -> int:
        if self._rows_per_insert is None:
            # SQLite before 3.32 (Ubuntu 20.04's 3.31, say) allows 999 parameters per statement
            raw = getattr(conn.connection, "dbapi_connection", None)
            getlimit = getattr(raw, "getlimit", None)
            limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
            self._rows_per_insert = max(1, min(self.ROWS_PER_INSERT, (limit - 7) // 3))
        return self._rows_per_insert

    def _padded(self, kind: str, values: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
        """One ``(sql, values)`` per slice of ``values``, each padded to one of :attr:`IN_SIZES`."""
        largest = self.IN_SIZES[-1]
        for part in slices(values, largest):
            size = next(size for size in self.IN_SIZES if size >= len(part))
            sql = self._in_statements.get((kind, size))
            if sql is None:
                sql = f"{self._heads[kind]} ({','.join('?' * size)})"
                self._in_statements[(kind, size)] = sql
            yield sql, (*part, *(part[-1],) * (size - len(part)))

    def mark_claims_sent(self, conn: sa.Connection, claim_ids: Sequence[str], stamp: int) -> None:
        for sql, ids in self._padded("mark", claim_ids):
            conn.exec_driver_sql(sql, (stamp, self.namespace, *ids))

    def sent_hashes(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[str, str]]:
        for sql, padded in self._padded("sent", keys):
            yield from conn.exec_driver_sql(sql, (self.namespace, *padded))

    def lookup(self, conn: sa.Connection, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        for sql, padded in self._padded("lookup", keys):
            yield from conn.exec_driver_sql(sql, (self.namespace, *padded))
