"""The runs that would otherwise end green having done the wrong thing: detected, then warned about.

Each rule either warns (a log line and an entry of ``SyncSummary.warnings``,
so that a callback or a downstream task can act on it) or fails, and which one
is deliberate:

* **A time column of DATE values** (warn, :func:`date_time_warning`): every
  event would be stamped midnight, so conversions land on the wrong hour,
  or on the wrong day in another time zone. It may be what the warehouse has,
  hence a warning, judged on the first chunk.
* **0 rows where the previous runs had thousands** (warn,
  :func:`zero_rows_warning`): a broken upstream load, a renamed table or a
  wrong window looks like a quiet day. A quiet day can also be real, hence a
  warning.
* **An empty data interval** (fail, :func:`empty_interval_error`): start
  equals end, the Airflow 3 ``schedule="@daily"`` trap, selects nothing on
  every run, forever; nothing good comes of running it.
* **Driver-style placeholders** (fail, :mod:`pagent_provider.core.placeholders`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd

from pagent_provider.core.run_history import RunRow

#: How many earlier runs :func:`zero_rows_warning` looks at.
RECENT_RUNS = 5
#: The median row count of those runs above which 0 rows is suspicious.
BUSY_RUN_ROWS = 1000

_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_date_only(value: Any) -> bool:
    if isinstance(value, datetime | pd.Timestamp):
        return False
    if isinstance(value, date):
        return True
    return isinstance(value, str) and bool(_DATE_TEXT.match(value.strip()))


def date_time_warning(chunk: pd.DataFrame, column: str) -> str | None:
    """A warning when every present value of ``column`` in ``chunk`` is a date without a time of day.

    DATE columns arrive as ``datetime.date`` objects (PostgreSQL, MySQL,
    DuckDB) or as ``YYYY-MM-DD`` text (SQLite); a ``datetime64`` column is a
    timestamp, even at midnight, and is not flagged.
    """
    if column not in chunk.columns:
        return None
    values = chunk[column]
    if pd.api.types.is_datetime64_any_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return None
    present = values.dropna()
    if present.empty or not all(_is_date_only(value) for value in present):
        return None
    return (
        f"the time column {column!r} holds dates without a time of day (a DATE column): every event is "
        "stamped midnight of its day in the configured timezone. Select a timestamp column if there is one"
    )


def zero_rows_warning(rows: int, previous: Sequence[RunRow]) -> str | None:
    """A warning when this run read 0 rows and the median of the previous finished runs is in the thousands.

    Args:
        rows: the rows this run read.
        previous: earlier runs of the same task (latest first, as
            :meth:`RunHistory.recent <pagent_provider.core.run_history.RunHistory.recent>`
            returns them); only the last :data:`RECENT_RUNS` that finished with a count are considered.
    """
    if rows:
        return None
    counts = [run.counts.get("rows") for run in previous if run.finished_at is not None]
    known = [count for count in counts if count is not None][:RECENT_RUNS]
    if not known:
        return None
    typical = statistics.median(known)
    if typical < BUSY_RUN_ROWS:
        return None
    return (
        f"this run selected 0 rows, where the previous {len(known)} runs selected {typical:,.0f} rows (median): "
        "check the window, the source table and its upstream load"
    )


def same_task(runs: Sequence[RunRow], task: Mapping[str, Any]) -> list[RunRow]:
    """The runs of the same Airflow DAG and task (or, outside Airflow, the runs without a DAG)."""
    return [run for run in runs if run.dag_id == task.get("dag_id") and run.task_id == task.get("task_id")]


def empty_interval_error(start: datetime | None, end: datetime | None) -> str | None:
    """The message of a run whose data interval is empty (start equals end), else ``None``."""
    if start is None or end is None or start != end:
        return None
    return (
        f"the data interval of this run is empty (data_interval_start == data_interval_end == {start}): a query "
        "over [start, end) selects nothing, on every run. In Airflow 3 schedule='@daily' is a "
        "CronTriggerTimetable, whose runs have no interval; schedule the DAG with "
        "CronDataIntervalTimetable('@daily', timezone='UTC') (see dags/pagent_daily_conversions.py), "
        "or do not select by the data interval"
    )
