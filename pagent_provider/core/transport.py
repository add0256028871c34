"""HTTP transport for pagent: one pooled session, timeouts, polite retries.

Everything about *how* a request travels lives here, nothing about *what* it
carries:

* one :class:`requests.Session` with a connection pool sized for the number of
  concurrent senders (``requests`` sessions are safe to share between threads
  for plain ``post`` calls);
* connect and read timeouts on every request;
* retries with exponential backoff and jitter (tenacity) for 5xx answers and
  connections that could not be opened;
* 429 answers honour ``Retry-After`` (seconds or an HTTP date), and pause
  *every* sender sharing the :class:`RateLimitGate`, so a rate limit slows the
  whole upload down instead of each worker hammering on;
* 400 and 401 are never retried;
* a request that may have reached the server (read timeout, connection dropped
  after sending) is never retried silently: it raises
  :class:`~pagent_provider.exceptions.PagentUnknownOutcomeError`.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
import tenacity
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from pagent_provider.core import defaults
from pagent_provider.exceptions import (
    PagentAuthError,
    PagentConfigError,
    PagentConnectionError,
    PagentRateLimitError,
    PagentServerError,
    PagentUnexpectedResponseError,
    PagentUnknownOutcomeError,
    PagentValidationError,
)

log = logging.getLogger(__name__)

RETRIED_SERVER_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_retries: retries after the first attempt (0 = try once).
        backoff_initial_s: first exponential backoff step.
        backoff_max_s: cap of one backoff step and of an honoured ``Retry-After``.
        connect_timeout_s: time allowed to open a connection.
        read_timeout_s: time allowed for the answer once the request is sent.
    """

    max_retries: int = defaults.MAX_RETRIES
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = defaults.READ_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise PagentConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise PagentConfigError("timeouts must be positive numbers of seconds")


class RateLimitGate:
    """A pause shared by every thread sending through one client.

    When any sender receives a 429, it closes the gate for the ``Retry-After``
    delay; every sender waits at the gate before its next request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_at = 0.0

    def close_for(self, seconds: float) -> None:
        """Keep the gate closed for at least ``seconds`` from now."""
        with self._lock:
            self._open_at = max(self._open_at, time.monotonic() + seconds)

    def wait(self) -> None:
        """Block until the gate is open."""
        while True:
            with self._lock:
                delay = self._open_at - time.monotonic()
            if delay <= 0:
                return
            time.sleep(delay)


class MaskedHeaders(dict[str, str]):
    """Request headers whose repr hides the ``Authorization`` value."""

    def __repr__(self) -> str:
        return repr({name: "***" if name.lower() == "authorization" else value for name, value in self.items()})

    __str__ = __repr__


class _RetryLater(Exception):
    """Internal: an attempt failed in a way worth retrying."""

    def __init__(self, reason: str, final: Exception, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.final = final
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def build_session(pool_size: int) -> requests.Session:
    """A session whose pool keeps ``pool_size`` connections alive and never retries by itself."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _never_sent(error: requests.ConnectionError) -> bool:
    """True when the connection could not even be opened, so the server saw nothing."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:500]


def _raise_for_answer(response: requests.Response, url: str) -> dict[str, Any]:
    status = response.status_code
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            log.warning("pagent answered 200 with a body that is not JSON; treating it as accepted")
            return {}
        return body if isinstance(body, dict) else {"body": body}
    if status == 400:
        message = _error_text(response)
        raise PagentValidationError(
            f"pagent refused the request (400): {message}", server_message=message, status_code=400
        )
    if status in (401, 403):
        raise PagentAuthError(
            f"pagent refused the API key ({status}): {_error_text(response)}. Check the connection's "
            "password: the key may be wrong, expired or deleted (Settings > API Keys), "
            "or carry extra spaces or newlines."
        )
    if status == 429:
        raise _RetryLater(
            "429 rate limit exceeded",
            PagentRateLimitError("pagent kept answering 429 (rate limit exceeded) after every retry"),
            parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in RETRIED_SERVER_STATUSES:
        raise _RetryLater(
            f"server error {status}",
            PagentServerError(
                f"pagent answered {status} after every retry: {_error_text(response)}", status_code=status
            ),
        )
    if status in (404, 405):
        raise PagentUnexpectedResponseError(
            f"POST {url} answered {status}: check the connection's host (base URL); "
            "it should point at pagent's ingest API, e.g. https://ingest.pagent.ai",
            status_code=status,
        )
    raise PagentUnexpectedResponseError(
        f"POST {url} answered an undocumented status {status}: {_error_text(response)}", status_code=status
    )


class Transport:
    """Posts JSON bodies to pagent with the retry rules described in the module docstring.

    Args:
        session: a pooled session (see :func:`build_session`), shared by all threads.
        headers: headers sent with every request (the ``Authorization`` header lives here
            and is never logged).
        policy: retry and timeout settings.
        gate: the rate-limit pause shared by every sender.
    """

    def __init__(
        self,
        session: requests.Session,
        headers: dict[str, str],
        policy: RetryPolicy,
        gate: RateLimitGate | None = None,
    ) -> None:
        self._session = session
        self._headers = headers
        self.policy = policy
        self.gate = gate or RateLimitGate()

    def __repr__(self) -> str:
        return f"Transport(policy={self.policy!r})"

    def post(self, url: str, body: bytes) -> dict[str, Any]:
        """POST ``body`` (already JSON-encoded) and return the parsed answer.

        Raises:
            PagentValidationError: 400.
            PagentAuthError: 401 or 403.
            PagentRateLimitError: 429 after every retry.
            PagentServerError: 5xx after every retry.
            PagentConnectionError: the server could not be reached after every retry.
            PagentUnknownOutcomeError: the request may have been received, but no answer came.
            PagentUnexpectedResponseError: an undocumented status.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_RetryLater),
            stop=tenacity.stop_after_attempt(self.policy.max_retries + 1),
            wait=self._wait_before_retry,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, body)
        except _RetryLater as exhausted:
            raise exhausted.final from None

    def _attempt(self, url: str, body: bytes) -> dict[str, Any]:
        self.gate.wait()
        timeout = (self.policy.connect_timeout_s, self.policy.read_timeout_s)
        try:
            response = self._session.post(url, data=body, headers=self._headers, timeout=timeout)
        except requests.ConnectionError as error:
            if _never_sent(error):
                raise _RetryLater(
                    "could not connect", PagentConnectionError(f"could not connect to {url} after every retry: {error}")
                ) from error
            raise PagentUnknownOutcomeError(
                f"POST {url}: the connection failed after the request was sent ({error}); "
                "pagent may or may not have recorded these events"
            ) from error
        except requests.Timeout as error:
            raise PagentUnknownOutcomeError(
                f"POST {url}: no answer within {self.policy.read_timeout_s}s; "
                "pagent may or may not have recorded these events"
            ) from error
        except requests.RequestException as error:
            raise PagentUnknownOutcomeError(f"POST {url} failed mid-answer: {error}") from error
        return _raise_for_answer(response, url)

    def _wait_before_retry(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        # jitter in proportion to the first step (tenacity's default is a fixed second)
        backoff = tenacity.wait_exponential_jitter(
            initial=self.policy.backoff_initial_s,
            max=self.policy.backoff_max_s,
            jitter=self.policy.backoff_initial_s,
        )(retry_state)
        if isinstance(failure, _RetryLater) and isinstance(failure.final, PagentRateLimitError):
            delay = failure.retry_after_s if failure.retry_after_s is not None else backoff
            delay = min(delay, self.policy.backoff_max_s)
            self.gate.close_for(delay)  # every sender waits, not just this one
            return delay
        return backoff

    @staticmethod
    def _log_retry(retry_state: tenacity.RetryCallState) -> None:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning(
            "pagent request attempt %d failed (%s); retrying in %.2fs",
            retry_state.attempt_number,
            failure,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )
