"""Ledger transactions retried with backoff while the database fails for a moment.

A ledger write that fails after pagent acknowledged a batch (the database is
locked, the connection dropped) would leave acknowledged events as plain
claims, which a later run may send again. So every ledger transaction is run
through :class:`LedgerRetry`: transient errors are retried with exponential
backoff and full jitter until a time budget runs out, and only then does the
run give up, with a :class:`~pagent_provider.exceptions.PagentLedgerUnavailableError`
that says what was left unrecorded.

Retrying is safe because every ledger transaction is idempotent: claims carry
claim ids fixed before the first attempt (a commit that went through but whose
answer was lost shows up on the retry as rows carrying our claim id), marks
and releases select rows by claim id, and take-overs compare-and-swap on the
old claim id. The one exception is ``record_rejects``: a lost answer retried
logs those rejects twice, which only the informational rejects table sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
import tenacity

from pagent_provider.exceptions import PagentLedgerUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The first retry waits up to this long; each further one up to twice as long.
BACKOFF_INITIAL_S = 0.05
#: No single wait is longer than this.
BACKOFF_MAX_S = 5.0
#: Attempts a transaction gets when its statements switch plans (see :class:`RetryAtOnce`).
_PLAN_SWITCHES = 3


class RetryAtOnce(Exception):
    """A statement's fast plan met what only its slower plan handles; run the transaction again now.

    Raised by a statement layer after it switched plans (see
    ``ArrayStatements.claim_window``). The transaction it was in is rolled
    back; :meth:`LedgerRetry.run` starts the next attempt at once, outside
    the backoff and the budget, since nothing failed that time could cure.
    """


def is_transient(error: BaseException, permanent: Callable[[sa.exc.DBAPIError], bool]) -> bool:
    """True for an error that a later attempt of the same transaction may not meet.

    A lost connection, a lock or deadlock, a database going away: yes. An
    integrity or programming error, or an ``OperationalError`` the dialect
    knows to be ``permanent`` (a missing table): never.
    """
    if not isinstance(error, sa.exc.DBAPIError) or isinstance(error, sa.exc.IntegrityError | sa.exc.ProgrammingError):
        return False
    if error.connection_invalidated:
        return True
    return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError) and not permanent(error)


def describe(error: BaseException) -> str:
    """The driver's message of ``error`` on one line, without the SQL or its parameters."""
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines()
    text = f"{type(orig).__name__}: {lines[0] if lines else ''}"[:300]
    if getattr(error, "connection_invalidated", False):
        text += " (connection lost)"
    return text


@dataclass(frozen=True)
class LedgerRetry:
    """Runs ledger transactions again while they fail transiently, for at most ``budget_s``.

    Attributes:
        budget_s: seconds from the first attempt after which no new one starts
            (0: one attempt only). The last attempt may end later, by its own
            duration (a SQLite busy timeout, a lock wait).
        permanent: the dialect's errors that retrying cannot cure.
        table: the ledger table, for messages.
    """

    budget_s: float
    permanent: Callable[[sa.exc.DBAPIError], bool]
    table: str

    def run(self, operation: str, consequence: Callable[[], str], attempt: Callable[[], T]) -> T:
        """Return ``attempt()``, retried while it fails transiently.

        Args:
            operation: what is being done, for the log and the error.
            consequence: what giving up leaves behind, said in the error (built on failure only).
            attempt: one whole transaction.

        Raises:
            PagentLedgerUnavailableError: it still failed when the budget ran out.
        """
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda error: is_transient(error, self.permanent)),
            stop=tenacity.stop_after_delay(self.budget_s),
            wait=tenacity.wait_random_exponential(multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S),
            before_sleep=lambda state: self._log_retry(operation, state),
            reraise=True,
        )
        try:
            for _ in range(_PLAN_SWITCHES - 1):
                try:
                    return retrying(attempt)
                except RetryAtOnce:
                    continue  # its raiser switched to a plan that does not raise it
            return retrying(attempt)
        except sa.exc.DBAPIError as error:
            if not is_transient(error, self.permanent):
                raise
            attempts = retrying.statistics.get("attempt_number", 1)
            raise PagentLedgerUnavailableError(
                f"ledger {operation} on table {self.table!r} still failed after {attempts} attempts in "
                f"{time.monotonic() - started:.1f}s ({describe(error)}): {consequence()}"
            ) from error

    def _log_retry(self, operation: str, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "ledger %s on table %r failed (attempt %d: %s); trying again in %.2fs",
            operation,
            self.table,
            state.attempt_number,
            describe(error) if error is not None else "?",
            state.next_action.sleep if state.next_action is not None else 0.0,
        )
