"""Scale out one large backfill: split a period into partitions, one mapped task each.

Trigger it with a period and a partition size, for example::

    airflow dags trigger pagent_backfill_partitions \\
        --conf '{"start": "2026-01-01", "end": "2026-07-01", "days_per_partition": 7}'

``partitions`` turns the period into windows; ``ConversionsOperator.partial(...)
.expand(parameters=...)`` creates one task instance per window, which your
executor (Celery, Kubernetes, Local) runs in parallel, up to
``max_active_tasks`` and the pool below. Every task shares the ledger namespace
of the daily DAG (the pagent connection id), so windows that overlap each other,
or days the daily DAG has already synced, are never sent twice: the ledger
claims each order before sending it. Each mapped task is labelled in the UI with
its window (``map_index_template``), e.g. ``2026-01-08 00:00:00 to 2026-01-15 00:00:00``.

Rate limits across workers: every partition runs in the Airflow pool
``pagent_requests`` and holds ``pool_slots = max_workers`` slots of it, one per
request it may have in flight (each task sends at most ``max_workers`` requests
at once). The scheduler starts a task only while the slots of the running and
queued tasks of the pool, summed over every worker, leave room for it, so the
requests in flight to pagent from this pool never exceed its number of slots,
however many partitions and workers there are. Create the pool before the first
run, with as many slots as concurrent requests your pagent account should take
(and at least ``MAX_WORKERS``: a task that needs more slots than the pool has is
never started)::

    airflow pools set pagent_requests 8 "pagent ingest: concurrent requests"

What the pool does not cover: tasks outside it (give every task that uploads to
the same pagent account this pool, with ``pool_slots`` equal to its
``max_workers``, the daily DAG's 4 included), uploads from the command line
tool or another Airflow deployment, and ``dag.test()`` or ``airflow tasks test``,
which ignore pools. Requests a killed worker had sent stay in flight at pagent
until pagent answers them; its task keeps its slots until the scheduler finds it
without a heartbeat, which takes far longer than a request. docs/scaling.md
has the measured numbers (CeleryExecutor, two workers).

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

#: The Airflow pool every partition draws from: one slot per request in flight.
POOL = "pagent_requests"
#: Concurrent requests of one partition; it holds as many slots of :data:`POOL`.
MAX_WORKERS = 4

#: The mapped task's arguments (tests/celery/dags/ runs them on the CeleryExecutor).
SYNC_PARTITION = {
    "task_id": "sync_partition",
    "conn_id": "warehouse",
    "pagent_conn_id": "pagent_default",
    "sql": "sql/purchases.sql",
    "columns": {"time": "converted_at", "revenue": "amount_usd"},
    "key_column": "order_id",
    "properties_columns": ["channel", "coupon"],
    "max_workers": MAX_WORKERS,
    "pool": POOL,
    "pool_slots": MAX_WORKERS,
    "retries": 3,
    "retry_delay": timedelta(minutes=2),
    # The UI labels each mapped task with its window, so a failed partition says which days it covered.
    "map_index_template": "{{ task.parameters['start'] }} to {{ task.parameters['end'] }}",
}

#: The period to backfill and the size of its partitions, given with ``--conf`` when triggered.
PARAMS = {
    "start": Param("2026-11-01", type="string", format="date"),
    "end": Param("2026-11-08", type="string", format="date"),
    "days_per_partition": Param(1, type="integer", minimum=1),
}


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
    params=PARAMS,
    max_active_tasks=8,
    tags=["pagent", "conversions", "backfill"],
) as dag:

    @task
    def partitions(params: dict | None = None) -> list[dict[str, str]]:
        return split_period(params["start"], params["end"], int(params["days_per_partition"]))

    ConversionsOperator.partial(**SYNC_PARTITION).expand(parameters=partitions())
