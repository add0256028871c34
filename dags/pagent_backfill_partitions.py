"""Scale out one large backfill: split a period into partitions, one mapped task each.

Trigger it with a period and a partition size, for example::

    airflow dags trigger pagent_backfill_partitions \\
        --conf '{"start": "2026-01-01", "end": "2026-07-01", "days_per_partition": 7}'

``partitions`` turns the period into windows; ``ConversionsOperator.partial(...)
.expand(parameters=...)`` creates one task instance per window, which your
executor (Celery, Kubernetes, Local) runs in parallel, up to
``max_active_tis_per_dag``. Every task shares the ledger namespace of the daily
DAG (the pagent connection id), so windows that overlap each other, or days the
daily DAG has already synced, are never sent twice: the ledger claims each
order before sending it. Each mapped task is labelled in the UI with its
window (``map_index_template``), e.g. ``2026-01-08 00:00:00 to 2026-01-15 00:00:00``.

A paused DAG does not run what you trigger or backfill: unpause it first
(``airflow dags unpause pagent_backfill_partitions``).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

# common.compat resolves these from airflow.sdk on Airflow 3 and from their 2.11 homes
# (airflow.models.dag, airflow.models.param, airflow.decorators), so this file runs on
# every Airflow the provider supports. On 3.x alone, import them from airflow.sdk.
from airflow.providers.common.compat.sdk import DAG, Param, task

from pagent_provider.operators.conversions import ConversionsOperator

TIMESTAMP = "%Y-%m-%d %H:%M:%S"


def split_period(start: str, end: str, days_per_partition: int) -> list[dict[str, str]]:
    """``[start, end)`` as consecutive windows of ``days_per_partition`` days, as SQL parameters."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last <= first or days_per_partition < 1:
        raise ValueError(f"need start < end and days_per_partition >= 1, got {start}, {end}, {days_per_partition}")
    windows = []
    cursor = datetime.combine(first, datetime.min.time())
    stop = datetime.combine(last, datetime.min.time())
    while cursor < stop:
        upper = min(cursor + timedelta(days=days_per_partition), stop)
        windows.append({"start": cursor.strftime(TIMESTAMP), "end": upper.strftime(TIMESTAMP)})
        cursor = upper
    return windows


with DAG(
    dag_id="pagent_backfill_partitions",
    description="Backfill a long period to pagent as parallel partitions",
    schedule=None,
    params={
        "start": Param("2026-11-01", type="string", format="date"),
        "end": Param("2026-11-08", type="string", format="date"),
        "days_per_partition": Param(1, type="integer", minimum=1),
    },
    max_active_tasks=8,
    tags=["pagent", "conversions", "backfill"],
) as dag:

    @task
    def partitions(params: dict | None = None) -> list[dict[str, str]]:
        return split_period(params["start"], params["end"], int(params["days_per_partition"]))

    ConversionsOperator.partial(
        task_id="sync_partition",
        conn_id="warehouse",
        pagent_conn_id="pagent_default",
        sql="sql/purchases.sql",
        columns={"time": "converted_at", "revenue": "amount_usd"},
        key_column="order_id",
        properties_columns=["channel", "coupon"],
        retries=3,
        retry_delay=timedelta(minutes=2),
        # The UI labels each mapped task with its window, so a failed partition says which days it covered.
        map_index_template="{{ task.parameters['start'] }} to {{ task.parameters['end'] }}",
    ).expand(parameters=partitions())
