"""``pagent-conversions ledger ddl``: the printed statements create tables the ledger accepts, for real.

On PostgreSQL the tables are then used by a role that may not create
anything, with only the printed GRANTs: a whole sync runs through it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig

CLI = [sys.executable, "-m", "pagent_provider.cli", "ledger", "ddl"]


def printed(dialect: str, *extra: str) -> list[str]:
    out = subprocess.run([*CLI, "--dialect", dialect, *extra], capture_output=True, text=True, check=True).stdout
    return [statement.strip() for statement in out.split(";") if statement.strip()]


def execute(url: str, statements: list[str]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def claim_and_mark(engine: sa.Engine) -> dict[str, int]:
    ledger = Ledger(engine, namespace="pagent_default")
    ledger.create_tables()  # finds them: creates nothing, and checks their key columns
    claim = ledger.claim([("ABC", "h1"), ("abc", "h2"), ("x", "h3"), ("x ", "h4")])
    ledger.mark_sent(claim.claim_id)
    with engine.connect() as conn:  # the claim is the one row of the printed claims table, marked there
        claims = conn.execute(sa.select(ledger.claims_table.c.claim_id, ledger.claims_table.c.status)).all()
        names = conn.execute(
            sa.select(ledger.namespaces_table.c.namespace_id, ledger.namespaces_table.c.namespace)
        ).all()
    assert [tuple(row) for row in claims] == [(claim.claim_id, "sent")]
    assert [tuple(row) for row in names] == [(1, "pagent_default")]  # registered in the printed namespaces table
    return ledger.count_by_status()


@pytest.mark.parametrize("database", ["sqlite", "postgres", "mariadb"])
def test_the_printed_ddl_creates_tables_the_ledger_uses(database: str, request, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}" if database == "sqlite" else request.getfixturevalue(f"{database}_url")
    dialect = {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mariadb"}[database]
    statements = printed(dialect)
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 5  # events, claims, namespaces, rejects, runs
    execute(url, statements)
    engine = sa.create_engine(url)
    try:
        assert claim_and_mark(engine) == {"sent": 4}  # four byte-exact keys
        assert set(sa.inspect(engine).get_table_names()) >= {
            "pagent_ledger",
            "pagent_ledger_claims",
            "pagent_ledger_namespaces",
            "pagent_ledger_rejects",
            "pagent_ledger_runs",
        }
    finally:
        engine.dispose()


def test_a_postgresql_user_without_ddl_rights_syncs_with_the_printed_grants(postgres_url: str, pagent_emulator) -> None:
    role = "pagent_sync_user"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    statements = printed("postgresql", "--grant-to", role)
    granted = {s.split(" ON ")[1].split(" TO ")[0] for s in statements if s.startswith("GRANT SELECT")}
    assert granted == {
        "pagent_ledger",
        "pagent_ledger_claims",
        "pagent_ledger_namespaces",
        "pagent_ledger_rejects",
        "pagent_ledger_runs",
    }
    execute(postgres_url, statements)
    user_url = sa.engine.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    engine = sa.create_engine(user_url)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError):
            conn.exec_driver_sql("CREATE TABLE may_not (x int)")  # truly without DDL rights
        chunk = pd.DataFrame(
            {"order_id": ["o1", "o2"], "session_id": ["s1", "s2"], "user_id": "u", "conversion_id": ["g", None]}
        )
        with PagentClient("test-key", base_url=pagent_emulator.url) as client:
            sync = ConversionSync(
                client,
                TransformConfig(key_column="order_id", require_time=False),
                SyncOptions(max_invalid_rows=1),
                ledger=Ledger(engine, namespace="pagent_default"),
            )
            summary = sync.run([chunk]).as_dict()
        assert summary["sent"] == 1 and summary["invalid"] == 1  # a claim, a mark and a reject, all allowed
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
