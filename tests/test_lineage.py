"""Lineage: the warehouse tables read (input) and the pagent dataset written (output)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys

import pytest

from pagent_provider.operators.conversions import ConversionsOperator

API_KEY = "sk-lineage-secret-key"
SQL = "SELECT order_id, amount_usd, converted_at FROM conversions WHERE converted_at >= :start"


@pytest.fixture
def sqlite_warehouse(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversions (order_id TEXT, amount_usd REAL, converted_at TEXT)")
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


@pytest.fixture
def pagent_conn(monkeypatch):
    conn = {"conn_type": "pagent", "host": "http://127.0.0.1", "port": 8080, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))


def _operator(**kwargs) -> ConversionsOperator:
    return ConversionsOperator(task_id="upload", conn_id="warehouse", sql=SQL, key_column="order_id", **kwargs)


def _names(datasets) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def test_sqlite_input_and_pagent_output(sqlite_warehouse, pagent_conn):
    operator = _operator()

    start = operator.get_openlineage_facets_on_start()
    complete = operator.get_openlineage_facets_on_complete(task_instance=None)

    for lineage in (start, complete):
        # SqliteHook has no OpenLineage database info: tables are named from the connection.
        assert _names(lineage.inputs) == [(f"sqlite://{sqlite_warehouse}", "main.conversions")]
        assert _names(lineage.outputs) == [("pagent://127.0.0.1:8080", "conversions")]
        assert lineage.outputs[0].facets == {}
        assert lineage.job_facets["sql"].query == SQL
    assert API_KEY not in repr(start) + repr(complete)


@pytest.mark.parametrize(
    ("conn", "namespace"),
    [
        ({"conn_type": "pagent", "password": API_KEY}, "pagent://ingest.pagent.ai"),
        (
            {"conn_type": "pagent", "host": "https://Ingest.Pagent.AI:443/", "password": API_KEY},
            "pagent://ingest.pagent.ai",
        ),
        ({"conn_type": "pagent", "host": "proxy.example.com", "port": 8443}, "pagent://proxy.example.com:8443"),
        ({"conn_type": "pagent", "host": "https://user:pw@eu.example.com/api"}, "pagent://eu.example.com"),
    ],
)
def test_output_namespace_is_the_host_of_the_pagent_connection(sqlite_warehouse, monkeypatch, conn, namespace):
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_PROD", json.dumps(conn))

    lineage = _operator(pagent_conn_id="pagent_prod").get_openlineage_facets_on_start()

    assert _names(lineage.outputs) == [(namespace, "conversions")]
    assert API_KEY not in repr(lineage) and "pw" not in lineage.outputs[0].namespace


def test_dry_run_reads_but_writes_nothing(sqlite_warehouse, pagent_conn):
    lineage = _operator(dry_run=True).get_openlineage_facets_on_start()

    assert _names(lineage.inputs) == [(f"sqlite://{sqlite_warehouse}", "main.conversions")]
    assert lineage.outputs == []


def test_postgres_input_named_from_database_info(postgres_url, pagent_conn, monkeypatch):
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE conversions (order_id text, amount_usd numeric, converted_at timestamptz)")
    engine.dispose()
    url = sa.engine.make_url(postgres_url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": url.host,
                "port": url.port,
                "login": url.username,
                "password": url.password,
                "schema": url.database,
            }
        ),
    )

    lineage = _operator().get_openlineage_facets_on_start()

    assert _names(lineage.inputs) == [("postgres://127.0.0.1:5432", f"{url.database}.public.conversions")]
    schema = lineage.inputs[0].facets["schema"]
    assert [(f.name, f.type) for f in schema.fields] == [
        ("order_id", "text"),
        ("amount_usd", "numeric"),
        ("converted_at", "timestamptz"),
    ]
    assert _names(lineage.outputs) == [("pagent://127.0.0.1:8080", "conversions")]


def test_without_openlineage_nothing_breaks_and_nothing_is_logged(sqlite_warehouse, pagent_conn, monkeypatch, caplog):
    for name in list(sys.modules):
        if name == "openlineage" or name.startswith(("openlineage.", "airflow.providers.openlineage")):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage", None)
    monkeypatch.setitem(sys.modules, "openlineage", None)
    with pytest.raises(ImportError):
        import airflow.providers.openlineage.extractors  # noqa: F401
    operator = _operator()

    with caplog.at_level(logging.DEBUG):
        assert operator.get_openlineage_facets_on_start() is None
        assert operator.get_openlineage_facets_on_complete(task_instance=None) is None

    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []


def test_unreadable_sql_still_reports_the_output(sqlite_warehouse, pagent_conn):
    operator = _operator()
    operator.sql = "SELEKT nonsense FROM"

    lineage = operator.get_openlineage_facets_on_start()

    assert lineage.inputs == []
    assert _names(lineage.outputs) == [("pagent://127.0.0.1:8080", "conversions")]


@pytest.fixture
def hook_lineage_collector(monkeypatch):
    """A fresh collector, as when a plugin registers a hook lineage reader (e.g. an enabled OpenLineage)."""
    from airflow.sdk import plugins_manager
    from airflow.sdk.lineage import HookLineageCollector, HookLineageReader, get_hook_lineage_collector

    monkeypatch.setattr(plugins_manager, "get_hook_lineage_readers_plugins", lambda: [HookLineageReader])
    get_hook_lineage_collector.cache_clear()
    collector = get_hook_lineage_collector()
    assert type(collector) is HookLineageCollector
    yield collector
    get_hook_lineage_collector.cache_clear()


def test_the_output_asset_is_reported_to_hook_lineage(sqlite_warehouse, pagent_conn, hook_lineage_collector):
    from airflow.sdk import Asset

    from pagent_provider.hooks.pagent import PagentHook
    from pagent_provider.lineage import report_output_asset

    report_output_asset(_operator())  # what execute() calls once the sync succeeded

    [output] = hook_lineage_collector.collected_assets.outputs
    assert output.asset == Asset(uri="pagent://127.0.0.1:8080/conversions")
    assert isinstance(output.context, PagentHook)
    assert hook_lineage_collector.collected_assets.inputs == []
    assert API_KEY not in repr(output.asset)


def test_dry_run_reports_no_asset_to_hook_lineage(sqlite_warehouse, pagent_conn, hook_lineage_collector):
    from pagent_provider.lineage import report_output_asset

    report_output_asset(_operator(dry_run=True))

    assert not hook_lineage_collector.has_collected
