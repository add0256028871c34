"""ConversionsOperator: warehouse rows -> pagent conversions, each sent once."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from airflow.providers.common.compat.sdk import conf
from airflow.providers.common.sql.operators.sql import BaseSQLOperator

from pagent_provider.core import defaults
from pagent_provider.core.apis import IngestApi
from pagent_provider.core.ledger import Ledger, UnknownOutcomePolicy
from pagent_provider.core.ledger_dialects import check_placement
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.placeholders import check_placeholder_style
from pagent_provider.core.silent_success import empty_interval_error
from pagent_provider.core.stopping import stop_gracefully_on
from pagent_provider.core.sync import KEY_COLUMN_WARNING, ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.exceptions import PagentConfigError, PagentFatalError
from pagent_provider.hooks.pagent import PagentHook, as_airflow_failure
from pagent_provider.hooks.sql_source import ReadMode, check_read_mode, open_sql_source
from pagent_provider.lineage import openlineage_facets_on_complete, openlineage_facets_on_start, report_output_asset
from pagent_provider.operators.lookback import check_lookback, with_lookback
from pagent_provider.operators.run_reporting import describe_start, reporting

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from airflow.providers.common.compat.sdk import Context
    from airflow.providers.openlineage.extractors import OperatorLineage


class ConversionsOperator(BaseSQLOperator):
    """Upload conversions selected from a warehouse to pagent, idempotently.

    Rows are streamed from ``sql`` in chunks, turned into v1 events (revenue in
    exact integer cents, time in Unix milliseconds), validated, and sent in
    batches of up to 100 on ``max_workers`` concurrent requests. A ledger table
    records every key that was claimed, sent, or whose outcome is unknown, so
    that retries, re-runs, overlapping backfills and parallel workers never
    send a conversion twice.

    :param conn_id: any Airflow SQL connection (sqlite, postgres, mysql, ...).
    :param sql: the query, or a path ending in ``.sql`` (templated).
    :param parameters: values for ``:name`` placeholders in ``sql`` (templated).
    :param pagent_conn_id: the ``pagent`` connection.
    :param columns: event field -> result column, for fields whose column is named
        differently (``{"time": "converted_at", "revenue": "amount_usd"}``).
    :param properties_columns: extra columns gathered into the ``properties`` object.
    :param key_column: a stable unique row key (an order id). Strongly advised:
        without it the key is a hash of the event's content, so a corrected row
        would be sent again as a new conversion.
    :param revenue_unit: ``"dollars"`` (major units, converted to cents) or ``"cents"``.
    :param timezone: the IANA zone naive timestamps are read in.
    :param label: a constant label for every event (replaces the column).
    :param conversion_id: a constant goal UUID for every event (replaces the column).
    :param require_time: refuse rows without a conversion time (default), since
        pagent would stamp them "now".
    :param session_data_column: a column holding the whole ``_pgnt.variables()`` object
        (JSON, native or as text), read for session_id, user_id, conversion_id and
        visit_id; a constant or a ``columns`` mapping of a field overrides it.
    :param max_invalid_rows: the task fails when more rows are invalid or refused.
    :param batch_size: events per request, 1 to 100.
    :param max_workers: concurrent requests.
    :param chunksize: rows per DataFrame chunk read from the warehouse.
    :param dry_run: read, transform and validate, but send and record nothing
        (kept as ``dry_run_only``; ``dry_run()`` stays BaseOperator's method).
    :param use_ledger: keep the delivery ledger (turning it off loses every guarantee).
    :param ledger_conn_id: SQL connection of the ledger; defaults to ``conn_id``.
    :param ledger_table: the ledger table (``schema.table`` works); rejects go to
        ``<ledger_table>_rejects``.
    :param ledger_namespace: the ledger's key scope; defaults to ``pagent_conn_id``.
        DAGs that upload to the same pagent account should share it.
    :param unknown_outcome: what the next run does with events whose outcome is
        unknown: ``"resend"`` (at least once) or ``"skip"`` (at most once).
    :param claim_timeout: seconds without heartbeat after which a claim counts as abandoned.
    :param claimed_elsewhere_wait: at the end of the run, seconds to wait for rows another
        live run is sending; still held after that, the task fails with a retriable error.
    :param read_mode: how rows are read from ``conn_id``: ``"auto"`` (chosen per
        connection type, see :data:`pagent_provider.hooks.sql_source.READ_PATHS`),
        ``"sqlalchemy"`` (the hook's engine, streamed with a server-side cursor) or
        ``"dbapi"`` (the hook's ``get_conn()``, read with ``fetchmany``).
    :param lookback: also select this much before the run's window (``timedelta(days=3)``),
        so that rows that arrived late, or were invalid or refused and have been fixed
        since, go out on the next run; what was sent is skipped by the ledger
        (``already_sent``). It moves the rendered query parameter ``lookback_parameter``
        back (see :mod:`pagent_provider.operators.lookback`); the SQL is not changed.
    :param lookback_parameter: the query parameter holding the window's start (default ``"start"``).
    :param api: the ingest API: ``"v1"`` (default; ``POST /v1/conversions``) or ``"v2"``
        (``POST /v2/conversions/bulk``, the session variables and ``visit_id`` in
        ``session_data``). Same batches, ledger, keys and content hashes: switching an
        existing ledger from one to the other resends nothing.
    :return: the summary dict (XCom): ``rows``, ``valid``, ``invalid``, ``sent``,
        ``accepted``, ``batches``, ``duration_s``, ``dry_run``, ``already_sent``,
        ``unknown``, ``changed_after_send``, ``rejected``, ``warnings`` and more.

    Before it reads, a run fails (without retries) when the rendered SQL uses
    ``%(name)s``, ``%s`` or ``?`` placeholders, and when its data interval is
    empty (start equals end) while the query selects by it; it warns when the
    time column holds DATE values and when it selected 0 rows where the
    previous runs selected thousands (see :mod:`pagent_provider.core.silent_success`).
    """

    template_fields: Sequence[str] = (*BaseSQLOperator.template_fields, "sql", "parameters", "ledger_namespace")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"sql": "sql", "parameters": "json"}
    ui_color = "#ffd166"
    conn_id: str  # required here; BaseSQLOperator's may be None

    def __init__(
        self,
        *,
        sql: str,
        conn_id: str,
        parameters: Mapping[str, Any] | None = None,
        pagent_conn_id: str = defaults.PAGENT_CONN_ID,
        columns: Mapping[str, str] | None = None,
        properties_columns: Sequence[str] | None = None,
        key_column: str | None = None,
        revenue_unit: Literal["dollars", "cents"] = defaults.REVENUE_UNIT,  # type: ignore[assignment]
        timezone: str = defaults.TIMEZONE,
        label: str | None = None,
        conversion_id: str | None = None,
        require_time: bool = True,
        session_data_column: str | None = None,
        max_invalid_rows: int = 0,
        batch_size: int = defaults.BATCH_SIZE,
        max_workers: int = defaults.MAX_WORKERS,
        chunksize: int = defaults.CHUNKSIZE,
        dry_run: bool = False,
        use_ledger: bool = True,
        ledger_conn_id: str | None = None,
        ledger_table: str = defaults.LEDGER_TABLE,
        ledger_namespace: str | None = None,
        unknown_outcome: UnknownOutcomePolicy = defaults.UNKNOWN_OUTCOME,  # type: ignore[assignment]
        claim_timeout: float = defaults.CLAIM_TIMEOUT_S,
        claimed_elsewhere_wait: float = defaults.CLAIMED_ELSEWHERE_WAIT_S,
        read_mode: ReadMode = "auto",
        lookback: timedelta | None = None,
        lookback_parameter: str = "start",
        api: IngestApi = defaults.API,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.sql = sql
        self.parameters = parameters
        self.pagent_conn_id = pagent_conn_id
        self.columns = dict(columns or {})
        self.properties_columns = list(properties_columns) if properties_columns else None
        self.key_column = key_column
        self.revenue_unit = revenue_unit
        self.timezone = timezone
        self.event_label = label  # BaseOperator already has a `label` property
        self.conversion_id = conversion_id
        self.require_time = require_time
        self.session_data_column = session_data_column
        self.max_invalid_rows = max_invalid_rows
        self.batch_size = batch_size
        self.max_workers = max_workers
        self.chunksize = chunksize
        # Not ``self.dry_run``: that would hide BaseOperator.dry_run(), which
        # ``airflow tasks test --dry-run`` calls on Airflow 2.11.
        self.dry_run_only = dry_run
        self.use_ledger = use_ledger
        self.ledger_conn_id = ledger_conn_id
        self.ledger_table = ledger_table
        self.ledger_namespace = ledger_namespace
        self.unknown_outcome = unknown_outcome
        self.claim_timeout = claim_timeout
        self.claimed_elsewhere_wait = claimed_elsewhere_wait
        self.api = api
        check_read_mode(read_mode)
        self.read_mode = read_mode
        check_lookback(lookback, lookback_parameter, parameters)
        self.lookback = lookback
        self.lookback_parameter = lookback_parameter
        # The templates as written, before Airflow renders them in place: what tells
        # whether the query selects by the data interval.
        self._sql_template = sql
        self._parameters_template = repr(parameters)
        self._running_sync: ConversionSync | None = None
        # Catch bad settings when the DAG is parsed, not when the task runs.
        self._sync_options()
        self._transform_config()
        if key_column is None and use_ledger:
            log.warning("task %s: %s", self.task_id, KEY_COLUMN_WARNING)  # in the DAG processor's log

    def _transform_config(self) -> TransformConfig:
        return TransformConfig(
            columns=self.columns,
            properties_columns=self.properties_columns,
            key_column=self.key_column,
            revenue_unit=self.revenue_unit,
            timezone=self.timezone,
            label=self.event_label,
            conversion_id=self.conversion_id,
            require_time=self.require_time,
            session_data_column=self.session_data_column,
        )

    def _sync_options(self) -> SyncOptions:
        return SyncOptions(
            batch_size=self.batch_size,
            max_workers=self.max_workers,
            max_invalid_rows=self.max_invalid_rows,
            dry_run=self.dry_run_only,
            claimed_elsewhere_wait_s=self.claimed_elsewhere_wait,
            api=self.api,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            parameters = self._check_before_reading(context)
        except PagentFatalError as error:
            raise as_airflow_failure(error) from error
        source = open_sql_source(self.get_db_hook(), self.read_mode)
        self.log.info("reading %s through %s: %s", self.conn_id, source.mode, source.reason)
        ledger_engine = self._ledger_engine()
        pagent = PagentHook(self.pagent_conn_id, pool_size=self.max_workers)
        try:
            with pagent.get_conn() as client:
                ledger = self._ledger(ledger_engine, context)
                sync = ConversionSync(
                    client, self._transform_config(), self._sync_options(), ledger=ledger, logger=self.log
                )
                self._running_sync = sync
                self.log.info("%s", describe_start(self, parameters, source.mode, client.base_url, ledger))
                # Airflow 3's supervisor sends SIGINT, then SIGTERM; Airflow 2 sends SIGTERM
                # and raises AirflowTaskTerminated right after on_kill(). Either way: stop
                # gracefully rather than let an exception land between pagent's answer and
                # the ledger (on_kill still serves Airflow's other callers, e.g. timeouts).
                with (
                    reporting(sync, ledger, context, parameters, self.log, window_start=self._window_start(context)),
                    stop_gracefully_on(sync.request_stop),
                ):
                    summary = sync.run(source.read_chunks(self.sql, parameters, chunksize=self.chunksize))
        except PagentFatalError as error:
            raise as_airflow_failure(error) from error
        finally:
            self._running_sync = None
            source.close()
            if ledger_engine is not None:
                ledger_engine.dispose()
        report_output_asset(self)  # Airflow's hook-level lineage: the pagent Asset
        return summary.as_dict()

    def _check_before_reading(self, context: Context) -> Any:
        """The checks that fail a run before it connects; the parameters to run the query with.

        Raises:
            PagentConfigError: driver-style placeholders in the SQL; an empty data
                interval while the query selects by it; a lookback that cannot apply.
        """
        check_placeholder_style(self.sql)
        if self.lookback is not None or self._selects_by_interval():
            problem = empty_interval_error(context.get("data_interval_start"), context.get("data_interval_end"))
            if problem is not None:
                raise PagentConfigError(problem)
        parameters = with_lookback(self.parameters, self.lookback_parameter, self.lookback)
        if self.lookback is not None:
            self.log.info(
                "lookback %s: %s=%r moved back to %r",
                self.lookback,
                self.lookback_parameter,
                (self.parameters or {}).get(self.lookback_parameter),
                (parameters or {}).get(self.lookback_parameter),
            )
        return parameters

    def _selects_by_interval(self) -> bool:
        """True when the SQL or the parameters, as written, mention the data interval."""
        written = [self._parameters_template, self._sql_template]
        if isinstance(self._sql_template, str) and self._sql_template.endswith(tuple(self.template_ext)):
            written.append(self._template_source(self._sql_template))
        return any("data_interval" in text for text in written)

    def _template_source(self, name: str) -> str:
        try:
            env = self.get_template_env()
            return env.loader.get_source(env, name)[0] if env.loader is not None else ""
        except Exception:  # noqa: BLE001 - a file Airflow rendered but we cannot read again: nothing mentioned
            return ""

    def _window_start(self, context: Context) -> Any:
        start = context.get("data_interval_start")
        return start - self.lookback if start is not None and self.lookback is not None else start

    def on_kill(self) -> None:
        """Stop the running sync gracefully: send nothing more, record the answers in flight.

        Airflow calls this on SIGTERM (after SIGINT, before SIGKILL); the task
        then fails with :class:`~pagent_provider.exceptions.PagentInterruptedError`
        once the requests in flight are recorded, usually within a second or two.
        """
        sync = self._running_sync
        if sync is not None:
            sync.request_stop("the task was killed (on_kill)")

    def _ledger_engine(self) -> sa.Engine | None:
        if not self.use_ledger:
            self.log.warning("use_ledger=False: re-runs and retries will send conversions again")
            return None
        hook = self.get_hook(self.ledger_conn_id or self.conn_id)
        return hook.get_sqlalchemy_engine()  # type: ignore[attr-defined]

    def _ledger(self, engine: sa.Engine | None, context: Context) -> Ledger | None:
        if engine is None:
            return None
        ledger = Ledger(
            engine,
            namespace=self.ledger_namespace or self.pagent_conn_id,
            owner=_owner_from_context(context),
            table_name=self.ledger_table,
            claim_timeout_s=self.claim_timeout,
            unknown_outcome=self.unknown_outcome,
        )
        check_placement(ledger.database, self._executor_name())  # before the first claim
        return ledger

    def _executor_name(self) -> str | None:
        """The executor this task runs on: its own ``executor``, else the first configured one."""
        own = getattr(self, "executor", None)
        if own:
            return str(own)
        configured = conf.get("core", "executor", fallback="") or ""
        return configured.split(",")[0].strip() or None

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        return openlineage_facets_on_start(self)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        return openlineage_facets_on_complete(self, task_instance)


def _owner_from_context(context: Context) -> ClaimOwner:
    ti = context.get("ti") if context else None
    if ti is None:
        return ClaimOwner()
    task = f"{ti.dag_id}/{ti.task_id}/{ti.run_id}/{getattr(ti, 'map_index', -1)}"
    return ClaimOwner(task=task, try_number=getattr(ti, "try_number", None))
