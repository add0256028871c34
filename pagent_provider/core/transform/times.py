"""Times to Unix milliseconds (UTC): :func:`time_to_unix_ms` and its helpers."""

from __future__ import annotations

import datetime as _dt
import math
import time as _time
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from pagent_provider.core.events import FUTURE_TOLERANCE_MS, MIN_TIME_MS, time_unit_hint
from pagent_provider.core.transform._columns import (
    _DECIMAL,
    _column_kind,
    _float_array,
    _int_array,
    _is_missing_scalar,
    _missing,
)
from pagent_provider.core.transform._converted import Converted, _object_values, _series
from pagent_provider.core.transform._reasons import _add_reasons, _is_none, _new_reasons, _shown
from pagent_provider.exceptions import PagentConfigError

if TYPE_CHECKING:
    from pandas.api.typing import NaTType

# Epoch milliseconds stored as text (SQLite columns without a type do that).
_DIGITS_TEXT = r"[+-]?[0-9]{1,18}"
# An ISO-8601 text ends with "Z" or a UTC offset when, after the date/time
# separator, it ends with one. "2026-11-26" ends with "-26", which is part of
# the date, hence the separator in front.
_AWARE_TEXT = r"[Tt ].*(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$"

#: pandas 3 raises on a column of mixed offsets; pandas 2 warns and returns objects.
_REFUSES_MIXED_OFFSETS = int(pd.__version__.split(".")[0]) >= 3

_UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"})
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise PagentConfigError(f"timezone must be an IANA time zone name such as 'UTC', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise PagentConfigError(
            f"unknown timezone {name!r}: use an IANA time zone name such as 'UTC' or 'Europe/Berlin'"
        ) from err


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------


class _Times(NamedTuple):
    """Intermediate result of reading a time column."""

    ms: np.ndarray  # int64 Unix milliseconds, meaningful where ``ok``
    ok: np.ndarray  # parsed successfully
    numeric: np.ndarray  # came from a number (for the seconds/microseconds hint)
    reasons: np.ndarray  # object: why a present value could not be read


def time_to_unix_ms(values: pd.Series, timezone: str, *, now_ms: int | None = None) -> Converted:
    """Convert a time column to Unix milliseconds (UTC).

    Accepted:

    * ``datetime64`` of any resolution (s, ms, us, ns), time zone aware or
      naive. Aware values keep their instant; sub-millisecond parts are
      floored.
    * Naive values (``datetime64``, ``datetime`` objects, ISO-8601 text
      without offset) are read as wall-clock time in ``timezone``. Ambiguous
      wall times (the repeated hour when clocks fall back) are read as their
      FIRST occurrence, the one still on daylight-saving time; nonexistent
      wall times (the hour skipped when clocks spring forward) are shifted
      forward to the first valid instant after the gap (02:30 -> 03:00 on a
      day where 02:00 jumps to 03:00).
    * ISO-8601 text such as ``'2026-11-26 10:00:00'``,
      ``'2026-11-26T10:00:00.123Z'`` or ``'2026-11-26T10:00:00+02:00'``
      (offsets may differ from row to row); text with ``Z`` or an offset uses
      it. Digit-only text is read as milliseconds.
    * Integers (and whole floats, which is what an integer column with NULLs
      becomes, and ``Decimal``) as milliseconds; fractional milliseconds are
      floored.

    Invalid: unparseable values, booleans, infinities and ``Decimal('NaN')``,
    times before :data:`~pagent_provider.core.events.MIN_TIME_MS`
    (2000-01-01T00:00:00Z; with a hint when the number looks like seconds)
    and times more than
    :data:`~pagent_provider.core.events.FUTURE_TOLERANCE_MS` (one hour) after
    ``now_ms``: the same range the hook's validation applies. Missing values
    are ``None`` with no reason; the caller decides whether time is required.

    Args:
        values: the time column.
        timezone: IANA zone for naive values.
        now_ms: the current time in Unix milliseconds; default: the clock.

    Returns:
        Converted values (Python ``int`` milliseconds or ``None``) and reasons.

    Raises:
        PagentConfigError: on an unknown time zone.
    """
    zone = _zone(timezone)
    now = _now_ms() if now_ms is None else int(now_ms)
    times = _read_times(values, zone)
    _check_time_range(times, now)
    ok = times.ok & _is_none(times.reasons)
    return Converted(_series(_object_values(times.ms, ok), values.index), _series(times.reasons, values.index))


def _now_ms() -> int:
    return _time.time_ns() // 1_000_000


def _read_times(values: pd.Series, zone: ZoneInfo) -> _Times:
    kind = _column_kind(values.dtype)
    if kind == "datetime":
        return _times_from_datetimes(values, zone)
    if kind == "int":
        return _times_from_ints(values)
    if kind == "float":
        return _times_from_floats(_float_array(values))
    if kind == "text":
        return _times_from_text(values, zone)
    return _times_from_objects(values.to_numpy(dtype=object), zone)


def _empty_times(size: int) -> _Times:
    return _Times(
        np.zeros(size, dtype=np.int64), np.zeros(size, dtype=bool), np.zeros(size, dtype=bool), _new_reasons(size)
    )


def _times_from_datetimes(values: pd.Series, zone: ZoneInfo) -> _Times:
    utc = values.dt.tz_convert(None) if isinstance(values.dtype, pd.DatetimeTZDtype) else _naive_to_utc(values, zone)
    arr = utc.to_numpy()
    times = _empty_times(len(arr))
    times.ok[:] = ~np.isnat(arr)
    times.ms[:] = _datetime64_to_ms(arr)
    return times


def _naive_to_utc(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Read naive wall-clock datetimes in ``zone``; return naive UTC datetimes.

    ``ambiguous`` True means "daylight-saving time", i.e. the first of the two
    occurrences; pandas consults it only for ambiguous times.
    """
    if zone.key in _UTC_KEYS:
        return values
    local = values.dt.tz_localize(zone, ambiguous=np.ones(len(values), dtype=bool), nonexistent="shift_forward")
    return local.dt.tz_convert(None)


def _datetime64_to_ms(arr: np.ndarray) -> np.ndarray:
    """int64 milliseconds of a naive datetime64 array of any unit, floored (NaT gives garbage)."""
    unit, count = np.datetime_data(arr.dtype)
    ticks = arr.view(np.int64)
    per_ms = (
        # the stubs want a Literal unit, np.datetime_data gives a str
        np.timedelta64(1, "ms") / np.timedelta64(count, unit)  # type: ignore[call-overload]
        if unit in ("us", "ns", "ps", "fs", "as")
        else None
    )
    if per_ms is not None:
        return np.floor_divide(ticks, int(per_ms))
    # Units of a millisecond or coarser convert exactly.
    return arr.astype("datetime64[ms]").view(np.int64)


def _times_from_ints(values: pd.Series) -> _Times:
    raw, missing, too_large = _int_array(values)
    times = _empty_times(len(raw))
    times.ms[:] = raw
    times.ok[:] = ~missing & ~too_large
    times.numeric[:] = True
    shown = values.to_numpy(dtype=object)
    _add_reasons(times.reasons, too_large, lambda i: _time_out_of_range(shown[i]))
    return times


def _times_from_floats(x: np.ndarray) -> _Times:
    times = _empty_times(len(x))
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        in_range = finite & (np.abs(x) < 2.0**62)
    times.ms[:] = np.floor(np.where(in_range, x, 0.0)).astype(np.int64)
    times.ok[:] = in_range
    times.numeric[:] = True
    _add_reasons(times.reasons, np.isinf(x), lambda i: f"time {_shown(x[i])} is not a finite number")
    _add_reasons(times.reasons, finite & ~in_range, lambda i: _time_out_of_range(x[i]))
    return times


def _times_from_text(values: pd.Series, zone: ZoneInfo) -> _Times:
    """ISO-8601 text, vectorised: one parse, then the naive rows are localized.

    Parsing everything with ``utc=True`` accepts mixed offsets in one column
    (a naive parse raises on them) and leaves naive texts at their wall-clock
    value, which the second step reads in ``zone``.
    """
    size = len(values)
    times = _empty_times(size)
    missing = _missing(values)
    stripped = values.str.strip()
    digits = stripped.str.fullmatch(_DIGITS_TEXT).fillna(False).to_numpy(dtype=bool)
    if digits.any():
        times.ms[digits] = stripped[digits].astype(np.int64).to_numpy()
        times.ok[digits] = True
        times.numeric[digits] = True
    iso = ~missing & ~digits
    if iso.any():
        texts = stripped[iso]
        uniform = _parse_uniform_iso(texts)
        parsed = _text_by_text_iso_to_utc(texts, zone) if uniform is None else _uniform_to_utc(uniform, zone)
        arr = parsed.to_numpy()
        positions = np.flatnonzero(iso)
        times.ms[positions] = _datetime64_to_ms(arr)
        times.ok[positions] = ~np.isnat(arr)
    shown = values.to_numpy(dtype=object)
    _add_reasons(times.reasons, ~missing & ~times.ok, lambda i: _unreadable_time(shown[i]))
    return times


def _parse_uniform_iso(texts: pd.Series) -> pd.Series | None:
    """ISO-8601 texts parsed as one column when all are naive or all share one offset, else ``None``.

    The usual column, and no regular expression run text by text to find the
    aware ones, which cost three times the parse. pandas 3 refuses a column
    of mixed offsets (or of naive and aware texts); pandas 2 warns and gives
    objects, so there every column is read text by text.
    """
    if not _REFUSES_MIXED_OFFSETS:
        return None
    try:
        parsed = pd.to_datetime(texts, format="ISO8601", errors="coerce")
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if parsed.dtype.kind == "M" or isinstance(parsed.dtype, pd.DatetimeTZDtype) else None


def _uniform_to_utc(parsed: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Naive UTC datetimes of a column :func:`_parse_uniform_iso` parsed (naive ones are wall times in ``zone``)."""
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return parsed.dt.tz_convert(None)
    return _naive_to_utc(parsed, zone)


def _text_by_text_iso_to_utc(texts: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Naive UTC datetimes of ISO-8601 texts of any offsets, naive and aware mixed."""
    aware = texts.str.contains(_AWARE_TEXT, regex=True).fillna(False).to_numpy(dtype=bool)
    # A copy of its own: on pandas 2.1 the parsed Series is marked as derived from a
    # .dt accessor, and assigning into it warns (SettingWithCopyWarning) though it applies.
    parsed = _parse_iso_as_utc(texts).copy()
    if (~aware).any():
        parsed[~aware] = _naive_to_utc(parsed[~aware], zone)
    return parsed


def _parse_iso_as_utc(texts: pd.Series) -> pd.Series:
    """Parse ISO-8601 texts to naive UTC datetime64 (naive texts keep their wall time)."""
    try:
        parsed = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
    except (ValueError, TypeError, OverflowError):
        # Defensive: should pandas refuse the batch, find the bad texts one by one.
        parsed = pd.Series([_parse_one_iso(t) for t in texts], index=texts.index, dtype="datetime64[us, UTC]")
    return parsed.dt.tz_convert(None)


def _parse_one_iso(text: str) -> pd.Timestamp | NaTType:
    try:
        return pd.to_datetime(text, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _times_from_objects(objects: np.ndarray, zone: ZoneInfo) -> _Times:
    """Per element: Python objects, grouped by type, each group read the vectorised way."""
    size = len(objects)
    times = _empty_times(size)
    texts: list[int] = []
    aware: list[int] = []
    naive: list[int] = []
    for i, item in enumerate(objects):
        if _is_missing_scalar(item):
            continue
        if isinstance(item, str):
            texts.append(i)
        elif isinstance(item, _dt.datetime | pd.Timestamp):
            (aware if item.tzinfo is not None else naive).append(i)
        elif isinstance(item, _dt.date | np.datetime64):
            naive.append(i)
        else:
            _time_from_number(item, i, times)
    if texts:
        sub = _times_from_text(pd.Series(objects[texts], dtype="str"), zone)
        _place_times(times, texts, sub)
    if aware:
        utc = pd.Series(pd.to_datetime(list(objects[aware]), utc=True, errors="coerce")).dt.tz_convert(None)
        _place_datetimes(times, aware, utc.to_numpy())
    if naive:
        wall = pd.Series(pd.to_datetime(list(objects[naive]), errors="coerce"))
        _place_datetimes(times, naive, _naive_to_utc(wall, zone).to_numpy())
    unread = _mask(size, aware + naive) & ~times.ok
    _add_reasons(times.reasons, unread, lambda i: f"time {_shown(objects[i])} is out of the representable range")
    return times


def _time_from_number(item: Any, i: int, times: _Times) -> None:
    if isinstance(item, bool | np.bool_):
        times.reasons[i] = f"time {_shown(item)} is a boolean, not a time; select the conversion time column"
        return
    if isinstance(item, int | np.integer):
        value = int(item)
    elif isinstance(item, Decimal):
        if not item.is_finite():
            times.reasons[i] = f"time {_shown(item)} is not a finite number"
            return
        if item.adjusted() > 18:
            times.reasons[i] = _time_out_of_range(item)
            return
        value = int(item.to_integral_value(rounding=ROUND_FLOOR, context=_DECIMAL))
    elif isinstance(item, float | np.floating):
        if not math.isfinite(item):
            times.reasons[i] = f"time {_shown(item)} is not a finite number"
            return
        value = math.floor(item)
    else:
        times.reasons[i] = _unreadable_time(item)
        return
    if not -(2**62) < value < 2**62:
        times.reasons[i] = _time_out_of_range(item)
        return
    times.ms[i], times.ok[i], times.numeric[i] = value, True, True


def _place_times(times: _Times, positions: list[int], sub: _Times) -> None:
    times.ms[positions] = sub.ms
    times.ok[positions] = sub.ok
    times.numeric[positions] = sub.numeric
    times.reasons[positions] = sub.reasons


def _place_datetimes(times: _Times, positions: list[int], utc: np.ndarray) -> None:
    times.ms[positions] = _datetime64_to_ms(utc)
    times.ok[positions] = ~np.isnat(utc)


def _mask(size: int, positions: list[int]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    return mask


def _check_time_range(times: _Times, now_ms: int) -> None:
    latest = now_ms + FUTURE_TOLERANCE_MS
    readable = times.ok & _is_none(times.reasons)
    _add_reasons(times.reasons, readable & (times.ms < MIN_TIME_MS), lambda i: _too_early(times, i, latest))
    _add_reasons(times.reasons, readable & (times.ms > latest), lambda i: _too_late(times, i, now_ms, latest))


def _too_early(times: _Times, i: int, latest: int) -> str:
    ms = int(times.ms[i])
    if not times.numeric[i]:
        return f"time {_iso(ms)} is before 2000-01-01T00:00:00Z; select the column that holds the conversion time"
    message = f"time {ms} is before 2000-01-01T00:00:00Z when read as Unix milliseconds ({_iso(ms)})"
    hint = time_unit_hint(ms, latest)
    return message + (f"; {hint}" if hint else "; pagent expects Unix milliseconds")


def _too_late(times: _Times, i: int, now_ms: int, latest: int) -> str:
    ms = int(times.ms[i])
    shown = str(ms) if times.numeric[i] else _iso(ms)
    message = f"time {shown} is more than one hour in the future (now is {_iso(now_ms)})"
    hint = time_unit_hint(ms, latest) if times.numeric[i] else None
    return message + (f"; {hint}" if hint else "; check the time column and the timezone setting")


def _time_out_of_range(value: Any) -> str:
    return f"time {_shown(value)} is far out of range as Unix milliseconds; check the time column"


def _unreadable_time(value: Any) -> str:
    return (
        f"time {_shown(value)} is not a timestamp; use a timestamp column, ISO-8601 text "
        "(e.g. '2026-11-26T10:00:00Z') or Unix milliseconds"
    )


def _iso(ms: int) -> str:
    try:
        moment = _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
