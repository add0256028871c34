"""Turn a chunk of warehouse rows into valid pagent v1 conversion events.

A sync reads its SQL result in :class:`pandas.DataFrame` chunks and hands each
chunk to :func:`transform_chunk`, which returns the JSON-ready v1 events of the
valid rows and one :class:`RowReject` per invalid row. Nothing here talks to
the network or to Airflow: the module is pure pandas, numpy and stdlib so it
can be tested (and profiled) on its own.

The building blocks (:func:`revenue_to_cents`, :func:`time_to_unix_ms`,
:func:`ids_to_strings`, :func:`properties_to_json_objects`,
:func:`gather_properties`) each convert one column and return a
:class:`Converted` pair: the JSON-ready values (an ``object`` Series holding
``str``/``int``/``dict``/``list`` or ``None``) and the reasons (an ``object``
Series holding a message where a row is invalid and ``None`` where it is
valid). A missing value (NULL, NaN, NaT) is ``None`` in both: whether a
missing value is acceptable depends on the event field, so
:func:`transform_chunk` decides that.

The rules an event must meet (time range, revenue range, JSON-safe
properties, strings UTF-8 can encode) are those of
:mod:`pagent_provider.core.events`, which the hook applies to hand-made
events: a row breaking one becomes a :class:`RowReject` with a reason naming
the column or field, never an exception that stops the sync.

The work on whole columns is vectorised; per-element Python runs only where
the values already are Python objects (``Decimal``, ``dict``, JSON text,
``datetime`` objects in an ``object`` column) and for the rare revenue values
that need exact decimal rounding.
"""

from __future__ import annotations

from pagent_provider.core.transform._converted import Converted
from pagent_provider.core.transform.chunk import transform_chunk
from pagent_provider.core.transform.config import (
    EVENT_FIELDS,
    REQUIRED_FIELDS,
    RowReject,
    TransformConfig,
    TransformedChunk,
    check_columns,
)
from pagent_provider.core.transform.ids import ids_to_strings
from pagent_provider.core.transform.properties import gather_properties, properties_to_json_objects
from pagent_provider.core.transform.revenue import revenue_to_cents
from pagent_provider.core.transform.times import time_to_unix_ms

__all__ = [
    "EVENT_FIELDS",
    "REQUIRED_FIELDS",
    "Converted",
    "RowReject",
    "TransformConfig",
    "TransformedChunk",
    "check_columns",
    "gather_properties",
    "ids_to_strings",
    "properties_to_json_objects",
    "revenue_to_cents",
    "time_to_unix_ms",
    "transform_chunk",
]
