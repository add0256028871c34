"""The statements that create the ledger's tables, for a user without DDL rights to hand to a DBA.

A sync creates its tables on first use (``CREATE TABLE`` if missing). Where
the ledger's database user may not create tables, a DBA runs these statements
once; the user then needs ``SELECT``, ``INSERT``, ``UPDATE`` and ``DELETE`` on
the five tables, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

from pagent_provider.core import defaults
from pagent_provider.core.ledger import build_tables
from pagent_provider.core.ledger_dialects import ledger_dialect
from pagent_provider.core.run_history import build_runs_table, runs_table_name

#: The databases the ledger runs on, by the name the command line takes.
DDL_DIALECTS: dict[str, Callable[[], Dialect]] = {
    "postgresql": postgresql.dialect,
    "mysql": mysql.dialect,
    "mariadb": lambda: mysql.dialect(is_mariadb=True),
    "sqlite": sqlite.dialect,
}
#: What the ledger's user needs once the tables exist.
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def ledger_ddl(dialect_name: str, table_name: str = defaults.LEDGER_TABLE) -> list[str]:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements of the ledger, its rejects and its run history.

    Raises:
        PagentLedgerError: the ledger does not run on this database.
    """
    capabilities = ledger_dialect(dialect_name)
    dialect = DDL_DIALECTS[dialect_name]()
    tables = build_tables(table_name, capabilities.key_type)
    runs = build_runs_table(runs_table_name(table_name), capabilities.key_type)
    statements = []
    for table in (tables.events, tables.claims, tables.namespaces, tables.rejects, runs):
        statements.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip())
        statements += [str(sa.schema.CreateIndex(index).compile(dialect=dialect)) for index in table.indexes]
    return [f"{statement};" for statement in statements]


def grants(dialect_name: str, table_name: str, user: str) -> list[str]:
    """The ``GRANT`` statements the ledger's user needs on the five tables (PostgreSQL and MySQL)."""
    rights = ", ".join(PRIVILEGES)
    tables = (
        table_name,
        f"{table_name}_claims",
        f"{table_name}_namespaces",
        f"{table_name}_rejects",
        runs_table_name(table_name),
    )
    statements = [f"GRANT {rights} ON {table} TO {user};" for table in tables]
    if dialect_name == "postgresql":
        # the rejects table's id is a BIGSERIAL: inserting draws from its sequence
        statements.append(f"GRANT USAGE ON SEQUENCE {table_name}_rejects_id_seq TO {user};")
    return statements
