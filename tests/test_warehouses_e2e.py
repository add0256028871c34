"""DuckDB and Snowflake as sources, end to end through Airflow (``dag.test()``), exact events field by field.

DuckDB: a real DuckDB file, through the connection a DuckDB user defines
(``conn_type`` ``duckdb``, the database path as host) and the official
``apache-airflow-providers-duckdb`` hook; everything below the hook is the
real ``duckdb`` package.

Snowflake: the official ``apache-airflow-providers-snowflake`` hook, backed
by ``fakesnow``. What is real: ``SnowflakeHook`` (connection fields and
extras to connect arguments), ``snowflake.connector``'s module (its
``paramstyle``, errors) and its ``SnowflakeConverter``, which fakesnow uses
for the client-side ``pyformat`` binding exactly as the connector does. What
is fakesnow: ``snowflake.connector.connect`` returns fakesnow's connection
and cursor, which translate the SQL to DuckDB with sqlglot and return rows
typed the way the connector types them (NUMBER(p,s) as ``Decimal``,
TIMESTAMP_TZ as aware datetimes, VARIANT as JSON text); no network, no
Snowflake server, none of the connector's result-batch code. fakesnow's
NUMBER(38,0) holds only 64 bits and its TIMESTAMP_TZ comes back in UTC
rather than in the stored offset; the SQLAlchemy dialect (snowflake-sqlalchemy
1.x) does not import on SQLAlchemy 2.1, so the chooser reads Snowflake
through the DB-API and that path is the one tested.

Each warehouse holds the same tricky rows: revenue as DECIMAL (sub-cent
amounts rounding half away from zero) and as a float, ids beyond 2**53 next
to NULLs, a NULL user_id (rejected), time zone offsets, JSON properties
merged with a properties column, upper-case column names (Snowflake). The
ledger is SQLite (DuckDB) or PostgreSQL (Snowflake) through ``ledger_conn_id``;
a second run sends nothing.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.testing.dag_runs import load_dag, run_dag, sql_connection

DAGS = Path(__file__).resolve().parent / "dags"
DAG_ID = "pagent_warehouse_sync"
ROWS = 230
BIG_ID = 2**53 + 1  # a float64 cannot hold it: ids must arrive as exact integers
NULL_USER_ROW = 7
AMOUNTS = ["19.99", "0.29", "1234567.89", "1.005", "2.675", "0.125", None, "100.00", "4.10"]
OFFSETS = [timezone(timedelta(hours=2)), UTC, timezone(timedelta(hours=-5, minutes=-30))]


def purchases() -> list[dict]:
    """The rows, as Python values; the tables below are filled from them."""
    rows = []
    start = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
    for i in range(ROWS):
        amount = AMOUNTS[i % len(AMOUNTS)]
        when = (start + timedelta(minutes=37 * i, milliseconds=i)).astimezone(OFFSETS[i % len(OFFSETS)])
        rows.append(
            {
                "order_id": BIG_ID + 2 * i,
                "session_id": f"sess-{i:04d}",
                "user_id": None if i == NULL_USER_ROW else BIG_ID + i,
                "conversion_id": str(uuid.UUID(int=0x5F1C2A4E8D3B4C6A9E7F0A1B2C3D4E5F + i % 3)),
                "label": "purchase",
                "amount": None if amount is None else Decimal(amount),
                "amount_f": None if amount is None else float(amount),
                "converted_at": when,
                "channel": ["web", "app", None][i % 3],
                "properties": None if i % 4 == 3 else {"sku": f"SKU-{i}", "qty": i % 5 + 1, "gift": i % 2 == 0},
            }
        )
    return rows


def expected_events(rows: list[dict], *, revenue_column: str, label: str) -> dict[str, dict]:
    """What pagent must receive, computed per row with Decimal, independently of the transform."""
    expected = {}
    for row in rows:
        if row["user_id"] is None:
            continue  # rejected: pagent requires user_id
        event = {
            "session_id": row["session_id"],
            "user_id": str(row["user_id"]),
            "conversion_id": row["conversion_id"],
            "label": label,
            "time": int(row["converted_at"].timestamp() * 1000),
            "properties": {**(row["properties"] or {}), "channel": row["channel"]},
        }
        amount = row[revenue_column]
        if amount is not None:
            # A float is "written" as its shortest repr: 1.005 -> 101, never int(1.005 * 100).
            exact = Decimal(repr(amount)) if isinstance(amount, float) else amount
            event["revenue"] = int((exact * 100).quantize(Decimal(1), ROUND_HALF_UP))
        expected[row["session_id"]] = event
    return expected


def assert_delivered_exactly_once(emulator, rows: list[dict]) -> None:
    received: dict[str, dict[str, dict]] = {"purchase": {}, "purchase-float": {}}
    for event in emulator.events():
        assert event["session_id"] not in received[event["label"]], "sent twice"
        received[event["label"]][event["session_id"]] = event
    assert received["purchase"] == expected_events(rows, revenue_column="amount", label="purchase")
    assert received["purchase-float"] == expected_events(rows, revenue_column="amount_f", label="purchase-float")


def run_twice_and_check(dag, rows: list[dict], emulator) -> None:
    first = run_dag(dag, datetime(2026, 11, 20, tzinfo=UTC), task_id="sync_decimal")
    assert first.state == "success"
    valid = ROWS - 1
    summary = first.result
    assert summary["rows"] == ROWS and summary["valid"] == summary["sent"] == summary["accepted"] == valid
    assert summary["invalid"] == 1 and summary["already_sent"] == 0
    assert_delivered_exactly_once(emulator, rows)
    assert len(emulator.events()) == 2 * valid

    again = run_dag(dag, datetime(2026, 11, 21, tzinfo=UTC), task_id="sync_decimal")
    assert again.state == "success"
    assert again.result["sent"] == 0 and again.result["already_sent"] == valid
    assert len(emulator.events()) == 2 * valid  # the float task sent nothing again either


@pytest.fixture(scope="module")
def dag():
    # dag.test() runs only DAGs of a configured bundle: add this folder beside the DAGs folder.
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in (("dags-folder", DAGS.parent.parent / "dags"), ("pagent-test-dags", DAGS))
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
        yield load_dag(DAGS, DAG_ID)


# --------------------------------------------------------------------------- DuckDB


def write_duckdb(path: Path, rows: list[dict]) -> None:
    import duckdb

    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE purchases (order_id HUGEINT PRIMARY KEY, session_id VARCHAR, user_id HUGEINT, "
            "conversion_id UUID, label VARCHAR, amount DECIMAL(38, 3), amount_f DOUBLE, converted_at TIMESTAMPTZ, "
            "channel VARCHAR, properties JSON)"
        )
        conn.executemany(
            "INSERT INTO purchases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r["order_id"],
                    r["session_id"],
                    r["user_id"],
                    r["conversion_id"],
                    r["label"],
                    r["amount"],
                    r["amount_f"],
                    r["converted_at"].isoformat(),  # text with its offset: DuckDB stores the instant
                    r["channel"],
                    None if r["properties"] is None else json.dumps(r["properties"]),
                )
                for r in rows
            ],
        )


def test_duckdb_file_through_the_duckdb_connection(dag, tmp_path, pagent_emulator, monkeypatch):
    rows = purchases()
    for row in rows:  # HUGEINT ids beyond 64 bits, as DuckDB holds them
        row["order_id"] += 2**64
    warehouse = tmp_path / "shop.duckdb"
    write_duckdb(warehouse, rows)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "duckdb", "host": str(warehouse)}))
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())

    run_twice_and_check(dag, rows, pagent_emulator)
    rejects = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with rejects.connect() as conn:
        refs = conn.exec_driver_sql("SELECT row_ref, reason FROM pagent_ledger_rejects").all()
    rejects.dispose()
    assert {ref for ref, _ in refs} == {str(rows[NULL_USER_ROW]["order_id"])}
    assert all("user_id is NULL" in reason for _, reason in refs)


# --------------------------------------------------------------------------- Snowflake (fakesnow)


def write_snowflake(rows: list[dict]) -> None:
    """Unquoted identifiers: Snowflake returns them upper-case (ORDER_ID, SESSION_ID, ...)."""
    import snowflake.connector

    conn = snowflake.connector.connect(database="SHOP", schema="PUBLIC")
    cursor = conn.cursor()
    cursor.execute(
        "CREATE TABLE purchases (order_id NUMBER(38, 0), session_id VARCHAR, user_id NUMBER(38, 0), "
        "conversion_id VARCHAR, label VARCHAR, amount NUMBER(38, 3), amount_f FLOAT, converted_at TIMESTAMP_TZ, "
        "channel VARCHAR, properties VARIANT)"
    )
    for r in rows:
        props = "NULL" if r["properties"] is None else f"PARSE_JSON('{json.dumps(r['properties'])}')"
        cursor.execute(
            "INSERT INTO purchases SELECT %(order_id)s, %(session_id)s, %(user_id)s, %(conversion_id)s, %(label)s, "
            f"%(amount)s, %(amount_f)s, %(converted_at)s, %(channel)s, {props}",
            {**{k: v for k, v in r.items() if k != "properties"}, "converted_at": r["converted_at"].isoformat(sep=" ")},
        )
    conn.close()


def test_snowflake_through_the_snowflake_hook_on_fakesnow(
    dag, postgres_url, pagent_emulator, monkeypatch, snowflake_connection
):
    fakesnow = pytest.importorskip("fakesnow")
    rows = purchases()
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", snowflake_connection)
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER", json.dumps(sql_connection(postgres_url)))
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    with fakesnow.patch():  # dag.test() runs the tasks in this process, so they see the patch
        write_snowflake(rows)
        run_twice_and_check(dag, rows, pagent_emulator)
