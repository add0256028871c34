"""How the CLI reaches pagent: the API key from the environment, the base URL, timeouts and retries."""

from __future__ import annotations

import argparse
import os

from pagent_provider.cli.errors import UsageError
from pagent_provider.cli.parser import API_KEY_ENV, BASE_URL_ENV
from pagent_provider.core.client import DEFAULT_BASE_URL, ApiKey, normalize_base_url
from pagent_provider.core.transport import RetryPolicy

_DEFAULT_CONNECT_TIMEOUT_S = RetryPolicy().connect_timeout_s


def read_api_key() -> ApiKey:
    """The API key from ``PAGENT_API_KEY``, wrapped so that it never shows in a repr or a message.

    Raises:
        UsageError: the variable is unset or blank.
        PagentConfigError: the key holds spaces or control characters.
    """
    value = os.environ.get(API_KEY_ENV, "")
    if not value.strip():
        raise UsageError(
            f"the environment variable {API_KEY_ENV} is not set: export the pagent API key "
            f"(Settings > API Keys) as {API_KEY_ENV}. It is never taken as a flag, so that it "
            "stays out of shell history"
        )
    return ApiKey(value)


def with_key_hint(message: str) -> str:
    """An API-key refusal, completed with where the CLI takes the key from (the core's text names Airflow's)."""
    return f"{message} (the command-line tool reads the key from {API_KEY_ENV})"


def resolve_base_url(args: argparse.Namespace) -> str:
    """``--base-url``, else ``$PAGENT_BASE_URL``, else pagent's production URL; validated."""
    return normalize_base_url(args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)


def build_retry_policy(args: argparse.Namespace, *, max_retries: int | None = None) -> RetryPolicy:
    """The retry policy from ``--timeout`` and ``--max-retries``.

    ``--timeout`` bounds the wait for an answer; opening a connection keeps its
    own shorter default, but never waits longer than ``--timeout``.
    """
    retries = max_retries if max_retries is not None else args.max_retries
    return RetryPolicy(
        max_retries=retries,
        connect_timeout_s=min(_DEFAULT_CONNECT_TIMEOUT_S, args.timeout),
        read_timeout_s=args.timeout,
    )
