"""Registration with Airflow: the provider, its hook and its connection form."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import jsonschema

from pagent_provider.get_provider_info import get_provider_info


def test_provider_info_matches_the_distribution_and_airflow_schema():
    import airflow

    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-pagent"
    assert info["versions"][0] == version("airflow-provider-pagent")
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    [entry] = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("pagent_provider")]
    assert entry.load() is get_provider_info


def test_providers_manager_lists_provider_and_pagent_connection_type():
    from airflow.providers_manager import ProvidersManager

    try:  # Airflow 3.2+: the task runtime has its own manager of hooks
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    except ImportError:
        hooks = ProvidersManager().hooks

    manager = ProvidersManager()
    assert "airflow-provider-pagent" in manager.providers
    assert manager.providers["airflow-provider-pagent"].version == version("airflow-provider-pagent")
    hook = hooks["pagent"]
    assert hook.hook_class_name == "pagent_provider.hooks.pagent.PagentHook"
    assert hook.connection_testable
    behaviour = manager.field_behaviours["pagent"]
    assert "login" in behaviour["hidden_fields"] and "password" not in behaviour["hidden_fields"]
    assert behaviour["relabeling"]["password"] == "API key"
    assert behaviour["placeholders"]["host"] == "https://ingest.pagent.ai"
    widgets = manager.connection_form_widgets
    assert {"extra__pagent__timeout", "extra__pagent__max_retries"} <= set(widgets)


def test_airflow_cli_lists_provider_and_hook():
    airflow = Path(sys.executable).parent / "airflow"
    providers = subprocess.run([airflow, "providers", "list", "-o", "json"], capture_output=True, text=True, check=True)
    assert "airflow-provider-pagent" in [p["package_name"] for p in json.loads(providers.stdout)]
    hooks = subprocess.run([airflow, "providers", "hooks", "-o", "json"], capture_output=True, text=True, check=True)
    assert "pagent" in [h["connection_type"] for h in json.loads(hooks.stdout)]


def test_hook_uses_airflow_sdk_base_classes():
    from airflow.providers.common.compat.sdk import BaseHook, BaseOperator

    from pagent_provider.hooks.pagent import PagentHook
    from pagent_provider.operators.conversions import ConversionsOperator

    assert issubclass(PagentHook, BaseHook)
    assert issubclass(ConversionsOperator, BaseOperator)
    assert (PagentHook.conn_type, PagentHook.default_conn_name, PagentHook.conn_name_attr, PagentHook.hook_name) == (
        "pagent",
        "pagent_default",
        "pagent_conn_id",
        "Pagent",
    )


def test_airflow_connections_test_cli(pagent_emulator, tmp_path):
    import os

    airflow = Path(sys.executable).parent / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_PAGENT_DEFAULT": pagent_emulator.airflow_connection_json(),
    }
    good = subprocess.run([airflow, "connections", "test", "pagent_default"], env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "Connection success!" in good.stdout
    assert [r.status for r in pagent_emulator.requests()] == [400]  # the empty batch: key accepted

    env["AIRFLOW_CONN_PAGENT_DEFAULT"] = pagent_emulator.airflow_connection_json("wrong-key")
    bad = subprocess.run([airflow, "connections", "test", "pagent_default"], env=env, capture_output=True, text=True)
    assert "401" in bad.stdout + bad.stderr
    assert "wrong-key" not in bad.stdout + bad.stderr
    assert pagent_emulator.events() == []
