"""Daily sync of the day's purchases to pagent, with backfills.

Each run uploads the conversions of its data interval (one day), selected by
``converted_at``. ``catchup=True`` lets ``airflow backfill create`` upload past
days; the ledger makes a re-run, a retry or an overlapping backfill send
nothing twice.

Manual runs: ``airflow dags trigger`` and ``dag.test()`` do not always get the
interval a scheduled run would. Trigger with a logical date and use the
``data_interval_*`` templates below only for scheduled runs and backfills; for
a one-off manual sync of a given day, prefer ``airflow backfill create
--from-date D --to-date D``, which runs it as the scheduler would.

Connections (Airflow UI, or ``AIRFLOW_CONN_*`` environment variables):
``warehouse`` (any SQL connection) and ``pagent_default`` (type ``pagent``).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from pagent_provider.operators.conversions import ConversionsOperator

# Timestamps in the warehouse are naive UTC, written 'YYYY-MM-DD HH:MM:SS'.
INTERVAL_START = "{{ data_interval_start.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"
INTERVAL_END = "{{ data_interval_end.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"

with DAG(
    dag_id="pagent_daily_conversions",
    description="Upload each day's purchases to pagent as server-side conversions",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=4,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    tags=["pagent", "conversions"],
) as dag:
    ConversionsOperator(
        task_id="sync_purchases",
        conn_id="warehouse",
        pagent_conn_id="pagent_default",
        sql="sql/purchases.sql",
        parameters={"start": INTERVAL_START, "end": INTERVAL_END},
        columns={"time": "converted_at", "revenue": "amount_usd"},
        key_column="order_id",
        properties_columns=["channel", "coupon"],
        revenue_unit="dollars",
        timezone="UTC",
        max_invalid_rows=0,
    )
