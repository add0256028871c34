"""``pagent-conversions ledger ddl``: print the ledger's DDL (and GRANTs) for a database."""

from __future__ import annotations

import argparse

from pagent_provider.cli.errors import EXIT_OK
from pagent_provider.core.ledger_ddl import grants, ledger_ddl


def run_ledger(args: argparse.Namespace) -> int:
    """Print the statements; ``--grant-to`` adds the privileges the ledger's user needs."""
    statements = ledger_ddl(args.dialect, args.ledger_table)
    if args.grant_to and args.dialect != "sqlite":
        statements += grants(args.dialect, args.ledger_table, args.grant_to)
    print("\n\n".join(statements))
    return EXIT_OK
