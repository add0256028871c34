"""Choosing how to read a warehouse through its Airflow SQL hook: SQLAlchemy or the driver's DB-API.

The operator reads through any Airflow SQL connection. Where the hook gives a
SQLAlchemy engine whose dialect streams (server-side cursors), rows are read
through SQLAlchemy (:func:`~pagent_provider.core.reading.read_sql_chunks`);
where the hook's SQLAlchemy support is missing, a separate package, or
drops options the hook's own connection applies, rows are read through the
hook's ``get_conn()`` (:func:`~pagent_provider.core.reading_dbapi.read_dbapi_chunks`).
Both give the same DataFrames (:mod:`pagent_provider.core.frames`).

:data:`READ_PATHS` is the one table of choices. ``read_mode="sqlalchemy"`` or
``"dbapi"`` overrides it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pagent_provider.core import defaults
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.reading_dbapi import read_dbapi_chunks
from pagent_provider.exceptions import PagentConfigError

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa

ReadMode = Literal["auto", "sqlalchemy", "dbapi"]
READ_MODES = ("auto", "sqlalchemy", "dbapi")


@dataclass(frozen=True)
class ReadPath:
    """How ``read_mode="auto"`` reads the connections of one type, and why.

    Attributes:
        mode: ``"sqlalchemy"`` (only if the hook's engine builds; else DB-API)
            or ``"dbapi"`` (the engine is not even tried).
        why: the reason, logged with each run.
    """

    mode: Literal["sqlalchemy", "dbapi"]
    why: str


#: conn_type -> the read path of ``read_mode="auto"``. Which rows are tested
#: against a real engine is in the README's "Warehouses" table.
READ_PATHS: dict[str, ReadPath] = {
    "postgres": ReadPath(
        "sqlalchemy", "psycopg buffers a whole result client-side; SQLAlchemy's server-side cursor streams"
    ),
    "mysql": ReadPath(
        "sqlalchemy", "mysqlclient buffers a whole result client-side; SQLAlchemy's server-side cursor streams"
    ),
    "sqlite": ReadPath("sqlalchemy", "sqlite3 steps through the result as it is fetched"),
    "redshift": ReadPath(
        "sqlalchemy",
        "RedshiftSQLHook's engine is PostgreSQL's psycopg dialect, which streams with a server-side cursor",
    ),
    "duckdb": ReadPath(
        "dbapi",
        "DuckDBHook.get_conn applies the connection's extensions, limits and MotherDuck token; its SQLAlchemy "
        "URL needs the separate duckdb-engine package, which applies none of them",
    ),
    "snowflake": ReadPath(
        "dbapi",
        "SnowflakeHook's engine drops options its get_conn applies (proxy, MFA token caching) and "
        "snowflake-sqlalchemy 1.x does not import on SQLAlchemy 2.1; the connector fetches result batches lazily",
    ),
    "gcpbigquery": ReadPath(
        "dbapi",
        "BigQueryHook's engine needs the separate sqlalchemy-bigquery package; its DB-API cursor fetches page by page",
    ),
    "databricks": ReadPath(
        "dbapi",
        "DatabricksSqlHook's engine needs the separate databricks-sqlalchemy package and may fetch an OAuth "
        "token just to build its URL; the SQL connector fetches Arrow batches lazily",
    ),
    "trino": ReadPath(
        "dbapi",
        "TrinoHook.get_conn applies the connection's authentication, TLS and session properties, which its "
        "SQLAlchemy URL does not carry; the client fetches result pages lazily",
    ),
}

#: SQLAlchemy dialects known to stream with ``stream_results``; an unknown
#: conn_type whose engine has another dialect is read through its DB-API.
STREAMING_DIALECTS = frozenset({"postgresql", "mysql", "mariadb", "sqlite"})


class SqlSource:
    """The warehouse of one run, read in DataFrame chunks through the chosen path.

    Attributes:
        mode: ``"sqlalchemy"`` or ``"dbapi"``.
        reason: why that path, for the task log.
    """

    def __init__(self, hook: Any, mode: Literal["sqlalchemy", "dbapi"], reason: str, engine: sa.Engine | None) -> None:
        self._hook = hook
        self.mode = mode
        self.reason = reason
        self._engine = engine

    def read_chunks(
        self, sql: str, parameters: Mapping[str, Any] | None = None, *, chunksize: int = defaults.CHUNKSIZE
    ) -> Iterator[pd.DataFrame]:
        """The result of ``sql`` (``:name`` placeholders) in DataFrames of at most ``chunksize`` rows."""
        if self._engine is not None:
            return read_sql_chunks(self._engine, sql, parameters, chunksize=chunksize)
        return read_dbapi_chunks(self._hook.get_conn, sql, parameters, chunksize=chunksize)

    def close(self) -> None:
        """Release the engine's pooled connections (the DB-API path closes its own)."""
        if self._engine is not None:
            self._engine.dispose()


def check_read_mode(read_mode: str) -> None:
    """Raise :class:`PagentConfigError` unless ``read_mode`` is one of :data:`READ_MODES`."""
    if read_mode not in READ_MODES:
        raise PagentConfigError(
            f"read_mode must be 'auto' (chosen per connection type), 'sqlalchemy' or 'dbapi', got {read_mode!r}"
        )


def conn_type_of(hook: Any) -> str:
    """The connection type a hook serves (its class attribute; the connection's for a generic hook)."""
    conn_type = getattr(type(hook), "conn_type", None)
    if conn_type:
        return str(conn_type)
    connection = getattr(hook, "connection", None)
    return str(getattr(connection, "conn_type", "") or "")


def open_sql_source(hook: Any, read_mode: ReadMode = "auto") -> SqlSource:
    """Choose how to read through ``hook`` (an Airflow ``DbApiHook``).

    Args:
        hook: the hook of the source connection.
        read_mode: ``"auto"``: :data:`READ_PATHS` by the hook's conn_type;
            a conn_type not listed is read through SQLAlchemy when its engine
            builds and its dialect is in :data:`STREAMING_DIALECTS`, else
            through DB-API. ``"sqlalchemy"`` or ``"dbapi"``: that path.

    Raises:
        PagentConfigError: on an unknown ``read_mode``, or ``"sqlalchemy"``
            when the hook cannot build an engine (with the reason).
    """
    check_read_mode(read_mode)
    conn_type = conn_type_of(hook)
    if read_mode == "dbapi":
        return SqlSource(hook, "dbapi", "read_mode='dbapi'", None)
    if read_mode == "sqlalchemy":
        engine, error = _try_engine(hook)
        if engine is None:
            raise PagentConfigError(
                f"read_mode='sqlalchemy', but the {type(hook).__name__} of this connection cannot build a "
                f"SQLAlchemy engine ({error}); install its SQLAlchemy dialect or use read_mode='dbapi'"
            )
        return SqlSource(hook, "sqlalchemy", "read_mode='sqlalchemy'", engine)
    known = READ_PATHS.get(conn_type)
    if known is not None and known.mode == "dbapi":
        # The engine is not even built: for some hooks that already costs a token request.
        return SqlSource(hook, "dbapi", known.why, None)
    engine, error = _try_engine(hook)
    if engine is None:
        return SqlSource(hook, "dbapi", f"no SQLAlchemy engine ({error})", None)
    if known is not None:
        return SqlSource(hook, "sqlalchemy", known.why, engine)
    if engine.dialect.name in STREAMING_DIALECTS:
        return SqlSource(hook, "sqlalchemy", f"SQLAlchemy dialect {engine.dialect.name!r} streams", engine)
    engine.dispose()
    return SqlSource(
        hook,
        "dbapi",
        f"SQLAlchemy dialect {engine.dialect.name!r} is not known to stream; reading through DB-API",
        None,
    )


def _try_engine(hook: Any) -> tuple[sa.Engine | None, str]:
    try:
        return hook.get_sqlalchemy_engine(), ""
    # Hooks fail here in every way: NotImplementedError, a missing dialect (ImportError,
    # NoSuchModuleError), a dialect that breaks on import (AttributeError), a bad URL.
    except Exception as error:  # noqa: BLE001 - any failure means: read through the DB-API
        return None, f"{type(error).__name__}: {error}"
