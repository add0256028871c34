"""The partitioned backfill of dags/pagent_backfill_partitions.py, as tests/test_celery_scale_out.py runs it.

The example's own ``split_period`` and mapped-task arguments (``SYNC_PARTITION``:
the ``pagent_requests`` pool with ``pool_slots = max_workers``, retries, the
window labels), with only what a test cannot wait for changed: a retry after
one second instead of two minutes, and two requests per partition instead of
four (so two partitions fill a pool of four slots).
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType

from airflow.sdk import DAG, task
from airflow.sdk.definitions._internal.contextmanager import DagContext

from pagent_provider.operators.conversions import ConversionsOperator

EXAMPLE = Path(__file__).resolve().parents[3] / "dags" / "pagent_backfill_partitions.py"

#: What differs from the example's SYNC_PARTITION.
OVERRIDES = {"retry_delay": timedelta(seconds=1), "max_workers": 2, "pool_slots": 2}


def _example() -> ModuleType:
    """The example DAG file as a module, without its DAG counting as one of this file's."""
    name = "pagent_backfill_partitions_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Airflow 3 registers every DAG whose `with` block closes while a DAG file is parsed as
    # one of that file's: the example's would appear here a second time.
    parsing, DagContext.current_autoregister_module_name = DagContext.current_autoregister_module_name, None
    try:
        spec.loader.exec_module(module)
    finally:
        DagContext.current_autoregister_module_name = parsing
    sys.modules[name] = module
    return module


example = _example()
SYNC_PARTITION = {**example.SYNC_PARTITION, **OVERRIDES}

with DAG(
    dag_id="pagent_backfill_partitions_celery",
    schedule=None,
    params=example.PARAMS,
    max_active_tasks=8,
    template_searchpath=[str(EXAMPLE.parent)],  # the example's sql/purchases.sql
    tags=["pagent", "test"],
) as dag:

    @task
    def partitions(params: dict | None = None) -> list[dict[str, str]]:
        return example.split_period(params["start"], params["end"], int(params["days_per_partition"]))

    ConversionsOperator.partial(**SYNC_PARTITION).expand(parameters=partitions())
