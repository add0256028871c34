"""Typed errors raised by the pagent provider.

The tree splits into *retriable* errors (worth another try later: rate limits,
server errors, network trouble) and *fatal* ones (retrying cannot help: the
request is invalid or the API key is wrong). An upload whose outcome cannot be
known gets its own class, because neither retrying nor giving up is safe
without a ledger to record it.

Nothing in this module imports Airflow; :mod:`pagent_provider.hooks.pagent`
maps fatal errors onto Airflow's "fail without retry" behaviour.
"""

from __future__ import annotations


class PagentError(Exception):
    """Base class of every error raised by this package."""

    #: Whether trying the same call again later may succeed.
    retriable: bool = False


class PagentFatalError(PagentError):
    """An error that the same request can never get past: fix input or config."""


class PagentRetriableError(PagentError):
    """An error that may go away on its own: retry later."""

    retriable = True


class PagentConfigError(PagentFatalError):
    """The provider is configured wrongly (a bad parameter, a missing column)."""


class PagentValidationError(PagentFatalError):
    """An event or request body breaks the documented rules.

    Raised before any byte is sent when the client-side checks find it, and on
    an HTTP 400 answer, in which case :attr:`server_message` carries the
    server's ``error`` text.

    Attributes:
        index: position of the offending event in the request, when known.
        field: the offending field, when known.
        server_message: the ``error`` text of a 400 answer, or ``None``.
        status_code: 400 for a server answer, ``None`` for a client-side check.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
        server_message: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.field = field
        self.server_message = server_message
        self.status_code = status_code


class PagentAuthError(PagentFatalError):
    """HTTP 401: the API key is missing, wrong, expired or deleted."""


class PagentRateLimitError(PagentRetriableError):
    """HTTP 429 persisted after every allowed retry."""


class PagentServerError(PagentRetriableError):
    """HTTP 5xx (or another unexpected status) persisted after every allowed retry."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PagentConnectionError(PagentRetriableError):
    """The server could not be reached; no request reached it, so nothing was recorded."""


class PagentUnknownOutcomeError(PagentError):
    """The request may have reached the server, but no answer came back.

    Read timeouts and connections dropped after the body was sent end here.
    The events may or may not have been recorded; resending them risks
    counting them twice, dropping them risks losing them. The ledger records
    such events as ``unknown`` and applies the user's ``unknown_outcome``
    policy on the next run.
    """


class PagentUnacknowledgedError(PagentUnknownOutcomeError):
    """pagent answered 2xx, but the body does not acknowledge every event sent.

    Only a JSON body whose ``accepted`` equals the number of events sent is an
    acknowledgement. A body that is not JSON (an HTML page), has no
    ``accepted``, counts fewer (or more) events, or carries an ``error`` proves
    nothing either way: the events are recorded as ``unknown``.

    Attributes:
        status_code: the 2xx status.
        accepted: the ``accepted`` value the body held, or ``None``.
        expected: how many events the request carried.
    """

    def __init__(self, message: str, *, status_code: int, accepted: object, expected: int) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.accepted = accepted
        self.expected = expected


class PagentRedirectError(PagentConfigError):
    """pagent's base URL answered a redirect (3xx); redirects are never followed.

    ``requests`` would turn a redirected POST into a bodyless GET (301/302/303)
    or re-post the events to another host (307/308). Fix the connection's host.

    Attributes:
        status_code: the 3xx status.
        location: the ``Location`` header (credentials removed), or ``None``.
    """

    def __init__(self, message: str, *, status_code: int, location: str | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.location = location


class PagentLedgerError(PagentFatalError):
    """The ledger cannot keep its promise here: fix the ledger's database or table first.

    Raised for a key column that does not compare byte-exactly, a table made by
    an older version that needs migrating, a database that does not enforce
    primary keys, or a claim result the engine cannot account for.
    """


class PagentLedgerUnavailableError(PagentRetriableError):
    """A ledger write kept failing (database locked, connection dropped) after every retry."""


class PagentClaimedElsewhereError(PagentRetriableError):
    """Rows of this run are held by another live run and were not confirmed sent in time.

    This run cannot vouch for them, so it fails; the next try checks them again.
    """


class PagentInterruptedError(PagentError):
    """The sync was stopped by a signal (SIGINT, SIGTERM, or Airflow's ``on_kill``).

    The batches in flight were drained and recorded before it was raised; a
    later run continues where this one stopped.
    """


class PagentDeliveryError(PagentFatalError):
    """A sync finished, but not everything could be delivered (too many invalid or refused rows)."""


class PagentUnexpectedResponseError(PagentFatalError):
    """The server answered with a status the API does not document (404, 405, 413, ...)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
