"""The argparse parser of ``pagent-conversions``: subcommands, options, help texts and examples.

Only the standard library and the emulator's own parser are imported here, so
that ``--help`` answers at once, without loading pandas or SQLAlchemy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from pagent_provider import __version__
from pagent_provider.core import defaults
from pagent_provider.core.client import DEFAULT_BASE_URL
from pagent_provider.testing.__main__ import DESCRIPTION as EMULATOR_DESCRIPTION
from pagent_provider.testing.__main__ import add_arguments as add_emulator_arguments

PROG = "pagent-conversions"
EMULATOR_PROG = f"{PROG} emulator"
API_KEY_ENV = "PAGENT_API_KEY"
BASE_URL_ENV = "PAGENT_BASE_URL"
# The operator's default ledger namespace is its pagent connection id, "pagent_default":
# sharing it lets the CLI and Airflow DAGs see each other's deliveries in one ledger.
DEFAULT_LEDGER_NAMESPACE = defaults.PAGENT_CONN_ID

_EXIT_STATUS = """\
exit status:
  0  success
  1  the sync failed: rows invalid or refused beyond --max-invalid-rows, answers lost
     (unknown outcome) under --unknown-outcome resend, pagent or the database unavailable
  2  usage or configuration error: bad flags, PAGENT_API_KEY missing, a missing column
  3  pagent refused the API key (401)"""

_ENVIRONMENT = f"""\
environment:
  {API_KEY_ENV}   the API key (pagent: Settings > API Keys); required unless --dry-run.
                   Never a flag, so that it stays out of shell history and process lists.
  {BASE_URL_ENV}  default of --base-url"""

_MAIN_EPILOG = f"""\
examples:
  export {API_KEY_ENV}=...          # never pass the key as a flag
  {PROG} check
  {PROG} sync --source-url sqlite:///shop.db --sql orders.sql --key-column order_id
  {PROG} emulator --port 8765      # a local stand-in for pagent's ingest API

Run '{PROG} COMMAND --help' for the options of a command.

{_ENVIRONMENT}"""

_SYNC_EPILOG = f"""\
examples:
  # every order since a date; columns named like the event fields need no mapping
  {PROG} sync --source-url postgresql+psycopg://etl@warehouse/shop \\
      --sql "SELECT order_id, session_id, user_id, conversion_id,
                    amount_usd AS revenue, converted_at AS time
             FROM orders WHERE converted_at >= :since" \\
      --param since=2025-01-01 --key-column order_id

  # a .sql file; columns mapped instead of aliased; extra columns as properties
  {PROG} sync --source-url sqlite:///shop.db --sql orders.sql \\
      --columns time=converted_at revenue=amount_usd \\
      --properties-columns channel,coupon --key-column order_id --label purchase

  # read, transform and validate everything; send nothing, write nothing
  {PROG} sync --source-url sqlite:///shop.db --sql orders.sql --key-column order_id --dry-run

  # against the local emulator (it accepts the key "test-key"), summary as JSON
  {PROG} emulator --port 8765 &
  {API_KEY_ENV}=test-key {PROG} sync --base-url http://127.0.0.1:8765 \\
      --source-url sqlite:///shop.db --sql orders.sql --key-column order_id --json

The ledger table (default: in the source database) remembers every conversion
sent, so re-runs, overlapping intervals and parallel runs send each one once.
Query parameters are passed as text; the database converts them (use CAST in
the SQL where it does not).

{_ENVIRONMENT}

{_EXIT_STATUS}"""

_CHECK_EPILOG = f"""\
examples:
  {API_KEY_ENV}=... {PROG} check
  {API_KEY_ENV}=test-key {PROG} check --base-url http://127.0.0.1:8765

Sends an empty batch, which pagent refuses with 400 when the key is valid and
with 401 when it is not: no conversion is recorded.

{_ENVIRONMENT}

exit status:
  0  the key is valid
  1  pagent could not be reached (or answered something unexpected)
  2  usage error, e.g. {API_KEY_ENV} missing
  3  pagent refused the API key"""

_EMULATOR_EPILOG = f"""\
examples:
  {PROG} emulator --port 8765
  {PROG} emulator --port 0 --key my-key --fail-every 5 --latency-ms 50
  {PROG} emulator --partial-ack 1 --echo-credentials   # a server not to trust
  {PROG} emulator --ack-body '<html>Bad gateway</html>'
  {PROG} emulator --redirect-to http://127.0.0.1:9000/login --redirect-status 307

It prints 'pagent emulator listening on http://HOST:PORT' and serves until
Ctrl-C or SIGTERM; then it prints what it accepted (and with --dump FILE
writes it as JSON). It accepts the key "test-key" unless --key is given.
While it runs, GET /_emulator/events, /_emulator/requests and
/_emulator/summary answer JSON (the emulator's own paths, not pagent's API).
The default port, 8765, stays clear of Airflow's api-server (8080)."""


class _ApiKeyFlagRefused(argparse.Action):
    """Refuses ``--api-key`` with an explanation, without echoing the value into logs."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        parser.error(
            f"the API key is never taken as a flag (it would land in shell history): "
            f"set the environment variable {API_KEY_ENV} instead"
        )


def key_value(text: str) -> tuple[str, str]:
    """Parse ``name=value`` (the value may contain ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def comma_list(text: str) -> list[str]:
    """Parse ``a,b,c`` into names, ignoring blanks around the commas."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pagent-conversions`` parser with its ``sync``, ``check`` and ``emulator`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upload server-side conversions from a SQL warehouse to pagent, each one once.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # "--key" must never be read as an abbreviation of "--key-column".
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_sync_command(commands)
    add_reconcile_command(commands)
    add_ledger_command(commands)
    add_check_command(commands)
    add_emulator_command(commands)
    return parser


def add_sync_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``sync``: the options mirror ConversionsOperator's parameters and defaults."""
    sync = commands.add_parser(
        "sync",
        help="upload the conversions a SQL query selects",
        description=(
            "Read the rows of a SQL query in chunks, turn them into pagent v1 conversion events\n"
            "(revenue in exact integer cents, time in Unix milliseconds), validate them and send\n"
            "them in batches, recording each in a ledger table so that it is sent once."
        ),
        epilog=_SYNC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_source_options(sync)
    add_mapping_options(sync)
    delivery = sync.add_argument_group("delivery")
    delivery.add_argument(
        "--max-invalid-rows",
        type=int,
        default=0,
        metavar="N",
        help="fail when more rows than this are invalid or refused by pagent (default %(default)s)",
    )
    delivery.add_argument(
        "--batch-size",
        type=int,
        default=defaults.BATCH_SIZE,
        metavar="N",
        help="events per request, 1 to 100 (default %(default)s)",
    )
    delivery.add_argument(
        "--max-workers",
        type=int,
        default=defaults.MAX_WORKERS,
        metavar="N",
        help="concurrent requests (default %(default)s)",
    )
    delivery.add_argument(
        "--api",
        choices=defaults.INGEST_APIS,
        default=defaults.API,
        help="the ingest API: v1 (POST /v1/conversions) or v2 (POST /v2/conversions/bulk, session "
        "variables and visit_id in session_data); the ledger serves both (default %(default)s)",
    )
    delivery.add_argument(
        "--dry-run",
        action="store_true",
        help="read, transform and validate everything; send nothing and write nothing to the ledger "
        f"({API_KEY_ENV} is not needed)",
    )

    ledger = add_ledger_location_options(sync)
    ledger.add_argument(
        "--no-ledger",
        dest="use_ledger",
        action="store_false",
        help="send without a ledger: re-runs send everything again",
    )
    ledger.add_argument(
        "--unknown-outcome",
        choices=("resend", "skip"),
        default=defaults.UNKNOWN_OUTCOME,
        help="what to do with events whose earlier answer was lost: resend them (at least once) "
        "or skip them (at most once) (default %(default)s)",
    )
    ledger.add_argument(
        "--claim-timeout",
        type=float,
        default=defaults.CLAIM_TIMEOUT_S,
        metavar="S",
        help="seconds without heartbeat after which another run's claim counts as abandoned (default %(default)s)",
    )

    add_pagent_options(sync, retries=True)
    output = sync.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    output.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log progress and the final summary line on stderr",
    )


def add_reconcile_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``reconcile``: the same source, mapping and ledger options as ``sync``; sends nothing."""
    reconcile = commands.add_parser(
        "reconcile",
        help="check that every row a SQL query selects reached pagent (sends nothing)",
        description=(
            "Read the rows of a SQL query exactly as sync does and look each one up in the ledger:\n"
            "sent, changed after send, unknown, in flight, refused, invalid, never sent, duplicate key.\n"
            "Exit status 0 when every row is sent, 1 when any is unaccounted for, 2 on a usage error."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_source_options(reconcile)
    add_mapping_options(reconcile)
    add_ledger_location_options(reconcile)
    output = reconcile.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as one JSON object")
    output.add_argument(
        "--examples", type=positive_int, default=10, metavar="N", help="rows shown per category (default %(default)s)"
    )
    output.add_argument("-v", "--verbose", action="store_true", help="log on stderr")


def add_ledger_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``ledger ddl`` (the statements that create the ledger's tables, for a DBA) and ``ledger prune``."""
    ledger = commands.add_parser(
        "ledger", help="the ledger's tables: print their DDL, prune old sent keys", allow_abbrev=False
    )
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    ddl = actions.add_parser(
        "ddl",
        help="print CREATE TABLE statements of the ledger, its rejects and its run history",
        description=(
            "Print the statements that create the ledger's three tables, for a database user\n"
            "without DDL rights: a DBA runs them once; the user then needs SELECT, INSERT, UPDATE\n"
            "and DELETE on them (--grant-to prints those GRANTs too)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    ddl.add_argument("--dialect", required=True, choices=("postgresql", "mysql", "mariadb", "sqlite"))
    ddl.add_argument("--ledger-table", default=defaults.LEDGER_TABLE, metavar="TABLE", help="(default %(default)s)")
    ddl.add_argument("--grant-to", metavar="USER", help="also print the GRANT statements for this database user")
    add_prune_command(actions)


#: The shortest ``ledger prune --older-than`` taken without ``--force``, in days.
MIN_PRUNE_DAYS = 7

_PRUNE_EPILOG = f"""\
examples:
  {PROG} ledger prune --older-than 400 --ledger-url postgresql+psycopg://etl@db/shop --dry-run
  {PROG} ledger prune --older-than 400 --ledger-url postgresql+psycopg://etl@db/shop

The trade-off: a key pruned here and selected again later, by a lookback, a
backfill or a re-run of an old interval, is SENT AGAIN (pagent counts it
twice). Choose a horizon longer than any window a DAG may select again: the
lookback, and the oldest day you would ever backfill. Horizons under
{MIN_PRUNE_DAYS} days are refused without --force.

exit status:
  0  pruned (or counted, with --dry-run)
  1  the database failed
  2  usage error"""


def non_negative_days(text: str) -> float:
    """A number of days, 0 or more (fractions allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of days >= 0, got {text!r}")
    return value


def add_prune_command(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``ledger prune``: delete ``sent`` keys older than a horizon, in batches."""
    prune = actions.add_parser(
        "prune",
        help="delete sent keys older than a horizon (never claimed or unknown ones)",
        description=(
            "Delete the ledger's 'sent' keys of one namespace whose sent_at is older than\n"
            "--older-than days, in batches of short transactions; 'claimed' and 'unknown' keys\n"
            "always stay. Prints how many keys were deleted (or would be, with --dry-run)."
        ),
        epilog=_PRUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    prune.add_argument(
        "--older-than", type=non_negative_days, required=True, metavar="DAYS", help="the horizon, in days"
    )
    where = prune.add_mutually_exclusive_group(required=True)
    where.add_argument("--ledger-url", metavar="URL", help="SQLAlchemy URL of the ledger's database")
    where.add_argument(
        "--ledger-conn-id", metavar="ID", help="an Airflow connection id of the ledger's database instead"
    )
    prune.add_argument("--ledger-table", default=defaults.LEDGER_TABLE, metavar="TABLE", help="(default %(default)s)")
    prune.add_argument(
        "--ledger-namespace", default=DEFAULT_LEDGER_NAMESPACE, metavar="NS", help="(default %(default)s)"
    )
    prune.add_argument(
        "--batch", type=positive_int, default=1000, metavar="N", help="keys per transaction (default %(default)s)"
    )
    prune.add_argument("--dry-run", action="store_true", help="count the keys that would be deleted; delete nothing")
    prune.add_argument("--force", action="store_true", help=f"accept a horizon shorter than {MIN_PRUNE_DAYS} days")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Where the rows come from: the warehouse, the query, its parameters."""
    source = parser.add_argument_group("source")
    where = source.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--source-url",
        metavar="URL",
        help="SQLAlchemy URL of the warehouse, e.g. postgresql+psycopg://user@host/db or sqlite:///shop.db",
    )
    where.add_argument(
        "--conn-id",
        metavar="ID",
        help="an Airflow connection id instead (where Airflow is installed): the very connection a DAG uses",
    )
    source.add_argument(
        "--sql",
        required=True,
        metavar="QUERY_OR_FILE",
        help="the query, or the path of a file holding it (e.g. orders.sql); '-' reads it from stdin",
    )
    source.add_argument(
        "--param",
        dest="params",
        type=key_value,
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="values for :NAME placeholders in the query; repeatable",
    )
    source.add_argument(
        "--chunksize",
        type=positive_int,
        default=defaults.CHUNKSIZE,
        metavar="N",
        help="rows read per chunk (default %(default)s)",
    )


def add_mapping_options(parser: argparse.ArgumentParser) -> None:
    """How rows become events: the operator's transform parameters."""
    mapping = parser.add_argument_group("event mapping")
    mapping.add_argument(
        "--columns",
        dest="columns",
        type=key_value,
        action="extend",
        nargs="+",
        default=[],
        metavar="FIELD=COLUMN",
        help="read event fields (session_id, user_id, conversion_id, label, revenue, properties, time, "
        "and visit_id for --api v2) "
        "from differently named columns, e.g. time=converted_at revenue=amount_usd; repeatable",
    )
    mapping.add_argument(
        "--properties-columns",
        type=comma_list,
        action="extend",
        default=None,
        metavar="A,B",
        help="columns gathered into the event's properties object",
    )
    mapping.add_argument(
        "--key-column",
        metavar="COLUMN",
        help="a stable unique row key, such as an order id. Strongly advised: without it the key is "
        "a hash of the event, so a corrected row is sent again as a new conversion",
    )
    mapping.add_argument(
        "--revenue-unit",
        choices=("dollars", "cents"),
        default=defaults.REVENUE_UNIT,
        help="what the revenue column holds; dollars are converted to cents (default %(default)s)",
    )
    mapping.add_argument(
        "--timezone",
        default=defaults.TIMEZONE,
        metavar="TZ",
        help="IANA zone in which naive timestamps are read (default %(default)s)",
    )
    mapping.add_argument("--label", metavar="L", help="a constant label for every event (replaces the column)")
    mapping.add_argument(
        "--conversion-id",
        metavar="G",
        help="a constant goal UUID for every event (replaces the column)",
    )
    mapping.add_argument(
        "--no-require-time",
        dest="require_time",
        action="store_false",
        help="accept rows without a conversion time (pagent then stamps them with the upload time)",
    )
    mapping.add_argument(
        "--session-data-column",
        metavar="COLUMN",
        help="a column holding the whole _pgnt.variables() object (JSON), read for session_id, user_id, "
        "conversion_id and visit_id; --columns and --conversion-id override it",
    )


def add_ledger_location_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where the ledger is: its database, table and namespace."""
    ledger = parser.add_argument_group("ledger")
    ledger.add_argument(
        "--ledger-url",
        metavar="URL",
        help="SQLAlchemy URL of the ledger's database (default: --source-url)",
    )
    ledger.add_argument(
        "--ledger-conn-id",
        metavar="ID",
        help="an Airflow connection id of the ledger's database instead of --ledger-url (where Airflow is installed)",
    )
    ledger.add_argument(
        "--ledger-table",
        default=defaults.LEDGER_TABLE,
        metavar="TABLE",
        help="the ledger table, schema.table allowed; rejected rows go to TABLE_rejects (default %(default)s)",
    )
    ledger.add_argument(
        "--ledger-namespace",
        default=DEFAULT_LEDGER_NAMESPACE,
        metavar="NS",
        help="scope of the ledger's keys; share it with the DAGs that upload to the same pagent account "
        "(default %(default)s, as the Airflow operator's)",
    )
    return ledger


def add_pagent_options(parser: argparse.ArgumentParser, *, retries: bool) -> None:
    """Where pagent is, how long to wait for it, and the trap for a key given as a flag."""
    pagent = parser.add_argument_group("pagent")
    pagent.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the ingest API (default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    pagent.add_argument(
        "--timeout",
        type=float,
        default=defaults.READ_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for an answer (default %(default)s)",
    )
    if retries:
        pagent.add_argument(
            "--max-retries",
            type=int,
            default=defaults.MAX_RETRIES,
            metavar="N",
            help="retries of a request that failed with 429, 5xx or no connection (default %(default)s)",
        )
    # Caught here so that argparse's "unrecognized arguments" error does not echo the key into logs.
    pagent.add_argument("--api-key", "--key", nargs="?", action=_ApiKeyFlagRefused, help=argparse.SUPPRESS)


def add_check_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``check``: test the API key and the base URL without recording a conversion."""
    check = commands.add_parser(
        "check",
        help=f"test ${API_KEY_ENV} and the base URL",
        description="Test the API key and the base URL without recording a conversion.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_pagent_options(check, retries=False)


def add_emulator_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``emulator``: the flags are the emulator's own (``python -m pagent_provider.testing``), one definition."""
    emulator = commands.add_parser(
        "emulator",
        help="serve a local emulator of pagent's ingest API",
        description=EMULATOR_DESCRIPTION,
        epilog=_EMULATOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_emulator_arguments(emulator)


def emulator_argv(argv: Sequence[str]) -> list[str]:
    """The arguments after the ``emulator`` subcommand, to hand to the emulator's own ``main``.

    The top-level parser has no option that takes a value, so the first
    ``emulator`` word is the subcommand.
    """
    argv = list(argv)
    return argv[argv.index("emulator") + 1 :]
