"""``lookback``: each run also selects the window before its own, so late and fixed rows go out next time.

The SQL stays the user's. The operator does not rewrite the query, and it
does not change what Airflow renders: after rendering, it moves the value of
one query parameter, ``lookback_parameter`` (``"start"`` by default), back by
``lookback``. The daily DAG's ``WHERE converted_at >= :start AND converted_at
< :end`` then selects ``[start - lookback, end)``: the rows sent by earlier
runs count as ``already_sent`` (the ledger skips them), and what arrived late,
or was invalid or refused and has been fixed since, is sent.

The rendered value keeps its type and its shape, since the database compares
it as the DAG wrote it: a ``datetime`` or ``date`` (pendulum's included) is
moved as such; text is read as ISO 8601 (``2026-11-10``, ``2026-11-10
00:00:00``, ``2026-11-10T00:00:00.000+00:00``, ``...Z``) and written back in
the same shape: date only, the same separator, the same precision, the same
offset notation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from pagent_provider.exceptions import PagentConfigError

# date, then optionally: separator, HH:MM[:SS[.fraction]], offset (Z or +HH:MM / +HHMM / +HH)
_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:(?P<sep>[T ])(?P<time>\d{2}:\d{2}(?::\d{2}(?:\.(?P<fraction>\d{1,6}))?)?)"
    r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)
_TIMESPEC = {5: "minutes", 8: "seconds"}


def check_lookback(lookback: timedelta | None, parameter: str, parameters: Any = None) -> None:
    """Refuse, when the DAG is parsed, a lookback that cannot work.

    ``parameters`` are checked for ``parameter`` when they are already a mapping
    (a template string or an XCom is only known when the task runs).

    Raises:
        PagentConfigError: not a positive ``timedelta``, no parameter name, or a parameter missing.
    """
    if lookback is None:
        return
    if not isinstance(lookback, timedelta) or lookback <= timedelta(0):
        raise PagentConfigError(f"lookback must be a positive datetime.timedelta, got {lookback!r}")
    if not isinstance(parameter, str) or not parameter:
        raise PagentConfigError(f"lookback_parameter must name a query parameter, got {parameter!r}")
    if isinstance(parameters, Mapping) and parameter not in parameters:
        raise _missing_parameter(parameters, parameter, lookback)


def _missing_parameter(parameters: Any, name: str, lookback: timedelta) -> PagentConfigError:
    given = sorted(parameters) if isinstance(parameters, Mapping) else parameters
    return PagentConfigError(
        f"lookback={lookback} moves the query parameter {name!r} back, but the parameters are {given!r}: "
        f"pass the window's start as parameters={{{name!r}: ...}} or set lookback_parameter"
    )


def with_lookback(parameters: Any, name: str, lookback: timedelta | None) -> Any:
    """The rendered ``parameters`` with ``parameters[name]`` moved back by ``lookback`` (a new dict).

    Without a lookback, ``parameters`` themselves, whatever they are.

    Raises:
        PagentConfigError: ``parameters`` has no ``name``, or its value is no date or time.
    """
    if lookback is None:
        return parameters
    if not isinstance(parameters, Mapping) or name not in parameters:
        raise _missing_parameter(parameters, name, lookback)
    return {**parameters, name: shift_back(parameters[name], lookback, name)}


def shift_back(value: Any, lookback: timedelta, name: str = "start") -> Any:
    """``value - lookback``, of the same type and, for text, of the same shape.

    Raises:
        PagentConfigError: ``value`` is no date, datetime or ISO 8601 text.
    """
    if isinstance(value, datetime):
        return value - lookback
    if isinstance(value, date):
        if lookback % timedelta(days=1):
            raise PagentConfigError(
                f"the query parameter {name!r} is a date ({value}); lookback={lookback} is not whole days"
            )
        return value - lookback
    if isinstance(value, str):
        return _shift_text(value, lookback, name)
    raise PagentConfigError(
        f"lookback needs the query parameter {name!r} to be a date or time, got {type(value).__name__} {value!r}"
    )


def _shift_text(text: str, lookback: timedelta, name: str) -> str:
    match = _ISO.match(text.strip())
    if match is None:
        raise PagentConfigError(
            f"lookback cannot read the query parameter {name!r} = {text!r} as ISO 8601 "
            "(e.g. '2026-11-10 00:00:00'); render it as such, or as a datetime"
        )
    if match["time"] is None:
        return shift_back(date.fromisoformat(match["date"]), lookback, name).isoformat()
    offset = match["offset"] or ""
    moment = datetime.fromisoformat(f"{match['date']}T{match['time']}") - lookback
    fraction = match["fraction"]
    if fraction is None:
        shown = moment.isoformat(sep=match["sep"], timespec=_TIMESPEC[len(match["time"])])
    else:
        full = moment.isoformat(sep=match["sep"], timespec="microseconds")
        shown = full[: len(full) - (6 - len(fraction))]
    # The offset is written back as given: the instant moves by lookback in the same zone.
    return shown + offset
