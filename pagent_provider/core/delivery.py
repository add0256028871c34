"""Delivering one batch: send it, and when pagent refuses it, find the rows it refuses.

A 400 on a batch whose events all passed client-side validation means the
server refuses some of them. Bisection isolates those with ``O(r log n)``
extra requests for ``r`` refused rows, delivers the rest, and keeps the
server's message for each refused row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pagent_provider.core.encoding import v1_body
from pagent_provider.exceptions import (
    PagentError,
    PagentUnknownOutcomeError,
    PagentValidationError,
)


class V1Sender(Protocol):
    """Anything that POSTs an encoded v1 body, such as :class:`~pagent_provider.core.client.PagentClient`."""

    def send_encoded_v1(self, body: bytes) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PendingEvent:
    """An event ready to send.

    Attributes:
        key: its ledger key.
        content_hash: hash of ``encoded``.
        encoded: canonical JSON of the event.
        row: where it came from (key value or row number), for reject reports.
    """

    key: str
    content_hash: str
    encoded: str
    row: str


@dataclass
class BatchOutcome:
    """What happened to each event of one batch."""

    claim_id: str | None
    sent: list[PendingEvent] = field(default_factory=list)
    accepted: int = 0
    requests: int = 0
    refused: list[tuple[PendingEvent, str]] = field(default_factory=list)
    unknown: list[PendingEvent] = field(default_factory=list)
    unknown_reason: str = ""
    failed: list[PendingEvent] = field(default_factory=list)
    error: BaseException | None = None


def deliver_batch(sender: V1Sender, events: list[PendingEvent], claim_id: str | None) -> BatchOutcome:
    """Send ``events`` as one v1 request, bisecting on 400; never raises.

    Once a request fails for a reason other than a 400 (auth, rate limit
    exhausted, server down, unknown outcome), the rest of the batch is not
    sent and is reported as failed.
    """
    outcome = BatchOutcome(claim_id=claim_id)
    _deliver_into(sender, events, outcome)
    return outcome


def _deliver_into(sender: V1Sender, events: list[PendingEvent], outcome: BatchOutcome) -> None:
    if outcome.error is not None or outcome.unknown:
        outcome.failed.extend(events)  # stop sending once something went definitely wrong
        return
    outcome.requests += 1
    try:
        answer = sender.send_encoded_v1(v1_body([event.encoded for event in events]))
    except PagentValidationError as error:
        if len(events) == 1:
            outcome.refused.append((events[0], error.server_message or str(error)))
            return
        middle = len(events) // 2
        _deliver_into(sender, events[:middle], outcome)
        _deliver_into(sender, events[middle:], outcome)
        return
    except PagentUnknownOutcomeError as error:
        outcome.unknown.extend(events)
        outcome.unknown_reason = str(error)
        return
    except PagentError as error:
        outcome.failed.extend(events)
        outcome.error = error
        return
    except Exception as error:  # noqa: BLE001 - reported to the engine, which decides
        outcome.failed.extend(events)
        outcome.error = error
        return
    outcome.sent.extend(events)
    accepted = answer.get("accepted")
    outcome.accepted += accepted if isinstance(accepted, int) else len(events)
