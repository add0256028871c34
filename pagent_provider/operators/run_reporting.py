"""What a ConversionsOperator run tells the world besides its return value, failed runs included.

* the run history row (``<ledger_table>_runs``), written at the start and at the end;
* the summary under the XCom key ``summary``, pushed whether the run succeeds
  or fails, so callbacks and downstream tasks can read ``unknown``,
  ``invalid``, ``rejected`` of a failed try;
* ``pagent.*`` metrics through Airflow's own ``Stats`` (StatsD or
  OpenTelemetry, wherever the deployment sends Airflow's metrics), tagged with
  the DAG, the task and the ledger namespace;
* the warning of a run that selected 0 rows where the previous runs of the
  same task selected thousands (:func:`~pagent_provider.core.silent_success.zero_rows_warning`).

None of these may fail a delivery: each one that fails is logged and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import Stats

from pagent_provider.core import metrics
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.loggers import TaskLogger
from pagent_provider.core.run_history import RunHistory, RunRow, RunStart, outcome_of
from pagent_provider.core.silent_success import RECENT_RUNS, same_task, zero_rows_warning
from pagent_provider.core.sync import ConversionSync

XCOM_SUMMARY_KEY = "summary"


def _task_fields(context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context.get("ti")
    if ti is None:
        return {}
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None),
        "map_index": getattr(ti, "map_index", None),
    }


@contextmanager
def reporting(
    sync: ConversionSync,
    ledger: Ledger | None,
    context: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    log: TaskLogger,
    *,
    window_start: datetime | None = None,
) -> Iterator[None]:
    """Record the run that the block performs with ``sync``; see the module docstring.

    ``window_start`` is the start of what the run selects when it is not the
    data interval's (a ``lookback`` moves it back).
    """
    task = _task_fields(context)
    history = None
    previous: list[RunRow] = []
    if ledger is not None and not sync.options.dry_run:
        history = RunHistory.for_ledger(ledger, logger=log)
        # Read before this run's own row exists; a few more than needed, as other tasks share the namespace.
        previous = same_task(history.recent(ledger.namespace, limit=4 * RECENT_RUNS), task)
        history.start(
            RunStart.of(
                ledger.owner,
                ledger.namespace,
                params=params,
                window_start=window_start or context.get("data_interval_start"),
                window_end=context.get("data_interval_end"),
                **task,
            )
        )
    error: BaseException | None = None
    try:
        yield
        warning = zero_rows_warning(sync.summary.rows, previous)
        if warning is not None:
            sync.warn(warning)
    except BaseException as raised:
        error = raised
        raise
    finally:
        summary = getattr(error, "summary", None) or sync.summary.as_dict()
        outcome = outcome_of(error)
        if history is not None and ledger is not None:
            history.finish(ledger.owner.run_token, summary, outcome, error)
        _push_summary(context, summary, log)
        tags = {"dag_id": str(task.get("dag_id")), "task_id": str(task.get("task_id"))}
        if ledger is not None:
            tags["namespace"] = ledger.namespace
        metrics.emit(Stats, summary, outcome, tags)


def _push_summary(context: Mapping[str, Any], summary: Mapping[str, Any], log: Any) -> None:
    ti = context.get("ti")
    if ti is None:
        return
    try:
        ti.xcom_push(key=XCOM_SUMMARY_KEY, value=dict(summary))
    except Exception as error:  # noqa: BLE001 - the summary in XCom is a convenience
        log.warning("could not push the pagent summary to XCom: %s: %s", type(error).__name__, error)


def describe_start(
    operator: Any, params: Mapping[str, Any] | None, source_mode: str, base_url: str, ledger: Ledger | None
) -> str:
    """The first log line of a run: what it reads, where it sends, where it records (never the key)."""
    if ledger is None:
        where = "no ledger (use_ledger=False): nothing prevents resending"
    else:
        url = ledger.engine.url.render_as_string(hide_password=True)
        where = f"{url} table {ledger.table_name} namespace {ledger.namespace!r}"
    return (
        f"pagent sync starting: window {dict(params or {})}; source {operator.conn_id!r} read through "
        f"{source_mode}; pagent {base_url}; ledger {where}; unknown_outcome={operator.unknown_outcome!r}"
    )
