"""Query rows to the DataFrame the transform reads, the same for every way of reading.

Both read paths (SQLAlchemy in :mod:`~pagent_provider.core.reading`, plain
DB-API in :mod:`~pagent_provider.core.reading_dbapi`) fetch rows of Python
objects and turn each chunk into a DataFrame here, so the transform sees the
same dtypes whichever path a warehouse takes.

The frame is the one :func:`pandas.read_sql` builds from the same rows with
``coerce_float=False`` (``DataFrame.from_records`` and time zone aware
columns converted to UTC), with one difference: pandas turns an integer
column that holds a NULL into float64, which keeps only 53 bits. Ids from
``NUMBER(38,0)``, ``HUGEINT`` or ``BIGINT`` columns are often larger (hashes,
Snowflake sequences), and their digits would be wrong before the transform
ever saw them. Such a column (a Python ``int`` beyond 2**53 among NULLs) is
kept as the exact ``int`` objects instead. Every other column is exactly what
pandas gives, so event content, and with it the content hash of unkeyed rows,
does not change.

Text columns are always pandas' Python-backed ``str``. pandas 3 backs them
with pyarrow when pyarrow is installed (the Snowflake provider, fakesnow and
the BigQuery client bring it), and pyarrow cannot hold a string with a lone
surrogate: building the chunk would raise and stop the sync, where the
transform rejects that one row. Python storage also keeps the transform's
speed the same on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# Every integer up to 2**53 is exact as a float64; beyond, digits may be lost.
_FLOAT_EXACT = 2.0**53


def frame_from_rows(rows: Sequence[Any], columns: Sequence[str]) -> pd.DataFrame:
    """Build the DataFrame of one chunk of query rows.

    Args:
        rows: the rows as the driver returns them: tuples, lists, SQLAlchemy
            ``Row`` objects or mappings (a dict cursor).
        columns: the column names, in order (duplicates are kept).

    Returns:
        One column per name, ``Decimal``/``dict``/``UUID``/``date`` values as
        objects, naive datetimes as ``datetime64``, aware ones as
        ``datetime64[..., UTC]``, text as pandas' Python-backed ``str`` dtype, NULL as
        ``None``/NaN/NaT as pandas reads it.
    """
    if not rows:
        return pd.DataFrame(columns=list(columns))
    records = _tuples(rows)
    with pd.option_context("mode.string_storage", "python"):
        frame = pd.DataFrame.from_records(records, columns=list(columns), coerce_float=False)
    for position, dtype in enumerate(frame.dtypes):
        if isinstance(dtype, pd.DatetimeTZDtype):
            # pandas.read_sql converts aware columns to UTC; one zone per column either way.
            # pandas-stubs type isetitem's value without Series, which pandas takes (aligned on the index)
            frame.isetitem(position, pd.to_datetime(frame.iloc[:, position], utc=True))  # type: ignore[arg-type]
        elif dtype == np.float64 and _may_hold_big_ints(frame.iloc[:, position]):
            exact = _exact_ints(records, position)
            if exact is not None:
                frame.isetitem(position, pd.Series(exact, index=frame.index, dtype=object))  # type: ignore[arg-type]
    return frame


def _tuples(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    first = rows[0]
    if isinstance(first, tuple):
        return rows if isinstance(rows, list) else list(rows)
    if isinstance(first, Mapping):
        # values(), not lookup by name: dict cursors may rename duplicate columns
        return [tuple(row.values()) for row in rows]
    return [tuple(row) for row in rows]


def _may_hold_big_ints(values: pd.Series) -> bool:
    # A big int made float is itself >= 2**53: one vectorised test spares the
    # scan for the float columns that real data has (amounts, ratios).
    magnitudes = np.abs(values.to_numpy(dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return bool(np.any(magnitudes >= _FLOAT_EXACT))


def _exact_ints(records: list[tuple[Any, ...]], position: int) -> np.ndarray | None:
    """The column's values as objects when it holds a Python int beyond 2**53, else None."""
    raw = np.empty(len(records), dtype=object)
    raw[:] = [record[position] for record in records]
    big = any(isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_EXACT for value in raw)
    return raw if big else None
