"""Lineage of :class:`~pagent_provider.operators.conversions.ConversionsOperator`.

Input: the tables its query reads, found the way common-sql's operators find
them (OpenLineage's ``SQLParser`` plus the hook's ``get_openlineage_database_info``).
For a hook that has no database info (SQLite, for one) the query is still
parsed and the tables are named from the connection: ``sqlite://<database
file>`` with the tables in schema ``main``.

Output: the pagent dataset ``pagent://<host of the pagent connection>`` named
``conversions``, e.g. ``pagent://ingest.pagent.ai/conversions``. Only the host
(and a non-default port) of the connection is used: never its login, password
(the API key) or extras. A dry run writes nothing, so it reports no output.

OpenLineage is optional: without ``apache-airflow-providers-openlineage`` the
facet functions return ``None`` and log only at DEBUG. Airflow's own hook-level
lineage collector (no provider needed) gets the output as an ``Asset`` with the
same URI.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pagent_provider.hooks.pagent import PagentHook, base_url_from_connection

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.openlineage.extractors import OperatorLineage

    from pagent_provider.operators.conversions import ConversionsOperator

log = logging.getLogger(__name__)

PAGENT_SCHEME = "pagent"
CONVERSIONS_DATASET = "conversions"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def pagent_namespace(pagent_conn_id: str) -> str:
    """``pagent://<host[:port]>`` of the connection's base URL (empty host: the public API)."""
    conn = PagentHook.get_connection(pagent_conn_id)
    parts = urlsplit(base_url_from_connection(conn.host, conn.port, conn.schema))
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return f"{PAGENT_SCHEME}://{host}"


def pagent_asset_uri(pagent_conn_id: str) -> str:
    """URI of the pagent output: ``pagent://<host[:port]>/conversions``."""
    return f"{pagent_namespace(pagent_conn_id)}/{CONVERSIONS_DATASET}"


def openlineage_facets_on_start(operator: ConversionsOperator) -> OperatorLineage | None:
    """Inputs (tables the query reads), the pagent output, the query as a job facet."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
    except ImportError:
        log.debug("OpenLineage provider not installed: %s reports no lineage", operator.task_id)
        return None

    try:
        lineage = _sql_lineage(operator)
    except Exception:
        log.warning("OpenLineage: could not find the tables %s reads", operator.task_id, exc_info=True)
        lineage = OperatorLineage()
    if operator.dry_run_only:
        return lineage
    try:
        output = Dataset(namespace=pagent_namespace(operator.pagent_conn_id), name=CONVERSIONS_DATASET)
    except Exception:
        log.warning("OpenLineage: could not name the pagent output of %s", operator.task_id, exc_info=True)
        return lineage
    return OperatorLineage(
        inputs=lineage.inputs,
        outputs=[*lineage.outputs, output],
        run_facets=lineage.run_facets,
        job_facets=lineage.job_facets,
    )


def openlineage_facets_on_complete(operator: ConversionsOperator, task_instance: Any) -> OperatorLineage | None:
    """The start lineage plus whatever the database hook adds once the query ran."""
    lineage = openlineage_facets_on_start(operator)
    if lineage is None:
        return None
    try:
        extra = operator.get_db_hook().get_openlineage_database_specific_lineage(task_instance)
    except Exception:
        log.debug("OpenLineage: no database specific lineage for %s", operator.task_id, exc_info=True)
        extra = None
    return lineage.merge(extra) if extra is not None else lineage


def report_output_asset(operator: ConversionsOperator) -> None:
    """Tell Airflow's hook-level lineage collector about the pagent output (not on dry runs)."""
    if operator.dry_run_only:
        return
    try:
        from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

        collector = get_hook_lineage_collector()
        uri = pagent_asset_uri(operator.pagent_conn_id)
        collector.add_output_asset(context=PagentHook(operator.pagent_conn_id), uri=uri)
    except Exception:
        log.debug("Hook lineage: could not report the output of %s", operator.task_id, exc_info=True)


def _sql_lineage(operator: ConversionsOperator) -> OperatorLineage:
    """What common-sql operators report, also for hooks without database info."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.providers.openlineage.sqlparser import SQLParser

    sql = operator.sql
    if not isinstance(sql, str) or not sql.strip():
        return OperatorLineage()
    hook = operator.get_db_hook()
    connection = hook.get_connection(getattr(hook, hook.conn_name_attr))
    database_info = hook.get_openlineage_database_info(connection)
    if database_info is not None:
        parser = SQLParser(
            dialect=hook.get_openlineage_database_dialect(connection),
            default_schema=hook.get_openlineage_default_schema(),
        )
        engine = hook.get_sqlalchemy_engine()  # only compiles the information-schema query
        try:
            return parser.generate_openlineage_metadata_from_sql(
                sql=sql,
                hook=hook,
                database_info=database_info,
                database=operator.database,
                sqlalchemy_engine=engine,
                use_connection=True,
            )
        finally:
            engine.dispose()
    database_info, dialect, default_schema = _fallback_database_info(hook, connection)
    parser = SQLParser(dialect=dialect, default_schema=default_schema)
    return parser.generate_openlineage_metadata_from_sql(
        sql=sql, hook=hook, database_info=database_info, database=operator.database, use_connection=False
    )


def _fallback_database_info(hook: DbApiHook, connection: Any) -> tuple[Any, str, str | None]:
    """Name tables from the connection alone: ``sqlite://<file>`` or ``<conn_type>://<host[:port]>``."""
    from airflow.providers.openlineage.sqlparser import DatabaseInfo

    if connection.conn_type == "sqlite":
        path = connection.host or ""
        if path and not path.startswith((":", "file:")):
            path = os.path.abspath(path)
        return DatabaseInfo(scheme="sqlite", authority=path or None), "sqlite", "main"
    authority = connection.host or None
    if authority and connection.port:
        authority = f"{authority}:{connection.port}"
    return (
        DatabaseInfo(scheme=connection.conn_type or "generic", authority=authority),
        hook.get_openlineage_database_dialect(connection),
        hook.get_openlineage_default_schema(),
    )
