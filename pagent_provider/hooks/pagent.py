"""PagentHook: the Airflow connection type ``pagent`` and a client for pagent's ingest API."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

# common.compat resolves each name where this Airflow keeps it: ``airflow.sdk`` on 3.x,
# ``airflow.hooks.base`` / ``airflow.exceptions`` / ``airflow.utils.log.secrets_masker`` on
# 2.11, and ``airflow.exceptions`` for AirflowFailException before task-sdk 1.2 (Airflow < 3.2),
# which is the class the task runner of that version catches to fail a task without retrying.
from airflow.providers.common.compat.sdk import AirflowFailException, BaseHook, mask_secret

from pagent_provider.core import defaults
from pagent_provider.core.client import DEFAULT_BASE_URL, PagentClient
from pagent_provider.core.transport import HttpOptions, RetryPolicy
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
    # mypy takes type(error) for an unhashable type[...] (it is hashable: a class)
    fail_fast = _fail_fast_class(type(error)).__new__(_fail_fast_class(type(error)))  # type: ignore[arg-type]
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


def _extra_field(extra: Mapping[str, Any], name: str, default: Any) -> Any:
    """An extra of the connection, as any supported Airflow's UI may have stored it.

    Forms of Airflow < 3.2 (the legacy widgets) may store an emptied field as ``""``
    or ``None``, and connections made by very old UIs carry ``extra__pagent__<name>``.
    """
    for key in (name, f"extra__{PagentHook.conn_type}__{name}"):
        value = extra.get(key)
        if value is not None and value != "":
            return value
    return default


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _as_bool(value: Any, name: str) -> bool | str:
    """``True``/``False`` from a bool or its text (forms store text); other text is returned as it is."""
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, bool | str):
        return value
    raise PagentConfigError(f"'{name}' must be true or false, got {type(value).__name__}")


def _json_text(value: Any, name: str, expected: str) -> Any:
    """``value`` itself, or parsed when it is JSON text (a form's field, ``AIRFLOW_CONN_*`` URIs)."""
    if not isinstance(value, str) or not value.strip().startswith(("{", "[")):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise PagentConfigError(f"'{name}' is not valid JSON; write it as {expected}") from None


def http_options_from_extras(extra: Mapping[str, Any]) -> HttpOptions:
    """The ``proxies``, ``verify``, ``cert`` and ``trust_env`` extras, as ``HttpHook`` users write them.

    ``proxies`` is an object (or its JSON text) of scheme to proxy URL; ``verify`` true,
    false or a CA bundle path; ``cert`` a path or ``[certificate, key]`` (or its JSON
    text); ``trust_env`` true or false (default true: the environment's proxies and CA
    bundle apply, ``~/.netrc`` never does). Text ``"true"``/``"false"`` counts as a bool.

    Raises:
        PagentConfigError: a value of the wrong form; the message names the extra and
            never repeats proxy credentials.
    """
    proxies = _json_text(_extra_field(extra, "proxies", {}), "proxies", '{"https": "http://proxy:3128"}')
    verify = _as_bool(_extra_field(extra, "verify", True), "verify")
    if isinstance(verify, str):
        verify = os.path.expanduser(verify.strip())
    cert = _json_text(_extra_field(extra, "cert", None), "cert", '["client.crt", "client.key"]')
    if isinstance(cert, str):
        cert = os.path.expanduser(cert.strip())
    elif isinstance(cert, list | tuple):
        cert = tuple(os.path.expanduser(path) if isinstance(path, str) else path for path in cert)
    trust_env = _as_bool(_extra_field(extra, "trust_env", True), "trust_env")
    if isinstance(trust_env, str):
        raise PagentConfigError(f"'trust_env' must be true or false, got {trust_env!r}")
    return HttpOptions(proxies=proxies, verify=verify, cert=cert, trust_env=trust_env)


class PagentHook(BaseHook):
    """Interact with pagent's server-side conversions API.

    The connection's password is the API key; its host is the base URL (empty:
    ``https://ingest.pagent.ai``). Optional extras: ``timeout`` (read timeout in
    seconds, default 30) and ``max_retries`` (default 5), and the HTTP extras of
    Airflow's ``HttpHook``: ``proxies``, ``verify``, ``cert`` and ``trust_env``
    (see :func:`http_options_from_extras`).

    Fatal errors (400, 401, bad configuration) are raised as their pagent type
    *and* as Airflow's ``AirflowFailException`` (of the running version), so a task
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

    # The connection form. Airflow 3.2+ reads it from get_provider_info() (its one source:
    # ``conn-fields`` and ``ui-field-behaviour``) and then skips the two methods below, which
    # it deprecates. Airflow 2.11, 3.0 and 3.1 know only these methods.

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form for Airflow < 3.2, built from ``conn-fields``.

        wtforms fields, as Airflow 2.11's Flask UI renders them; Airflow 3.0 and 3.1 turn
        the same fields into their React form (their UI patches these wtforms and
        flask-appbuilder names with stand-ins, so only ``label``, ``description``,
        ``default``, ``validators`` and ``widget`` are passed). Only ``IntegerField`` and
        ``StringField`` are used: Airflow < 3.2 refuses any other field class.
        """
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        [connection_type] = get_provider_info()["connection-types"]
        widgets: dict[str, Any] = {}
        for name, spec in connection_type["conn-fields"].items():
            # "number" (the timeout may be fractional) has no wtforms field Airflow accepts: text
            field = IntegerField if "integer" in spec["schema"]["type"] else StringField
            widgets[name] = field(
                lazy_gettext(spec["label"]),
                validators=[Optional()],
                description=spec["description"],
                default=spec["schema"].get("default"),
                widget=BS3TextFieldWidget(),
            )
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields for Airflow < 3.2, from ``ui-field-behaviour``."""
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
                max_retries=int(_extra_field(extra, "max_retries", RetryPolicy.max_retries)),
                read_timeout_s=float(_extra_field(extra, "timeout", RetryPolicy.read_timeout_s)),
            )
        except (TypeError, ValueError) as error:
            raise PagentConfigError(
                f"connection {self.pagent_conn_id!r}: extras timeout and max_retries must be numbers ({error})"
            ) from error
        try:
            http = http_options_from_extras(extra)
        except PagentConfigError as error:
            raise PagentConfigError(f"connection {self.pagent_conn_id!r}: extra {error}") from None
        for secret in http.secrets():
            mask_secret(secret)  # proxy credentials, like the key: never in a log line
        return PagentClient(
            conn.password or "",
            base_url=base_url_from_connection(conn.host, conn.port, conn.schema),
            policy=policy,
            pool_size=self.pool_size,
            http=http,
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
