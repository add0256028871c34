"""Streaming a SQL result through a plain DB-API connection, in the same chunks as the SQLAlchemy path.

Some warehouses are best read through their own driver rather than through
SQLAlchemy: their dialect is a separate package, lags behind SQLAlchemy, or
cannot carry every connection option the Airflow hook applies (DuckDB,
Snowflake, BigQuery, Databricks, Trino). Their drivers fetch results lazily,
a page or batch at a time, so ``fetchmany`` keeps memory bounded by the
chunk size. Drivers that buffer the whole result client-side on ``execute``
(psycopg, mysqlclient) should be read through SQLAlchemy's server-side
cursors instead (:mod:`pagent_provider.core.reading`).

The query is the same text as on the SQLAlchemy path: ``:name`` placeholders,
parsed by SQLAlchemy's ``text()`` and compiled to the driver's paramstyle, so
``\\:`` escapes, ``::`` casts and ``%`` mean the same on both paths.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeGuard

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine.default import DefaultDialect

from pagent_provider.core import defaults
from pagent_provider.core.frames import frame_from_rows

#: A PEP 249 paramstyle SQLAlchemy compiles to.
ParamStyle = Literal["qmark", "numeric", "named", "format", "pyformat", "numeric_dollar"]

#: The PEP 249 paramstyles SQLAlchemy compiles to.
PARAMSTYLES: tuple[ParamStyle, ...] = ("qmark", "numeric", "named", "format", "pyformat", "numeric_dollar")


def read_dbapi_chunks(
    connect: Callable[[], Any],
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    chunksize: int = defaults.CHUNKSIZE,
    paramstyle: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the result of ``sql`` in DataFrames of at most ``chunksize`` rows, through a DB-API cursor.

    The connection is opened when the first chunk is asked for and closed
    when the iteration ends or is abandoned. Chunks are built by
    :func:`~pagent_provider.core.frames.frame_from_rows`, exactly as the
    SQLAlchemy path builds them, and an empty result gives one empty chunk
    with the column names (so that missing columns are still reported).

    Args:
        connect: opens a new DB-API connection (an Airflow hook's ``get_conn``).
        sql: the query, with ``:name`` placeholders (SQLAlchemy ``text()`` rules).
        parameters: values for the placeholders.
        chunksize: rows per DataFrame.
        paramstyle: the driver's paramstyle; default: the ``paramstyle`` of
            the connection's driver module (see :func:`driver_paramstyle`).

    Raises:
        ValueError: on a chunksize below 1 or an unknown paramstyle.
    """
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    connection = connect()
    try:
        style = paramstyle or driver_paramstyle(connection)
        statement, bound = to_paramstyle(sql, parameters, style)
        cursor = connection.cursor()
        try:
            _set_arraysize(cursor, chunksize)
            if bound is None:
                cursor.execute(statement)
            else:
                cursor.execute(statement, bound)
            columns = [column[0] for column in cursor.description or ()]
            rows = cursor.fetchmany(chunksize)
            if not rows:
                yield frame_from_rows([], columns)
            while rows:
                yield frame_from_rows(rows, columns)
                rows = cursor.fetchmany(chunksize)
        finally:
            cursor.close()
    finally:
        connection.close()


def to_paramstyle(
    sql: str, parameters: Mapping[str, Any] | None, paramstyle: str
) -> tuple[str, dict[str, Any] | list[Any] | None]:
    """Compile a ``:name`` query to ``paramstyle``; return the statement and what to pass with it.

    Named styles get a dict, positional ones a list in placeholder order (a
    name used twice is passed twice). With no placeholders the statement is
    compiled without ``%`` doubling and returned with ``None``, to be executed
    without parameters: drivers that interpolate ``%`` only do so when given
    parameters.

    Raises:
        ValueError: on an unknown paramstyle.
        sqlalchemy.exc.InvalidRequestError: a placeholder has no value.
    """
    if not _is_paramstyle(paramstyle):
        raise ValueError(f"unknown DB-API paramstyle {paramstyle!r}; expected one of {', '.join(PARAMSTYLES)}")
    clause = sa.text(sql)
    compiled = clause.compile(dialect=_dialect(paramstyle))
    if not compiled.params:  # no ":name" in the text
        return clause.compile(dialect=_dialect("qmark")).string, None
    values = compiled.construct_params(dict(parameters or {}))
    if compiled.positiontup is None:
        return compiled.string, dict(values)
    return compiled.string, [values[name] for name in compiled.positiontup]


def _is_paramstyle(style: str) -> TypeGuard[ParamStyle]:
    return style in PARAMSTYLES


def _dialect(paramstyle: ParamStyle) -> DefaultDialect:
    # The generic dialect: nothing driver-specific, only the placeholder syntax
    # and, for the format styles, "%" doubled in the text.
    return DefaultDialect(paramstyle=paramstyle)


def driver_paramstyle(connection: Any) -> str:
    """The paramstyle of the driver module a DB-API connection comes from (``qmark`` if none says).

    The module of the connection's class and its parents are searched, so
    ``snowflake.connector.connection.SnowflakeConnection`` finds
    ``snowflake.connector.paramstyle``. A connection-level ``paramstyle`` or
    ``_paramstyle`` attribute (Snowflake's connect(paramstyle=...)) wins.
    """
    for attribute in ("paramstyle", "_paramstyle"):
        style = getattr(connection, attribute, None)
        if style in PARAMSTYLES:
            return str(style)
    parts = type(connection).__module__.split(".")
    for end in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:end]))
        style = getattr(module, "paramstyle", None)
        if style in PARAMSTYLES:
            return str(style)
    return "qmark"


def _set_arraysize(cursor: Any, chunksize: int) -> None:
    # Drivers that prefetch (Snowflake, Trino, Databricks) size their batches
    # from arraysize; a read-only property on some cursors is no reason to fail.
    try:
        cursor.arraysize = chunksize
    except (AttributeError, TypeError):
        pass
