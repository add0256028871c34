"""``pagent-conversions check``: is the API key accepted at the base URL?"""

from __future__ import annotations

import argparse
import sys

from pagent_provider.cli.connection import build_retry_policy, read_api_key, resolve_base_url, with_key_hint
from pagent_provider.cli.errors import EXIT_AUTH, EXIT_FAILED, EXIT_OK
from pagent_provider.core.client import PagentClient
from pagent_provider.exceptions import PagentAuthError, PagentError


def run_check(args: argparse.Namespace) -> int:
    """Test the key once (no retries) and print the verdict: 0 valid, 3 refused, 1 unreachable."""
    api_key = read_api_key()
    base_url = resolve_base_url(args)
    policy = build_retry_policy(args, max_retries=0)
    with PagentClient(api_key, base_url=base_url, policy=policy, pool_size=1) as client:
        code, message = probe_api_key(client)
    print(message, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


def probe_api_key(client: PagentClient) -> tuple[int, str]:
    """Verify the key once; the exit status tells a refused key (3) from an unreachable server (1)."""
    try:
        client.verify_api_key()
    except PagentAuthError as error:
        return EXIT_AUTH, with_key_hint(str(error))
    except PagentError as error:
        return EXIT_FAILED, f"Could not check the key at {client.base_url}: {error}"
    except Exception as error:  # noqa: BLE001 - a connection test reports, it never raises
        return EXIT_FAILED, f"Could not check the key at {client.base_url}: {type(error).__name__}: {error}"
    return EXIT_OK, f"Connected to {client.base_url}: the API key is valid"
