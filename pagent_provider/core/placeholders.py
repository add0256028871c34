"""Refuse SQL written with a driver's own placeholders: the query always goes through ``sqlalchemy.text``.

``sqlalchemy.text`` binds ``:name`` placeholders only. A query written for a
DB-API driver, ``%(name)s`` (psycopg, PyMySQL), ``%s`` or ``?`` (sqlite3,
DB-API ``qmark``), reaches the database with the placeholder left in it and
ends in a raw syntax error there, or, worse, in a query that runs and selects
something else. The operator and the command-line tool check the rendered SQL
with :func:`check_placeholder_style` before they connect.

String literals, quoted identifiers and comments are skipped first, so
``LIKE '%s%'`` or ``-- why? because`` are not placeholders; so are
PostgreSQL's JSON operators ``?``, ``?|`` and ``?&``, recognised by what
follows them (a string literal, ``|``, ``&`` or a ``:name`` value).
"""

from __future__ import annotations

import re

from pagent_provider.exceptions import PagentConfigError

# Everything that may hold a '%' or '?' that is not a placeholder. A string
# literal is kept as '' (the JSON-operator rule looks at what follows a '?').
_LITERALS = re.compile(
    r"""
      (?P<string>'(?:[^']|'')*')              # 'text', '' escapes a quote
    | "(?:[^"]|"")*"                          # "identifier"
    | `[^`]*`                                 # `identifier` (MySQL)
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$)[\s\S]*?(?P=dollar)   # $$ body $$, $tag$ body $tag$
    | --[^\n]*                                # line comment
    | \#[^\n]*                                # line comment (MySQL)
    | /\*[\s\S]*?\*/                          # block comment
    """,
    re.VERBOSE,
)
_PYFORMAT = re.compile(r"%\(\w+\)s")
_FORMAT = re.compile(r"(?<!%)%s\b")
# A '?' followed by '|', '&', a string literal or a :name value is PostgreSQL's JSON operator.
_QMARK = re.compile(r"\?(?![|&])(?!\s*(?:''|:[A-Za-z_]))")


def _code_only(sql: str) -> str:
    return _LITERALS.sub(lambda m: "''" if m.group("string") else " ", sql)


def placeholder_style(sql: str) -> str | None:
    """The first driver-style placeholder outside literals and comments, or ``None``.

    Returns:
        ``"%(name)s"``, ``"%s"`` or ``"?"`` as found in ``sql``.
    """
    code = _code_only(sql)
    for pattern in (_PYFORMAT, _FORMAT, _QMARK):
        found = pattern.search(code)
        if found:
            return found.group(0)
    return None


def check_placeholder_style(sql: str) -> None:
    """Refuse ``sql`` when it uses ``%(name)s``, ``%s`` or ``?`` placeholders.

    Raises:
        PagentConfigError: says which placeholder was found and to use ``:name``.
    """
    found = placeholder_style(sql)
    if found is not None:
        raise PagentConfigError(
            f"the SQL uses the placeholder {found!r}: the query is run through sqlalchemy.text, which binds "
            "only :name placeholders. Write them as :name (e.g. WHERE converted_at >= :start) and pass "
            "the values as parameters (the operator's parameters=, the CLI's --param name=value)"
        )
