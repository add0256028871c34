"""Keeping the API key out of every text that comes back from a server or a library.

A server, a proxy or a library may echo what it received: an error body that
quotes the ``Authorization`` header, a ``Location`` that carries the key in
its query string, an exception whose message holds a URL. Before such a text is
logged, raised, printed, put in a summary or stored in the rejects table, it
goes through :class:`Redactor`, which replaces every form of the secret it
knows (as sent, percent-encoded, JSON- or HTML-escaped, base64-encoded alone
or as a header value) with ``***``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

MASK = "***"
#: The shortest key accepted and redacted (Airflow's secrets masker skips shorter ones too);
#: shorter ones would mask ordinary words.
MIN_SECRET_LENGTH = 5


def _base64_forms(text: str) -> set[str]:
    raw = text.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return encoded | {form.rstrip("=") for form in encoded}


def _forms(secret: str) -> set[str]:
    """The secret as sent, and as an echoing server, proxy or library may have re-encoded it."""
    forms = {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1], html.escape(secret)}
    # a proxy that logs the header may print it base64-encoded (as Basic auth is)
    for text in (secret, f"Bearer {secret}", f":{secret}", f"{secret}:"):
        forms |= _base64_forms(text)
    return forms


class Redactor:
    """Replaces known secrets in texts.

    Args:
        secrets: the values to hide (the API key); ones shorter than
            :data:`MIN_SECRET_LENGTH` characters are ignored.
    """

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for secret in secrets if len(secret) >= MIN_SECRET_LENGTH for form in _forms(secret)}
        # longest first, so that a form containing another is replaced whole
        alternatives = sorted(forms, key=len, reverse=True)
        # case-insensitive: percent-encoding may come back as %2b or %2B
        self._pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE) if alternatives else None

    def __repr__(self) -> str:
        return "Redactor(***)"

    def __call__(self, text: object) -> str:
        """``text`` as a string, with every known secret replaced by ``***``."""
        shown = text if isinstance(text, str) else str(text)
        if self._pattern is None:
            return shown
        return self._pattern.sub(MASK, shown)

    def excerpt(self, text: object, limit: int = 500) -> str:
        """The redacted text cut to ``limit`` characters (redacted first, so no part of a secret survives)."""
        redacted = self(text)
        return redacted if len(redacted) <= limit else redacted[: limit - 3] + "..."


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
