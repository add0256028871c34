"""The ledger where databases differ or fail: byte-exact keys, refused databases, retried writes.

Everything runs against the real servers (SQLite files, PostgreSQL 15, MariaDB
10.11): collations, character sets, a lock held by another connection, server
connections terminated under the ledger's feet, and commits whose answer is
lost after they went through.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, ClaimResult, Ledger, RejectRecord, build_tables
from pagent_provider.core.ledger_dialects import DIALECTS, DUCKDB, MYSQL, POSTGRESQL, SQLITE, ledger_dialect
from pagent_provider.core.ledger_migration import layout_1_table
from pagent_provider.core.ledger_retry import is_transient
from pagent_provider.core.ledger_statements import content_digest, joined, key_status
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.exceptions import PagentLedgerError, PagentLedgerUnavailableError

NAMESPACE = "pagent_default"
#: Keys that a case- or accent-insensitive, normalising or space-padding comparison would merge.
TRICKY_KEYS = [
    "ABC",
    "abc",
    "\u00e9",  # é, composed
    "e\u0301",  # é, decomposed
    "e",
    "x",
    "x ",
    "x\t",
    "\u00df",  # ß
    "ss",
    "01",
    "1",
    "1.0",
    "\u65e5\u672c",  # 日本: not Latin-1
    "\u4e2d\u56fd",  # 中国: not Latin-1 either
    "\U0001f600",  # outside the BMP
]


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def mariadb(mariadb_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(mariadb_url)
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_latin1(mariadb_url: str) -> Iterator[sa.Engine]:
    """A MariaDB database whose default character set is latin1, as older installations have."""
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


def make_ledger(engine: sa.Engine, **kwargs: object) -> Ledger:
    kwargs.setdefault("namespace", NAMESPACE)
    kwargs.setdefault("owner", ClaimOwner())
    ledger = Ledger(engine, **kwargs)  # type: ignore[arg-type]
    ledger.create_tables()
    return ledger


def keys(count: int, first: int = 0) -> list[str]:
    return [f"order-{i:05d}" for i in range(first, first + count)]


def entries(event_keys: Sequence[str], version: str = "v1") -> list[tuple[str, str]]:
    return [(key, hashlib.md5(f"{key}/{version}".encode()).hexdigest()) for key in event_keys]


def stored(ledger: Ledger) -> dict[str, sa.Row]:
    """Every key of the namespace as stored: its effective status, and its claim's owner and heartbeat."""
    t, c, n = ledger.table, ledger.claims_table, ledger.namespaces_table
    query = (
        sa.select(
            t.c.event_key,
            key_status(ledger.tables).label("status"),
            t.c.content_digest,
            t.c.claim_id,
            c.c.owner_run,
            c.c.heartbeat_at,
        )
        .select_from(joined(ledger.tables).join(n, n.c.namespace_id == t.c.namespace_id))
        .where(n.c.namespace == ledger.namespace)
    )
    with ledger.engine.connect() as conn:
        return {row.event_key: row for row in conn.execute(query)}


def create_old_tables(engine: sa.Engine, table_name: str = "pagent_ledger") -> None:
    """The tables as the previous version made them: plain VARCHAR keys, in the database's collation."""
    old = layout_1_table(sa.Table(table_name, sa.MetaData()), sa.String)  # plain VARCHAR keys
    sa.Index(f"ix_{table_name}_claim", old.c.namespace, old.c.claim_id)
    metadata = old.metadata
    sa.Table(
        f"{table_name}_rejects",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(128), nullable=False),
        sa.Column("run_token", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event_key", sa.String(255)),
        sa.Column("row_ref", sa.String(255), nullable=False),
        sa.Column("field", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Index(f"ix_{table_name}_rejects_ns", "namespace", "recorded_at"),
    )
    metadata.create_all(engine)


def create_collapsing_tables(engine: sa.Engine, table_name: str = "pagent_ledger") -> None:
    """The current layout's tables with plain VARCHAR keys, in the database's collation (as if made by hand)."""
    build_tables(table_name, sa.String).metadata.create_all(engine)


def insert_sent_in_current_layout(engine: sa.Engine, event_keys: Sequence[str], claim_id: int = 1) -> None:
    """``event_keys`` sent, by one claim, written straight into the current layout's tables.

    The namespace gets its id in ``pagent_ledger_namespaces`` first, unless a ledger registered it already.
    """
    with engine.begin() as conn:
        namespace_id = conn.exec_driver_sql(
            "SELECT namespace_id FROM pagent_ledger_namespaces WHERE namespace = %s", (NAMESPACE,)
        ).scalar()
        if namespace_id is None:
            namespace_id = conn.exec_driver_sql(
                "SELECT COALESCE(MAX(namespace_id), 0) + 1 FROM pagent_ledger_namespaces"
            ).scalar_one()
            conn.exec_driver_sql(
                "INSERT INTO pagent_ledger_namespaces (namespace_id, namespace) VALUES (%s, %s)",
                (namespace_id, NAMESPACE),
            )
        conn.exec_driver_sql(
            "INSERT INTO pagent_ledger_claims (claim_id, namespace, status, owner_run, claimed_at, heartbeat_at)"
            " VALUES (%s, %s, 'sent', 'r0', 0, 0)",
            (claim_id, NAMESPACE),
        )
        for key in event_keys:
            conn.exec_driver_sql(
                "INSERT INTO pagent_ledger (namespace_id, event_key, content_digest, claim_id) VALUES (%s, %s, %s, %s)",
                (namespace_id, key, content_digest("h"), claim_id),
            )


def insert_sent_the_old_way(engine: sa.Engine, event_keys: Sequence[str]) -> None:
    with engine.begin() as conn:
        for key in event_keys:
            conn.exec_driver_sql(
                "INSERT INTO pagent_ledger (namespace, event_key, status, content_hash, claim_id, owner_run,"
                " claimed_at, heartbeat_at) VALUES (%s, %s, 'sent', 'h', 'c0', 'r0', 0, 0)",
                (NAMESPACE, key),
            )


def statements_in(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines() if line.strip().startswith("ALTER TABLE")]


def run_statements(engine: sa.Engine, statements: Sequence[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


# --------------------------------------------------------------------------- 1. keys compared byte-exactly


def test_keys_that_differ_only_in_case_accents_spaces_or_digits_are_distinct_keys(engine):
    """ABC/abc, é/é/e, x/x /x<TAB>, ß/ss, 01/1/1.0, non-Latin-1 and astral keys: one row each, everywhere."""
    first = make_ledger(engine)
    claim = first.claim(entries(TRICKY_KEYS))
    assert claim.claimed == set(TRICKY_KEYS)
    first.mark_sent(claim.claim_id)
    rows = stored(first)
    assert sorted(rows) == sorted(TRICKY_KEYS), "a key was merged with another, or changed on the way"
    assert {type(key) for key in rows} == {str}

    later = make_ledger(engine)
    again = later.claim(entries(TRICKY_KEYS))
    assert again.claimed == set() and sorted(again.already_sent) == sorted(TRICKY_KEYS)
    assert again.changed_after_send == []
    for key in TRICKY_KEYS:  # each key alone finds itself, and nothing else
        assert set(later.sent_digests([key])) == {key}
        assert set(later.lookup([key])) == {key}


def test_a_latin1_mariadb_database_keeps_keys_latin1_cannot_hold(mariadb_latin1):
    """The key columns carry their own encoding: 日本 and 中国 do not both become '??'."""
    ledger = make_ledger(mariadb_latin1)
    claim = ledger.claim(entries(TRICKY_KEYS))
    assert claim.claimed == set(TRICKY_KEYS)
    assert sorted(stored(ledger)) == sorted(TRICKY_KEYS)
    with mariadb_latin1.connect() as conn:
        # the database really is latin1: a table without explicit types would lose the keys
        assert conn.exec_driver_sql("SELECT @@character_set_database").scalar() == "latin1"


def test_sqlite_keys_keep_text_affinity(tmp_path):
    """'01' and '1' stay two text keys: the column's type affinity never turns a key into a number."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger = make_ledger(engine)
        numeric = ["01", "1", "1.0", "1e0", " 1", "0x1", "-0"]
        assert ledger.claim(entries(numeric)).claimed == set(numeric)
        with engine.connect() as conn:
            key_types = conn.exec_driver_sql("SELECT DISTINCT typeof(event_key) FROM pagent_ledger").all()
            namespace_types = conn.exec_driver_sql(
                "SELECT DISTINCT typeof(namespace) FROM pagent_ledger_namespaces"
            ).all()
        assert key_types == [("text",)] and namespace_types == [("text",)]
        assert sorted(stored(ledger)) == sorted(numeric)
    finally:
        engine.dispose()


def test_the_mariadb_key_columns_are_varbinary(mariadb):
    """What the server made of the new definition: no collation, so nothing to fold or pad."""
    make_ledger(mariadb)
    with mariadb.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLLATION_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND DATA_TYPE = 'varbinary' ORDER BY TABLE_NAME, COLUMN_NAME"
        ).all()
    assert [(table, column) for table, column, _, _ in found] == [
        ("pagent_ledger", "event_key"),
        ("pagent_ledger_claims", "namespace"),
        ("pagent_ledger_claims", "owner_run"),
        ("pagent_ledger_namespaces", "namespace"),
        ("pagent_ledger_rejects", "event_key"),
        ("pagent_ledger_rejects", "namespace"),
    ]
    assert {collation for *_, collation in found} == {None}
    with mariadb.connect() as conn:  # the claim ids are numbers now, with nothing to compare but their value
        claim_ids = conn.exec_driver_sql(
            "SELECT TABLE_NAME, DATA_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME = 'claim_id' ORDER BY TABLE_NAME"
        ).all()
    assert [tuple(row) for row in claim_ids] == [("pagent_ledger", "bigint"), ("pagent_ledger_claims", "bigint")]


@pytest.mark.parametrize("database", ["utf8mb4", "latin1"])
def test_an_old_mariadb_table_is_refused_with_the_statements_that_fix_it(request, database):
    """Tables of the previous version: the key table is moved to byte-exact columns, the rejects table refused.

    After the given ALTERs, ABC and abc are two keys.
    """
    engine = request.getfixturevalue("mariadb" if database == "utf8mb4" else "mariadb_latin1")
    create_old_tables(engine)
    insert_sent_the_old_way(engine, ["ABC", "\u00e9", "x"])

    ledger = Ledger(engine, namespace=NAMESPACE)
    with pytest.raises(PagentLedgerError, match="earlier version") as refused:
        ledger.create_tables()
    message = str(refused.value)
    assert "pagent_ledger_rejects.event_key" in message and "_ci" in message
    assert "pagent_ledger.event_key" not in message  # moved to the current layout, in VARBINARY, before the check
    with engine.connect() as conn:
        key_types = conn.exec_driver_sql(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
            " AND (TABLE_NAME, COLUMN_NAME) IN"
            " (('pagent_ledger', 'event_key'), ('pagent_ledger_namespaces', 'namespace'))"
        ).all()
    assert {(table, column): data_type for table, column, data_type in key_types} == {
        ("pagent_ledger_namespaces", "namespace"): "varbinary",
        ("pagent_ledger", "event_key"): "varbinary",
    }
    assert "pagent_ledger_layout1" in sa.inspect(engine).get_table_names()
    statements = statements_in(message)
    assert statements and all(statement.endswith(";") for statement in statements)
    assert all("pagent_ledger_rejects" in statement for statement in statements)
    assert any("CHARACTER SET utf8mb4" in statement for statement in statements) == (database == "latin1")

    run_statements(engine, statements)
    ledger.create_tables()  # accepted now
    result = ledger.claim(entries(["ABC", "abc", "\u00e9", "e", "x", "x "]))
    assert sorted(result.already_sent) == sorted(["ABC", "\u00e9", "x"]), "the old rows did not survive the change"
    assert result.claimed == {"abc", "e", "x "}


def test_a_claim_on_a_collapsing_table_raises_instead_of_dropping_keys(mariadb):
    """Without the start-up check (a collapsing table): a clear PagentLedgerError, never a KeyError or a lost key."""
    create_collapsing_tables(mariadb)
    ledger = Ledger(mariadb, namespace=NAMESPACE)  # create_tables() not called: the check does not run

    with pytest.raises(PagentLedgerError, match="byte-exactly") as merged:
        ledger.claim(entries(["ABC", "abc"]))
    assert "pagent_ledger" in str(merged.value)
    assert ledger.count_by_status() == {}, "the failed claim was not given back"

    insert_sent_in_current_layout(mariadb, ["ABC"])
    with pytest.raises(PagentLedgerError, match="not asked for"):  # used to be a bare KeyError
        ledger.claim(entries(["abc"]))
    assert ledger.count_by_status() == {SENT: 1}


def test_a_nondeterministic_postgresql_collation_is_refused_and_caught(postgres):
    """PostgreSQL compares bytes unless a column is given a nondeterministic collation by hand."""
    with postgres.begin() as conn:
        conn.exec_driver_sql(
            "CREATE COLLATION case_insensitive (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
    create_collapsing_tables(postgres)
    with postgres.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE pagent_ledger ALTER COLUMN event_key TYPE VARCHAR(255) COLLATE case_insensitive"
        )

    unchecked = Ledger(postgres, namespace=NAMESPACE)
    with pytest.raises(PagentLedgerError, match="byte-exactly"):
        unchecked.claim(entries(["ABC", "abc"]))
    assert unchecked.count_by_status() == {}

    with pytest.raises(PagentLedgerError, match="nondeterministic collation") as refused:
        unchecked.create_tables()
    run_statements(postgres, statements_in(str(refused.value)))
    unchecked.create_tables()
    assert unchecked.claim(entries(["ABC", "abc"])).claimed == {"ABC", "abc"}


def test_the_default_postgresql_collations_compare_bytes(postgres, postgres_url):
    """The database default (C.UTF-8 here) and an ICU 'en' default both keep every tricky key apart."""
    make_ledger(postgres)  # and the check accepts the fresh table
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    icu_db = f"{sa.engine.make_url(postgres_url).database}_icu"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE {icu_db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'"
            )
        icu = sa.create_engine(sa.engine.make_url(postgres_url).set(database=icu_db))
        try:
            ledger = make_ledger(icu)
            assert ledger.claim(entries(TRICKY_KEYS)).claimed == set(TRICKY_KEYS)
        finally:
            icu.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {icu_db} WITH (FORCE)")
        admin.dispose()


# --------------------------------------------------------------------------- what each database offers


@pytest.mark.parametrize("name", ["snowflake", "bigquery", "redshift", "databricks"])
def test_databases_that_do_not_enforce_primary_keys_are_refused(name, monkeypatch):
    engine = sa.create_engine("sqlite://")
    monkeypatch.setattr(engine.dialect, "name", name)
    with pytest.raises(PagentLedgerError, match="does not enforce primary keys") as refused:
        Ledger(engine, namespace=NAMESPACE)
    assert "PostgreSQL, MySQL/MariaDB or SQLite" in str(refused.value)
    assert "ledger_conn_id" in str(refused.value)


@pytest.mark.parametrize("name", ["mssql", "oracle", "someday"])
def test_databases_the_ledger_was_not_checked_on_are_refused(name):
    with pytest.raises(PagentLedgerError, match="has not been checked") as refused:
        ledger_dialect(name)
    assert "ledger_conn_id" in str(refused.value)


def test_the_table_of_dialects():
    assert DIALECTS == {"sqlite": SQLITE, "postgresql": POSTGRESQL, "mysql": MYSQL, "mariadb": MYSQL, "duckdb": DUCKDB}
    assert [name for name, d in DIALECTS.items() if d.insert_returns_rows] == ["postgresql", "duckdb"]
    assert [name for name, d in DIALECTS.items() if d.one_machine] == ["sqlite", "duckdb"]
    assert [name for name, d in DIALECTS.items() if d.driver_executemany] == ["sqlite"]
    for name, dialect in DIALECTS.items():  # each claim statement compiles for its own database
        if name == "duckdb" and importlib.util.find_spec("duckdb_engine") is None:
            continue
        columns = [sa.Column("event_key", dialect.key_type(10)), sa.Column("claim_id", sa.BigInteger)]
        statement = dialect.insert_if_absent(sa.Table("t", sa.MetaData(), *columns))
        sql = str(statement.compile(dialect=sa.engine.make_url(f"{name}://").get_dialect()()))
        assert sql.startswith("INSERT")


def test_a_claim_result_that_does_not_add_up_is_named():
    result = ClaimResult(claim_id=1, claimed={"a"}, already_sent=["b"], changed_after_send=["b"])
    assert result.unaccounted({"a", "b"}) is None
    assert "without an outcome" in str(result.unaccounted({"a", "b", "c"}))
    assert "not asked for" in str(result.unaccounted({"a"}))
    assert "two outcomes" in str(ClaimResult(claim_id=1, claimed={"a"}, duplicate_keys=["a"]).unaccounted({"a"}))
    outside = ClaimResult(claim_id=1, already_sent=["a"], unknown_taken_over={"a"})
    assert "outside" in str(outside.unaccounted({"a"}))


# --------------------------------------------------------------------------- 2. retried writes: which errors


def _wrapped(error_class: type[sa.exc.DBAPIError], orig: Exception, **kwargs: object) -> sa.exc.DBAPIError:
    return error_class("UPDATE t SET x = ?", ("secret",), orig, **kwargs)  # type: ignore[arg-type]


def test_only_transient_errors_are_retried():
    import MySQLdb

    never = SQLITE.permanent
    assert is_transient(_wrapped(sa.exc.OperationalError, sqlite3.OperationalError("database is locked")), never)
    assert is_transient(_wrapped(sa.exc.InterfaceError, Exception("connection already closed")), never)
    assert is_transient(_wrapped(sa.exc.DBAPIError, Exception("eof"), connection_invalidated=True), never)
    assert not is_transient(_wrapped(sa.exc.IntegrityError, Exception("duplicate key")), never)
    assert not is_transient(_wrapped(sa.exc.ProgrammingError, Exception("x"), connection_invalidated=True), never)
    assert not is_transient(_wrapped(sa.exc.OperationalError, sqlite3.OperationalError("no such table: t")), never)
    assert not is_transient(ValueError("not a database error"), never)
    lost = _wrapped(sa.exc.OperationalError, MySQLdb.OperationalError(2013, "Lost connection"))
    missing = _wrapped(sa.exc.OperationalError, MySQLdb.OperationalError(1146, "Table doesn't exist"))
    assert is_transient(lost, MYSQL.permanent) and not is_transient(missing, MYSQL.permanent)


# --------------------------------------------------------------------------- 2. SQLite: a lock held elsewhere


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def short_busy_timeout(engine: sa.Engine, ms: int = 50) -> None:
    """After the ledger's own connect hook (30 s), so that a locked write fails fast and is retried."""

    def set_timeout(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA busy_timeout = {ms}")

    sa.event.listen(engine, "connect", set_timeout)


@contextmanager
def exclusive_lock(path: Path, release_after_s: float | None = None) -> Iterator[None]:
    """Another connection holds the file's write lock, released after ``release_after_s`` or at the end."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            blocker.execute("COMMIT")

    timer = threading.Timer(release_after_s, release) if release_after_s is not None else None
    if timer is not None:
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        release()
        blocker.close()


@pytest.fixture
def locked_ledger(sqlite_file: Path) -> Iterator[Callable[..., Ledger]]:
    engines: list[sa.Engine] = []

    def build(**kwargs: object) -> Ledger:
        engine = sa.create_engine(f"sqlite:///{sqlite_file}")
        engines.append(engine)
        ledger = Ledger(engine, namespace=NAMESPACE, **kwargs)  # type: ignore[arg-type]
        short_busy_timeout(engine)
        ledger.create_tables()
        return ledger

    yield build
    for engine in engines:
        engine.dispose()


def test_writes_wait_out_a_lock_held_by_another_connection(locked_ledger, sqlite_file, caplog):
    ledger = locked_ledger(write_retry_s=30)
    first, second = ledger.claim_batches([entries(keys(50)), entries(keys(50, first=50))])
    caplog.set_level(logging.WARNING, logger="pagent_provider.core.ledger_retry")

    started = time.monotonic()
    with exclusive_lock(sqlite_file, release_after_s=0.8):
        ledger.mark_claims_sent([first.claim_id])
    assert time.monotonic() - started >= 0.7, "the write did not wait for the lock"
    assert ledger.count_by_status() == {SENT: 50, CLAIMED: 50}

    with exclusive_lock(sqlite_file, release_after_s=0.8):
        [third] = ledger.claim_batches([entries(keys(50, first=100))], mark_sent=[second.claim_id])
    assert third.claimed == set(keys(50, first=100))
    assert ledger.count_by_status() == {SENT: 100, CLAIMED: 50}

    retries = [record for record in caplog.records if "trying again" in record.getMessage()]
    assert retries and all(record.levelno == logging.WARNING for record in retries)
    assert all("database is locked" in record.getMessage() for record in retries)
    logged = caplog.text
    assert "order-0" not in logged and "UPDATE" not in logged and "parameters" not in logged, "SQL or keys in the log"


def test_a_lock_held_past_the_budget_gives_up_with_a_clear_error(locked_ledger, sqlite_file):
    ledger = locked_ledger(write_retry_s=0.3)
    claim = ledger.claim(entries(keys(20)))

    started = time.monotonic()
    with exclusive_lock(sqlite_file), pytest.raises(PagentLedgerUnavailableError) as gave_up:
        ledger.mark_claims_sent([claim.claim_id])
    assert time.monotonic() - started < 10
    message = str(gave_up.value)
    assert "mark_claims_sent" in message and "database is locked" in message
    assert "acknowledged by pagent but could not be recorded as sent" in message
    assert isinstance(gave_up.value.__cause__, sa.exc.OperationalError)
    assert gave_up.value.retriable

    assert ledger.count_by_status() == {CLAIMED: 20}  # nothing half-done
    ledger.mark_claims_sent([claim.claim_id])  # and once the lock is gone it goes through
    assert ledger.count_by_status() == {SENT: 20}


def test_every_write_gives_up_with_its_own_consequence(locked_ledger, sqlite_file):
    ledger = locked_ledger(write_retry_s=0.1)
    claim = ledger.claim(entries(keys(4)))
    writes: dict[str, Callable[[], object]] = {
        "could not be claimed": lambda: ledger.claim(entries(keys(2, first=10))),
        "recorded as sent": lambda: ledger.mark_sent(claim.claim_id, keys(1)),
        "recorded as unknown": lambda: ledger.mark_unknown(claim.claim_id, keys(1), "lost"),
        "could not be released": lambda: ledger.release(claim.claim_id, keys(1)),
        "could not be kept alive": lambda: ledger.heartbeat([claim.claim_id]),
        "could not be logged": lambda: ledger.record_rejects([RejectRecord("r", "f", "why", "invalid")]),
    }
    with exclusive_lock(sqlite_file):
        for consequence, write in writes.items():
            with pytest.raises(PagentLedgerUnavailableError, match=consequence):
                write()
    assert ledger.count_by_status() == {CLAIMED: 4}


def test_errors_that_retrying_cannot_cure_are_raised_at_once(locked_ledger, caplog):
    ledger = locked_ledger(write_retry_s=30)
    claim = ledger.claim(entries(keys(3)))
    caplog.set_level(logging.WARNING, logger="pagent_provider.core.ledger_retry")
    started = time.monotonic()
    with pytest.raises(sa.exc.IntegrityError):
        ledger.record_rejects([RejectRecord("r", "f", "why", None)])  # type: ignore[arg-type]  # NOT NULL
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE pagent_ledger_claims")  # what marking a claim sent writes
    with pytest.raises(sa.exc.OperationalError, match="no such table"):
        ledger.mark_claims_sent([claim.claim_id])
    assert time.monotonic() - started < 2
    assert "trying again" not in caplog.text


# --------------------------------------------------------------------------- 2. commits whose answer is lost


def _lost_answer(engine: sa.Engine) -> Exception:
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite3.OperationalError("disk I/O error")
    if name == "postgresql":  # psycopg 3, or psycopg2 on SQLAlchemy 1.4
        return engine.dialect.dbapi.OperationalError("server closed the connection unexpectedly")
    import MySQLdb

    return MySQLdb.OperationalError(2013, "Lost connection to MySQL server during query")


@contextmanager
def every_first_answer_lost(engine: sa.Engine) -> Iterator[list[int]]:
    """Each transaction's commit goes through, then its answer is lost; its retry's answer arrives."""
    real_commit = engine.dialect.do_commit
    commits = itertools.count()
    lost: list[int] = []

    def do_commit(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        real_commit(dbapi_connection)
        number = next(commits)
        if number % 2 == 0:
            lost.append(number)
            raise _lost_answer(engine)

    engine.dialect.do_commit = do_commit  # type: ignore[method-assign]
    try:
        yield lost
    finally:
        del engine.dialect.do_commit


def test_a_retried_transaction_recognises_what_its_lost_commit_did(engine):
    """Claims, marks, take-overs: every commit's answer lost once, and every outcome still right."""
    a = make_ledger(engine, write_retry_s=30)
    b = make_ledger(engine, write_retry_s=30)
    with every_first_answer_lost(engine) as lost:
        one, two = a.claim_batches([entries(keys(30)), entries(keys(30, first=30))])
        assert one.claimed == set(keys(30)) and two.claimed == set(keys(30, first=30))
        assert one.duplicate_keys == two.duplicate_keys == [], "our own committed claim was taken for a duplicate"

        [three] = a.claim_batches([entries(keys(30, first=60))], mark_sent=[one.claim_id])
        assert three.claimed == set(keys(30, first=60))
        a.mark_claims_sent([two.claim_id])
        a.mark_unknown(three.claim_id, keys(10, first=60), "the answer was lost")
        a.release(three.claim_id, keys(10, first=70))
        a.heartbeat([three.claim_id])

        taken = b.claim(entries(keys(30, first=60)))  # 60-69 unknown, 70-79 released, 80-89 a's live claims
        assert taken.unknown_taken_over == set(keys(10, first=60))
        assert taken.claimed == set(keys(20, first=60))
        assert sorted(taken.claimed_elsewhere) == keys(10, first=80)
        assert taken.already_sent == [] and taken.duplicate_keys == []
        b.mark_sent(taken.claim_id)
        b.record_rejects([RejectRecord("r", "f", "why", "refused", event_key="\u00e9")])
    assert len(lost) >= 9, "the lost answers did not happen"
    rows = stored(a)
    assert {key: row.status for key, row in rows.items() if row.status != SENT} == dict.fromkeys(
        keys(10, first=80), CLAIMED
    )
    assert sum(row.status == SENT for row in rows.values()) == 80
    assert {rows[key].owner_run for key in keys(10, first=60)} == {b.owner.run_token}
    with engine.connect() as conn:
        rejects = conn.execute(sa.select(b.rejects_table.c.event_key)).scalars().all()
    assert set(rejects) == {"\u00e9"}  # a lost answer may log a reject twice: the log is informational


def test_skipping_an_abandoned_claim_survives_a_lost_answer(engine):
    dead = make_ledger(engine, claim_timeout_s=5)
    claim = dead.claim(entries(keys(10)))
    with engine.begin() as conn:
        claims = dead.claims_table
        conn.execute(claims.update().where(claims.c.claim_id == claim.claim_id).values(heartbeat_at=0))
    skipping = make_ledger(engine, claim_timeout_s=5, unknown_outcome="skip", write_retry_s=30)
    with every_first_answer_lost(engine) as lost:
        result = skipping.claim(entries(keys(10)))
    assert lost
    assert sorted(result.unknown_skipped) == keys(10) and result.claimed == set()
    assert {(row.status, row.claim_id) for row in stored(dead).values()} == {(UNKNOWN, claim.claim_id)}


# --------------------------------------------------------------------------- 2. PostgreSQL: connections terminated


def terminate_ledger_connections(admin: sa.Engine) -> int:
    with admin.connect() as conn:
        return len(
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).all()
        )


@pytest.fixture
def pg_admin(postgres_url: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    yield admin
    admin.dispose()


def test_marks_and_claims_survive_terminated_connections(postgres, pg_admin, caplog):
    ledger = make_ledger(postgres, write_retry_s=30)
    caplog.set_level(logging.WARNING, logger="pagent_provider.core.ledger_retry")
    first, second = ledger.claim_batches([entries(keys(100)), entries(keys(100, first=100))])

    assert terminate_ledger_connections(pg_admin) >= 1  # the pooled connection dies between two marks
    ledger.mark_claims_sent([first.claim_id])
    assert ledger.count_by_status() == {SENT: 100, CLAIMED: 100}

    terminate_ledger_connections(pg_admin)
    [third] = ledger.claim_batches([entries(keys(100, first=200))], mark_sent=[second.claim_id])
    assert third.claimed == set(keys(100, first=200))
    assert ledger.count_by_status() == {SENT: 200, CLAIMED: 100}
    assert "trying again" in caplog.text


def test_claims_and_marks_survive_connections_terminated_all_along(postgres, pg_admin, caplog):
    """A killer terminates the ledger's connections every few milliseconds while a sync claims and marks."""
    ledger = make_ledger(postgres, write_retry_s=60)
    caplog.set_level(logging.WARNING, logger="pagent_provider.core.ledger_retry")
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.is_set():
            kills.append(terminate_ledger_connections(pg_admin))
            time.sleep(random.uniform(0.002, 0.03))

    thread = threading.Thread(target=killer)
    thread.start()
    results: list[ClaimResult] = []
    try:
        previous: list[int] = []
        window = 0
        # at least 40 windows, and on until 20 connections were terminated under the ledger
        while window < 40 or (sum(kills) < 20 and window < 1000):
            batches = [entries(keys(25, first=window * 50)), entries(keys(25, first=window * 50 + 25))]
            claims = ledger.claim_batches(batches, mark_sent=previous)
            results.extend(claims)
            previous = [claim.claim_id for claim in claims]
            window += 1
        ledger.mark_claims_sent(previous)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sum(kills) >= 20, "the connections were hardly ever terminated"
    assert caplog.text.count("trying again") >= 5
    for number, result in enumerate(results):
        assert result.claimed == set(keys(25, first=number * 25)), f"batch {number}: {result}"
        assert not (result.duplicate_keys or result.claimed_elsewhere or result.already_sent)
    assert ledger.count_by_status() == {SENT: 50 * window}
