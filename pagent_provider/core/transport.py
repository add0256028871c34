"""HTTP transport for pagent: one pooled session, timeouts, polite retries.

Everything about *how* a request travels lives here, nothing about *what* it
carries:

* one :class:`requests.Session` with a connection pool sized for the number of
  concurrent senders, each URL's request prepared once by it and sent through
  its adapter (:mod:`~pagent_provider.core.prepared_post`: half the CPU of
  ``session.post``, the same bytes, proxies and TLS settings);
* connect and read timeouts on every request, and an overall deadline
  (:mod:`~pagent_provider.core.deadlines`) that a trickling server cannot stretch;
* redirects are never followed: any 3xx is a configuration error;
* a 2xx acknowledges a batch only when its JSON body says ``accepted`` equal
  to the number of events sent (:func:`acknowledgement`);
* every status has a deliberate rule (:func:`_raise_for_status`): 400 and 413
  refuse the request (the sync bisects), 401/403 refuse the key, 404/405 point
  at a wrong base URL, other 4xx are unexpected and fatal (a client error: the
  request was not carried out), 500 is retried, 429 and 503 are retried
  honouring ``Retry-After`` and pause *every* sender sharing the
  :class:`RateLimitGate`; 502, 504, every other 5xx (a gateway that gave up
  waiting, Cloudflare's 52x: the server may have stored the events) and a
  final 1xx end as unknown outcomes;
* a request that may have reached the server (read timeout, connection dropped
  after sending, deadline passed) is never retried silently: it raises
  :class:`~pagent_provider.exceptions.PagentUnknownOutcomeError`;
* every text that comes back (bodies, headers, library errors) is redacted of
  the API key (:mod:`~pagent_provider.core.redaction`) before it goes anywhere;
* proxies, TLS verification, a client certificate and whether to read the
  environment are :class:`HttpOptions`, the settings Airflow's ``HttpHook``
  users know; ``~/.netrc`` is never read.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import requests.auth
import tenacity
import urllib3.exceptions

from pagent_provider.core import defaults
from pagent_provider.core.deadlines import Watchdog, deadline_adapter
from pagent_provider.core.prepared_post import PreparedPosts
from pagent_provider.core.redaction import Redactor, without_credentials
from pagent_provider.exceptions import (
    PagentAuthError,
    PagentConfigError,
    PagentConnectionError,
    PagentRateLimitError,
    PagentRedirectError,
    PagentServerError,
    PagentUnacknowledgedError,
    PagentUnexpectedResponseError,
    PagentUnknownOutcomeError,
    PagentValidationError,
)

log = logging.getLogger(__name__)

#: Bounds of a retry policy: beyond them a setting is a mistake, not a choice.
MAX_RETRIES_ALLOWED = 100
MAX_DURATION_S = 3600.0
#: Retried with backoff: the server says it failed before storing anything.
RETRIED_SERVER_STATUSES = frozenset({500, 503})
#: Retried honouring ``Retry-After``, pausing every sender.
PAUSING_STATUSES = frozenset({429, 503})
#: The request itself is refused (the sync bisects the batch to find the events).
REFUSED_STATUSES = frozenset({400, 413})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_retries: retries after the first attempt (0 = try once).
        backoff_initial_s: first exponential backoff step.
        backoff_max_s: cap of one backoff step and of an honoured ``Retry-After``.
        connect_timeout_s: time allowed to open a connection.
        read_timeout_s: time allowed between two bytes of the answer once the request is sent.
        deadline_s: time allowed for a whole attempt (connect, send, read the
            whole answer); ``None`` means ``connect_timeout_s + read_timeout_s``.
    """

    max_retries: int = defaults.MAX_RETRIES
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = defaults.READ_TIMEOUT_S
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_retries <= MAX_RETRIES_ALLOWED:
            raise PagentConfigError(f"max_retries must be 0 to {MAX_RETRIES_ALLOWED}, got {self.max_retries}")
        durations = {
            "connect timeout": self.connect_timeout_s,
            "read timeout (the connection's 'timeout' extra)": self.read_timeout_s,
            "deadline_s": self.deadline_s,
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
        }
        for name, value in durations.items():
            # NaN and infinity pass a "> 0" check, then crash deep in socket or timer code
            if value is not None and not (0 < value <= MAX_DURATION_S):
                raise PagentConfigError(f"{name} must be a number of seconds above 0 and at most {MAX_DURATION_S:g}")

    @property
    def attempt_deadline_s(self) -> float:
        """The overall deadline of one attempt."""
        return self.deadline_s if self.deadline_s is not None else self.connect_timeout_s + self.read_timeout_s


#: Proxy URL schemes requests can use (the socks ones need PySocks: ``pip install requests[socks]``).
PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})


@dataclass(frozen=True, repr=False)
class HttpOptions:
    """How requests travel to pagent, named as ``requests`` and Airflow's ``HttpHook`` name them.

    Attributes:
        proxies: proxy URL per scheme, ``scheme://host`` or ``all`` (requests' ``proxies``),
            e.g. ``{"https": "http://user:password@proxy:3128"}``; empty: no proxy
            but the environment's (when ``trust_env``). Their credentials are secrets:
            :meth:`secrets` lists them for redaction and the repr hides them.
        verify: verify TLS certificates (``True``), do not (``False``), or the path
            of a CA bundle file or directory to verify them with.
        cert: client certificate: the path of a PEM file holding the certificate
            and its key, or ``(certificate path, key path)``.
        trust_env: take proxies (``HTTPS_PROXY``, ``NO_PROXY``...) and CA bundles
            (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) from the environment.
            Explicit ``proxies`` and ``verify`` win over the environment's.
            ``~/.netrc`` is never read, whatever this says.

    Raises:
        PagentConfigError: a setting of the wrong type, a proxy URL without an
            ``http(s)://`` or ``socks*://`` scheme and host, a missing file. The
            message starts with the setting's name and never repeats credentials.
    """

    proxies: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    trust_env: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.proxies, Mapping):
            raise PagentConfigError(
                f"'proxies' must be an object of scheme to proxy URL, got {type(self.proxies).__name__}"
            )
        object.__setattr__(self, "proxies", {key: _checked_proxy(key, url) for key, url in self.proxies.items()})
        if not isinstance(self.verify, bool | str) or self.verify == "":
            raise PagentConfigError("'verify' must be true, false or the path of a CA bundle")
        if isinstance(self.verify, str) and not os.path.exists(self.verify):
            raise PagentConfigError(f"'verify': no CA bundle file or directory at {self.verify!r}")
        cert = self.cert
        if isinstance(cert, list | tuple):
            if len(cert) != 2 or not all(isinstance(path, str) and path for path in cert):
                raise PagentConfigError("'cert' must be a path, or [certificate path, key path]")
            cert = (cert[0], cert[1])
            object.__setattr__(self, "cert", cert)
        elif cert is not None and (not isinstance(cert, str) or not cert):
            raise PagentConfigError("'cert' must be a path, or [certificate path, key path]")
        for path in (cert,) if isinstance(cert, str) else cert or ():
            if not os.path.isfile(path):
                raise PagentConfigError(f"'cert': no file at {path!r}")
        if not isinstance(self.trust_env, bool):
            raise PagentConfigError(f"'trust_env' must be true or false, got {self.trust_env!r}")

    def __repr__(self) -> str:
        proxies = {key: without_credentials(url) for key, url in self.proxies.items()}
        return f"HttpOptions(proxies={proxies!r}, verify={self.verify!r}, cert={self.cert!r}, trust_env={self.trust_env!r})"

    def secrets(self) -> list[str]:
        """The proxies' passwords and ``user:password`` pairs (as sent in ``Proxy-Authorization``), to redact."""
        found: list[str] = []
        for url in self.proxies.values():
            parts = urlsplit(url)
            if parts.password:
                found += [parts.password, unquote(parts.password)]
                found += [f"{unquote(parts.username or '')}:{unquote(parts.password)}"]
        return found


def _checked_proxy(key: object, url: object) -> str:
    if not isinstance(key, str) or not key:
        raise PagentConfigError("'proxies' keys must be schemes such as 'http' and 'https' (or 'scheme://host', 'all')")
    if not isinstance(url, str):
        raise PagentConfigError(f"'proxies' [{key!r}] must be a proxy URL, got {type(url).__name__}")
    if key == "no_proxy":  # requests reads it as a comma-separated host list
        return url
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise PagentConfigError(f"'proxies' [{key!r}] is not a valid URL (check its host and port)") from None
    if parts.scheme.lower() not in PROXY_SCHEMES or not parts.hostname:
        raise PagentConfigError(
            f"'proxies' [{key!r}] must be a URL such as http://proxy:3128 (schemes: {', '.join(sorted(PROXY_SCHEMES))}), "
            f"got {without_credentials(url)!r}"
        )
    if parts.scheme.lower().startswith("socks") and importlib.util.find_spec("socks") is None:
        raise PagentConfigError(f"'proxies' [{key!r}]: SOCKS proxies need PySocks (pip install 'requests[socks]')")
    return url.strip()


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


class _KeepBearerHeader(requests.auth.AuthBase):
    """Session auth that leaves the request as it is.

    With no session auth, requests looks up ``~/.netrc`` (and credentials in
    the URL) and replaces the ``Authorization: Bearer`` header with Basic auth
    from them; having an auth object skips that lookup. Proxies from the
    environment (``HTTPS_PROXY``) still apply.
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def build_session(pool_size: int, options: HttpOptions | None = None) -> requests.Session:
    """A session whose pool keeps ``pool_size`` connections alive and never retries by itself.

    ``options`` (default: :class:`HttpOptions`'s defaults) sets its proxies, TLS
    verification, client certificate and ``trust_env``; :class:`Transport` passes
    them with every request, so that the environment cannot override them.
    """
    options = options or HttpOptions()
    session = requests.Session()
    session.auth = _KeepBearerHeader()
    session.trust_env = options.trust_env
    session.proxies = dict(options.proxies)
    session.verify = options.verify
    session.cert = options.cert
    adapter = deadline_adapter(pool_size)
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
    if isinstance(reason, urllib3.exceptions.ProxyError):
        # urllib3 wraps only a failure to reach the proxy itself (before anything was sent)
        reason = reason.original_error
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


def _error_text(response: requests.Response, redact: Redactor) -> str:
    """The server's explanation (its ``error``, else the body), redacted and cut short."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: a hostile, deeply nested body
        return redact.excerpt(response.text)
    if isinstance(body, dict) and "error" in body:
        return redact.excerpt(body["error"])
    return redact.excerpt(json.dumps(body, ensure_ascii=False))


def acknowledgement(response: requests.Response, expected: int, redact: Redactor) -> dict[str, Any]:
    """The parsed body of a 2xx answer, when it acknowledges all ``expected`` events.

    Raises:
        PagentUnacknowledgedError: the body proves nothing (not JSON, no or a wrong
            ``accepted``, an ``error``): the events' fate is unknown. Even
            ``accepted: 0`` is not trusted to mean "nothing stored": a server that
            miscounts may have stored some, so resending is left to the
            ``unknown_outcome`` policy rather than done blindly.
    """
    status = response.status_code
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: a hostile, deeply nested body
        body = None
    accepted = body.get("accepted") if isinstance(body, dict) else None
    if isinstance(body, dict) and "error" not in body and type(accepted) is int and accepted == expected:
        return body
    if body is None:
        problem = f"a body that is not JSON ({redact.excerpt(response.text, 120)!r})"
    elif not isinstance(body, dict) or "accepted" not in body:
        problem = f"no 'accepted' count ({_error_text(response, redact)})"
    elif "error" in body:
        problem = f"an error: {_error_text(response, redact)}"
    else:
        problem = f"accepted={redact.excerpt(accepted, 40)} for {expected} events"
    raise PagentUnacknowledgedError(
        f"pagent answered {status} with {problem}: that is not an acknowledgement, so these events "
        "may or may not have been recorded; they are recorded as unknown",
        status_code=status,
        accepted=accepted,
        expected=expected,
    )


def _raise_for_status(response: requests.Response, url: str, redact: Redactor) -> None:
    """Raise the error each non-2xx status stands for (see the module docstring)."""
    status = response.status_code
    if 300 <= status < 400:
        location = response.headers.get("Location")
        shown = redact(without_credentials(location)) if location else None
        raise PagentRedirectError(
            f"POST {url} answered a redirect ({status}) to {shown or 'nowhere (no Location)'}; redirects are "
            "never followed (a redirected POST loses its body or goes to another host). Set the pagent "
            "connection's host to the ingest API itself, e.g. https://ingest.pagent.ai. Nothing was recorded as sent.",
            status_code=status,
            location=shown,
        )
    if status in REFUSED_STATUSES:
        message = _error_text(response, redact) or ("payload too large" if status == 413 else "bad request")
        raise PagentValidationError(
            f"pagent refused the request ({status}): {message}", server_message=message, status_code=status
        )
    if status in (401, 403):
        raise PagentAuthError(
            f"pagent refused the API key ({status}): {_error_text(response, redact)}. Check the connection's "
            "password: the key may be wrong, expired or deleted (Settings > API Keys), "
            "or carry extra spaces or newlines."
        )
    if status in PAUSING_STATUSES:
        final: Exception = (
            PagentRateLimitError("pagent kept answering 429 (rate limit exceeded) after every retry")
            if status == 429
            else PagentServerError(f"pagent kept answering 503 after every retry: {_error_text(response, redact)}")
        )
        raise _RetryLater(f"{status} from pagent", final, parse_retry_after(response.headers.get("Retry-After")))
    if status in RETRIED_SERVER_STATUSES:
        raise _RetryLater(
            f"server error {status}",
            PagentServerError(
                f"pagent answered {status} after every retry: {_error_text(response, redact)}", status_code=status
            ),
        )
    if status in (404, 405):
        raise PagentUnexpectedResponseError(
            f"POST {url} answered {status}: check the connection's host (base URL); "
            "it should point at pagent's ingest API, e.g. https://ingest.pagent.ai",
            status_code=status,
        )
    if 400 <= status < 500:
        # a client error: the server says it did not carry the request out
        raise PagentUnexpectedResponseError(
            f"POST {url} answered an undocumented status {status}: {_error_text(response, redact)}",
            status_code=status,
        )
    # Any other 5xx (a gateway that gave up waiting: 502, 504, Cloudflare's 52x) or
    # a final 1xx: the request reached something that may have passed it on.
    raise PagentUnknownOutcomeError(
        f"POST {url} answered {status} ({_error_text(response, redact) or 'no explanation'}): pagent may or may "
        "not have recorded these events"
    )


class TransportCounters:
    """Retries and rate limits seen by one transport, for the run summary and metrics (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.rate_limited = 0

    def count_retry(self, *, rate_limited: bool) -> None:
        """One more retry; ``rate_limited`` when it waits out a 429."""
        with self._lock:
            self.retries += 1
            self.rate_limited += int(rate_limited)


class Transport:
    """Posts JSON bodies to pagent with the retry rules described in the module docstring.

    Args:
        session: a pooled session (see :func:`build_session`), shared by all threads.
        headers: headers sent with every request (the ``Authorization`` header lives here
            and is never logged).
        policy: retry and timeout settings.
        gate: the rate-limit pause shared by every sender.
        redact: removes the API key from every text that comes back.
        watchdog: enforces the overall deadline of each attempt.
    """

    def __init__(
        self,
        session: requests.Session,
        headers: dict[str, str],
        policy: RetryPolicy,
        gate: RateLimitGate | None = None,
        redact: Redactor | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._posts = PreparedPosts(session, headers)
        self.policy = policy
        self.gate = gate or RateLimitGate()
        self.redact = redact or Redactor()
        self.watchdog = watchdog or Watchdog()
        self.counters = TransportCounters()
        # Built once: its state lives in each call (tenacity keeps statistics per thread).
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_RetryLater),
            stop=tenacity.stop_after_attempt(policy.max_retries + 1),
            wait=self._wait_before_retry,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"Transport(policy={self.policy!r})"

    def post(self, url: str, body: bytes, expected: int | None) -> dict[str, Any]:
        """POST ``body`` (already JSON-encoded) carrying ``expected`` events; return the acknowledgement.

        ``expected=None`` is for requests that carry no events (the key check):
        any 2xx then counts, whatever its body.

        Raises:
            PagentUnacknowledgedError: a 2xx that does not acknowledge every event.
            PagentRedirectError: any 3xx.
            PagentValidationError: 400 or 413.
            PagentAuthError: 401 or 403.
            PagentRateLimitError: 429 after every retry.
            PagentServerError: 5xx after every retry.
            PagentConnectionError: the server could not be reached after every retry.
            PagentUnknownOutcomeError: the request may have been received, but no answer came.
            PagentUnexpectedResponseError: an undocumented status.
        """
        try:
            return self._retrying(self._attempt, url, body, expected)
        except _RetryLater as exhausted:
            raise exhausted.final from None

    def _attempt(self, url: str, body: bytes, expected: int | None) -> dict[str, Any]:
        self.gate.wait()
        response = self._send(url, body)
        if not 200 <= response.status_code < 300:
            _raise_for_status(response, url, self.redact)
        if expected is None:
            return {}
        return acknowledgement(response, expected, self.redact)

    def _send(self, url: str, body: bytes) -> requests.Response:
        timeout = (self.policy.connect_timeout_s, self.policy.read_timeout_s)
        redact = self.redact
        with self.watchdog.watch(self.policy.attempt_deadline_s) as deadline:
            try:
                response = self._posts(url).send(body, timeout)
            except requests.ConnectionError as error:
                if _never_sent(error):
                    raise _RetryLater(
                        "could not connect",
                        PagentConnectionError(f"could not connect to {url} after every retry: {redact(error)}"),
                    ) from None
                if deadline.expired:
                    raise self._deadline_passed(url) from None
                raise PagentUnknownOutcomeError(
                    f"POST {url}: the connection failed after the request was sent ({redact(error)}); "
                    "pagent may or may not have recorded these events"
                ) from None
            except requests.Timeout:
                raise PagentUnknownOutcomeError(
                    f"POST {url}: no answer within {self.policy.read_timeout_s}s; "
                    "pagent may or may not have recorded these events"
                ) from None
            except requests.RequestException as error:
                if deadline.expired:
                    raise self._deadline_passed(url) from None
                raise PagentUnknownOutcomeError(f"POST {url} failed mid-answer: {redact(error)}") from None
            if deadline.expired:
                # Cut while the headers trickled in, an answer can parse as a whole one
                # (a 200 with an empty body): it is not.
                raise self._deadline_passed(url)
            return response

    def _deadline_passed(self, url: str) -> PagentUnknownOutcomeError:
        return PagentUnknownOutcomeError(
            f"POST {url}: the answer did not complete within the {self.policy.attempt_deadline_s:g}s deadline; "
            "pagent may or may not have recorded these events"
        )

    def _wait_before_retry(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        # jitter in proportion to the first step (tenacity's default is a fixed second)
        backoff = tenacity.wait_exponential_jitter(
            initial=self.policy.backoff_initial_s,
            max=self.policy.backoff_max_s,
            jitter=self.policy.backoff_initial_s,
        )(retry_state)
        # a Retry-After, or a rate limit, pauses every sender (the condition inline, so mypy narrows failure)
        if isinstance(failure, _RetryLater) and (
            failure.retry_after_s is not None or isinstance(failure.final, PagentRateLimitError)
        ):
            delay = failure.retry_after_s if failure.retry_after_s is not None else backoff
            delay = min(delay, self.policy.backoff_max_s)
            self.gate.close_for(delay)  # every sender waits, not just this one
            return delay
        return backoff

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        self.counters.count_retry(
            rate_limited=isinstance(failure, _RetryLater) and isinstance(failure.final, PagentRateLimitError)
        )
        log.warning(
            "pagent request attempt %d failed (%s); retrying in %.2fs",
            retry_state.attempt_number,
            failure,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )
