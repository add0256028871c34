"""A client for pagent's ingest API that knows nothing about Airflow.

:class:`PagentClient` validates events before sending, encodes them and hands
the bytes to :class:`~pagent_provider.core.transport.Transport`. The hook, the
sync engine and the CLI all talk to pagent through it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from pagent_provider.core.events import validate_v1_events, validate_v2_event, validate_v2_events
from pagent_provider.core.redaction import MIN_SECRET_LENGTH, Redactor
from pagent_provider.core.transport import HttpOptions, MaskedHeaders, RetryPolicy, Transport, build_session
from pagent_provider.exceptions import (
    PagentAuthError,
    PagentConfigError,
    PagentError,
    PagentUnexpectedResponseError,
    PagentValidationError,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://ingest.pagent.ai"
V1_PATH = "/v1/conversions"
V2_PATH = "/v2/conversions"
V2_BULK_PATH = "/v2/conversions/bulk"


class ApiKey:
    """An API key that never shows itself in a repr, a str or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise PagentConfigError(
                "no pagent API key: set it as the connection's password (or PAGENT_API_KEY for the command-line tool)"
            )
        stripped = value.strip()
        if stripped != value:
            log.warning("the pagent API key had leading or trailing whitespace; it was removed")
        # Printable ASCII only: anything else cannot travel in an HTTP header, and
        # http.client's UnicodeEncodeError would quote the whole header, key included.
        # The message never repeats the key, nor the offending character.
        if len(stripped) < MIN_SECRET_LENGTH:
            # too short to be a real key, and too short to be redacted from echoed texts
            raise PagentConfigError(
                f"the pagent API key is shorter than {MIN_SECRET_LENGTH} characters; copy it again from "
                "Settings > API Keys"
            )
        if not all("!" <= char <= "~" for char in stripped):
            raise PagentConfigError(
                "the pagent API key holds characters other than printable ASCII (spaces, newlines, "
                "control or non-ASCII characters); copy it again from Settings > API Keys"
            )
        self._value = stripped

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__


def encode_json(body: Any) -> bytes:
    """Compact JSON, refusing NaN and Infinity (pagent cannot read them)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class PagentClient:
    """Sends conversions to pagent.

    Safe to share between threads: one pooled session serves every call.

    Args:
        api_key: the pagent API key (Settings > API Keys).
        base_url: scheme, host and optional port of the ingest API.
        policy: retries and timeouts.
        pool_size: connections kept alive; at least the number of concurrent senders.
        http: proxies, TLS verification, client certificate, ``trust_env``
            (default: no proxy but the environment's, certificates verified).
            Proxy credentials are redacted like the key.

    Example:
        >>> with PagentClient("key", base_url="http://127.0.0.1:8765") as client:  # doctest: +SKIP
        ...     client.send_conversions([{"session_id": "s", "user_id": "u", "conversion_id": "g"}])
        {'accepted': 1}
    """

    def __init__(
        self,
        api_key: str | ApiKey,
        *,
        base_url: str = DEFAULT_BASE_URL,
        policy: RetryPolicy | None = None,
        pool_size: int = 8,
        http: HttpOptions | None = None,
    ) -> None:
        self._key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        self.base_url = normalize_base_url(base_url)
        self.policy = policy or RetryPolicy()
        self.http = http or HttpOptions()
        self._session = build_session(pool_size, self.http)
        self._headers = MaskedHeaders(
            {
                "Authorization": f"Bearer {self._key.reveal()}",
                "Content-Type": "application/json",
                "User-Agent": "airflow-provider-pagent",
            }
        )
        self.redact = Redactor([self._key.reveal(), *self.http.secrets()])
        self.transport = Transport(self._session, self._headers, self.policy, redact=self.redact)

    def __repr__(self) -> str:
        return f"PagentClient(base_url={self.base_url!r}, api_key=***)"

    def __enter__(self) -> PagentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def send_conversions(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """POST 1 to 100 v1 events to ``/v1/conversions``; returns ``{"accepted": n}``.

        Raises:
            PagentValidationError: an event breaks the documented rules (nothing was sent),
                or pagent refused the request (400, 413).
            PagentUnacknowledgedError: pagent answered 2xx without acknowledging every event.
            PagentError: see :meth:`Transport.post <pagent_provider.core.transport.Transport.post>`.
        """
        validated = validate_v1_events(events)
        return self.send_encoded_v1(encode_json({"events": validated}), len(validated))

    def send_encoded_v1(self, body: bytes, count: int) -> dict[str, Any]:
        """POST an already validated and encoded v1 body of ``count`` events (the sync engine's fast path)."""
        return self.transport.post(self.base_url + V1_PATH, body, count)

    def send_conversion_v2(
        self,
        session_data: Mapping[str, Any],
        *,
        label: str | None = None,
        revenue: int | None = None,
        properties: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        time: int | float | None = None,
    ) -> dict[str, Any]:
        """POST one v2 event to ``/v2/conversions``.

        Args:
            session_data: the raw ``_pgnt.variables()`` object (``session_id``,
                ``user_id``, ``conversion_id``, optional ``visit_id``).
            label: human-readable goal tag.
            revenue: integer cents.
            properties: an object or an array of objects.
            time: Unix milliseconds of the real conversion.
        """
        event = {
            "session_data": session_data,
            "label": label,
            "revenue": revenue,
            "properties": properties,
            "time": time,
        }
        return self.transport.post(self.base_url + V2_PATH, encode_json(validate_v2_event(event)), 1)

    def send_conversions_v2_bulk(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """POST 1 to 100 v2 events (``{session_data, label?, revenue?, properties?, time?}``)."""
        validated = validate_v2_events(events)
        return self.send_encoded_v2_bulk(encode_json({"events": validated}), len(validated))

    def send_encoded_v2_bulk(self, body: bytes, count: int) -> dict[str, Any]:
        """POST an already validated and encoded v2 bulk body of ``count`` events (the sync engine's fast path)."""
        return self.transport.post(self.base_url + V2_BULK_PATH, body, count)

    def verify_api_key(self) -> None:
        """Check the key and the base URL without recording a conversion; one attempt, no retries.

        Sends an empty v1 batch: pagent answers 400 (the batch is empty) when the key
        is accepted, and 401 when it is not.

        Raises:
            PagentAuthError: the key was refused.
            PagentError: pagent could not be reached or answered unexpectedly.
        """
        single_try = Transport(
            self._session,
            self._headers,
            dataclasses.replace(self.policy, max_retries=0),
            redact=self.redact,
            watchdog=self.transport.watchdog,
        )
        try:
            single_try.post(self.base_url + V1_PATH, encode_json({"events": []}), None)
        except PagentValidationError:
            return  # the empty batch was refused, which means the key was accepted
        # pagent refuses an empty batch; whatever accepted it is not pagent's ingest API
        raise PagentUnexpectedResponseError(
            f"{self.base_url} accepted an empty batch of events, which pagent's ingest API refuses: "
            "the connection's host does not point at pagent (e.g. https://ingest.pagent.ai)"
        )

    def check_api_key(self) -> tuple[bool, str]:
        """:meth:`verify_api_key` as ``(ok, message)``, as Airflow's connection test wants it. Never raises."""
        try:
            self.verify_api_key()
        except PagentAuthError as error:
            return False, str(error)
        except PagentError as error:
            return False, f"Could not check the key at {self.base_url}: {error}"
        except Exception as error:  # noqa: BLE001 - a connection test reports, it never raises
            return False, f"Could not check the key at {self.base_url}: {type(error).__name__}: {self.redact(error)}"
        return True, f"Connected to {self.base_url}: the API key is valid"


def normalize_base_url(base_url: str) -> str:
    """``https://ingest.pagent.ai/`` -> ``https://ingest.pagent.ai``.

    Raises:
        PagentConfigError: no ``http(s)://`` scheme; ``user:password@`` in the URL
            (requests would silently send Basic auth from it instead of the Bearer
            key); a query or fragment (the endpoint paths are appended to the URL).
            The message never repeats the credentials.
    """
    url = (base_url or DEFAULT_BASE_URL).strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise PagentConfigError("the pagent base URL is not a valid URL (check its host and port)") from None
    if "@" in parts.netloc:
        raise PagentConfigError(
            "the pagent base URL carries credentials (user:password@host): remove them; "
            "the API key belongs in the connection's password"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PagentConfigError(f"the pagent base URL must start with http:// or https:// and name a host, got {url!r}")
    if parts.query or parts.fragment:
        raise PagentConfigError(f"the pagent base URL must not carry a query or fragment, got {url!r}")
    try:
        requests.PreparedRequest().prepare_url(url + V1_PATH, None)  # what every request will do with it
    except requests.RequestException:
        raise PagentConfigError(
            f"the pagent base URL has a host requests cannot use (a space, a bad %-escape, a name IDNA "
            f"refuses), got {url!r}"
        ) from None
    return url
