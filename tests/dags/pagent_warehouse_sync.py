"""The DAG of the warehouse end-to-end tests (tests/test_warehouses_e2e.py).

Every purchase of ``purchases`` in connection ``warehouse`` is sent twice,
by two tasks with their own ledger namespace: once with the revenue of a
DECIMAL column, once with the revenue of a floating-point column (and the
constant label ``purchase-float``), so both conversions to exact cents are
checked on each warehouse. The ledger is in connection ``ledger`` (SQLite or
PostgreSQL): the warehouses under test cannot hold it. Small chunks, so that
NULLs fall in some chunks and not in others.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG

from pagent_provider.operators.conversions import ConversionsOperator

# "%" and a bound parameter: the placeholder conversion of each driver is exercised.
SQL = """
SELECT order_id, session_id, user_id, conversion_id, label, amount, amount_f, converted_at, channel, properties
FROM purchases
WHERE label LIKE 'purch%' AND order_id >= :first_order
ORDER BY order_id
"""

with DAG(
    dag_id="pagent_warehouse_sync",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
) as dag:
    common = {
        "conn_id": "warehouse",
        "ledger_conn_id": "ledger",
        "sql": SQL,
        "parameters": {"first_order": 0},
        "key_column": "order_id",
        "properties_columns": ["channel"],
        "max_invalid_rows": 1,  # the row whose user_id is NULL
        "chunksize": 64,
    }
    ConversionsOperator(
        task_id="sync_decimal",
        columns={"time": "converted_at", "revenue": "amount"},
        ledger_namespace="decimal",
        **common,
    )
    ConversionsOperator(
        task_id="sync_float",
        columns={"time": "converted_at", "revenue": "amount_f"},
        label="purchase-float",
        ledger_namespace="float",
        **common,
    )
