"""``pagent-conversions``: upload conversions from a SQL warehouse to pagent without Airflow.

A thin shell on the same Airflow-free core the ``ConversionsOperator`` uses::

    export PAGENT_API_KEY=...
    pagent-conversions check
    pagent-conversions sync --source-url sqlite:///shop.db --sql orders.sql --key-column order_id
    pagent-conversions reconcile --source-url sqlite:///shop.db --sql orders.sql --key-column order_id
    pagent-conversions emulator --port 8765

The API key is read from the environment variable ``PAGENT_API_KEY`` only.
Exit statuses: 0 success, 1 the sync (or check) failed, 2 usage or
configuration error, 3 the API key was refused. See ``--help`` of each command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pagent_provider.cli.errors import EXIT_USAGE, UsageError, with_flag_names
from pagent_provider.cli.parser import PROG, build_parser, emulator_argv
from pagent_provider.cli.terminal import StatusLine, configure_logging
from pagent_provider.exceptions import PagentConfigError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pagent-conversions`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    It configures the root logger (stderr), so it belongs at a process's entry point.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # exits 2 on a bad flag, 0 after --help
    if args.command == "emulator":
        from pagent_provider.cli.emulator_command import run_emulator

        return run_emulator(emulator_argv(argv))

    line = StatusLine(sys.stderr)
    configure_logging(line, verbose=getattr(args, "verbose", False))
    try:
        if args.command == "check":
            from pagent_provider.cli.check_command import run_check

            return run_check(args)
        if args.command == "ledger":
            from pagent_provider.cli.ledger_command import run_ledger

            return run_ledger(args)
        if args.command == "reconcile":
            from pagent_provider.cli.reconcile_command import run_reconcile

            return run_reconcile(args)
        # Imported here, not at the top: pandas and SQLAlchemy take about a second
        # to load, which `check` and `--help` need not wait for.
        from pagent_provider.cli.sync_command import run_sync

        return run_sync(args, line)
    except (UsageError, PagentConfigError) as error:
        print(f"{PROG} {args.command}: error: {with_flag_names(str(error))}", file=sys.stderr)
        return EXIT_USAGE
