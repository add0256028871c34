"""``pagent-conversions sync``: a SQL query's rows to pagent, through the same core as the Airflow operator.

Each step is a small function: read the SQL, build the
:class:`~pagent_provider.core.transform.TransformConfig`,
:class:`~pagent_provider.core.sync.SyncOptions` and
:class:`~pagent_provider.core.ledger.Ledger` from the arguments, run
:class:`~pagent_provider.core.sync.ConversionSync` over
:func:`~pagent_provider.core.reading.read_sql_chunks`, and print the summary.
Nothing here imports Airflow.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from pagent_provider.cli.connection import build_retry_policy, read_api_key, resolve_base_url, with_key_hint
from pagent_provider.cli.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError, exit_code_for, with_flag_names
from pagent_provider.cli.output import render_json, render_table, summary_document
from pagent_provider.cli.parser import PROG
from pagent_provider.cli.sources import ledger_engine, open_source
from pagent_provider.cli.terminal import ProgressLine, StatusLine, sync_progress_text
from pagent_provider.core.apis import EncodedSender
from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.metrics import metrics_of
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.placeholders import check_placeholder_style
from pagent_provider.core.run_history import RunHistory, RunRow, RunStart, outcome_of
from pagent_provider.core.silent_success import RECENT_RUNS, same_task, zero_rows_warning
from pagent_provider.core.stopping import stop_gracefully_on
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.exceptions import PagentAuthError, PagentConfigError, PagentError, PagentInterruptedError

log = logging.getLogger(__name__)

# A value that is meant as a file (one word ending in .sql) but names none: a
# typo, which must not be sent to the database as if it were a query.
_SQL_FILE_NAME = re.compile(r"\S+\.sql", re.IGNORECASE)


# --------------------------------------------------------------------------- the command


def run_sync(args: argparse.Namespace, line: StatusLine) -> int:
    """Run ``sync``; return the exit status (see the ``sync --help`` epilog).

    Raises:
        UsageError, PagentConfigError: a mistake in the arguments or the query's columns.
    """
    sql, parameters, transform = read_query_arguments(args)
    options = build_sync_options(args)
    base_url = resolve_base_url(args)  # validated even in a dry run: a typo should show early
    policy = build_retry_policy(args)
    api_key = None if args.dry_run else read_api_key()

    with contextlib.ExitStack() as cleanup:
        source = open_source(args, cleanup)
        ledger = build_ledger(args, cleanup)
        if api_key is None:
            sender: EncodedSender = DryRunSender()
        else:
            sender = cleanup.enter_context(
                PagentClient(api_key, base_url=base_url, policy=policy, pool_size=args.max_workers)
            )
        sync = ConversionSync(sender, transform, options, ledger=ledger)
        chunks = RowCountingChunks(source.read_chunks(sql, parameters or None, chunksize=args.chunksize))
        # Registered last, so it runs first: a sync that stopped early leaves the
        # query's connection checked out, and dispose() only closes idle ones.
        cleanup.callback(chunks.close)
        previous = previous_runs(ledger, dry_run=args.dry_run)
        history = start_history(ledger, parameters, dry_run=args.dry_run)
        try:
            # SIGTERM (cron, systemd, Kubernetes, docker stop) stops exactly as Ctrl-C does
            with stop_gracefully_on(sync.request_stop):
                error = execute_sync(sync, chunks, line)
            warning = zero_rows_warning(sync.summary.rows, previous) if error is None else None
            if warning is not None:
                sync.warn(warning)
        except KeyboardInterrupt as interrupted:  # a second signal while stopping
            finish_history(history, ledger, sync, interrupted)
            print_summary(summary_document(sync.summary.as_dict(), "interrupted"), args.json)
            print(f"{PROG} sync: interrupted; run it again to continue where it stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        finish_history(history, ledger, sync, error)

    message = describe_failure(error) if error is not None else None
    # The sync's own counts: run() attaches the same to its errors (error.summary),
    # but a database error carries none.
    document = summary_document(sync.summary.as_dict(), message)
    document["metrics"] = metrics_of(sync.summary.as_dict(), outcome_of(error))["counters"]
    print_summary(document, args.json)
    if error is None:
        return EXIT_OK
    if isinstance(error, PagentInterruptedError):
        print(f"{PROG} sync: interrupted: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{PROG} sync: failed: {message}", file=sys.stderr)
    return exit_code_for(error)


def previous_runs(ledger: Ledger | None, *, dry_run: bool) -> list[RunRow]:
    """The earlier command-line runs of the ledger's namespace, latest first (what 0 rows is compared with)."""
    if ledger is None or dry_run:
        return []
    recent = RunHistory.for_ledger(ledger).recent(ledger.namespace, limit=4 * RECENT_RUNS)
    return same_task(recent, {"dag_id": None, "task_id": None})


def start_history(ledger: Ledger | None, parameters: Mapping[str, str], *, dry_run: bool) -> RunHistory | None:
    """The run's row in ``<ledger_table>_runs`` (none without a ledger, none in a dry run)."""
    if ledger is None or dry_run:
        return None
    history = RunHistory.for_ledger(ledger)
    history.start(RunStart.of(ledger.owner, ledger.namespace, params=dict(parameters)))
    return history


def finish_history(
    history: RunHistory | None, ledger: Ledger | None, sync: ConversionSync, error: BaseException | None
) -> None:
    """Complete the run's row with its counts and outcome."""
    if history is not None and ledger is not None:
        history.finish(ledger.owner.run_token, sync.summary.as_dict(), outcome_of(error), error)


def execute_sync(sync: ConversionSync, chunks: RowCountingChunks, line: StatusLine) -> BaseException | None:
    """Run the sync (with a progress line on a terminal); return the error that failed it, if any.

    The error is a :class:`PagentError` from the sync, or the database's error
    (pandas wraps it in its ``DatabaseError``) from reading the query.

    Raises:
        PagentConfigError: a configuration problem found once reading began (a missing column).
    """
    progress = (
        ProgressLine(line, lambda elapsed: progress_text(sync, chunks, elapsed))
        if line.stream.isatty()
        else contextlib.nullcontext()
    )
    try:
        with progress:
            sync.run(chunks)
    except PagentConfigError:
        raise
    except (PagentError, sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as error:
        # the sync settled the batches in flight before letting the error out
        return error
    return None


def progress_text(sync: ConversionSync, chunks: RowCountingChunks, elapsed_s: float) -> str:
    """The live counts of a running sync (read without a lock: a stale count for 0.2 s is harmless)."""
    s = sync.summary
    return sync_progress_text(chunks.rows, s.sent, s.already_sent, s.invalid, elapsed_s)


def describe_failure(error: BaseException) -> str:
    """The error's message for stderr and the JSON ``error``."""
    message = str(error)
    if isinstance(error, PagentAuthError):
        message = with_key_hint(message)
    elif isinstance(error, sa.exc.SQLAlchemyError | pd.errors.DatabaseError):
        message = f"the database failed: {database_error_text(error)}"
    return with_flag_names(message)


def database_error_text(error: BaseException) -> str:
    """The driver's own words (``OperationalError: no such table: orders``), without SQLAlchemy's SQL echo."""
    cause = error.__cause__ if isinstance(error, pd.errors.DatabaseError) else error
    original = getattr(cause, "orig", None)
    if original is not None:
        return f"{type(original).__name__}: {original}"
    return str(cause or error)


def print_summary(document: Mapping[str, Any], as_json: bool) -> None:
    """The summary on stdout, as JSON or as a table."""
    print(render_json(document) if as_json else render_table(document), flush=True)


# --------------------------------------------------------------------------- the query


def read_query_arguments(args: argparse.Namespace) -> tuple[str, dict[str, str], TransformConfig]:
    """The query, its parameters (checked against its placeholders) and the event mapping, as sync and reconcile take them.

    Raises:
        UsageError, PagentConfigError: see :func:`load_sql`, :func:`check_placeholders`
            and :func:`build_transform_config`.
    """
    sql = load_sql(args.sql)
    parameters = build_parameters(args.params)
    check_placeholder_style(sql)  # before check_placeholders, whose "no :name placeholder" would mislead
    check_placeholders(sql, parameters)
    return sql, parameters, build_transform_config(args)


def load_sql(value: str) -> str:
    """The query: ``value`` itself, the text of the file it names, or stdin for ``-``.

    Raises:
        UsageError: the value looks like a ``.sql`` file that does not exist, or the SQL is empty.
    """
    if value == "-":
        sql = sys.stdin.read()
    elif names_file(value):
        sql = Path(value).read_text(encoding="utf-8")
    elif _SQL_FILE_NAME.fullmatch(value.strip()):
        raise UsageError(f"--sql: no such file: {value}")
    else:
        sql = value
    if not sql.strip():
        raise UsageError("--sql: the query is empty")
    if "{{" in sql:
        log.warning(
            "the SQL contains '{{': Jinja templates are rendered by Airflow, not by %s; "
            "use :name placeholders with --param name=value",
            PROG,
        )
    return sql


def names_file(value: str) -> bool:
    """True when ``value`` is the path of an existing file (a long query is not a path)."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # name too long, NUL byte: a query, not a path
        return False


def build_parameters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``--param`` pairs as a dict.

    Raises:
        UsageError: a name is given twice.
    """
    parameters: dict[str, str] = {}
    for name, value in pairs:
        if name in parameters:
            raise UsageError(f"--param {name} is given twice")
        parameters[name] = value
    return parameters


def check_placeholders(sql: str, parameters: Mapping[str, str]) -> None:
    """Compare the query's ``:name`` placeholders with the ``--param`` names before connecting.

    The query always goes through :func:`sqlalchemy.text`, whose placeholders
    must all get a value; an unused ``--param`` is most likely a misspelt one.

    Raises:
        UsageError: a placeholder without a value, or a value without a placeholder.
    """
    placeholders = set(sa.text(sql).compile().params)
    missing = sorted(placeholders - set(parameters))
    unused = sorted(set(parameters) - placeholders)
    if missing:
        raise UsageError(
            "the SQL uses "
            + ", ".join(f":{name}" for name in missing)
            + " without a value: add --param "
            + " ".join(f"{name}=VALUE" for name in missing)
        )
    if unused:
        raise UsageError(
            "--param "
            + ", ".join(unused)
            + " matches no :name placeholder in the SQL"
            + (f" (it has {', '.join(f':{n}' for n in sorted(placeholders))})" if placeholders else "")
        )


class RowCountingChunks:
    """Passes the query's chunks through, counting rows for the progress line."""

    def __init__(self, chunks: Iterator[pd.DataFrame]) -> None:
        self._chunks = chunks
        self.rows = 0

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for chunk in self._chunks:
            self.rows += len(chunk)
            yield chunk

    def close(self) -> None:
        """Stop the query early, returning its connection to the pool."""
        close = getattr(self._chunks, "close", None)
        if close is None:
            return
        try:
            close()
        except ValueError:
            # "generator already executing": a stopping sync left the reader thread
            # in a slow read; it closes the query itself when that read returns
            log.debug("the query is still being read; it is closed when that read returns")


# --------------------------------------------------------------------------- the core's settings


def build_transform_config(args: argparse.Namespace) -> TransformConfig:
    """How rows become events; the core validates field names, unit and zone.

    Raises:
        UsageError: an event field is mapped twice.
        PagentConfigError: from :class:`TransformConfig`.
    """
    columns: dict[str, str] = {}
    for event_field, column in args.columns:
        if event_field in columns:
            raise UsageError(f"--columns maps {event_field} twice")
        columns[event_field] = column
    return TransformConfig(
        columns=columns,
        properties_columns=args.properties_columns,
        key_column=args.key_column,
        revenue_unit=args.revenue_unit,
        timezone=args.timezone,
        label=args.label,
        conversion_id=args.conversion_id,
        require_time=args.require_time,
        session_data_column=args.session_data_column,
    )


def build_sync_options(args: argparse.Namespace) -> SyncOptions:
    """Batching, concurrency and the invalid-rows limit; the core validates the ranges."""
    return SyncOptions(
        batch_size=args.batch_size,
        max_workers=args.max_workers,
        max_invalid_rows=args.max_invalid_rows,
        dry_run=args.dry_run,
        api=args.api,
    )


def build_ledger(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> Ledger | None:
    """The delivery ledger in ``--ledger-url``/``--ledger-conn-id`` (default: the source database), or None with ``--no-ledger``.

    It gets its own engine, as the operator's does: the ledger writes while the
    query's connection is still streaming rows.
    """
    if not args.use_ledger:
        log.warning("--no-ledger: nothing remembers what was sent; a re-run sends every row again")
        return None
    return Ledger(
        ledger_engine(args, cleanup),
        namespace=args.ledger_namespace,
        owner=ClaimOwner(),
        table_name=args.ledger_table,
        claim_timeout_s=args.claim_timeout,
        unknown_outcome=args.unknown_outcome,
    )


class DryRunSender:
    """Stands in for the pagent client in a dry run, where the engine never sends (and no key is needed)."""

    def send_encoded_v1(self, body: bytes, count: int) -> dict[str, Any]:
        """Never called in a dry run; refuses loudly if it ever is."""
        raise RuntimeError("a dry run must not send anything")

    send_encoded_v2_bulk = send_encoded_v1
