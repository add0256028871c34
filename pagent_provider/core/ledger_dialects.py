"""What each database offers the delivery ledger, in one table.

The ledger's promise, each conversion sent once, rests on two things only the
database can give: a primary key it enforces, so that an insert-if-absent
lets exactly one run claim a key, and keys compared byte for byte, so that two
different keys never share one row. :data:`DIALECTS` records, per SQLAlchemy
dialect name, how each database the ledger supports gives them;
:func:`ledger_dialect` refuses every other one.

What was measured (keys ``ABC``/``abc``, ``é`` composed/decomposed/``e``,
``x``/``x ``, ``ß``/``ss``, ``01``/``1`` in a two-column primary key):

* SQLite: ``VARCHAR`` has TEXT affinity (``01`` stays ``01``) and the BINARY
  collation: every key distinct.
* PostgreSQL 15: ``VARCHAR`` under a deterministic collation (``C.UTF-8``, or
  an ICU ``en`` database default) compares bytes when the collation calls two
  strings equal: every key distinct. A nondeterministic ICU collation
  (``und-u-ks-level2``) folds case: 9 of 11 distinct. A database default can
  never be nondeterministic, so only a column altered by hand can be one;
  :func:`_check_postgresql` looks.
* MariaDB 10.11: the default ``utf8mb4_general_ci`` folds case and accents and
  pads: 12 of 16 distinct. ``utf8mb4_bin`` still pads (``x`` = ``x ``): 15 of
  16. ``utf8mb4_nopad_bin`` and ``VARBINARY``: 16 of 16. A ``latin1`` database
  stores ``日本`` as ``??``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pagent_provider.core.ledger_statements import ArrayStatements, LedgerStatements, SqliteStatements
from pagent_provider.exceptions import PagentLedgerError

KeyColumns = Sequence["sa.Column[Any]"]

_SUPPORTED = "PostgreSQL, MySQL/MariaDB or SQLite (one machine only)"


@dataclass(frozen=True)
class LedgerDialect:
    """What one database offers the ledger, and how the ledger uses it.

    Attributes:
        label: the database's name, for messages.
        insert_if_absent: builds an insert-if-absent statement on a ledger
            table; it is compiled once and run with a list of rows.
        insert_returns_rows: the insert can name the ``(event_key, claim_id)`` it
            inserted (``RETURNING``); otherwise it gives a count only and a
            batch not inserted in full is looked up.
        driver_executemany: the hot statements go to the driver as plain SQL
            text with tuples (SQLite, :class:`SqliteStatements`: SQLAlchemy's
            per-execution work costs more than SQLite's). Type bind processing
            is skipped, so only for plain ``key_type`` columns.
        key_type: the column type of a key column of ``n`` characters.
        prepare_engine: called once per engine the ledger is built on.
        before_create: called before the tables are created.
        check_key_columns: raises :class:`PagentLedgerError` when an existing
            table's key columns do not compare byte-exactly.
        permanent: true for an error of a transient class (``OperationalError``)
            that retrying cannot cure (a missing table, a syntax error).
        one_machine: the database is a local file: workers on other machines
            would each keep their own ledger and lose every guarantee.
        ids_from_sequence: the rejects table's ids come from an explicit sequence.
        statements: the class that runs the ledger's hot statements (claims,
            marks, lookups) on this database.
        migration_lock: called first on the connection that moves a ledger of
            the first layout (:mod:`pagent_provider.core.ledger_migration`):
            from then on, no other worker reads or writes the table until
            ``migration_unlock`` or the end of the transaction.
        migration_unlock: called last on that connection.
        rename_tables: renames tables (``(table, new name)``), all or none.
    """

    label: str
    insert_if_absent: Callable[[sa.Table], sa.Insert]
    insert_returns_rows: bool
    key_type: Callable[[int], sa.types.TypeEngine[str]]
    permanent: Callable[[sa.exc.DBAPIError], bool]
    driver_executemany: bool = False
    prepare_engine: Callable[[sa.Engine], None] | None = None
    before_create: Callable[[sa.Engine], None] | None = None
    check_key_columns: Callable[[sa.Connection, KeyColumns], None] | None = None
    one_machine: bool = False
    ids_from_sequence: bool = False
    statements: type[LedgerStatements] = LedgerStatements
    migration_lock: Callable[[sa.Connection, sa.Table], None] = lambda conn, table: None
    migration_unlock: Callable[[sa.Connection, sa.Table], None] = lambda conn, table: None
    rename_tables: Callable[[sa.Connection, Sequence[tuple[sa.Table, str]]], None] = lambda conn, renames: (
        _alter_table_rename(conn, renames)
    )


def _quoted(conn: sa.Connection, table: sa.Table) -> str:
    return conn.dialect.identifier_preparer.format_table(table)


def _execute(conn: sa.Connection, sql: str) -> None:
    conn.exec_driver_sql(sql)


def _alter_table_rename(conn: sa.Connection, renames: Sequence[tuple[sa.Table, str]]) -> None:
    # transactional DDL (PostgreSQL, SQLite, DuckDB): the caller's transaction makes them all or none
    for table, name in renames:
        conn.exec_driver_sql(
            f"ALTER TABLE {_quoted(conn, table)} RENAME TO {conn.dialect.identifier_preparer.quote(name)}"
        )


# --------------------------------------------------------------------------- MySQL and MariaDB


if TYPE_CHECKING:
    _TextDecorator = sa.types.TypeDecorator[str]
else:  # SQLAlchemy 1.4's TypeDecorator is not generic: subscripting it fails at import
    _TextDecorator = sa.types.TypeDecorator


class Utf8Bytes(_TextDecorator):
    """A text key kept as its UTF-8 bytes in a ``VARBINARY`` column (MySQL and MariaDB).

    ``VARBINARY`` is the one type that compares byte-exactly on every MySQL
    and MariaDB server: no collation to fold case or accents, no PAD SPACE
    (MariaDB's ``utf8mb4_bin`` still treats ``x`` and ``x `` as one key), and
    no table character set to turn ``日本`` into ``??``. The NO PAD binary
    collations that would also do are ``utf8mb4_nopad_bin`` on MariaDB and
    ``utf8mb4_0900_bin`` on MySQL 8, neither known to the other. Binding
    bytes rather than text keeps the connection's character set out of it too.
    The price: SQL clients show the keys as bytes (``CAST(event_key AS CHAR)``
    shows them as text).

    Args:
        chars: the longest key, in characters; the column holds four bytes each.
    """

    impl = mysql.VARBINARY
    cache_ok = True

    def __init__(self, chars: int) -> None:
        super().__init__(4 * chars)
        self.chars = chars

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> bytes | None:
        return None if value is None else value.encode()

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Callable[[Any], str | None]:
        # Not the VARBINARY processor: SQLAlchemy 1.4's calls bytes(value), which fails
        # on the text a column not yet migrated (still VARCHAR) returns.
        def process(value: Any) -> str | None:
            return self.process_result_value(value, dialect)

        return process

    def process_result_value(
        self, value: bytes | bytearray | memoryview | str | None, dialect: sa.Dialect
    ) -> str | None:
        # text from a column not yet migrated (still VARCHAR) is passed through
        return bytes(value).decode() if isinstance(value, bytes | bytearray | memoryview) else value


class _MySQLColumn(NamedTuple):
    data_type: str
    charset: str | None
    collation: str | None

    def describe(self) -> str:
        return " ".join(filter(None, (self.data_type.upper(), self.charset, self.collation)))


_MISSING = _MySQLColumn("missing", None, None)


def _check_mysql(conn: sa.Connection, columns: KeyColumns) -> None:
    found = _mysql_columns(conn, columns)
    wrong = [column for column in columns if found.get(_column_id(column), _MISSING).data_type != "varbinary"]
    if wrong:
        raise PagentLedgerError(_mysql_migration(conn, wrong, found))


def _column_id(column: sa.Column[Any]) -> tuple[str, str]:
    return column.table.name.lower(), column.name.lower()


def _text(value: object) -> str | None:
    if isinstance(value, bytes):  # some servers answer information_schema queries with bytes
        return value.decode()
    return None if value is None else str(value)


def _mysql_columns(conn: sa.Connection, columns: KeyColumns) -> dict[tuple[str, str], _MySQLColumn]:
    query = sa.text(
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME"
        " FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME IN :tables"
    ).bindparams(sa.bindparam("tables", expanding=True))
    tables = sorted({column.table.name for column in columns})
    found = {}
    for table, name, data_type, charset, collation in conn.execute(
        query, {"schema": columns[0].table.schema, "tables": tables}
    ):
        key = (str(_text(table)).lower(), str(_text(name)).lower())
        found[key] = _MySQLColumn(str(_text(data_type)).lower(), _text(charset), _text(collation))
    return found


def _mysql_migration(conn: sa.Connection, wrong: KeyColumns, found: dict[tuple[str, str], _MySQLColumn]) -> str:
    """The message that says why ``wrong`` columns will not do, and the statements that fix them."""
    preparer = conn.dialect.identifier_preparer
    statements = []
    # Text in another character set (latin1) is converted to UTF-8 first, so that the
    # binary column then holds the bytes the ledger binds. Each step goes from a
    # coarser comparison to a finer one, so no two existing rows can collide.
    to_utf8 = [c for c in wrong if (found.get(_column_id(c), _MISSING).charset or "utf8mb4") != "utf8mb4"]
    for table, table_columns in groupby(wrong, key=lambda column: column.table):  # grouped by table
        columns = list(table_columns)
        if converting := [c for c in columns if c in to_utf8]:
            statements.append(
                _alter(
                    conn,
                    table,
                    converting,
                    lambda c: f"VARCHAR({c.type.chars}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                )
            )
        statements.append(_alter(conn, table, columns, lambda c: c.type.compile(dialect=conn.dialect)))
    by_type: dict[str, list[str]] = {}
    for column in wrong:
        by_type.setdefault(found.get(_column_id(column), _MISSING).describe(), []).append(
            f"{column.table.name}.{column.name}"
        )
    now = "; ".join(f"{', '.join(names)}: {described}" for described, names in by_type.items())
    return (
        f"the ledger table {preparer.format_table(wrong[0].table)} was made by an earlier version of this provider: "
        f"its key columns do not compare byte-exactly ({now}), so keys such as 'ABC' and 'abc', 'é' and 'e' or "
        "'x' and 'x ' share one row and one of them is never sent. Stop every sync that uses this ledger, back "
        "the tables up, and run, in this order:\n  "
        + "\n  ".join(statements)
        + ("\nKeys the latin1 columns already stored as '?' cannot be recovered." if to_utf8 else "")
    )


def _alter(conn: sa.Connection, table: sa.Table, columns: KeyColumns, column_type: Callable[[Any], str]) -> str:
    preparer = conn.dialect.identifier_preparer
    changes = ", ".join(
        f"MODIFY {preparer.quote(c.name)} {column_type(c)} {'NULL' if c.nullable else 'NOT NULL'}" for c in columns
    )
    return f"ALTER TABLE {preparer.format_table(table)} {changes};"


_MYSQL_PERMANENT = {
    1044,  # access denied to the database
    1045,  # access denied for the user
    1049,  # unknown database
    1054,  # unknown column
    1064,  # syntax error
    1142,  # command denied on the table
    1146,  # no such table
    1267,  # 1267, 1270, 1271: illegal mix of collations (a latin1 column asked for a key it cannot hold)
    1270,
    1271,
    1366,  # incorrect string value
    1406,  # data too long
}


def _mysql_permanent(error: sa.exc.DBAPIError) -> bool:
    orig = error.orig
    code = getattr(orig, "errno", None)  # mysql-connector
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], int):
        code = orig.args[0]  # mysqlclient, PyMySQL
    return code in _MYSQL_PERMANENT


def _mysql_lock_name(table: sa.Table) -> str:
    name = f"pagent_ledger:{table.schema or ''}.{table.name}"
    return name if len(name) <= 64 else name[:48] + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def _mysql_lock(conn: sa.Connection, table: sa.Table) -> None:
    # DDL commits at once here: a named lock keeps the other workers out instead
    got = conn.execute(sa.text("SELECT GET_LOCK(:name, 600)"), {"name": _mysql_lock_name(table)}).scalar()
    if got != 1:
        raise PagentLedgerError(
            f"another worker has been moving ledger table {table.name!r} to the current layout for 10 minutes; "
            "try again when it is done"
        )


def _mysql_unlock(conn: sa.Connection, table: sa.Table) -> None:
    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _mysql_lock_name(table)})


def _mysql_rename(conn: sa.Connection, renames: Sequence[tuple[sa.Table, str]]) -> None:
    # one statement: MySQL/MariaDB renames all of the tables or none
    preparer = conn.dialect.identifier_preparer
    parts = []
    for table, name in renames:
        target = (
            f"{preparer.quote_schema(table.schema)}.{preparer.quote(name)}" if table.schema else preparer.quote(name)
        )
        parts.append(f"{_quoted(conn, table)} TO {target}")
    conn.exec_driver_sql(f"RENAME TABLE {', '.join(parts)}")


MYSQL = LedgerDialect(
    label="MySQL/MariaDB",
    # INSERT IGNORE reports only a count (ON DUPLICATE KEY UPDATE would count
    # matched rows too, under the CLIENT_FOUND_ROWS flag SQLAlchemy sets).
    insert_if_absent=lambda table: table.insert().prefix_with("IGNORE"),
    insert_returns_rows=False,
    key_type=Utf8Bytes,
    permanent=_mysql_permanent,
    check_key_columns=_check_mysql,
    migration_lock=_mysql_lock,
    migration_unlock=_mysql_unlock,
    rename_tables=_mysql_rename,
)


# --------------------------------------------------------------------------- PostgreSQL


def _check_postgresql(conn: sa.Connection, columns: KeyColumns) -> None:
    if (conn.dialect.server_version_info or (0,)) < (12,):
        return  # nondeterministic collations came with PostgreSQL 12
    query = sa.text(
        "SELECT a.attname, c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = CAST(:table AS regclass) AND a.attname IN :names AND NOT c.collisdeterministic"
    ).bindparams(sa.bindparam("names", expanding=True))
    preparer = conn.dialect.identifier_preparer
    for table, table_columns in groupby(columns, key=lambda column: column.table):
        by_name = {column.name: column for column in table_columns}
        name = preparer.format_table(table)
        wrong = conn.execute(query, {"table": name, "names": list(by_name)}).all()
        if wrong:
            types = {column: by_name[column].type.compile(dialect=conn.dialect) for column, _ in wrong}
            fixes = ", ".join(
                f'ALTER COLUMN {preparer.quote(column)} TYPE {column_type} COLLATE "C"'
                for column, column_type in types.items()
            )
            raise PagentLedgerError(
                f"the ledger table {name} compares keys with a nondeterministic collation "
                f"({', '.join(f'{column}: {collation}' for column, collation in wrong)}), so different keys "
                "(such as 'ABC' and 'abc') may share one row and one of them would never be sent. Stop every "
                f"sync that uses this ledger and run:\n  ALTER TABLE {name} {fixes};"
            )


def _postgresql_permanent(error: sa.exc.DBAPIError) -> bool:
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None) or ""
    return state.startswith("28") or state == "3D000"  # bad credentials, no such database


def _insert_on_conflict_do_nothing(table: sa.Table) -> sa.Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL, and DuckDB, which speaks it)."""
    return postgresql_insert(table).on_conflict_do_nothing()


POSTGRESQL = LedgerDialect(
    label="PostgreSQL",
    insert_if_absent=_insert_on_conflict_do_nothing,
    insert_returns_rows=True,
    # the database's default collation: always deterministic, so equal means equal bytes
    key_type=sa.String,
    permanent=_postgresql_permanent,
    check_key_columns=_check_postgresql,
    statements=ArrayStatements,
    # held until the move commits; waits for the transactions already using the table
    migration_lock=lambda conn, table: _execute(conn, f"LOCK TABLE {_quoted(conn, table)} IN ACCESS EXCLUSIVE MODE"),
)


# --------------------------------------------------------------------------- SQLite


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


def _switch_to_wal(engine: sa.Engine) -> None:
    # Switch the file to WAL now, before the sync reads its first chunk. The
    # connect hook cannot do it for a connection opened later while another
    # one (opened before this Ledger existed, e.g. the reader on a shared
    # engine) holds a read transaction: it would wait out the busy timeout
    # and fail with "database is locked". Once the file is WAL, it stays WAL.
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")


_SQLITE_PERMANENT = ("no such table", "no such column", "has no column named", "syntax error", "readonly database")


def _sqlite_permanent(error: sa.exc.DBAPIError) -> bool:
    # sqlite3 raises OperationalError for a locked database and a missing table alike
    message = str(error.orig)
    return any(part in message for part in _SQLITE_PERMANENT)


SQLITE = LedgerDialect(
    label="SQLite",
    insert_if_absent=lambda table: sqlite_insert(table).on_conflict_do_nothing(),
    insert_returns_rows=False,
    driver_executemany=True,
    # VARCHAR: TEXT affinity, so '01' stays '01'; the BINARY collation compares bytes
    key_type=sa.String,
    permanent=_sqlite_permanent,
    prepare_engine=_prepare_sqlite,
    before_create=_switch_to_wal,
    one_machine=True,
    statements=SqliteStatements,
    # the write lock of the whole file, taken before the table is even looked at
    migration_lock=lambda conn, table: _execute(conn, "BEGIN IMMEDIATE"),
)


# --------------------------------------------------------------------------- DuckDB


def _duckdb_permanent(error: sa.exc.DBAPIError) -> bool:
    # Another process holds the file: DuckDB allows one writing process at a time,
    # and retrying for a minute would only delay the same answer.
    return "lock" in str(error.orig).lower()


def _refuse_a_locked_file(engine: sa.Engine) -> None:
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as error:
        if _duckdb_permanent(error):
            raise PagentLedgerError(
                "the DuckDB ledger file is open in another process: DuckDB allows one process at a time, so "
                "syncs sharing this ledger must not overlap (run them one after another, e.g. with an Airflow "
                "pool of one slot), or keep the ledger in PostgreSQL or MySQL/MariaDB"
            ) from None
        raise


DUCKDB = LedgerDialect(
    label="DuckDB",
    insert_if_absent=_insert_on_conflict_do_nothing,
    insert_returns_rows=True,
    # VARCHAR compares bytes in DuckDB unless a collation is asked for
    key_type=sa.String,
    permanent=_duckdb_permanent,
    before_create=_refuse_a_locked_file,
    one_machine=True,
    ids_from_sequence=True,
)


# --------------------------------------------------------------------------- the table

DIALECTS: dict[str, LedgerDialect] = {
    "sqlite": SQLITE,
    "postgresql": POSTGRESQL,
    "mysql": MYSQL,
    "mariadb": MYSQL,  # SQLAlchemy's name for mariadb:// URLs; mysql:// ones on MariaDB stay "mysql"
    "duckdb": DUCKDB,  # one process at a time (the file is locked); duckdb_engine
}

#: Databases known to accept a primary key without enforcing it: two runs
#: could both insert the same claim, and both send the conversion.
WITHOUT_PRIMARY_KEYS = {
    "snowflake": "Snowflake",
    "bigquery": "BigQuery",
    "redshift": "Amazon Redshift",
    "databricks": "Databricks",
}


#: Executors that run every task on the scheduler's machine: a one-machine ledger is safe under them.
ONE_MACHINE_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def check_placement(dialect: LedgerDialect, executor: str | None) -> None:
    """Refuse a one-machine ledger (SQLite) under an executor that runs tasks on several machines.

    ``executor`` is the executor the task runs on (its ``executor`` argument, or
    the first of ``[core] executor``), as a class name or a dotted path;
    ``None`` outside Airflow. Anything but the local executors counts as
    several machines (Celery, Kubernetes, Edge, ECS, ...): better refused
    than silently keeping one ledger per worker.

    Raises:
        PagentLedgerError: the ledger would be split across machines.
    """
    if executor is None or not dialect.one_machine:
        return
    name = executor.strip().rsplit(".", 1)[-1].split(":")[-1]
    if name in ONE_MACHINE_EXECUTORS:
        return
    raise PagentLedgerError(
        f"the delivery ledger is a {dialect.label} file, but tasks run on the {name}, which runs them on "
        "several machines: each worker would keep its own ledger, and parallel or retried tasks could send "
        "a conversion twice. Keep the ledger in PostgreSQL or MySQL/MariaDB (ledger_conn_id); the Airflow "
        "metadata database is not an option."
    )


def ledger_dialect(name: str) -> LedgerDialect:
    """What the database of SQLAlchemy dialect ``name`` offers the ledger.

    Raises:
        PagentLedgerError: the database does not enforce primary keys, or the
            ledger has not been checked on it.
    """
    if name in DIALECTS:
        return DIALECTS[name]
    if name in WITHOUT_PRIMARY_KEYS:
        reason = (
            f"{WITHOUT_PRIMARY_KEYS[name]} does not enforce primary keys, so two runs could claim the same "
            "conversion and both send it"
        )
    else:
        reason = (
            f"the ledger has not been checked on {name!r}: it needs enforced primary keys, an insert-if-absent "
            "and keys compared byte for byte"
        )
    raise PagentLedgerError(
        f"the delivery ledger cannot be kept in this database: {reason}. Keep the ledger in {_SUPPORTED} "
        "and point ledger_conn_id at it; the warehouse can stay where it is."
    )
