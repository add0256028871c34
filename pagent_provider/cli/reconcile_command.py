"""``pagent-conversions reconcile``: did every row of a query reach pagent? Nothing is sent.

It reads the query's rows exactly as ``sync`` would (same source, mapping
and keys), looks each key up in the ledger and prints how many rows are
sent, never sent, invalid, refused, unknown, still in flight or changed after
being sent. It exits 0 when every row is sent, 1 when any is unaccounted for.
"""

from __future__ import annotations

import argparse
import contextlib

import pandas as pd
import sqlalchemy as sa

from pagent_provider.cli.errors import EXIT_FAILED, EXIT_OK
from pagent_provider.cli.output import render_json
from pagent_provider.cli.sources import ledger_engine, open_source
from pagent_provider.cli.sync_command import database_error_text, read_query_arguments
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.reconcile import reconcile


def run_reconcile(args: argparse.Namespace) -> int:
    """Run ``reconcile``; return 0 when every row is sent, 1 otherwise.

    Raises:
        UsageError, PagentConfigError: a mistake in the arguments or the query's columns.
    """
    sql, parameters, transform = read_query_arguments(args)
    with contextlib.ExitStack() as cleanup:
        source = open_source(args, cleanup)
        engine = ledger_engine(args, cleanup)
        ledger = Ledger(engine, namespace=args.ledger_namespace, table_name=args.ledger_table)
        chunks = source.read_chunks(sql, parameters or None, chunksize=args.chunksize)
        try:
            report = reconcile(chunks, transform, ledger, examples=args.examples)
        except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as error:
            print(f"reconcile: the database failed: {database_error_text(error)}")
            return EXIT_FAILED
    print(render_json(report.as_dict()) if args.json else report.describe(), flush=True)
    return EXIT_OK if report.ok else EXIT_FAILED
