"""The ``pagent://`` asset URI scheme: registered with Airflow, normalised and validated."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

from pagent_provider.assets.pagent import convert_asset_to_openlineage, create_asset, sanitize_uri
from pagent_provider.lineage import pagent_asset_uri


def _sanitized(uri: str) -> str:
    return urlunsplit(sanitize_uri(urlsplit(uri)))


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("pagent://ingest.pagent.ai/conversions", "pagent://ingest.pagent.ai/conversions"),
        ("pagent://Ingest.Pagent.AI/conversions/", "pagent://ingest.pagent.ai/conversions"),
        ("pagent://ingest.pagent.ai:/conversions", "pagent://ingest.pagent.ai/conversions"),
        ("pagent://127.0.0.1:8080/conversions", "pagent://127.0.0.1:8080/conversions"),
        ("pagent://[::1]:8080/conversions", "pagent://[::1]:8080/conversions"),
        ("pagent://[FE80::1]/conversions#frag", "pagent://[fe80::1]/conversions"),
    ],
)
def test_a_valid_uri_is_normalised(given: str, normalised: str) -> None:
    assert _sanitized(given) == normalised
    assert _sanitized(normalised) == normalised  # a fixed point


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("pagent:///conversions", "must contain a host"),
        ("pagent://ingest.pagent.ai", "must name the dataset 'conversions'"),
        ("pagent://ingest.pagent.ai/orders", "must name the dataset 'conversions'"),
        ("pagent://ingest.pagent.ai/conversions/extra", "must name the dataset 'conversions'"),
        ("pagent://ingest.pagent.ai/conversions?day=1", "takes no query"),
        ("pagent://ingest.pagent.ai:99999/conversions", "invalid port"),
        ("pagent://ingest.pagent.ai:0/conversions", "invalid port"),
        ("pagent://someone@ingest.pagent.ai/conversions", "must not carry user info"),
    ],
)
def test_an_invalid_uri_is_refused_with_the_expected_form(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as refused:
        sanitize_uri(urlsplit(given))
    assert "pagent://<host[:port]>/conversions" in str(refused.value) or "user info" in str(refused.value)


def _registered(kind: str) -> dict:
    try:  # Airflow 3.2+: the task runtime has its own manager (the core one's properties are deprecated)
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:
        from airflow.providers_manager import ProvidersManager as Manager

    manager = Manager()
    prefix = "asset" if AIRFLOW_V_3_0_PLUS else "dataset"  # Airflow 2.11 calls them datasets
    return getattr(manager, {"handlers": f"{prefix}_uri_handlers", "factories": f"{prefix}_factories"}[kind])


def test_providers_manager_lists_the_pagent_scheme() -> None:
    from pagent_provider.get_provider_info import get_provider_info

    info = get_provider_info()
    assert info["asset-uris"] == info["dataset-uris"]
    assert info["asset-uris"][0]["schemes"] == ["pagent"]
    assert _registered("handlers")["pagent"] is sanitize_uri
    assert _registered("factories")["pagent"] is create_asset


@pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2.11 only warns about a URI its handler refuses")
def test_airflow_assets_use_the_handler() -> None:
    from airflow.providers.common.compat.assets import Asset

    assert Asset("pagent://Ingest.Pagent.AI/conversions/").uri == "pagent://ingest.pagent.ai/conversions"
    with pytest.raises(ValueError, match=r"pagent:// must name the dataset 'conversions'"):
        Asset("pagent://ingest.pagent.ai/orders")


def test_the_factory_builds_the_normalised_asset() -> None:
    assert create_asset(host="ingest.pagent.ai").uri == "pagent://ingest.pagent.ai/conversions"
    assert create_asset(host="127.0.0.1", port=8080).uri == "pagent://127.0.0.1:8080/conversions"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "pagent://ingest.pagent.ai/conversions"),
        ("HTTPS://Ingest.Pagent.AI:443", "pagent://ingest.pagent.ai/conversions"),
        ("http://127.0.0.1:8080", "pagent://127.0.0.1:8080/conversions"),
        ("http://[::1]:8080", "pagent://[::1]:8080/conversions"),
    ],
)
def test_the_operators_output_uri_is_already_normal(monkeypatch: pytest.MonkeyPatch, host: str | None, expected: str):
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_ASSETS", json.dumps({"conn_type": "pagent", "host": host, "password": "k"}))
    uri = pagent_asset_uri("pagent_assets")
    assert uri == expected
    assert _sanitized(uri) == uri


def test_openlineage_naming_matches_the_lineage_module() -> None:
    pytest.importorskip("airflow.providers.openlineage")
    dataset = convert_asset_to_openlineage(create_asset(host="127.0.0.1", port=8080), None)
    assert (dataset.namespace, dataset.name) == ("pagent://127.0.0.1:8080", "conversions")
