"""Ledgers for the benchmark: where they live, how big they are, and filling one with past days.

- :func:`bytes_per_event`: the space a ledger takes on disk per row it holds,
  table and indexes: SQLite's ``dbstat`` pages (the file's pages when the
  library has no ``dbstat``), PostgreSQL's ``pg_total_relation_size`` (heap,
  indexes, TOAST and maps, as they stand after the run: the row versions each
  "mark sent" left behind included), MariaDB's ``DATA_LENGTH + INDEX_LENGTH``
  after ``ANALYZE TABLE``.
- :func:`prefill`: ``count`` rows already sent, shaped like a real run's
  (numeric order ids as keys, 32-hex content hashes, one claim id per 100
  keys, this host's owner), written by one ``INSERT ... SELECT`` per slice.
- :func:`mariadb_database`: a scratch MariaDB database, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import time
import uuid
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
    """How many bytes ``ledger``'s table and indexes take, and how many rows they hold."""
    name = ledger.table.name
    dialect = ledger.engine.dialect.name
    rows = _rows(ledger)
    with ledger.engine.connect() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            objects = [
                row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE tbl_name = ?", (name,))
            ]
            try:
                marks = ",".join("?" * len(objects))
                size = conn.exec_driver_sql(
                    f"SELECT SUM(pgsize) FROM dbstat WHERE name IN ({marks})", tuple(objects)
                ).scalar_one()
                method = "dbstat pages of the table and its indexes"
            except sa.exc.OperationalError:  # a library built without dbstat
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
                size = (pages - free) * conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                method = "the file's pages in use (the rejects table's two included)"
            return LedgerSize("SQLite", int(size or 0), rows, method)
        if dialect == "postgresql":
            size = conn.execute(
                sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                {"t": conn.dialect.identifier_preparer.format_table(ledger.table)},
            ).scalar_one()
            return LedgerSize("PostgreSQL", int(size), rows, "pg_total_relation_size (heap, indexes, TOAST, maps)")
        if dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"ANALYZE TABLE {name}").fetchall()
            size = conn.exec_driver_sql(
                "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (name,),
            ).scalar_one()
            return LedgerSize("MariaDB", int(size), rows, "DATA_LENGTH + INDEX_LENGTH after ANALYZE TABLE")
    raise ValueError(f"no size measurement for {dialect}")


_COLUMNS = (
    "namespace, event_key, status, content_hash, claim_id, owner_run, owner_host, owner_pid, owner_task,"
    " owner_try, claimed_at, heartbeat_at, sent_at"
)


def prefill(ledger: Ledger, first_key: int, count: int, *, slice_rows: int = 500_000) -> float:
    """Write ``count`` sent rows with keys ``str(first_key)`` onwards, in key order; return the seconds it took."""
    owner = ledger.owner
    prefix = uuid.uuid4().hex[:16]
    stamp = now_ms()
    dialect = ledger.engine.dialect.name
    quoted = ledger.engine.dialect.identifier_preparer.format_table(ledger.table)
    started = time.perf_counter()
    for start in range(first_key, first_key + count, slice_rows):
        last = min(start + slice_rows, first_key + count) - 1
        params = {
            "first": start,
            "last": last,
            "ns": ledger.namespace,
            "prefix": prefix,
            "run": owner.run_token,
            "host": owner.host,
            "pid": owner.pid,
            "stamp": stamp,
        }
        if dialect == "sqlite":
            sql = (
                f"INSERT INTO {quoted} ({_COLUMNS})"
                " WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
                " SELECT :ns, CAST(i AS TEXT), 'sent', lower(hex(randomblob(16))), :prefix || printf('%016x', i / 100),"
                " :run, :host, :pid, NULL, NULL, :stamp, :stamp, :stamp FROM n"
            )
        elif dialect == "postgresql":
            sql = (
                f"INSERT INTO {quoted} ({_COLUMNS})"
                " SELECT :ns, CAST(i AS TEXT), 'sent', md5(CAST(i AS TEXT)),"
                " :prefix || lpad(to_hex(i / 100), 16, '0'),"
                " :run, :host, :pid, NULL, NULL, :stamp, :stamp, :stamp FROM generate_series(:first, :last) AS i"
            )
        else:
            raise ValueError(f"no prefill for {dialect}")
        with ledger.engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    if dialect == "postgresql":  # what autovacuum would have done by the next day
        with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {quoted}")
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
