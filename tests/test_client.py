"""PagentHook and the client against the local emulator, over real HTTP."""

from __future__ import annotations

import json
import logging
import time

import pytest

from pagent_provider.core.transport import parse_retry_after
from pagent_provider.exceptions import (
    PagentAuthError,
    PagentConfigError,
    PagentFatalError,
    PagentRateLimitError,
    PagentServerError,
    PagentUnknownOutcomeError,
    PagentValidationError,
)
from pagent_provider.hooks.pagent import PagentHook, base_url_from_connection
from pagent_provider.testing import Faults, IngestEmulator

KEY = "test-key"


def event(n: int = 0, **extra):
    return {"session_id": f"s{n}", "user_id": f"u{n}", "conversion_id": "goal-1", **extra}


def connect(monkeypatch, emulator: IngestEmulator, **extra) -> PagentHook:
    conn = {"conn_type": "pagent", "host": emulator.url, "password": KEY, "extra": {"timeout": 2, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    return PagentHook()


@pytest.fixture
def hook(monkeypatch, pagent_emulator) -> PagentHook:
    return connect(monkeypatch, pagent_emulator, max_retries=3)


def test_v1_batch_is_recorded(hook, pagent_emulator):
    answer = hook.send_conversions([event(1, revenue=2499, label="purchase", time=1_760_000_000_000), event(2)])
    assert answer == {"accepted": 2}
    assert pagent_emulator.events() == [
        event(1, revenue=2499, label="purchase", time=1_760_000_000_000),
        event(2),
    ]


def test_none_fields_are_left_out_of_the_json(hook, pagent_emulator):
    hook.send_conversions([event(1, label=None, revenue=None, properties=None, time=None)])
    assert pagent_emulator.accepted()[0].event == event(1)


def test_v2_single_passes_session_data_through(hook, pagent_emulator):
    session_data = {"session_id": "s", "user_id": "u", "visit_id": "v_1", "conversion_id": "g"}
    answer = hook.send_conversion_v2(session_data, label="purchase", revenue=999, properties={"a": 1})
    assert answer == {"accepted": 1}
    [accepted] = pagent_emulator.accepted()
    assert accepted.endpoint == "/v2/conversions"
    assert accepted.event == {"session_data": session_data, "label": "purchase", "revenue": 999, "properties": {"a": 1}}


def test_v2_bulk(hook, pagent_emulator):
    events = [{"session_data": {"session_id": f"s{i}", "user_id": "u", "conversion_id": "g"}} for i in range(3)]
    assert hook.send_conversions_v2_bulk(events) == {"accepted": 3}
    assert [a.endpoint for a in pagent_emulator.accepted()] == ["/v2/conversions/bulk"] * 3


@pytest.mark.parametrize("send", ["send_conversions", "send_conversions_v2_bulk"])
def test_100_events_pass_and_101_are_refused_before_sending(hook, pagent_emulator, send):
    make = event if send == "send_conversions" else (lambda n: {"session_data": event(n)})
    assert getattr(hook, send)([make(n) for n in range(100)]) == {"accepted": 100}
    with pytest.raises(PagentValidationError, match="1 to 100 events, got 101"):
        getattr(hook, send)([make(n) for n in range(101)])
    with pytest.raises(PagentValidationError, match="got 0"):
        getattr(hook, send)([])
    assert len(pagent_emulator.requests()) == 1


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"session_id": ""}, "session_id"),
        ({"session_id": "   "}, "session_id"),
        ({"user_id": None}, "user_id"),
        ({"conversion_id": 123}, "conversion_id"),
        ({"revenue": 9.99}, "revenue"),
        ({"revenue": 999.0}, "revenue"),
        ({"revenue": True}, "revenue"),
        ({"revenue": "999"}, "revenue"),
        ({"properties": "text"}, "properties"),
        ({"properties": [1, 2]}, "properties"),
        ({"properties": [{"a": 1}, "b"]}, "properties"),
        ({"time": float("nan")}, "time"),
        ({"time": float("inf")}, "time"),
        ({"time": "2026-01-01"}, "time"),
        ({"label": 5}, "label"),
    ],
)
def test_client_side_validation_sends_nothing(hook, pagent_emulator, bad, field):
    with pytest.raises(PagentValidationError) as raised:
        hook.send_conversions([event(0), {**event(1), **bad}])
    assert raised.value.index == 1
    assert raised.value.field == field
    assert f"events[1].{field}" in str(raised.value)
    assert pagent_emulator.requests() == []


def test_v2_validation_names_session_data_fields(hook, pagent_emulator):
    with pytest.raises(PagentValidationError, match=r"session_data\.conversion_id"):
        hook.send_conversion_v2({"session_id": "s", "user_id": "u", "conversion_id": None})
    with pytest.raises(PagentValidationError, match="session_data"):
        hook.send_conversions_v2_bulk([{"session_data": "not an object"}])
    assert pagent_emulator.requests() == []


def test_properties_array_of_objects_is_accepted(hook, pagent_emulator):
    hook.send_conversions([event(1, properties=[{"sku": "a"}, {"sku": "b"}])])
    assert pagent_emulator.events()[0]["properties"] == [{"sku": "a"}, {"sku": "b"}]


def test_wrong_key_fails_after_exactly_one_request_and_fails_the_task_fast(monkeypatch, pagent_emulator):
    from airflow.providers.common.compat.sdk import AirflowFailException

    conn = {"conn_type": "pagent", "host": pagent_emulator.url, "password": "wrong-key", "extra": {"max_retries": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    with pytest.raises(PagentAuthError) as raised:
        PagentHook().send_conversions([event(1)])
    assert isinstance(raised.value, AirflowFailException)  # Airflow does not burn retries on it
    assert len(pagent_emulator.requests()) == 1
    assert pagent_emulator.requests()[0].status == 401


def test_server_400_is_not_retried_and_carries_the_message(hook, pagent_emulator):
    pagent_emulator.faults = Faults(refuse=lambda e: "unknown goal" if e["conversion_id"] == "nope" else None)
    with pytest.raises(PagentValidationError) as raised:
        hook.send_conversions([event(1, conversion_id="nope")])
    assert "unknown goal" in raised.value.server_message
    assert raised.value.status_code == 400
    assert len(pagent_emulator.requests()) == 1


def test_rate_limit_waits_for_retry_after_then_succeeds(hook, pagent_emulator):
    pagent_emulator.faults = Faults(rate_limit_every=2, retry_after="1")
    hook.send_conversions([event(1)])  # request 1 passes
    started = time.monotonic()
    assert hook.send_conversions([event(2)]) == {"accepted": 1}  # request 2 is 429, 3 passes
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in pagent_emulator.requests()] == [200, 429, 200]


def test_retry_after_as_http_date():
    assert parse_retry_after("7") == 7.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_retry_after("soon") is None


def test_rate_limit_exhausted(monkeypatch, pagent_emulator):
    hook = connect(monkeypatch, pagent_emulator, max_retries=1)
    pagent_emulator.faults = Faults(rate_limit_every=1, retry_after="0")
    with pytest.raises(PagentRateLimitError):
        hook.send_conversions([event(1)])
    assert len(pagent_emulator.requests()) == 2


def test_intermittent_500s_are_retried(hook, pagent_emulator):
    pagent_emulator.faults = Faults(fail_every=2)
    for n in range(4):
        assert hook.send_conversions([event(n)]) == {"accepted": 1}
    assert [e["session_id"] for e in pagent_emulator.events()] == ["s0", "s1", "s2", "s3"]
    assert [r.status for r in pagent_emulator.requests()].count(500) >= 2


def test_persistent_500s_raise_a_retriable_server_error(monkeypatch, pagent_emulator):
    hook = connect(monkeypatch, pagent_emulator, max_retries=2)
    pagent_emulator.faults = Faults(fail_every=1)
    with pytest.raises(PagentServerError) as raised:
        hook.send_conversions([event(1)])
    assert raised.value.retriable and not isinstance(raised.value, PagentFatalError)
    assert len(pagent_emulator.requests()) == 3


def test_hang_raises_unknown_outcome_after_the_timeout_without_retrying(monkeypatch, pagent_emulator):
    hook = connect(monkeypatch, pagent_emulator, timeout=0.5, max_retries=3)
    pagent_emulator.faults = Faults(hang_every=1, hang_s=5)
    started = time.monotonic()
    with pytest.raises(PagentUnknownOutcomeError):
        hook.send_conversions([event(1)])
    assert 0.4 <= time.monotonic() - started < 3
    assert len(pagent_emulator.requests()) <= 1  # the hanging request is never answered, never repeated


def test_store_then_drop_is_an_unknown_outcome(hook, pagent_emulator):
    pagent_emulator.faults = Faults(drop_every=1)
    with pytest.raises(PagentUnknownOutcomeError, match="may or may not"):
        hook.send_conversions([event(1)])
    assert len(pagent_emulator.events()) == 1  # it was stored: exactly why resending blindly is wrong


def test_test_connection_good_key_bad_key_and_unreachable(monkeypatch, pagent_emulator):
    ok, message = connect(monkeypatch, pagent_emulator).test_connection()
    assert ok, message
    assert pagent_emulator.events() == []  # checking the key records nothing

    conn = {"conn_type": "pagent", "host": pagent_emulator.url, "password": "wrong"}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    ok, message = PagentHook().test_connection()
    assert not ok and "401" in message

    conn = {"conn_type": "pagent", "host": "http://127.0.0.1", "port": 9, "password": KEY, "extra": {"max_retries": 0}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    ok, message = PagentHook().test_connection()
    assert not ok and "could not connect" in message.lower()

    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps({"conn_type": "pagent", "host": pagent_emulator.url}))
    ok, message = PagentHook().test_connection()
    assert not ok and "API key" in message


def test_base_url_from_connection_fields():
    assert base_url_from_connection(None, None, None) == "https://ingest.pagent.ai"
    assert base_url_from_connection("http://127.0.0.1", 8080, None) == "http://127.0.0.1:8080"
    assert base_url_from_connection("http://127.0.0.1:9000/", 8080, None) == "http://127.0.0.1:9000"
    assert base_url_from_connection("ingest.example.com", None, None) == "https://ingest.example.com"
    assert base_url_from_connection("localhost", 8080, "http") == "http://localhost:8080"


def test_key_with_newline_is_refused_without_showing_it(monkeypatch, pagent_emulator):
    conn = {"conn_type": "pagent", "host": pagent_emulator.url, "password": "sec ret-key"}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    with pytest.raises(PagentConfigError) as raised:
        PagentHook().send_conversions([event(1)])
    assert "sec ret" not in str(raised.value)


def test_api_key_never_in_logs_errors_or_reprs(monkeypatch, caplog):
    secret = "sk-live-7f3a9c-SECRET"
    with IngestEmulator(api_keys=(secret,)) as emulator:
        conn = {"conn_type": "pagent", "host": emulator.url, "password": secret, "extra": {"max_retries": 1}}
        monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
        caplog.set_level(logging.DEBUG)
        hook = PagentHook()
        texts = [repr(hook), repr(hook.client), repr(hook.client.transport), str(vars(hook.client))]
        hook.send_conversions([event(1)])
        emulator.faults = Faults(fail_every=1)
        for error_class in (PagentServerError,):
            with pytest.raises(error_class) as raised:
                hook.send_conversions([event(2)])
            texts += [str(raised.value), repr(raised.value), repr(raised.value.__cause__)]
        emulator.faults = Faults()
        monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps({**conn, "password": secret + "x"}))
        with pytest.raises(PagentAuthError) as raised:
            PagentHook().send_conversions([event(3)])
        texts += [str(raised.value), repr(raised.value)]
        texts += [PagentHook().test_connection()[1]]
    texts += [record.getMessage() for record in caplog.records]
    assert len(caplog.records) > 0
    assert not [text for text in texts if secret in text]
