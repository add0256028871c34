"""Matching the columns a config names to the columns a query returned, ignoring case when that is unambiguous.

Snowflake returns unquoted identifiers in upper case (``SESSION_ID``), and
other warehouses fold or keep case in their own ways, so a query written
once and read through different warehouses or read paths does not always
give the same spelling. A name the config uses (an event field's column, the
key column, a properties column) that is not in the result as written is
looked up ignoring case: one match is used, several are an error, none is
left to :func:`~pagent_provider.core.transform.config.check_columns` to
report as missing. An exact match always wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from pagent_provider.exceptions import PagentConfigError

if TYPE_CHECKING:
    from pagent_provider.core.transform.config import TransformConfig


def case_matches(available: Sequence[object], wanted: Sequence[str]) -> dict[str, str]:
    """Map each wanted name missing from ``available`` to its one case-insensitive match.

    Raises:
        PagentConfigError: when a wanted name matches several columns ignoring case.
    """
    present = set(available)
    by_folded: dict[str, list[str]] = {}
    for column in available:
        if isinstance(column, str):
            by_folded.setdefault(column.casefold(), []).append(column)
    matches: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        if name in present:
            continue
        candidates = by_folded.get(name.casefold(), [])
        if len(candidates) > 1:
            shown = ", ".join(map(repr, candidates))
            raise PagentConfigError(
                f"column {name!r} is not in the query result, and ignoring case it matches {shown}: "
                "give the column you mean a distinct alias in the SQL, or name it exactly "
                "(columns={'<event field>': '<column>'}, key_column, properties_columns)"
            )
        if candidates:
            matches[name] = candidates[0]
    return matches


def wanted_columns(config: TransformConfig) -> list[str]:
    """Every column name the config may read: event fields' (and visit_id's) columns, the session data,
    key and properties columns."""
    from pagent_provider.core.transform.config import EVENT_FIELDS, _constant_for

    names = [config.column_for(field) for field in EVENT_FIELDS if _constant_for(config, field) is None]
    if "visit_id" in config.columns:
        names.append(config.columns["visit_id"])
    if config.session_data_column is not None:
        names.append(config.session_data_column)
    if config.key_column is not None:
        names.append(config.key_column)
    names.extend(config.properties_columns or ())
    return names


def with_config_names(df: pd.DataFrame, config: TransformConfig) -> pd.DataFrame:
    """``df`` with each case-insensitively matched column also available under the config's name.

    The column is added, not renamed, so that two config names matching one
    column both find it; with copy-on-write no data is copied. Without
    mismatches ``df`` itself is returned.
    """
    matches = case_matches(list(df.columns), wanted_columns(config))
    if not matches:
        return df
    named = df.copy(deep=False)
    for name, column in matches.items():
        named[name] = df[column]
    return named
