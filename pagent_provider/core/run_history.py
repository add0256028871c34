"""The run history: one row per sync run in ``<ledger_table>_runs``, next to the ledger.

The ledger says what happened to each conversion; the run history says what
happened to each run: who ran it (the Airflow DAG, task, run, map index and
try, or the host and process of a command-line run), when, over which window
(the rendered query parameters), with which counts and which outcome. A run
writes its row twice: at the start (outcome ``running``) and at the end
(``success``, ``failed`` or ``interrupted``, with the counts of its summary
and its error). A row still ``running`` long after ``started_at``, without
``finished_at``, is a run that died without finishing (SIGKILL, an
out-of-memory kill, a lost worker).

The history is a convenience, never a condition of delivery: every write that
fails logs one warning and returns, and the sync goes on (its guarantees rest
on the ledger alone). A dry run writes nothing, so it writes no history either.

Columns (times in Unix milliseconds, like the ledger's):

``run_token``
    primary key; the run's :attr:`ClaimOwner.run_token
    <pagent_provider.core.owner.ClaimOwner.run_token>`, also written on its
    ledger claims (``owner_run``) and rejects (``run_token``).
``namespace``
    the ledger namespace.
``dag_id``, ``task_id``, ``run_id``, ``map_index``, ``try_number``
    the Airflow task instance, or NULL outside Airflow.
``host``, ``pid``
    where the run worked (``host`` as written on claims: hostname and PID namespace).
``started_at``, ``finished_at``
    when it started and ended (``finished_at`` NULL while running).
``window_start``, ``window_end``
    the data interval it selected, ``[start, end)``, when the caller knows it.
``window_params``
    the rendered query parameters, as JSON text.
``outcome``
    ``running``, ``success``, ``failed`` or ``interrupted``.
``error``
    the error's class and message (cut to 2,000 characters).
``rows_read``, ``valid``, ``invalid``, ``duplicate_keys``, ``already_sent``, ``changed_after_send``, ``sent``, ``rejected``, ``unknown``, ``unknown_resent``, ``failed``, ``claimed_elsewhere``, ``requests``, ``duration_ms``
    the counts of the run's :class:`~pagent_provider.core.sync.SyncSummary`
    (``rows_read`` is its ``rows``: ``ROWS`` is a reserved word in MariaDB and
    MySQL 8), NULL when the run ended before its sync started.

What happened to this day: the runs whose window overlaps the day
``[:day_start_ms, :day_end_ms)``, in the order they started (for the default
table name). The day's start in Unix milliseconds is:

* PostgreSQL: ``EXTRACT(EPOCH FROM DATE '2026-11-05') * 1000``
* MySQL/MariaDB: ``UNIX_TIMESTAMP('2026-11-05') * 1000``, after ``SET time_zone = '+00:00'``
* SQLite (3.38 and later): ``unixepoch('2026-11-05') * 1000``

On MySQL and MariaDB ``run_token`` and ``namespace`` are ``VARBINARY``, like
the ledger's keys: ``CAST(run_token AS CHAR)`` shows them as text.

.. code-block:: sql

    SELECT run_token, dag_id, run_id, try_number, host, outcome, started_at, finished_at,
           window_start, window_end, rows_read, sent, already_sent, invalid, rejected, unknown, error
    FROM pagent_ledger_runs
    WHERE namespace = :namespace
      AND window_start < :day_end_ms
      AND window_end > :day_start_ms
    ORDER BY started_at

Then, to know which of that day's rows are still unaccounted for,
:mod:`pagent_provider.core.reconcile` compares the warehouse rows with the ledger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from pagent_provider.core import defaults
from pagent_provider.core.ledger import Ledger, _table_parts, now_ms, storable
from pagent_provider.core.ledger_dialects import ledger_dialect
from pagent_provider.core.loggers import TaskLogger
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.exceptions import PagentInterruptedError

log = logging.getLogger(__name__)

RUNNING, SUCCESS, FAILED, INTERRUPTED = "running", "success", "failed", "interrupted"
#: The outcomes a finished run can have.
FINISHED_OUTCOMES = (SUCCESS, FAILED, INTERRUPTED)
#: Summary field -> column, for the counts kept in the history.
COUNT_COLUMNS: Mapping[str, str] = {
    "rows": "rows_read",
    "valid": "valid",
    "invalid": "invalid",
    "duplicate_keys": "duplicate_keys",
    "already_sent": "already_sent",
    "changed_after_send": "changed_after_send",
    "sent": "sent",
    "rejected": "rejected",
    "unknown": "unknown",
    "unknown_resent": "unknown_resent",
    "failed": "failed",
    "claimed_elsewhere": "claimed_elsewhere",
    "requests": "requests",
}
ERROR_LIMIT = 2000
# The rendered parameters rarely exceed a few hundred characters; an IN list of
# thousands of ids is cut (the text is then not valid JSON, and RunRow.params is None).
PARAMS_LIMIT = 16_000
_CREATE_ATTEMPTS = 5
_ID_LENGTH = 250  # Airflow's ID_LEN: dag_id, task_id and run_id are at most this long


def runs_table_name(ledger_table_name: str) -> str:
    """The run history table of a ledger table: ``<ledger_table>_runs``, in the same schema."""
    return f"{ledger_table_name}_runs"


def to_ms(moment: datetime | None) -> int | None:
    """``moment`` in Unix milliseconds; a naive datetime is read as UTC (as the sample warehouse stores times)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _json_default(value: Any) -> Any:
    # Rendered parameters are mostly strings; a DAG may pass datetimes, Decimals, UUIDs.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str)
    return str(value)


def params_json(params: Mapping[str, Any] | None) -> str | None:
    """The rendered query parameters as JSON text (sorted keys), as stored in ``window_params``."""
    if params is None:
        return None
    text = json.dumps(dict(params), sort_keys=True, default=_json_default, ensure_ascii=False)
    return storable(text, PARAMS_LIMIT)


def describe_error(error: BaseException) -> str:
    """``Class: message`` of ``error``, storable and cut to :data:`ERROR_LIMIT` characters.

    A SQLAlchemy statement error is described by the driver's message, without
    the statement and its parameters that SQLAlchemy appends.
    """
    message = str(error.orig) if isinstance(error, sa.exc.StatementError) and error.orig else str(error)
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return storable(text, ERROR_LIMIT)


def outcome_of(error: BaseException | None) -> str:
    """The outcome of a run that ended with ``error``: success, interrupted (a signal, Ctrl-C) or failed."""
    if error is None:
        return SUCCESS
    if isinstance(error, PagentInterruptedError | KeyboardInterrupt):
        return INTERRUPTED
    return FAILED


def _error_name(error: BaseException) -> str:
    """The error's class, the driver's class and its code: never the statement or its parameters."""
    parts = [type(error).__name__]
    orig = getattr(error, "orig", None)
    if orig is not None:
        parts.append(f"{type(orig).__module__}.{type(orig).__name__}")
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or getattr(orig, "errno", None)
        if code is None and orig.args and isinstance(orig.args[0], int):
            code = orig.args[0]  # mysqlclient, PyMySQL
        if code is not None:
            parts.append(f"code {code}")
    return ", ".join(parts)


@dataclass(frozen=True)
class RunStart:
    """Who starts a run, when, and over which window: the row written by :meth:`RunHistory.start`.

    Attributes:
        run_token: the run's :attr:`ClaimOwner.run_token`.
        namespace: the ledger namespace.
        host: the host as written on claims (:func:`~pagent_provider.core.owner.host_identity`).
        pid: the process id.
        params: the rendered query parameters.
        window_start: the start of the data interval selected, when known.
        window_end: its end (exclusive), when known.
        dag_id: the Airflow DAG, or ``None`` outside Airflow.
        task_id: the Airflow task.
        run_id: the Airflow DAG run.
        map_index: the mapped task's index (``-1`` when not mapped, as Airflow has it).
        try_number: the task instance's try.
        started_at: Unix milliseconds.
    """

    run_token: str
    namespace: str
    host: str
    pid: int
    params: Mapping[str, Any] | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    started_at: int = field(default_factory=now_ms)

    @classmethod
    def of(
        cls,
        owner: ClaimOwner,
        namespace: str,
        *,
        params: Mapping[str, Any] | None = None,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        dag_id: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
        started_at: int | None = None,
    ) -> RunStart:
        """The start of the run that ``owner`` identifies (token, host, pid and try come from it).

        ``started_at`` (Unix milliseconds) defaults to now.
        """
        return cls(
            run_token=owner.run_token,
            namespace=namespace,
            host=owner.host,
            pid=owner.pid,
            params=params,
            window_start=window_start,
            window_end=window_end,
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            map_index=map_index,
            try_number=owner.try_number,
            started_at=now_ms() if started_at is None else started_at,
        )

    def row(self) -> dict[str, Any]:
        """The row as inserted, outcome ``running``."""
        return {
            "run_token": self.run_token,
            "namespace": self.namespace,
            "dag_id": _cut(self.dag_id, _ID_LENGTH),
            "task_id": _cut(self.task_id, _ID_LENGTH),
            "run_id": _cut(self.run_id, _ID_LENGTH),
            "map_index": self.map_index,
            "try_number": self.try_number,
            "host": storable(self.host, 255),
            "pid": self.pid,
            "started_at": self.started_at,
            "window_start": to_ms(self.window_start),
            "window_end": to_ms(self.window_end),
            "window_params": params_json(self.params),
            "outcome": RUNNING,
        }


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else storable(text, limit)


@dataclass(frozen=True)
class RunRow:
    """One row of the run history, as read back; ``counts`` maps summary names to values (``None`` if unknown)."""

    run_token: str
    namespace: str
    dag_id: str | None
    task_id: str | None
    run_id: str | None
    map_index: int | None
    try_number: int | None
    host: str | None
    pid: int | None
    started_at: int
    finished_at: int | None
    window_start: int | None
    window_end: int | None
    window_params: str | None
    outcome: str
    error: str | None
    counts: dict[str, int | None]
    duration_ms: int | None

    @property
    def params(self) -> dict[str, Any] | None:
        """The rendered query parameters, or ``None`` (none recorded, or cut and no longer JSON)."""
        if self.window_params is None:
            return None
        try:
            parsed = json.loads(self.window_params)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def as_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict: the parameters parsed, the counts under their summary names."""
        row = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "counts"}
        row["params"] = self.params
        row.update(self.counts)
        return row


def build_runs_table(table_name: str, key: Callable[[int], sa.types.TypeEngine[str]]) -> sa.Table:
    """The run history table; ``key`` is the dialect's type of a byte-exact key column (as the ledger's)."""
    schema, name = _table_parts(table_name)
    metadata = sa.MetaData(schema=schema)
    return sa.Table(
        name,
        metadata,
        sa.Column("run_token", key(32), primary_key=True),
        # byte-exact like the ledger's, so that "Prod" and "prod" are two namespaces here too
        sa.Column("namespace", key(128), nullable=False),
        sa.Column("dag_id", sa.String(_ID_LENGTH)),
        sa.Column("task_id", sa.String(_ID_LENGTH)),
        sa.Column("run_id", sa.String(_ID_LENGTH)),
        sa.Column("map_index", sa.Integer),
        sa.Column("try_number", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("window_start", sa.BigInteger),
        sa.Column("window_end", sa.BigInteger),
        sa.Column("window_params", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.String(ERROR_LIMIT)),
        *(sa.Column(column, sa.BigInteger) for column in COUNT_COLUMNS.values()),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Index(f"ix_{name}_ns", "namespace", "started_at"),
        sa.Index(f"ix_{name}_window", "namespace", "window_start"),
        # text may hold any character: utf8mb4 whatever the MySQL database's default
        mysql_charset="utf8mb4",
        mariadb_charset="utf8mb4",
    )


def _counts(summary: Mapping[str, Any] | None) -> dict[str, int | None]:
    """The history's count columns from a summary dict; all ``None`` without a summary."""
    summary = summary or {}
    values: dict[str, int | None] = {}
    for name, column in COUNT_COLUMNS.items():
        value = summary.get(name)
        values[column] = int(value) if isinstance(value, int | float) else None
    duration = summary.get("duration_s")
    values["duration_ms"] = round(float(duration) * 1000) if isinstance(duration, int | float) else None
    return values


class RunHistory:
    """Writes and reads ``<ledger_table>_runs``; see the module docstring.

    No method raises for a database problem: a write that fails logs one
    warning (the error's class and code, never the statement or its
    parameters) and returns ``False``; a read returns nothing.

    Args:
        engine: the ledger's database (PostgreSQL, MySQL/MariaDB or SQLite).
        ledger_table_name: the ledger table (``schema.table`` works); the
            history goes to ``<ledger_table_name>_runs`` in the same schema.
        logger: where the warnings go (the operator passes its task logger).

    Raises:
        PagentConfigError: the table name is not a plain SQL identifier.
        PagentLedgerError: the database cannot keep the ledger, hence no history either.
    """

    def __init__(
        self,
        engine: sa.Engine,
        ledger_table_name: str = defaults.LEDGER_TABLE,
        *,
        logger: TaskLogger | None = None,
    ) -> None:
        self.engine = engine
        self.database = ledger_dialect(engine.dialect.name)
        self.table_name = runs_table_name(ledger_table_name)
        self.table = build_runs_table(self.table_name, self.database.key_type)
        self.log = logger or log
        self._created = False
        # What start() wrote, so that finish() can write the whole row when start's write failed.
        self._starts: dict[str, RunStart] = {}
        if self.database.prepare_engine is not None:
            self.database.prepare_engine(engine)

    @classmethod
    def for_ledger(cls, ledger: Ledger, **kwargs: Any) -> RunHistory:
        """The history next to ``ledger``: same engine, ``<ledger.table_name>_runs``."""
        return cls(ledger.engine, ledger.table_name, **kwargs)

    def __repr__(self) -> str:
        return f"RunHistory(table={self.table_name!r}, url={self.engine.url!r})"

    # --- writing ------------------------------------------------------------

    def _quietly(self, operation: str, work: Callable[[], Any]) -> bool:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - the history must never fail a sync
            self.log.warning(
                "run history table %r: could not %s (%s); the sync goes on without it",
                self.table_name,
                operation,
                _error_name(error),
            )
            return False
        return True

    def create_table(self) -> bool:
        """Create the table when missing (safe when several workers race); ``False`` if it failed."""
        self._created = self._quietly("create the table", self._create_missing_table)
        return self._created

    def _create_missing_table(self) -> None:
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                if self.database.before_create is not None:
                    self.database.before_create(self.engine)
                self.table.metadata.create_all(self.engine, checkfirst=True)
                return
            except sa.exc.DBAPIError:
                # Another worker created the table (or its index) between our check
                # and our CREATE, or (SQLite) holds the lock that switching the file
                # to WAL needs, which the busy timeout does not wait for: try again.
                if attempt == _CREATE_ATTEMPTS:
                    if self.exists():
                        return
                    raise
                time.sleep(0.05 * attempt)

    def exists(self) -> bool:
        """True when the table is there."""
        return sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema)

    def start(self, run: RunStart) -> bool:
        """Record that ``run`` started (outcome ``running``), creating the table on first use."""
        self._starts[run.run_token] = run
        if not self._created and not self.create_table():
            return False
        return self._quietly("record the start of a run", lambda: self._insert(run.row()))

    def _insert(self, row: Mapping[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), [dict(row)])

    def finish(
        self,
        run_token: str,
        summary: Mapping[str, Any] | None,
        outcome: str | None = None,
        error: BaseException | None = None,
    ) -> bool:
        """Record how a run ended: its outcome, counts and error.

        Args:
            run_token: the token given to :meth:`start`.
            summary: the sync's ``SyncSummary.as_dict()`` (a failed sync's is
                ``error.summary``); ``None`` when the run ended before its sync started.
            outcome: ``success``, ``failed`` or ``interrupted``; by default
                :func:`outcome_of` ``error``.
            error: what ended the run, or ``None``.
        """
        start = self._starts.pop(run_token, None)
        if not self._created and not self.create_table():
            return False
        return self._quietly(
            "record the end of a run",
            lambda: self._update_or_insert(run_token, self._end_values(summary, outcome, error), start),
        )

    def _end_values(
        self, summary: Mapping[str, Any] | None, outcome: str | None, error: BaseException | None
    ) -> dict[str, Any]:
        outcome = outcome or outcome_of(error)
        if outcome not in FINISHED_OUTCOMES:
            # a bug of the caller, but still no reason to fail the run it records
            self.log.warning("run history: unknown outcome %r recorded as %r", outcome, FAILED)
            outcome = FAILED
        return {
            "finished_at": now_ms(),
            "outcome": outcome,
            "error": None if error is None else describe_error(error),
            **_counts(summary),
        }

    def _update_or_insert(self, run_token: str, values: dict[str, Any], start: RunStart | None) -> None:
        t = self.table
        with self.engine.begin() as conn:
            updated = conn.execute(t.update().where(t.c.run_token == run_token).values(**values)).rowcount
            if updated == 0 and start is not None:
                # start() could not write its row (the database was down then): write it all now
                conn.execute(t.insert(), [{**start.row(), **values}])

    # --- reading ------------------------------------------------------------

    def recent(self, namespace: str, limit: int = 20) -> list[RunRow]:
        """The last ``limit`` runs of ``namespace``, the latest first (none when the table is missing)."""
        t = self.table
        query = sa.select(t).where(t.c.namespace == namespace).order_by(t.c.started_at.desc()).limit(limit)
        return self._select("read recent runs", query)

    def covering(self, namespace: str, start: datetime, end: datetime) -> list[RunRow]:
        """The runs whose window overlaps ``[start, end)``, in the order they started (the docstring's query)."""
        t = self.table
        query = (
            sa.select(t)
            .where(t.c.namespace == namespace, t.c.window_start < to_ms(end), t.c.window_end > to_ms(start))
            .order_by(t.c.started_at)
        )
        return self._select("read the runs of a window", query)

    def _select(self, operation: str, query: sa.Select) -> list[RunRow]:
        rows: list[RunRow] = []

        def read() -> None:
            if not self._created and not self.exists():
                return  # no run was recorded yet: nothing to warn about
            with self.engine.connect() as conn:
                rows.extend(_run_row(row._mapping) for row in conn.execute(query))

        self._quietly(operation, read)
        return rows


def _run_row(row: sa.RowMapping) -> RunRow:
    fields = {name: row[name] for name in RunRow.__dataclass_fields__ if name != "counts"}
    counts = {name: row[column] for name, column in COUNT_COLUMNS.items()}
    return RunRow(**fields, counts=counts)
