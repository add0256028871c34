"""Streaming a SQL result as pandas DataFrame chunks with bounded memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pagent_provider.core import defaults


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
    whatever the size of the result. ``Decimal`` values (NUMERIC columns) are
    kept exact (``coerce_float=False``).

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
        yield from pd.read_sql(
            sa.text(sql),
            streaming,
            params=dict(parameters or {}),
            chunksize=chunksize,
            coerce_float=False,
        )
