"""Issue 9 through Airflow's shells: the hook, the operator, the connection test.

Real emulator over HTTP, connections from ``AIRFLOW_CONN_*``.
"""

from __future__ import annotations

import json
import logging

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, redact

from pagent_provider.exceptions import PagentRedirectError, PagentUnacknowledgedError, PagentValidationError
from pagent_provider.hooks.pagent import PagentHook
from pagent_provider.operators.conversions import ConversionsOperator
from pagent_provider.testing import Faults, IngestEmulator, WebAppServer

SECRET = "sk_live_hook_5e4d3c2b1a"


def event(n: int = 0, **extra: object) -> dict:
    return {"session_id": f"s{n}", "user_id": f"u{n}", "conversion_id": "goal-1", "time": 1_764_000_000_000, **extra}


def use_connection(monkeypatch: pytest.MonkeyPatch, url: str, key: str = SECRET) -> PagentHook:
    conn = {"conn_type": "pagent", "host": url, "password": key, "extra": {"timeout": 2, "max_retries": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    return PagentHook()


def test_the_hook_registers_the_key_with_airflows_secrets_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    with IngestEmulator(api_keys=(SECRET,)) as emulator:
        use_connection(monkeypatch, emulator.url).get_conn().close()
    # any text a task logs, whoever wrote it, goes through this masker
    assert SECRET not in redact(f"a library said: Authorization: Bearer {SECRET} was refused")


def test_a_partial_acknowledgement_through_the_hook_is_an_unknown_outcome_not_a_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with IngestEmulator(api_keys=(SECRET,), faults=Faults(ack_override=lambda n: {"accepted": n - 1})) as emulator:
        hook = use_connection(monkeypatch, emulator.url)
        with pytest.raises(PagentUnacknowledgedError) as raised:
            hook.send_conversions([event(1), event(2)])
        assert len(emulator.events()) == 2  # stored; the answer just does not vouch for it
    assert raised.value.accepted == 1 and raised.value.expected == 2
    assert not isinstance(raised.value, AirflowFailException)  # Airflow may retry it


def test_a_redirect_through_the_hook_fails_the_task_at_once_and_is_never_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with WebAppServer() as webapp, IngestEmulator(api_keys=(SECRET,)) as emulator:
        emulator.faults = Faults(redirect_to=webapp.url + "/", redirect_status=307)
        hook = use_connection(monkeypatch, emulator.url)
        with pytest.raises(PagentRedirectError) as raised:
            hook.send_conversions([event(1)])
        assert isinstance(raised.value, AirflowFailException)
        assert webapp.requests() == [] and emulator.events() == []


def test_the_connection_test_refuses_a_web_app_that_accepts_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    with WebAppServer() as webapp:
        ok, message = use_connection(monkeypatch, webapp.url).test_connection()
    assert not ok and "does not point at pagent" in message


def test_an_echoing_400_through_the_hook_carries_no_key(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    faults = Faults(echo_credentials=True, refuse=lambda e: "unknown goal")
    with IngestEmulator(api_keys=(SECRET,), faults=faults) as emulator:
        with pytest.raises(PagentValidationError) as raised:
            use_connection(monkeypatch, emulator.url).send_conversions([event(1)])
    error = raised.value
    texts = [str(error), repr(error), error.server_message or "", caplog.text]
    assert all(SECRET not in text for text in texts)
    assert "***" in (error.server_message or "")


def test_the_operator_warns_at_parse_time_when_key_column_is_unset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ConversionsOperator(task_id="no_key", conn_id="warehouse", sql="SELECT 1")
    ConversionsOperator(task_id="with_key", conn_id="warehouse", sql="SELECT 1", key_column="order_id")
    warnings = [r.getMessage() for r in caplog.records if "key_column is not set" in r.getMessage()]
    assert len(warnings) == 1 and "no_key" in warnings[0] and "resends every row of history" in warnings[0]
