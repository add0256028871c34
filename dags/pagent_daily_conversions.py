"""Daily sync of the day's purchases to pagent, with backfills.

Each run uploads the conversions of its data interval (one day), selected by
``converted_at``. ``catchup=True`` lets ``airflow backfill create`` upload past
days; the ledger makes a re-run, a retry or an overlapping backfill send
nothing twice.

The schedule is a ``CronDataIntervalTimetable``: in Airflow 3 a plain
``schedule="@daily"`` is a trigger timetable whose runs have an *empty* data
interval (start == end), which would select nothing (Airflow 2.11 reads it as a
data-interval timetable). Naming the timetable gives the same runs on both.

Manual runs (``airflow dags trigger``, ``dag.test(logical_date=D)``) get the
last *complete* day before ``D``: triggering at ``2026-11-25T00:00Z`` syncs
2026-11-24. Scheduled runs and backfills get their own day. The templates
below (``data_interval_start``/``data_interval_end``) are right for all of
them; do not use ``{{ ds }}`` here, which is the logical date and differs
between manual and scheduled runs.

Each run also looks back three days (``lookback=timedelta(days=3)``): it
selects ``[data_interval_start - 3 days, data_interval_end)``, moving the
``start`` parameter back after rendering. Rows that arrived late, and rows that
were invalid or refused and have been fixed since, go out with the next run;
the ledger skips what was sent (``already_sent`` in the summary). Keep the
ledger's retention horizon (``pagent-conversions ledger prune --older-than``)
longer than the lookback.

Connections (Airflow UI, or ``AIRFLOW_CONN_*`` environment variables):
``warehouse`` (any SQL connection) and ``pagent_default`` (type ``pagent``).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

# common.compat gives DAG from airflow.sdk on Airflow 3 and from airflow.models.dag on
# 2.11, so this file runs on every Airflow the provider supports. On 3.x alone, write
# ``from airflow.sdk import DAG``.
from airflow.providers.common.compat.sdk import DAG

try:  # Airflow 3.2+: timetables are part of the Task SDK
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 2.11 to 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable  # type: ignore[no-redef]

from pagent_provider.operators.conversions import ConversionsOperator

# Timestamps in the warehouse are naive UTC, written 'YYYY-MM-DD HH:MM:SS'.
INTERVAL_START = "{{ data_interval_start.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"
INTERVAL_END = "{{ data_interval_end.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"

with DAG(
    dag_id="pagent_daily_conversions",
    description="Upload each day's purchases to pagent as server-side conversions",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
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
        lookback=timedelta(days=3),  # moves the "start" parameter back: late and fixed rows go out next run
    )
