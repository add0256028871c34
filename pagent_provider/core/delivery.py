"""Delivering one batch: send it, and when pagent refuses it, find the rows it refuses.

A 400 (or 413, payload too large) on a batch whose events all passed
client-side validation means the server refuses some of them. Bisection
isolates those with ``O(r log n)`` extra requests for ``r`` refused rows,
delivers the rest, and keeps the server's message for each refused row. A
:class:`RefusalBudget` shared by every sender bounds it: once more rows than
``max_invalid_rows`` were refused, nothing is bisected any more (a server that
refuses everything would otherwise cost two requests per row).

Only an acknowledgement (see
:func:`~pagent_provider.core.transport.acknowledgement`) makes events ``sent``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from pagent_provider.core.apis import SendEncoded
from pagent_provider.core.encoding import batch_body
from pagent_provider.exceptions import (
    PagentDeliveryError,
    PagentError,
    PagentUnacknowledgedError,
    PagentUnknownOutcomeError,
    PagentValidationError,
)


class RefusalBudget:
    """How many rows pagent may refuse before the sync stops bisecting; shared by every sender.

    Args:
        limit: the sync's ``max_invalid_rows``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._refused = 0
        self._lock = threading.Lock()

    def refuse(self) -> None:
        """Count one refused row."""
        with self._lock:
            self._refused += 1

    @property
    def exhausted(self) -> bool:
        """True once more rows than the limit were refused."""
        with self._lock:
            return self._refused > self.limit

    def error(self) -> PagentDeliveryError:
        """The error that stops the sync once the budget is spent."""
        return PagentDeliveryError(
            f"pagent refused more than max_invalid_rows={self.limit} rows; stopped sending so as not to "
            "bisect every batch (the refused rows and their reasons are in the rejects table). "
            "Fix the rows, or raise max_invalid_rows"
        )


class PendingEvent(NamedTuple):
    """An event ready to send (a named tuple: one is made per row, at half a frozen dataclass's cost).

    Attributes:
        key: its ledger key.
        content_hash: hash of the canonical JSON of the event in the v1 shape,
            whichever API sends it (see :mod:`pagent_provider.core.apis`).
        encoded: canonical JSON of the event as the API it goes to takes it.
        row: where it came from (key value or row number), for reject reports.
    """

    key: str
    content_hash: str
    encoded: str
    row: str


@dataclass
class BatchOutcome:
    """What happened to each event of one batch."""

    claim_id: int | None
    sent: list[PendingEvent] = field(default_factory=list)
    accepted: int = 0
    requests: int = 0
    refused: list[tuple[PendingEvent, str]] = field(default_factory=list)
    unknown: list[PendingEvent] = field(default_factory=list)
    unknown_reason: str = ""
    failed: list[PendingEvent] = field(default_factory=list)
    error: BaseException | None = None


def deliver_batch(
    send: SendEncoded, events: list[PendingEvent], claim_id: int | None, budget: RefusalBudget | None = None
) -> BatchOutcome:
    """Send ``events`` as one request through ``send``, bisecting on 400/413; never raises.

    Once a request fails for a reason other than a refusal (auth, rate limit
    exhausted, server down, unknown outcome, an answer that is not an
    acknowledgement), the rest of the batch is not sent and is reported as
    failed. ``budget`` bounds the bisection (unbounded when ``None``).
    """
    outcome = BatchOutcome(claim_id=claim_id)
    _deliver_into(send, events, outcome, budget or RefusalBudget(len(events)))
    return outcome


def _deliver_into(send: SendEncoded, events: list[PendingEvent], outcome: BatchOutcome, budget: RefusalBudget) -> None:
    if outcome.error is not None or outcome.unknown:
        outcome.failed.extend(events)  # stop sending once something went definitely wrong
        return
    outcome.requests += 1
    try:
        answer = send(batch_body([event.encoded for event in events]), len(events))
    except PagentValidationError as error:
        _bisect(send, events, outcome, budget, error)
        return
    except PagentUnacknowledgedError as error:
        # a 2xx that acknowledges nothing: those events' fate is unknown, and a
        # server answering like this is not to be trusted with the next batch
        outcome.unknown.extend(events)
        outcome.unknown_reason = str(error)
        outcome.error = error
        return
    except PagentUnknownOutcomeError as error:
        outcome.unknown.extend(events)
        outcome.unknown_reason = str(error)
        return
    except PagentError as error:
        # every other pagent error proves nothing was stored (refused key,
        # redirect, 4xx, retries exhausted on 429/500/503, never connected)
        outcome.failed.extend(events)
        outcome.error = error
        return
    except Exception as error:  # noqa: BLE001 - reported to the engine, which decides
        # a failure nobody foresaw, possibly after the body went out: never assume it was not stored
        outcome.unknown.extend(events)
        outcome.unknown_reason = f"unexpected error while sending: {type(error).__name__}"
        outcome.error = error
        return
    outcome.sent.extend(events)
    outcome.accepted += answer["accepted"]


def _bisect(
    send: SendEncoded,
    events: list[PendingEvent],
    outcome: BatchOutcome,
    budget: RefusalBudget,
    error: PagentValidationError,
) -> None:
    if budget.exhausted:
        outcome.failed.extend(events)
        outcome.error = budget.error()
        return
    if len(events) == 1:
        outcome.refused.append((events[0], error.server_message or str(error)))
        # Past the limit the sync fails at its end anyway; what is left of it may
        # still be delivered, but the next refused request is no longer bisected.
        budget.refuse()
        return
    middle = len(events) // 2
    _deliver_into(send, events[:middle], outcome, budget)
    _deliver_into(send, events[middle:], outcome, budget)
