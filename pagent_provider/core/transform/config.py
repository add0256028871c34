"""The transform configuration and its results: :class:`TransformConfig`,
:class:`RowReject`, :class:`TransformedChunk` and :func:`check_columns`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pagent_provider.core.events import has_lone_surrogate
from pagent_provider.core.transform._names import case_matches
from pagent_provider.core.transform.revenue import RevenueUnit, _check_revenue_unit
from pagent_provider.core.transform.times import _zone
from pagent_provider.exceptions import PagentConfigError

#: The fields of a pagent v1 event, in the order they are written.
EVENT_FIELDS = ("session_id", "user_id", "conversion_id", "label", "revenue", "properties", "time")
#: The fields pagent refuses an event without.
REQUIRED_FIELDS = ("session_id", "user_id", "conversion_id")
#: The fields ``columns`` may map: the v1 event fields, and ``visit_id``, which
#: only v2 carries (``session_data.visit_id``) and which is never part of the v1 event.
MAPPABLE_FIELDS = (*EVENT_FIELDS, "visit_id")


@dataclass(frozen=True)
class TransformConfig:
    """How the columns of a query result become pagent v1 events.

    Attributes:
        columns: event field -> result column; a field not listed here is read
            from the column of the same name, when there is one.
        properties_columns: extra columns gathered into the ``properties``
            object as ``{column: value}``.
        key_column: a stable unique key of each row (an order id), used by the
            caller to remember which rows were sent.
        revenue_unit: whether the revenue column holds dollars (converted to
            cents, rounding half away from zero) or already whole cents.
        timezone: IANA zone in which naive timestamps are read.
        label: a constant label for every event, replacing any label column.
        conversion_id: a constant goal UUID for every event, replacing any
            conversion_id column.
        require_time: reject rows without a conversion time instead of letting
            pagent stamp them with the upload time.
        session_data_column: a column holding the whole ``_pgnt.variables()``
            object (a JSON object, native or as JSON text), destructured into
            session_id, user_id, conversion_id and visit_id; see
            :mod:`pagent_provider.core.transform.session_data`. Each of these
            fields comes from, in this order of precedence: a constant
            (``conversion_id=``), an explicit ``columns=`` mapping, this
            object, a column named like the field. With the object, a column
            named like the field is not read.

    The optional ``visit_id`` (sent by v2 only, in ``session_data``) comes
    from ``columns={"visit_id": ...}`` or from the session data object; a
    column merely named ``visit_id`` is not read, so that existing v1 queries
    selecting one keep their behaviour.

    Raises:
        PagentConfigError: on an unknown event field in ``columns``, an unknown
            revenue unit or time zone, an empty constant, or a constant that
            contradicts an explicit column mapping.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    properties_columns: Sequence[str] | None = None
    key_column: str | None = None
    revenue_unit: RevenueUnit = "dollars"
    timezone: str = "UTC"
    label: str | None = None
    conversion_id: str | None = None
    require_time: bool = True
    session_data_column: str | None = None

    def __post_init__(self) -> None:
        self._validate_columns()
        self._validate_properties_columns()
        for name in ("key_column", "session_data_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise PagentConfigError(f"{name} must be a non-empty column name, got {value!r}")
        _check_revenue_unit(self.revenue_unit)
        _zone(self.timezone)
        for name in ("label", "conversion_id"):
            self._validate_constant(name)
        if not isinstance(self.require_time, bool):
            raise PagentConfigError(f"require_time must be True or False, got {self.require_time!r}")

    def column_for(self, event_field: str) -> str:
        """Return the result column that feeds ``event_field``."""
        return self.columns.get(event_field, event_field)

    def _validate_columns(self) -> None:
        if not isinstance(self.columns, Mapping):
            raise PagentConfigError(f"columns must map event fields to column names, got {self.columns!r}")
        unknown = [name for name in self.columns if name not in MAPPABLE_FIELDS]
        if unknown:
            raise PagentConfigError(
                f"columns maps unknown event field(s) {', '.join(map(repr, unknown))}; "
                f"pagent v1 events have the fields {', '.join(EVENT_FIELDS)} "
                "(and v2's session_data also visit_id; "
                "the mapping goes event field -> column, not column -> event field)"
            )
        for event_field, column in self.columns.items():
            if not isinstance(column, str) or not column:
                raise PagentConfigError(f"columns[{event_field!r}] must be a non-empty column name, got {column!r}")
        # A frozen config should not change when the caller's dict does.
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    def _validate_properties_columns(self) -> None:
        columns = self.properties_columns
        if columns is None:
            return
        # A bare string is a Sequence too: "amount" would become a, m, o, ...
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise PagentConfigError(f"properties_columns must be a list of column names, got {columns!r}")
        bad = [c for c in columns if not isinstance(c, str) or not c]
        if bad:
            raise PagentConfigError(f"properties_columns must hold non-empty column names, got {bad!r}")
        # The names become properties keys in every event: one that UTF-8
        # cannot encode would make every row unsendable.
        unencodable = [c for c in columns if has_lone_surrogate(c)]
        if unencodable:
            raise PagentConfigError(
                f"properties_columns {unencodable!r} hold a lone surrogate, which UTF-8 cannot encode; "
                "alias the columns in the SQL"
            )
        repeated = sorted({c for c in columns if list(columns).count(c) > 1})
        if repeated:
            raise PagentConfigError(f"properties_columns lists {', '.join(map(repr, repeated))} more than once")
        object.__setattr__(self, "properties_columns", tuple(columns))

    def _validate_constant(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, str) or not value.strip():
            raise PagentConfigError(f"{name} must be a non-empty string when set, got {value!r}")
        if has_lone_surrogate(value):
            raise PagentConfigError(f"{name} {value!r} holds a lone surrogate, which UTF-8 cannot encode")
        if name in self.columns:
            raise PagentConfigError(
                f"{name} is set both as a constant ({value!r}) and as a column "
                f"(columns[{name!r}] = {self.columns[name]!r}); use one of them"
            )


@dataclass(frozen=True)
class RowReject:
    """One invalid row and why it cannot be sent.

    Attributes:
        row: the key_column value when the row has one, else ``"row N"`` with
            N the 0-based row number across the whole result.
        field: the event field at fault (or the key column's name).
        reason: what is wrong and what to do about it.
    """

    row: str
    field: str
    reason: str


@dataclass
class TransformedChunk:
    """The outcome of :func:`transform_chunk` for one chunk.

    Attributes:
        events: valid v1 events in row order, JSON-ready; fields without a
            value are left out of the dict (``visit_id`` is never in it).
        keys: key_column values as strings, parallel to ``events``; ``None``
            when no key_column is configured.
        rejects: one entry per invalid row, in row order.
        rows: number of rows in the input chunk.
        positions: the 0-based position in the chunk of each event's row,
            parallel to ``events``, so that a later stage that must reject
            an event can name its row as ``"row N"``.
        visit_ids: the visit id of each event (a string, or ``None`` where
            the row has none), parallel to ``events``, for v2's
            ``session_data.visit_id``; ``None`` when the config has no visit
            id source (no ``session_data_column``, no ``columns["visit_id"]``).
    """

    events: list[dict[str, Any]]
    keys: list[str] | None
    rejects: list[RowReject]
    rows: int
    positions: list[int] = field(default_factory=list)
    visit_ids: list[str | None] | None = None


# --------------------------------------------------------------------------
# Configuration checks
# --------------------------------------------------------------------------


def check_columns(columns: Sequence[str], config: TransformConfig) -> None:
    """Check that a query result has every column the config needs.

    Needed are the columns of session_id and user_id, of conversion_id unless
    it is a constant (these three not when ``session_data_column`` provides
    them), of time when ``require_time``, of any field mapped explicitly in
    ``config.columns``, the session data column, the key column and the
    properties columns. A needed name not in the result as written matches a column
    that differs only in case (``SESSION_ID`` for ``session_id``) when
    exactly one does. Checking once per sync, before any row is read, turns a
    typo into one clear error instead of a million rejected rows.

    Args:
        columns: the column names of the query result.
        config: the transform configuration.

    Raises:
        PagentConfigError: naming each missing (or duplicated) column, what it
            is needed for, and the columns that are available; or a needed
            name that matches several columns ignoring case.
    """
    available = list(columns)
    needed = _needed_columns(config)
    # SESSION_ID (as Snowflake returns it) serves session_id when no other column could.
    matches = case_matches(available, [column for column, _ in needed])
    present = set(available) | set(matches)
    missing = [(column, purpose) for column, purpose in needed if column not in present]
    duplicated = sorted({str(c) for c, _ in needed if available.count(matches.get(c, c)) > 1})
    problems = []
    if missing:
        listed = "; ".join(f"{column!r} (for {purpose})" for column, purpose in missing)
        problems.append(
            f"the query result has no column {listed}. Rename a column in the SQL "
            "(SELECT ... AS session_id) or map it with columns={'<event field>': '<column>'}"
        )
    if duplicated:
        problems.append(
            f"the query result has more than one column named {', '.join(map(repr, duplicated))}; "
            "give each column a distinct alias in the SQL"
        )
    if problems:
        shown = ", ".join(map(repr, available)) or "(none)"
        raise PagentConfigError(f"{' and '.join(problems)}. Available columns: {shown}")


def _needed_columns(config: TransformConfig) -> list[tuple[str, str]]:
    needed: list[tuple[str, str]] = []
    for event_field in EVENT_FIELDS:
        if _constant_for(config, event_field) is not None:
            continue
        required = event_field in REQUIRED_FIELDS or (event_field == "time" and config.require_time)
        if required and event_field not in config.columns and config.session_data_column is not None:
            continue  # the session data object holds it
        if required or event_field in config.columns:
            why = "event field " + event_field + (" (require_time=True)" if event_field == "time" else "")
            needed.append((config.column_for(event_field), why))
    if "visit_id" in config.columns:
        needed.append((config.columns["visit_id"], "visit_id"))
    if config.session_data_column is not None:
        needed.append((config.session_data_column, "session_data_column, the _pgnt.variables() object"))
    if config.key_column is not None:
        needed.append((config.key_column, "key_column"))
    needed.extend((column, "properties_columns") for column in config.properties_columns or ())
    return needed


def _constant_for(config: TransformConfig, event_field: str) -> str | None:
    if event_field == "label":
        return config.label
    if event_field == "conversion_id":
        return config.conversion_id
    return None
