"""What differs between the supported Airflow versions (2.11, 3.0 to the latest 3.x).

These run on every line of the version matrix (scripts/test-matrix.sh): each
checks the provider against the Airflow installed, not against a fixed one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_2_PLUS

from pagent_provider.exceptions import PagentAuthError, PagentConfigError

ROOT = Path(__file__).resolve().parent.parent


def runner_fail_exception() -> type[BaseException]:
    """The AirflowFailException that this Airflow's task runner catches to fail a task at once."""
    try:  # task-sdk 1.2+ (Airflow 3.2+)
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # Airflow 2.11 to 3.1
        from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,attr-defined]
    return AirflowFailException


def test_the_hook_and_operator_import_and_use_this_airflows_base_classes() -> None:
    from airflow.providers.common.compat.sdk import BaseHook, BaseOperator

    from pagent_provider.hooks.pagent import PagentHook
    from pagent_provider.operators.conversions import ConversionsOperator

    assert issubclass(PagentHook, BaseHook)
    assert issubclass(ConversionsOperator, BaseOperator)


def test_fatal_errors_leave_the_hook_as_this_airflows_fail_fast_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    from pagent_provider.hooks.pagent import PagentHook, as_airflow_failure

    error = as_airflow_failure(PagentAuthError("401: the API key was refused"))
    assert isinstance(error, runner_fail_exception())
    assert isinstance(error, PagentAuthError) and str(error) == "401: the API key was refused"

    monkeypatch.setenv(
        "AIRFLOW_CONN_PAGENT_BAD", '{"conn_type": "pagent", "password": "test-key-0123", "extra": {"timeout": "x"}}'
    )
    with pytest.raises(PagentConfigError) as raised:
        PagentHook("pagent_bad").get_conn()
    assert isinstance(raised.value, runner_fail_exception())


def test_the_dry_run_parameter_does_not_hide_base_operator_dry_run() -> None:
    from airflow.providers.common.compat.sdk import BaseOperator

    from pagent_provider.operators.conversions import ConversionsOperator

    op = ConversionsOperator(task_id="t", conn_id="warehouse", sql="SELECT 1", key_column="id", dry_run=True)
    assert op.dry_run_only is True
    assert ConversionsOperator(task_id="u", conn_id="warehouse", sql="SELECT 1", key_column="id").dry_run_only is False
    if not hasattr(BaseOperator, "dry_run"):
        pytest.skip("this Airflow's BaseOperator has no dry_run() (the Task SDK of Airflow 3.0)")
    # `airflow tasks test --dry-run` (Airflow 2.11) calls it; it logs the templated fields.
    # It used to raise "TypeError: 'bool' object is not callable".
    assert op.dry_run() is None


@pytest.mark.skipif(AIRFLOW_V_3_2_PLUS, reason="Airflow 3.2+ reads the connection form from get_provider_info()")
def test_the_legacy_connection_form_on_airflow_before_3_2() -> None:
    if importlib.util.find_spec("wtforms") is None:
        pytest.skip("wtforms is not installed (no FAB provider): this Airflow builds no connection form widgets")
    from airflow.providers_manager import ProvidersManager
    from wtforms import IntegerField, StringField

    from pagent_provider.hooks.pagent import PagentHook

    widgets = PagentHook.get_connection_form_widgets()
    assert set(widgets) == {"timeout", "max_retries", "proxies", "verify", "cert", "trust_env"}
    assert widgets["timeout"].field_class is StringField  # fractional seconds: no FloatField in Airflow's forms
    assert widgets["max_retries"].field_class is IntegerField
    assert widgets["max_retries"].kwargs["default"] == 5

    manager = ProvidersManager()
    form = manager.connection_form_widgets
    assert {"extra__pagent__timeout", "extra__pagent__max_retries"} <= set(form)
    behaviour = manager.field_behaviours["pagent"]
    assert set(behaviour["hidden_fields"]) == {"schema", "login", "port", "extra"}
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}


@pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS or AIRFLOW_V_3_2_PLUS, reason="the React UI of Airflow 3.0 and 3.1 only")
def test_airflow_3_0_and_3_1_ui_turns_the_legacy_widgets_into_its_form() -> None:
    if importlib.util.find_spec("wtforms") is None:
        pytest.skip("wtforms is not installed (no FAB provider): this Airflow's UI shows no extra fields")
    # In a fresh interpreter, as the API server builds it: a ProvidersManager that this
    # test run already initialised with the real wtforms keeps those fields, which the
    # UI then drops as unknown.
    code = """if True:
        import json
        from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
        [pagent] = [hook for hook in HookMetaService.hook_meta_data() if hook.connection_type == "pagent"]
        print(json.dumps({"extra": pagent.extra_fields, "password": pagent.standard_fields.password.title}))
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    form = json.loads(done.stdout.strip().splitlines()[-1])
    assert form["extra"]["timeout"]["schema"]["type"] == ["string", "null"]
    assert form["extra"]["max_retries"]["schema"]["type"] == ["integer", "null"]
    assert form["extra"]["max_retries"]["value"] == 5
    assert form["password"] == "API key"


def test_extras_stored_by_older_forms_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from pagent_provider.hooks.pagent import PagentHook

    # an emptied field ("") and the prefixed names older UIs stored
    monkeypatch.setenv(
        "AIRFLOW_CONN_PAGENT_OLD",
        '{"conn_type": "pagent", "password": "test-key-0123", "extra": {"timeout": "", "extra__pagent__max_retries": "2"}}',
    )
    with PagentHook("pagent_old").get_conn() as client:
        assert client.policy.max_retries == 2
        assert client.policy.read_timeout_s == 30


@pytest.mark.parametrize("dag_file", sorted(p.name for p in (ROOT / "dags").glob("*.py")))
def test_every_example_dag_imports_on_this_airflow(dag_file: str) -> None:
    # a fresh interpreter: what the DAG processor does, with no module of this test run loaded
    code = (
        "import runpy, sys; sys.path.insert(0, sys.argv[1]); ns = runpy.run_path(sys.argv[2]); print(ns['dag'].dag_id)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::SyntaxWarning", "-c", code, str(ROOT / "dags"), str(ROOT / "dags" / dag_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("pagent_")


def test_the_daily_dag_schedules_data_intervals_on_this_airflow() -> None:
    # Airflow 3 reads schedule="@daily" as a trigger timetable with empty data intervals;
    # the DAG names the data-interval timetable, so every version runs it the same way
    # (test_dag_e2e.py checks the rows each run selects).
    from pagent_provider.testing.dag_runs import load_dag

    dag = load_dag(ROOT / "dags", "pagent_daily_conversions")
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.catchup is True
