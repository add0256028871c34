"""DAGs of the "no silent success" tests (tests/test_silent_success.py): each one a mistake that once ran green.

* ``pagent_trigger_timetable``: ``CronTriggerTimetable`` (what Airflow 3 makes of
  ``schedule="@daily"``), whose runs have an empty data interval, with a query
  selecting by that interval: it must fail before reading.
* ``pagent_pyformat_sql``: a query written for psycopg (``%(start)s``): it must
  fail before connecting, saying to use ``:name``.
* ``pagent_date_column``: a conversion time that is a DATE: it must warn.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import DAG

try:  # Airflow 3.2+: timetables are part of the Task SDK
    from airflow.sdk import CronTriggerTimetable
except ImportError:  # Airflow 2.11 to 3.1
    from airflow.timetables.trigger import CronTriggerTimetable  # type: ignore[no-redef]

from pagent_provider.operators.conversions import ConversionsOperator

START = "{{ data_interval_start.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"
END = "{{ data_interval_end.in_timezone('UTC').strftime('%Y-%m-%d %H:%M:%S') }}"
COLUMNS = {"time": "converted_at", "revenue": "amount_usd"}
FIELDS = "order_id, session_id, user_id, conversion_id, label, amount_usd"

with DAG(
    dag_id="pagent_trigger_timetable",
    schedule=CronTriggerTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
):
    ConversionsOperator(
        task_id="sync",
        conn_id="warehouse",
        sql=f"SELECT {FIELDS}, converted_at FROM conversions WHERE converted_at >= :start AND converted_at < :end",
        parameters={"start": START, "end": END},
        columns=COLUMNS,
        key_column="order_id",
    )

with DAG(dag_id="pagent_pyformat_sql", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")):
    ConversionsOperator(
        task_id="sync",
        conn_id="warehouse",
        sql=f"SELECT {FIELDS}, converted_at FROM conversions WHERE converted_at >= %(start)s",
        parameters={"start": "2026-11-01"},
        columns=COLUMNS,
        key_column="order_id",
    )

with DAG(dag_id="pagent_date_column", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")):
    ConversionsOperator(
        task_id="sync",
        conn_id="warehouse",
        # date(): SQLite's DATE, 'YYYY-MM-DD' text; a DATE column of PostgreSQL arrives as datetime.date
        sql=f"SELECT {FIELDS}, date(converted_at) AS converted_at FROM conversions",
        columns=COLUMNS,
        key_column="order_id",
    )
