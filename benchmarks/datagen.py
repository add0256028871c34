"""Benchmark data: the sample warehouse table, generated once per run with a fixed seed.

:func:`pagent_provider.testing.sample_warehouse.generate_conversions` makes the
rows; the loaders here write them much faster than ``load_conversions`` (one
``executemany`` on SQLite, ``COPY`` on PostgreSQL) but store exactly what it
stores: the same table definition, amounts as SQLAlchemy binds them on SQLite
(REAL), times as SQLAlchemy's SQLite ``DATETIME`` text.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pagent_provider.testing.sample_warehouse import conversions_table, generate_conversions

SEED = 7
PERIOD = (datetime(2026, 10, 1), datetime(2026, 10, 31))
TABLE = "conversions"
COLUMNS = (
    "order_id",
    "session_id",
    "user_id",
    "conversion_id",
    "label",
    "amount_usd",
    "converted_at",
    "channel",
    "coupon",
)
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def make_rows(rows: int, seed: int = SEED) -> pd.DataFrame:
    """``rows`` sample conversions, always the same for the same ``seed``."""
    return generate_conversions(rows, start=PERIOD[0], end=PERIOD[1], seed=seed)


def _create_table(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    table = conversions_table(metadata, TABLE)
    metadata.drop_all(engine, tables=[table], checkfirst=True)
    metadata.create_all(engine, tables=[table])


def _sqlite_times(times: pd.Series) -> np.ndarray:
    # SQLAlchemy's SQLite DATETIME storage format: "2026-10-01 00:00:07.000000".
    text = np.datetime_as_string(times.to_numpy(dtype="datetime64[us]"), unit="us")
    return np.char.replace(text.astype(str), "T", " ")


def load_sqlite(path: Path, frame: pd.DataFrame) -> sa.Engine:
    """Write ``frame`` to a new SQLite file at ``path``; return an engine on it."""
    engine = sa.create_engine(f"sqlite:///{path}")
    _create_table(engine)
    columns = [
        frame["order_id"].tolist(),
        frame["session_id"].tolist(),
        frame["user_id"].tolist(),
        frame["conversion_id"].tolist(),
        frame["label"].tolist(),
        [float(amount) for amount in frame["amount_usd"]],  # what SQLAlchemy binds for Numeric on SQLite
        _sqlite_times(frame["converted_at"]).tolist(),
        frame["channel"].tolist(),
        frame["coupon"].tolist(),
    ]
    placeholders = ", ".join("?" * len(COLUMNS))
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.executemany(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({placeholders})", zip(*columns, strict=True)
            )
    finally:
        connection.close()
    return engine


def load_postgres(engine: sa.Engine, frame: pd.DataFrame, slice_rows: int = 200_000) -> None:
    """Write ``frame`` to PostgreSQL with ``COPY`` (CSV text, ``slice_rows`` at a time)."""
    _create_table(engine)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)") as copy:
            for start in range(0, len(frame), slice_rows):
                part = frame.iloc[start : start + slice_rows]
                copy.write(part.to_csv(index=False, header=False, date_format="%Y-%m-%d %H:%M:%S"))
        cursor.execute(f"ANALYZE {TABLE}")
        raw.commit()
    finally:
        raw.close()


@dataclass
class Warehouses:
    """Where the benchmark rows live for this run."""

    sqlite: sa.Engine
    postgres: sa.Engine | None
    postgres_error: str | None
    workdir: Path


@contextmanager
def scratch_database(admin_url: str, *, drop_suffix: str = "") -> Iterator[sa.Engine]:
    """A new, empty database on the server of ``admin_url``, dropped on exit (``DROP DATABASE ... drop_suffix``)."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pagent_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine = sa.create_engine(sa.engine.make_url(admin_url).set(database=name))
        try:
            yield engine
        finally:
            engine.dispose()
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{drop_suffix}")
    finally:
        admin.dispose()


def postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> contextlib.AbstractContextManager[sa.Engine]:
    """A new, empty PostgreSQL database, dropped on exit (even with connections left open)."""
    return scratch_database(admin_url, drop_suffix=" WITH (FORCE)")


def postgres_reachable(admin_url: str = POSTGRES_ADMIN_URL) -> str | None:
    """``None`` when PostgreSQL answers, else the reason it does not."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means no PostgreSQL
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        admin.dispose()
    return None


def warm_sqlite(engine: sa.Engine) -> None:
    """Read the whole table once so that every measured read finds it in the page cache."""
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT count(*), sum(length(session_id)) FROM {TABLE}").fetchall()


def select_rows(rows: int | None, offset: int = 0) -> str:
    """The benchmark query: ``rows`` orders after the first ``offset`` (all with ``None``)."""
    if rows is None:
        return f"SELECT * FROM {TABLE}"
    return f"SELECT * FROM {TABLE} LIMIT {int(rows)}" + (f" OFFSET {int(offset)}" if offset else "")
