"""Ledgers for the benchmark: where they live, how big they are, and filling one with past days.

- :func:`bytes_per_event`: the space a ledger takes on disk per row it holds,
  table and indexes: SQLite's ``dbstat`` pages (the file's pages when the
  library has no ``dbstat``), PostgreSQL's ``pg_total_relation_size`` (heap,
  indexes, TOAST and maps, as they stand after the run: the row versions each
  "mark sent" left behind included), MariaDB's ``DATA_LENGTH + INDEX_LENGTH``
  after ``ANALYZE TABLE``.
- :func:`prefill`: ``count`` rows already sent, shaped like a real run's
  (numeric order ids as keys, 32-bit content digests, one claim id per 100
  keys, this host's owner), written by one ``INSERT ... SELECT`` per slice.
- :func:`mariadb_database`: a scratch MariaDB database, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from benchmarks.datagen import scratch_database
from pagent_provider.core.ledger import Ledger, now_ms

MARIADB_ADMIN_URL = "mysql+mysqldb://root@127.0.0.1:3306/mysql"


@dataclass(frozen=True)
class LedgerSize:
    """The disk space of one ledger table and its indexes."""

    database: str
    bytes: int
    rows: int
    method: str

    @property
    def per_event(self) -> float:
        return self.bytes / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "database": self.database,
            "bytes": self.bytes,
            "rows": self.rows,
            "bytes_per_event": round(self.per_event, 1),
            "method": self.method,
        }


def _rows(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(ledger.table)).scalar_one())


def bytes_per_event(ledger: Ledger) -> LedgerSize:
    """How many bytes ``ledger``'s key and claim tables and their indexes take, and how many keys they hold."""
    tables = (ledger.table, ledger.claims_table, ledger.namespaces_table)
    names = tuple(table.name for table in tables)
    dialect = ledger.engine.dialect.name
    rows = _rows(ledger)
    with ledger.engine.connect() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            objects = [
                row[0]
                for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE tbl_name IN (?, ?, ?)", names)
            ]
            try:
                marks = ",".join("?" * len(objects))
                size = conn.exec_driver_sql(
                    f"SELECT SUM(pgsize) FROM dbstat WHERE name IN ({marks})", tuple(objects)
                ).scalar_one()
                method = "dbstat pages of the key, claim and namespace tables and their indexes"
            except sa.exc.OperationalError:  # a library built without dbstat
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
                size = (pages - free) * conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                method = "the file's pages in use (the rejects table's two included)"
            return LedgerSize("SQLite", int(size or 0), rows, method)
        if dialect == "postgresql":
            preparer = conn.dialect.identifier_preparer
            size = sum(
                conn.execute(
                    sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": preparer.format_table(table)}
                ).scalar_one()
                for table in tables
            )
            return LedgerSize(
                "PostgreSQL", int(size), rows, "pg_total_relation_size of the three tables (heap, indexes, TOAST, maps)"
            )
        if dialect in ("mysql", "mariadb"):
            size = 0
            for name in names:
                conn.exec_driver_sql(f"ANALYZE TABLE {name}").fetchall()
                size += conn.exec_driver_sql(
                    "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                    (name,),
                ).scalar_one()
            return LedgerSize(
                "MariaDB", int(size), rows, "DATA_LENGTH + INDEX_LENGTH of the three tables after ANALYZE TABLE"
            )
    raise ValueError(f"no size measurement for {dialect}")


_CLAIM_COLUMNS = "claim_id, namespace, status, owner_run, owner_host, owner_pid, claimed_at, heartbeat_at, sent_at"


def prefill(ledger: Ledger, first_key: int, count: int, *, slice_rows: int = 500_000) -> float:
    """Write ``count`` sent keys ``str(first_key)`` onwards in claims of 100, in key order; return the seconds it took."""
    owner = ledger.owner
    stamp = now_ms()
    dialect = ledger.engine.dialect.name
    preparer = ledger.engine.dialect.identifier_preparer
    events, claims = preparer.format_table(ledger.table), preparer.format_table(ledger.claims_table)
    base = random.getrandbits(40) << 20  # claim ids of their own, clear of the sync's random ones
    started = time.perf_counter()
    for start in range(first_key, first_key + count, slice_rows):
        last = min(start + slice_rows, first_key + count) - 1
        params = {
            "first": start,
            "last": last,
            "ns": ledger.namespace,
            "ns_id": ledger.register_namespace(),
            "base": base,
            "run": owner.run_token,
            "host": owner.host,
            "pid": owner.pid,
            "stamp": stamp,
        }
        if dialect == "sqlite":  # each claim's row once: at its first key in this slice
            numbers = "WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
            statements = [
                f"INSERT OR IGNORE INTO {claims} ({_CLAIM_COLUMNS}) {numbers}"
                " SELECT :base + i / 100, :ns, 'sent', :run, :host, :pid, :stamp, :stamp, :stamp FROM n"
                " WHERE i % 100 = 0 OR i = :first",
                f"INSERT INTO {events} (namespace_id, event_key, content_digest, claim_id) {numbers}"
                " SELECT :ns_id, CAST(i AS TEXT), random() >> 32, :base + i / 100 FROM n",
            ]
        elif dialect == "postgresql":
            series = "FROM generate_series(:first, :last) AS i"
            statements = [
                f"INSERT INTO {claims} ({_CLAIM_COLUMNS})"
                f" SELECT DISTINCT :base + i / 100, :ns, 'sent', :run, :host, :pid, :stamp, :stamp, :stamp {series}"
                " ON CONFLICT DO NOTHING",
                f"INSERT INTO {events} (namespace_id, event_key, content_digest, claim_id)"
                f" SELECT :ns_id, CAST(i AS TEXT), hashtext(CAST(i AS TEXT)), :base + i / 100 {series}",
            ]
        else:
            raise ValueError(f"no prefill for {dialect}")
        with ledger.engine.begin() as conn:
            for sql in statements:
                conn.execute(sa.text(sql), params)
    if dialect == "postgresql":  # what autovacuum would have done by the next day
        with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in (events, claims):  # the namespaces' one row needs nothing
                conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
    return time.perf_counter() - started


def drop(ledger: Ledger) -> None:
    """Drop the ledger's tables, or delete its file (SQLite)."""
    database = ledger.engine.url.database
    if ledger.engine.dialect.name == "sqlite" and database:
        ledger.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)
        return
    ledger.metadata.drop_all(ledger.engine, checkfirst=True)
    ledger.engine.dispose()


def mariadb_database(admin_url: str = MARIADB_ADMIN_URL) -> contextlib.AbstractContextManager[sa.Engine]:
    """A new, empty MariaDB database, dropped on exit."""
    return scratch_database(admin_url)


def reachable(url: str) -> str | None:
    """``None`` when the database at ``url`` answers, else why not."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means the database is not usable
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        engine.dispose()
    return None
