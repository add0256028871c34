"""Moving a ledger of the first layout (one wide row per key, release 0.1) to the current one.

The first layout kept the owner, heartbeat and status on every key's row:
about 270 to 490 bytes a key, and a hundred rows written to mark one batch
sent. The current layout keeps them once per claim (``<table>_claims``). A
sync that finds a first-layout table moves it before anything else, once,
while holding the database's lock on it, so that two workers starting
together move it once and neither claims anything meanwhile:

1. the claims are read in one grouped query; a claim whose keys all share
   one status and detail carries them, otherwise each key keeps its own;
   each namespace gets its id in ``<table>_namespaces``;
2. the keys are copied, in primary-key pages, into ``<table>_next``, each
   with its namespace's id and its content hash's 32-bit digest;
3. the copy is counted against the table, and only then the tables are
   swapped: ``<table>`` becomes ``<table>_layout1`` (kept for the user to drop)
   and ``<table>_next`` becomes ``<table>``.

On PostgreSQL, SQLite and DuckDB all of it is one transaction. MySQL/MariaDB
commits DDL at once, so the swap is one atomic ``RENAME TABLE`` of both, and a
move that died before it is started again from the first step. Runs of the
earlier release must be stopped first: the statements of one still running
would go to the renamed table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pagent_provider.core.ledger_statements import content_digest, slices
from pagent_provider.exceptions import PagentLedgerError

if TYPE_CHECKING:
    from pagent_provider.core.ledger import Ledger

log = logging.getLogger(__name__)

#: The column only the first layout's key table has.
LAYOUT_1_MARKER = "owner_run"
#: Keys copied per statement.
PAGE = 10_000


def layout_1_table(table: sa.Table, key: Any) -> sa.Table:
    """The first layout's key table, as that release created it (for reading it)."""
    return sa.Table(
        table.name,
        sa.MetaData(schema=table.schema),
        sa.Column("namespace", key(128), primary_key=True),
        sa.Column("event_key", key(255), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("claim_id", key(32), nullable=False),
        sa.Column("owner_run", key(32), nullable=False),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("owner_task", sa.String(512)),
        sa.Column("owner_try", sa.Integer),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger),
        sa.Column("detail", sa.String(1000)),
    )


def is_layout_1(conn: sa.Connection, table: sa.Table) -> bool:
    """True when ``table`` exists and is a first-layout key table."""
    if not sa.inspect(conn).has_table(table.name, schema=table.schema):
        return False
    # the columns a query names, not the inspector's: duckdb_engine cannot reflect them
    quoted = conn.dialect.identifier_preparer.format_table(table)
    result = conn.exec_driver_sql(f"SELECT * FROM {quoted} WHERE 1 = 0")
    columns = {str(column).lower() for column in result.keys()}
    result.close()  # an open SQLite statement would lock the table against the move's DDL
    return LAYOUT_1_MARKER in columns


def migrate_layout_1(ledger: Ledger) -> int | None:
    """Move ``ledger``'s table to the current layout if it is still a first-layout one; the keys moved, or ``None``.

    Called when :func:`is_layout_1` said so; it looks again under the lock
    (another worker may have moved the table meanwhile).

    Raises:
        PagentLedgerError: the copy does not add up (nothing was swapped), or
            the database refused (the ledger's user may lack the rights to
            create and rename tables: run the sync once as one who has them).
    """
    database = ledger.database
    try:
        # engine.begin(), not connect() and commit(): SQLAlchemy 1.4's connections (Airflow 2) have no commit()
        with ledger.engine.begin() as conn:
            database.migration_lock(conn, ledger.table)
            try:
                if not is_layout_1(conn, ledger.table):  # another worker moved it while we waited
                    return None
                moved = _move(conn, ledger)
            finally:
                database.migration_unlock(conn, ledger.table)
    except sa.exc.DBAPIError as error:
        raise PagentLedgerError(
            f"the ledger table {ledger.table_name!r} has the layout of an earlier release and could not be moved "
            f"to the current one ({type(error).__name__}: {str(error.orig).splitlines()[0][:300]}). Nothing was "
            "changed. Stop the syncs that use it and run one sync as a database user that may create and rename "
            "tables."
        ) from None
    log.warning(
        "Moved %d keys of ledger table %r to the current layout; the old table is kept as %r: drop it once "
        "you no longer need it.",
        moved,
        ledger.table_name,
        f"{ledger.table.name}_layout1",
    )
    return moved


def _move(conn: sa.Connection, ledger: Ledger) -> int:
    from pagent_provider.core.ledger import build_tables  # the tables are defined beside the ledger

    database = ledger.database
    old = layout_1_table(ledger.table, database.key_type)
    schema = f"{ledger.table.schema}." if ledger.table.schema else ""
    staging = build_tables(f"{schema}{ledger.table.name}_next", database.key_type).events
    created = (staging, ledger.claims_table, ledger.namespaces_table)
    for table in created:  # what a move that died left behind
        table.drop(conn, checkfirst=True)
    for table in created:
        table.create(conn)
    claims, uniform = _copy_claims(conn, old, ledger.claims_table)
    namespaces = conn.execute(sa.select(old.c.namespace).distinct().order_by(old.c.namespace)).scalars()
    namespace_ids = {namespace: number for number, namespace in enumerate(namespaces, start=1)}
    if namespace_ids:
        conn.execute(
            ledger.namespaces_table.insert(),
            [{"namespace_id": number, "namespace": namespace} for namespace, number in namespace_ids.items()],
        )
    copied = _copy_keys(conn, old, staging, claims, uniform, namespace_ids)
    total = conn.execute(sa.select(sa.func.count()).select_from(old)).scalar_one()
    if copied != total:
        raise PagentLedgerError(
            f"moving ledger table {ledger.table_name!r} copied {copied} of its {total} keys; nothing was swapped"
        )
    database.rename_tables(conn, [(old, f"{old.name}_layout1"), (staging, ledger.table.name)])
    return copied


def _copy_claims(conn: sa.Connection, old: sa.Table, claims: sa.Table) -> tuple[dict[str, int], set[str]]:
    """One claim row per claim id of ``old``; the new id of each, and the ids whose keys all share one fate."""
    o = old.c
    query = sa.select(
        o.claim_id,
        sa.func.min(o.namespace),
        sa.func.min(o.status),
        sa.func.max(o.status),
        # compared as bytes: a MySQL collation would call "Timeout" and "timeout " one detail
        sa.func.count(sa.distinct(sa.cast(sa.func.coalesce(o.detail, ""), sa.LargeBinary))),
        sa.func.min(o.detail),
        sa.func.min(o.owner_run),
        sa.func.min(o.owner_host),
        sa.func.min(o.owner_pid),
        sa.func.min(o.owner_task),
        sa.func.min(o.owner_try),
        sa.func.min(o.claimed_at),
        sa.func.max(o.heartbeat_at),
        sa.func.max(o.sent_at),
    ).group_by(o.claim_id)
    ids: dict[str, int] = {}
    uniform: set[str] = set()
    rows = []
    for number, row in enumerate(conn.execute(query), start=1):
        old_id, namespace, low, high, details, detail, run, host, pid, task, attempt, claimed, beat, sent = row
        ids[old_id] = number
        same = low == high and details == 1
        if same:
            uniform.add(old_id)
        rows.append(
            {
                "claim_id": number,
                "namespace": namespace,
                "status": low if same else "claimed",  # its keys each carry their own
                "owner_run": run,
                "owner_host": host,
                "owner_pid": pid,
                "owner_task": task,
                "owner_try": attempt,
                "claimed_at": claimed,
                "heartbeat_at": beat,
                "sent_at": sent,
                "detail": detail if same else None,
            }
        )
    for part in slices(rows, PAGE):
        conn.execute(claims.insert(), list(part))
    return ids, uniform


def _copy_keys(
    conn: sa.Connection,
    old: sa.Table,
    staging: sa.Table,
    claims: dict[str, int],
    uniform: set[str],
    namespace_ids: dict[str, int],
) -> int:
    """Copy every key of ``old`` into ``staging`` in primary-key pages; how many were copied."""
    o = old.c
    copied, last = 0, None
    while True:
        after = () if last is None else (sa.tuple_(o.namespace, o.event_key) > sa.tuple_(*last),)
        page = (
            sa.select(o.namespace, o.event_key, o.content_hash, o.claim_id, o.status, o.detail)
            .where(*after)
            .order_by(o.namespace, o.event_key)
            .limit(PAGE)
        )
        rows = conn.execute(page).all()
        if not rows:
            return copied
        conn.execute(
            staging.insert(),
            [
                {
                    "namespace_id": namespace_ids[namespace],
                    "event_key": key,
                    "content_digest": content_digest(content_hash),
                    "claim_id": claims[claim_id],
                    # a claim whose keys share one fate carries it; otherwise each key keeps its own
                    "status": None if claim_id in uniform else status,
                    "detail": None if claim_id in uniform else detail,
                }
                for namespace, key, content_hash, claim_id, status, detail in rows
            ],
        )
        copied += len(rows)
        last = (rows[-1][0], rows[-1][1])
