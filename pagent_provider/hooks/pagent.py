"""PagentHook: the Airflow connection type ``pagent`` and a client for pagent's ingest API."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import mask_secret
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException

from pagent_provider.core import defaults
from pagent_provider.core.client import DEFAULT_BASE_URL, PagentClient
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentConfigError, PagentFatalError
from pagent_provider.get_provider_info import get_provider_info

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _fail_fast_class(error_class: type[PagentFatalError]) -> type[PagentFatalError]:
    # Both the original pagent error (callers can still catch PagentAuthError)
    # and AirflowFailException (the task fails at once instead of burning retries).
    return type(error_class.__name__, (error_class, AirflowFailException), {"__module__": error_class.__module__})


def as_airflow_failure(error: PagentFatalError) -> PagentFatalError:
    """Re-type a fatal pagent error so that Airflow fails the task without retrying it."""
    if isinstance(error, AirflowFailException):
        return error
    fail_fast = _fail_fast_class(type(error)).__new__(_fail_fast_class(type(error)))
    fail_fast.__dict__.update(error.__dict__)
    fail_fast.args = error.args
    return fail_fast


def fail_fast_on_fatal(method: Callable[P, R]) -> Callable[P, R]:
    """Decorator: fatal pagent errors (400, 401, bad config) leave as Airflow fail-fast errors."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except PagentFatalError as error:
            raise as_airflow_failure(error) from error

    return wrapper


def base_url_from_connection(host: str | None, port: int | None, schema: str | None) -> str:
    """Read the base URL like Airflow's HTTP connections do.

    A full URL in ``host`` is taken as it is (``port`` is added when the URL has
    none); a bare host gets ``schema`` (default ``https``) and ``port``; an empty
    host means pagent's public ingest API.
    """
    if not host:
        return DEFAULT_BASE_URL
    if "://" in host:
        url = host.rstrip("/")
        has_port = urlsplit(url).port is not None
        return url if has_port or not port else f"{url}:{port}"
    url = f"{schema or 'https'}://{host.strip('/')}"
    return f"{url}:{port}" if port else url


class PagentHook(BaseHook):
    """Interact with pagent's server-side conversions API.

    The connection's password is the API key; its host is the base URL (empty:
    ``https://ingest.pagent.ai``). Optional extras: ``timeout`` (read timeout in
    seconds, default 30) and ``max_retries`` (default 5).

    Fatal errors (400, 401, bad configuration) are raised as their pagent type
    *and* as :class:`~airflow.sdk.exceptions.AirflowFailException`, so a task
    fails at once instead of retrying what cannot succeed.

    Args:
        pagent_conn_id: the Airflow connection to use.
        pool_size: connections kept alive; at least the number of concurrent senders.
    """

    conn_name_attr = "pagent_conn_id"
    default_conn_name = defaults.PAGENT_CONN_ID
    conn_type = "pagent"
    hook_name = "Pagent"

    def __init__(self, pagent_conn_id: str = default_conn_name, *, pool_size: int = 8) -> None:
        super().__init__()
        self.pagent_conn_id = pagent_conn_id
        self.pool_size = pool_size

    def __repr__(self) -> str:
        return f"PagentHook(pagent_conn_id={self.pagent_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form for Airflow < 3.2 (newer versions read ``get_provider_info()``, its one source)."""
        [connection_type] = get_provider_info()["connection-types"]
        behaviour = connection_type["ui-field-behaviour"]
        return {
            "hidden_fields": behaviour["hidden-fields"],
            "relabeling": behaviour["relabeling"],
            "placeholders": behaviour["placeholders"],
        }

    @functools.cached_property
    def client(self) -> PagentClient:
        """The client built from the connection, created once per hook and shared by threads."""
        return self.get_conn()

    @fail_fast_on_fatal
    def get_conn(self) -> PagentClient:
        """Build a :class:`~pagent_provider.core.client.PagentClient` from the connection."""
        conn = self.get_connection(self.pagent_conn_id)
        if conn.password:
            # Airflow masks connection passwords it fetched itself; register the key
            # (and its Bearer header) anyway, so that no message this task logs,
            # whoever wrote it, can print them.
            mask_secret(conn.password.strip())
            mask_secret(f"Bearer {conn.password.strip()}")
        extra = conn.extra_dejson
        try:
            policy = RetryPolicy(
                max_retries=int(extra.get("max_retries", RetryPolicy.max_retries)),
                read_timeout_s=float(extra.get("timeout", RetryPolicy.read_timeout_s)),
            )
        except (TypeError, ValueError) as error:
            raise PagentConfigError(
                f"connection {self.pagent_conn_id!r}: extras timeout and max_retries must be numbers ({error})"
            ) from error
        return PagentClient(
            conn.password or "",
            base_url=base_url_from_connection(conn.host, conn.port, conn.schema),
            policy=policy,
            pool_size=self.pool_size,
        )

    @fail_fast_on_fatal
    def send_conversions(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """POST 1 to 100 v1 events to ``/v1/conversions``; returns ``{"accepted": n}``."""
        return self.client.send_conversions(events)

    @fail_fast_on_fatal
    def send_conversion_v2(
        self,
        session_data: Mapping[str, Any],
        *,
        label: str | None = None,
        revenue: int | None = None,
        properties: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        time: int | float | None = None,
    ) -> dict[str, Any]:
        """POST one v2 event; ``session_data`` is the raw ``_pgnt.variables()`` object."""
        return self.client.send_conversion_v2(
            session_data, label=label, revenue=revenue, properties=properties, time=time
        )

    @fail_fast_on_fatal
    def send_conversions_v2_bulk(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """POST 1 to 100 v2 events to ``/v2/conversions/bulk``."""
        return self.client.send_conversions_v2_bulk(events)

    def test_connection(self) -> tuple[bool, str]:
        """Check the API key without recording a conversion. Never raises."""
        try:
            client = self.get_conn()
        except Exception as error:  # noqa: BLE001 - a connection test reports, it never raises
            return False, str(error)
        with client:
            return client.check_api_key()
