"""Run DAGs for real in tests and demos: ``dag.test()`` plus the task's XCom result.

Needs an ``AIRFLOW_HOME`` (and ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) set
before Airflow is first imported; connections come from ``AIRFLOW_CONN_*``.

Works on every supported Airflow (2.11, 3.0 to the latest 3.x): the DagBag, the
argument of ``dag.test()`` and the XCom model live in different places there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DagRunResult:
    """The end state of one DAG run, and the return value and ``summary`` XComs of one task.

    ``summary`` is there for failed runs too (the ConversionsOperator pushes it either way).
    """

    state: str
    run_id: str
    result: Any
    summary: Any = None


def load_dag(dags_folder: str | Path, dag_id: str, *, retries: int | None = 0) -> Any:
    """Parse ``dag_id`` from a DAGs folder, with the metadata DB initialised.

    Args:
        dags_folder: where the DAG file lives.
        dag_id: the DAG to return.
        retries: override every task's retries (``dag.test()`` would otherwise
            wait out each retry delay); ``None`` keeps the DAG's own.
    """
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
    except ImportError:  # Airflow 2.11 to 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
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
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    if logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=UTC)

    # Airflow 2.11 calls the logical date ``execution_date``.
    date_argument = "logical_date" if AIRFLOW_V_3_0_PLUS else "execution_date"
    dagrun = dag.test(**{date_argument: logical_date}, **test_kwargs)
    result = read_xcom(dag.dag_id, dagrun.run_id, task_id)
    summary = read_xcom(dag.dag_id, dagrun.run_id, task_id, key="summary")
    return DagRunResult(state=str(dagrun.state), run_id=dagrun.run_id, result=result, summary=summary)


def read_xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    """One XCom of one task of a finished run, read from the metadata DB (``None`` when absent)."""
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS
    from airflow.utils.session import create_session

    try:
        from airflow.models.xcom import XComModel  # Airflow 3: the DB model of XCom
    except ImportError:  # Airflow 2.11: XCom is the DB model
        from airflow.models.xcom import XCom as XComModel  # type: ignore[no-redef]

    with create_session() as session:
        filters: dict[str, Any] = {"run_id": run_id, "dag_ids": dag_id, "task_ids": task_id, "key": key}
        if "session" in inspect.signature(XComModel.get_many).parameters:
            filters["session"] = session  # Airflow 2.11 and 3.0 build a legacy Query on a session
        query = XComModel.get_many(**filters)
        # a legacy Query (Airflow 2.11, 3.0) or a 2.0-style Select (3.1+)
        row: Any = query.first() if hasattr(query, "first") else session.scalars(query).first()
        if row is None:
            return None
        # Airflow 2.11 deserializes the value as the row loads; Airflow 3 on request
        return XComModel.deserialize_value(row) if AIRFLOW_V_3_0_PLUS else row.value


#: Airflow connection types of the SQLAlchemy backends the tests and the demo use.
_CONN_TYPES = {"postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite", "duckdb": "duckdb"}


def sql_connection(url: str) -> dict[str, Any]:
    """The Airflow connection (as ``AIRFLOW_CONN_*`` JSON takes it) of a SQLAlchemy URL.

    ``sqlite:///path`` and ``duckdb:///path`` become a connection whose host is
    the file; PostgreSQL and MySQL/MariaDB URLs their host, port, login,
    password and schema (database).
    """
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _CONN_TYPES:
        raise ValueError(f"no Airflow connection type for {backend!r} URLs (known: {', '.join(_CONN_TYPES)})")
    if backend in ("sqlite", "duckdb"):
        return {"conn_type": _CONN_TYPES[backend], "host": parsed.database}
    return {
        "conn_type": _CONN_TYPES[backend],
        "host": parsed.host,
        "port": parsed.port,
        "login": parsed.username,
        "password": parsed.password or "",
        "schema": parsed.database,
    }
