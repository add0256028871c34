"""Where the command-line tool reads rows and keeps its ledger.

Either a SQLAlchemy URL (``--source-url``, ``--ledger-url``), which needs no
Airflow, or, where Airflow is installed, an Airflow connection id
(``--conn-id``, ``--ledger-conn-id``): the very connection a DAG uses, read
through the same path the operator chooses for it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa

from pagent_provider.cli.errors import UsageError
from pagent_provider.core.reading import read_sql_chunks


class RowSource(Protocol):
    """What the commands read rows from."""

    @property
    def mode(self) -> str:
        """How the rows are read: ``"sqlalchemy"`` or ``"dbapi"``."""
        ...

    def read_chunks(self, sql: str, parameters: Mapping[str, Any] | None, *, chunksize: int) -> Iterator[pd.DataFrame]:
        """The query's rows in DataFrame chunks."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class UrlSource:
    """Rows read through a SQLAlchemy engine on a URL."""

    mode = "sqlalchemy"

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def read_chunks(self, sql: str, parameters: Mapping[str, Any] | None, *, chunksize: int) -> Iterator[pd.DataFrame]:
        return read_sql_chunks(self.engine, sql, parameters, chunksize=chunksize)

    def close(self) -> None:
        self.engine.dispose()


def create_engine(url: str, *, option: str, must_exist: bool) -> sa.Engine:
    """A SQLAlchemy engine for ``url`` (not yet connected).

    Messages never quote the URL, which may hold a password.

    Raises:
        UsageError: not a URL, an unknown dialect, a driver that is not
            installed, or (``must_exist``) a SQLite file that is not there:
            SQLite would silently create an empty database instead.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(f"{option} is not a SQLAlchemy URL (dialect+driver://user:password@host/database)") from None
    if must_exist and parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:") and not Path(database).exists():
            raise UsageError(f"{option}: no SQLite database at {database}")
    try:
        return sa.create_engine(parsed)
    except sa.exc.NoSuchModuleError as error:
        raise UsageError(f"{option}: unknown database dialect ({error})") from None
    except ImportError as error:
        raise UsageError(f"{option}: the database driver is not installed ({error})") from None


def _keep_stdout_for_results() -> None:
    # Importing Airflow points the root logger at stdout; stdout is where the
    # summary (and --json) goes, so its log lines go back to stderr.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def airflow_hook(conn_id: str, option: str) -> Any:
    """The Airflow hook of connection ``conn_id``.

    Raises:
        UsageError: Airflow is not installed, or there is no such connection.
    """
    try:
        from airflow.providers.common.compat.sdk import BaseHook
    except ImportError:
        raise UsageError(f"{option} needs Airflow installed; give a SQLAlchemy URL instead") from None
    _keep_stdout_for_results()
    try:
        return BaseHook.get_connection(conn_id).get_hook()
    except Exception as error:  # noqa: BLE001 - Airflow's errors differ between versions
        raise UsageError(f"{option} {conn_id}: {type(error).__name__}: {error}") from None


def open_source(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> RowSource:
    """The rows of ``--source-url`` or ``--conn-id``, closed with ``cleanup``."""
    if args.conn_id:
        from pagent_provider.hooks.sql_source import open_sql_source

        source: RowSource = open_sql_source(airflow_hook(args.conn_id, "--conn-id"), "auto")
    else:
        source = UrlSource(create_engine(args.source_url, option="--source-url", must_exist=True))
    cleanup.callback(source.close)
    return source


def ledger_engine(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> sa.Engine:
    """The ledger's engine: ``--ledger-url``, ``--ledger-conn-id``, or else the source's database."""
    if args.ledger_url:
        engine = create_engine(args.ledger_url, option="--ledger-url", must_exist=False)
    elif args.ledger_conn_id or args.conn_id:
        option = "--ledger-conn-id" if args.ledger_conn_id else "--conn-id"
        hook = airflow_hook(args.ledger_conn_id or args.conn_id, option)
        try:
            engine = hook.get_sqlalchemy_engine()
        except Exception as error:  # noqa: BLE001 - hooks without SQLAlchemy support fail in many ways
            raise UsageError(
                f"{option}: this connection gives no SQLAlchemy engine for the ledger ({type(error).__name__}); "
                "keep the ledger in PostgreSQL, MySQL or SQLite with --ledger-url or --ledger-conn-id"
            ) from None
    else:
        engine = create_engine(args.source_url, option="--source-url", must_exist=True)
    cleanup.callback(engine.dispose)
    return engine
