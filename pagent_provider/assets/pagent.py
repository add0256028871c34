"""The ``pagent://`` asset URI scheme, registered with Airflow through ``asset-uris``.

:class:`~pagent_provider.operators.conversions.ConversionsOperator` reports its
output as ``pagent://<host[:port]>/conversions``: the host (and a non-default
port) of the pagent connection's base URL, and the one dataset pagent's ingest
API writes, ``conversions`` (see :mod:`pagent_provider.lineage`). Airflow calls
:func:`sanitize_uri` for every asset of this scheme, in DAG files and in
lineage, after its own generic normalisation (scheme lower-cased, user info,
fragment and trailing slashes dropped). This module imports nothing from
Airflow at module level, so registering the handler costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from airflow.providers.common.compat.assets import Asset

SCHEME = "pagent"
#: The one dataset of pagent's ingest API.
DATASET = "conversions"
_FORMAT = f"{SCHEME}://<host[:port]>/{DATASET}"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Normalise and validate a ``pagent://`` URI, as Airflow's ``asset-uris`` handlers do.

    The host is lower-cased and an empty port (``host:``) dropped; the path must
    be ``/conversions``.

    Args:
        uri: the URI, split (Airflow passes :func:`urllib.parse.urlsplit` output).

    Returns:
        The normalised URI, split.

    Raises:
        ValueError: the URI has no host, an invalid port, another path, a query,
            or user info (which Airflow would otherwise drop with only a warning).
            The message shows the expected form.
    """
    if uri.username is not None or uri.password is not None:
        raise ValueError(f"URI format {SCHEME}:// must not carry user info (the API key stays in the connection)")
    if not uri.hostname:
        raise ValueError(f"URI format {SCHEME}:// must contain a host: {_FORMAT}")
    try:
        port = uri.port
    except ValueError:
        raise ValueError(f"URI format {SCHEME}:// has an invalid port: {_FORMAT}") from None
    if port == 0:
        raise ValueError(f"URI format {SCHEME}:// has an invalid port 0: {_FORMAT}")
    if uri.path.rstrip("/") != f"/{DATASET}":
        raise ValueError(f"URI format {SCHEME}:// must name the dataset {DATASET!r}: {_FORMAT}, got path {uri.path!r}")
    if uri.query:
        raise ValueError(f"URI format {SCHEME}:// takes no query: {_FORMAT}")
    host = uri.hostname.lower()  # .hostname drops the brackets of an IPv6 literal
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return uri._replace(scheme=SCHEME, netloc=netloc, path=f"/{DATASET}", query="", fragment="")


def create_asset(*, host: str, port: int | None = None, extra: dict[str, Any] | None = None) -> Asset:
    """The ``pagent://<host[:port]>/conversions`` asset (an ``Asset`` on Airflow 3, a ``Dataset`` on 2.11)."""
    from airflow.providers.common.compat.assets import Asset

    netloc = host if port is None else f"{host}:{port}"
    return Asset(uri=f"{SCHEME}://{netloc}/{DATASET}", extra=extra)


def convert_asset_to_openlineage(asset: Asset, lineage_context: Any) -> Any:
    """The OpenLineage dataset of a ``pagent://`` asset: namespace ``pagent://<host[:port]>``, name ``conversions``.

    The same naming :mod:`pagent_provider.lineage` reports to OpenLineage directly.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset as OpenLineageDataset

    parsed = urlsplit(asset.uri)
    return OpenLineageDataset(namespace=f"{SCHEME}://{parsed.netloc}", name=DATASET)
