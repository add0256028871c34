"""Streaming a SQL result as pandas DataFrame chunks with bounded memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pagent_provider.core import defaults
from pagent_provider.core.frames import frame_from_rows


def read_sql_chunks(
    engine: sa.Engine,
    sql: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    chunksize: int = defaults.CHUNKSIZE,
) -> Iterator[pd.DataFrame]:
    """Yield the result of ``sql`` in DataFrames of at most ``chunksize`` rows.

    The result is streamed with a server-side cursor where the dialect has one
    (PostgreSQL, MySQL/MariaDB): only about one chunk is held in memory,
    whatever the size of the result. Each chunk is built by
    :func:`~pagent_provider.core.frames.frame_from_rows`, as the DB-API path
    builds it: ``Decimal`` values (NUMERIC columns) are kept exact, and an
    empty result gives one empty chunk with the column names.

    Args:
        engine: the source database.
        sql: the query, read as SQLAlchemy ``text()``: placeholders use the
            ``:name`` style on every database, ``%`` needs no escaping (``LIKE
            'a%'`` works on every driver), and a literal colon before a word
            inside a string must be escaped as ``\\:``.
        parameters: values for the ``:name`` placeholders.
        chunksize: rows per DataFrame.
    """
    if chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, got {chunksize}")
    with engine.connect() as connection:
        streaming = connection.execution_options(stream_results=True, max_row_buffer=chunksize)
        result = streaming.execute(sa.text(sql), dict(parameters or {}))
        columns = list(result.keys())
        # What pandas.read_sql(chunksize=...) does, with the shared frame builder.
        rows = result.fetchmany(chunksize)
        if not rows:
            yield frame_from_rows([], columns)
        while rows:
            yield frame_from_rows(rows, columns)
            rows = result.fetchmany(chunksize)
