"""The two ingest APIs a sync can deliver through, and what differs between them.

pagent takes the same conversions as v1 batches (``POST /v1/conversions``, the
session variables as top-level fields) and as v2 bulk batches (``POST
/v2/conversions/bulk``, the variables grouped in ``session_data``, which also
carries ``visit_id``). Both bodies are ``{"events": [...]}`` of 1 to 100 events
and both answer ``{"accepted": n}``, so everything but the event's shape and
the path is shared: the ledger keys, the content hashes (always of the v1
event, whichever API sends it, so that switching APIs on an existing ledger
resends nothing), claims, bisection and the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from pagent_provider.core import defaults
from pagent_provider.core.transform import TransformConfig
from pagent_provider.exceptions import PagentConfigError

IngestApi = Literal["v1", "v2"]
#: The values ``api`` accepts (the command-line tool reads them from defaults, importing nothing).
INGEST_APIS: tuple[str, ...] = defaults.INGEST_APIS

#: The v1 fields that v2 groups in ``session_data``.
SESSION_DATA_FIELDS = ("session_id", "user_id", "conversion_id")

#: POSTs an encoded ``{"events": [...]}`` body of ``count`` events; returns the acknowledgement or raises.
SendEncoded = Callable[[bytes, int], dict[str, Any]]


class EncodedSender(Protocol):
    """Anything that POSTs encoded batches, such as :class:`~pagent_provider.core.client.PagentClient`."""

    def send_encoded_v1(self, body: bytes, count: int) -> dict[str, Any]:
        """POST a v1 body holding ``count`` events."""
        ...

    def send_encoded_v2_bulk(self, body: bytes, count: int) -> dict[str, Any]:
        """POST a v2 bulk body holding ``count`` events."""
        ...


def check_api(api: object) -> IngestApi:
    """Return ``api`` when it names an ingest API.

    Raises:
        PagentConfigError: it is not ``"v1"`` or ``"v2"``.
    """
    if api not in INGEST_APIS:
        raise PagentConfigError(
            f"api must be one of {', '.join(map(repr, INGEST_APIS))}, got {api!r}: "
            '"v1" sends the session variables as top-level fields, "v2" groups them in session_data '
            "(and also carries visit_id)"
        )
    return api  # type: ignore[return-value]


def send_function(sender: EncodedSender, api: IngestApi) -> SendEncoded:
    """The method of ``sender`` that POSTs batches to ``api``'s endpoint."""
    return sender.send_encoded_v1 if api == "v1" else sender.send_encoded_v2_bulk


def v2_event(event: dict[str, Any], visit_id: str | None = None) -> dict[str, Any]:
    """A v1 event in the v2 shape: the session variables (and ``visit_id``) moved into ``session_data``."""
    shaped = {name: value for name, value in event.items() if name not in SESSION_DATA_FIELDS}
    session_data = {name: event[name] for name in SESSION_DATA_FIELDS if name in event}
    if visit_id is not None:
        session_data["visit_id"] = visit_id
    shaped["session_data"] = session_data
    return shaped


def visit_id_dropped_warning(transform: TransformConfig, api: IngestApi) -> str | None:
    """A warning when visit ids are read but the API cannot carry them (v1), else ``None``."""
    if api != "v1" or (transform.session_data_column is None and "visit_id" not in transform.columns):
        return None
    return (
        "visit_id is read (from the session data column or columns['visit_id']) but v1 events cannot carry it, "
        "so it is not sent: set api='v2' (--api v2) to send it in session_data"
    )
