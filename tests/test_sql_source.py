"""The read-path chooser: which hooks are read through SQLAlchemy and which through their DB-API.

The official SQLite, DuckDB, Snowflake, Trino and Databricks hook classes
are imported and decided on for real. BigQuery and Redshift are decided by
their conn_type on stand-in hooks (their providers are too heavy to install
for this), and the DB-API path of BigQuery, Databricks and Trino is run on a
stand-in driver (sqlite3) with each one's paramstyle: none of those three
warehouses runs here.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlalchemy as sa

from pagent_provider.exceptions import PagentConfigError
from pagent_provider.hooks.sql_source import READ_PATHS, open_sql_source

SNOWFLAKE = {"conn_type": "snowflake", "login": "u", "password": "secret-pw", "extra": {"account": "xy12345"}}


def _never(*_args, **_kwargs):
    raise AssertionError("the engine must not be built for this hook")


@pytest.fixture
def sqlite_hook(tmp_path, monkeypatch):
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    monkeypatch.setenv("AIRFLOW_CONN_SRC", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")}))
    return SqliteHook(sqlite_conn_id="src")


def test_sqlite_is_read_through_sqlalchemy_unless_told_otherwise(sqlite_hook):
    source = open_sql_source(sqlite_hook)
    assert source.mode == "sqlalchemy"
    source.close()
    assert open_sql_source(sqlite_hook, "dbapi").mode == "dbapi"


@pytest.mark.parametrize(
    ("module", "hook_class", "conn", "kwargs"),
    [
        ("airflow.providers.duckdb.hooks.duckdb", "DuckDBHook", {"conn_type": "duckdb"}, {"duckdb_conn_id": "src"}),
        ("airflow.providers.snowflake.hooks.snowflake", "SnowflakeHook", SNOWFLAKE, {"snowflake_conn_id": "src"}),
        (
            "airflow.providers.trino.hooks.trino",
            "TrinoHook",
            {"conn_type": "trino", "host": "h"},
            {"trino_conn_id": "src"},
        ),
        (
            "airflow.providers.databricks.hooks.databricks_sql",
            "DatabricksSqlHook",
            {"conn_type": "databricks", "host": "h", "password": "dapi-token", "extra": {"http_path": "/sql/1"}},
            {"databricks_conn_id": "src"},
        ),
    ],
)
def test_warehouse_hooks_are_read_through_their_dbapi_without_building_an_engine(
    module, hook_class, conn, kwargs, monkeypatch
):
    hook_type = getattr(pytest.importorskip(module), hook_class)
    monkeypatch.setenv("AIRFLOW_CONN_SRC", json.dumps(conn))
    hook = hook_type(**kwargs)
    monkeypatch.setattr(hook, "get_sqlalchemy_engine", _never)  # Databricks' may fetch an OAuth token
    source = open_sql_source(hook)
    assert (source.mode, source.reason) == ("dbapi", READ_PATHS[hook_type.conn_type].why)


def test_forcing_sqlalchemy_on_snowflake_says_why_it_cannot(monkeypatch):
    from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

    monkeypatch.setenv("AIRFLOW_CONN_SRC", json.dumps(SNOWFLAKE))
    try:
        engine = SnowflakeHook(snowflake_conn_id="src").get_sqlalchemy_engine()
    except Exception as error:  # noqa: BLE001 - snowflake-sqlalchemy 1.x on SQLAlchemy 2.1
        expected = type(error).__name__
    else:
        engine.dispose()
        pytest.skip("snowflake-sqlalchemy works with this SQLAlchemy")
    with pytest.raises(
        PagentConfigError, match=rf"read_mode='sqlalchemy'.*SnowflakeHook.*{expected}.*read_mode='dbapi'"
    ):
        open_sql_source(SnowflakeHook(snowflake_conn_id="src"), "sqlalchemy")


class _StandInHook:
    """A hook of a given conn_type whose DB-API connection is sqlite3 (and whose engine is whatever we say)."""

    conn_type = "unknown"

    def __init__(self, path, engine=None, paramstyle=None):
        self.path, self.engine, self.paramstyle = path, engine, paramstyle

    def get_sqlalchemy_engine(self):
        if self.engine is None:
            raise ModuleNotFoundError("No module named 'sqlalchemy_somewarehouse'")
        return self.engine

    def get_conn(self):
        return _PyformatConnection(self.path) if self.paramstyle == "pyformat" else _Sqlite(self.path, self.paramstyle)


class _Sqlite:
    def __init__(self, path, paramstyle):
        self.inner, self.paramstyle = sqlite3.connect(path), paramstyle

    def cursor(self):
        return self.inner.cursor()

    def close(self):
        self.inner.close()


class _PyformatCursor:
    """Binds client-side with ``operation % quoted``, as Airflow's BigQuery DB-API cursor does."""

    def __init__(self, inner):
        self.inner = inner

    def execute(self, operation, parameters=None):
        if parameters:
            operation = operation % {k: repr(v) for k, v in parameters.items()}
        self.inner.execute(operation)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _PyformatConnection(_Sqlite):
    def __init__(self, path):
        super().__init__(path, "pyformat")

    def cursor(self):
        return _PyformatCursor(self.inner.cursor())


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (order_id INTEGER, label TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "purchase" if i % 2 else "refund") for i in range(50)])
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    ("conn_type", "paramstyle"), [("gcpbigquery", "pyformat"), ("databricks", "named"), ("trino", "qmark")]
)
def test_the_dbapi_path_of_bigquery_databricks_and_trino_on_a_stand_in_driver(warehouse, conn_type, paramstyle):
    hook = type("Hook", (_StandInHook,), {"conn_type": conn_type})(warehouse, paramstyle=paramstyle)
    hook.get_sqlalchemy_engine = _never
    source = open_sql_source(hook)
    assert source.mode == "dbapi"
    sql = "SELECT order_id, label FROM t WHERE label LIKE 'purch%' AND order_id >= :low ORDER BY order_id"
    chunks = list(source.read_chunks(sql, {"low": 10}, chunksize=8))
    assert [len(c) for c in chunks] == [8, 8, 4]
    assert [int(i) for c in chunks for i in c.order_id] == list(range(11, 50, 2))


def test_redshift_is_read_through_its_engine_when_it_builds(warehouse):
    engine = sa.create_engine(f"sqlite:///{warehouse}")  # stands in for the psycopg engine
    hook = type("Hook", (_StandInHook,), {"conn_type": "redshift"})(warehouse, engine=engine)
    assert open_sql_source(hook).mode == "sqlalchemy"
    engine.dispose()
    without = type("Hook", (_StandInHook,), {"conn_type": "redshift"})(warehouse)
    source = open_sql_source(without)
    assert source.mode == "dbapi" and "sqlalchemy_somewarehouse" in source.reason


def test_an_unknown_connection_type_streams_through_sqlalchemy_only_for_known_dialects(warehouse):
    engine = sa.create_engine(f"sqlite:///{warehouse}")
    assert open_sql_source(_StandInHook(warehouse, engine=engine)).mode == "sqlalchemy"

    class _OtherDialectEngine:
        dialect = type("Dialect", (), {"name": "exasol"})()
        disposed = False

        def dispose(self):
            self.disposed = True

    other = _OtherDialectEngine()
    source = open_sql_source(_StandInHook(warehouse, engine=other))
    assert source.mode == "dbapi" and "'exasol' is not known to stream" in source.reason and other.disposed
    assert open_sql_source(_StandInHook(warehouse)).mode == "dbapi"  # no engine at all
    engine.dispose()


def test_an_unknown_read_mode_is_refused_when_the_dag_is_parsed(warehouse):
    from pagent_provider.operators.conversions import ConversionsOperator

    with pytest.raises(PagentConfigError, match="read_mode"):
        open_sql_source(_StandInHook(warehouse), "odbc")  # type: ignore[arg-type]
    with pytest.raises(PagentConfigError, match="read_mode"):
        ConversionsOperator(task_id="t", conn_id="w", sql="SELECT 1", key_column="k", read_mode="odbc")
    assert (
        ConversionsOperator(task_id="t", conn_id="w", sql="SELECT 1", key_column="k", read_mode="dbapi").read_mode
        == "dbapi"
    )
