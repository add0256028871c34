"""Run DAGs for real in tests and demos: ``dag.test()`` plus the task's XCom result.

Needs an ``AIRFLOW_HOME`` (and ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) set
before Airflow is first imported; connections come from ``AIRFLOW_CONN_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DagRunResult:
    """The end state of one DAG run and the return value (XCom) of one task."""

    state: str
    run_id: str
    result: Any


def load_dag(dags_folder: str | Path, dag_id: str, *, retries: int | None = 0) -> Any:
    """Parse ``dag_id`` from a DAGs folder, with the metadata DB initialised.

    Args:
        dags_folder: where the DAG file lives.
        dag_id: the DAG to return.
        retries: override every task's retries (``dag.test()`` would otherwise
            wait out each retry delay); ``None`` keeps the DAG's own.
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(str(dags_folder))
    if dag_id not in bag.dags:
        raise LookupError(f"DAG {dag_id!r} not found in {dags_folder}; import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    if retries is not None:
        for task in dag.tasks:
            task.retries = retries
    return dag


def run_dag(dag: Any, logical_date: datetime, *, task_id: str, **test_kwargs: Any) -> DagRunResult:
    """``dag.test(logical_date=...)`` and the XCom return value of ``task_id`` (``None`` if it failed).

    A naive ``logical_date`` is read as UTC.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    if logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=UTC)

    dagrun = dag.test(logical_date=logical_date, **test_kwargs)
    with create_session() as session:
        query = XComModel.get_many(run_id=dagrun.run_id, dag_ids=dag.dag_id, task_ids=task_id, key="return_value")
        row = session.scalars(query).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return DagRunResult(state=str(dagrun.state), run_id=dagrun.run_id, result=result)
