"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from pagent_provider import __version__


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
