"""``pagent-conversions ledger``: ``ddl`` prints the ledger's DDL (and GRANTs); ``prune`` deletes old sent keys."""

from __future__ import annotations

import argparse
import contextlib

import sqlalchemy as sa

from pagent_provider.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from pagent_provider.cli.parser import MIN_PRUNE_DAYS
from pagent_provider.core.ledger_ddl import grants, ledger_ddl
from pagent_provider.exceptions import PagentError

_DAY_MS = 86_400_000


def run_ledger(args: argparse.Namespace) -> int:
    """Run ``ledger ddl`` or ``ledger prune``; return the exit status."""
    if args.ledger_command == "prune":
        return run_prune(args)
    statements = ledger_ddl(args.dialect, args.ledger_table)
    if args.grant_to and args.dialect != "sqlite":
        statements += grants(args.dialect, args.ledger_table, args.grant_to)
    print("\n\n".join(statements))
    return EXIT_OK


def run_prune(args: argparse.Namespace) -> int:
    """Delete (or with ``--dry-run`` count) the sent keys older than ``--older-than`` days.

    Raises:
        UsageError: a horizon under :data:`MIN_PRUNE_DAYS` days without ``--force``.
    """
    if args.older_than < MIN_PRUNE_DAYS and not args.force:
        raise UsageError(
            f"--older-than {args.older_than:g} is under {MIN_PRUNE_DAYS} days: a key pruned and then selected "
            "again by a lookback or a backfill is sent again. Use a horizon longer than any lookback or "
            "backfill, or add --force"
        )
    # Imported here: the ledger needs SQLAlchemy's engine, which --help need not wait for.
    from pagent_provider.cli.sources import airflow_hook, create_engine
    from pagent_provider.core.ledger import Ledger, now_ms

    with contextlib.ExitStack() as cleanup:
        if args.ledger_url:
            engine = create_engine(args.ledger_url, option="--ledger-url", must_exist=True)
        else:
            engine = airflow_hook(args.ledger_conn_id, "--ledger-conn-id").get_sqlalchemy_engine()
        cleanup.callback(engine.dispose)
        ledger = Ledger(engine, namespace=args.ledger_namespace, table_name=args.ledger_table)
        before_ms = now_ms() - round(args.older_than * _DAY_MS)
        where = f"namespace {args.ledger_namespace!r} of {args.ledger_table}"
        try:
            if not ledger.tables_exist():
                print(f"ledger prune: {args.ledger_table} does not exist: nothing to prune")
                return EXIT_OK
            if args.dry_run:
                count = ledger.prunable_sent(before_ms)
                print(f"ledger prune: {count} sent keys older than {args.older_than:g} days in {where} (dry run)")
                return EXIT_OK
            count = ledger.prune_sent(before_ms, batch=args.batch)
        except sa.exc.SQLAlchemyError as error:
            print(f"ledger prune: the database failed: {type(error).__name__}: {getattr(error, 'orig', error)}")
            return EXIT_FAILED
        except PagentError as error:  # the ledger's retries ran out, or it refuses this database
            print(f"ledger prune: {error}")
            return EXIT_FAILED
    print(f"ledger prune: deleted {count} sent keys older than {args.older_than:g} days from {where}")
    return EXIT_OK
