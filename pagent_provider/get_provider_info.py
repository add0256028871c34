"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from pagent_provider import __version__

_ASSET_URIS = [
    {
        "schemes": ["pagent"],
        "handler": "pagent_provider.assets.pagent.sanitize_uri",
        "factory": "pagent_provider.assets.pagent.create_asset",
        "to_openlineage_converter": "pagent_provider.assets.pagent.convert_asset_to_openlineage",
    }
]


def get_provider_info() -> dict[str, Any]:
    """Describe the provider, its hook, connection type and connection form to Airflow.

    ``package-name`` must equal the distribution name: Airflow refuses to import
    otherwise, for every command.
    """
    return {
        "package-name": "airflow-provider-pagent",
        "name": "pagent",
        "description": "Upload server-side conversions from your warehouse to pagent, exactly once.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "pagent",
                "external-doc-url": "https://pagent.ai",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "pagent", "python-modules": ["pagent_provider.hooks.pagent"]}],
        # Airflow 3 reads "asset-uris", Airflow 2.11 "dataset-uris" (as the official providers declare both)
        "asset-uris": _ASSET_URIS,
        "dataset-uris": _ASSET_URIS,
        "operators": [{"integration-name": "pagent", "python-modules": ["pagent_provider.operators.conversions"]}],
        "connection-types": [
            {
                "connection-type": "pagent",
                "hook-class-name": "pagent_provider.hooks.pagent.PagentHook",
                "hook-name": "Pagent",
                "conn-fields": {
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Read timeout of one request to pagent.",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries after 429, 5xx and connection failures.",
                        "schema": {"type": ["integer", "null"], "default": 5},
                    },
                    # The HTTP extras of Airflow's HttpHook (read by PagentHook.get_conn)
                    "proxies": {
                        "label": "Proxies",
                        "description": 'Proxy per scheme, as JSON: {"https": "http://user:password@proxy:3128"}. '
                        "Empty: the environment's (HTTPS_PROXY) when Trust environment is on.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify": {
                        "label": "Verify TLS",
                        "description": "true (default), false, or the path of a CA bundle on the workers.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "cert": {
                        "label": "Client certificate",
                        "description": 'Path of a PEM file with certificate and key, or ["cert.pem", "key.pem"].',
                        "schema": {"type": ["string", "null"]},
                    },
                    "trust_env": {
                        "label": "Trust environment",
                        "description": "Use the environment's proxies and CA bundle (~/.netrc is never read).",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://ingest.pagent.ai",
                        "password": "the key from Settings > API Keys",
                    },
                },
            }
        ],
    }
