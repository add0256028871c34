"""The key is removed from echoed texts in every form a server, proxy or library is known to re-encode it."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagent_provider.core.redaction import MASK, Redactor, without_credentials

KEY = "pk_live/Ab+cD=eF9<&>"
FORMS = {
    "as sent": KEY,
    "percent-encoded": quote(KEY, safe=""),
    "percent-encoded, lower case": quote(KEY, safe="").lower(),
    "percent-encoded, '/' kept": quote(KEY),
    "JSON-escaped": json.dumps(KEY)[1:-1],
    "HTML-escaped": html.escape(KEY),
    "base64 header": base64.b64encode(f"Bearer {KEY}".encode()).decode(),
    "base64 basic": base64.b64encode(f":{KEY}".encode()).decode(),
    "urlsafe base64, no padding": base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_known_echo_of_the_key_is_masked(form: str) -> None:
    text = f"error: request had Authorization={FORMS[form]}; try again"
    redacted = Redactor([KEY])(text)
    assert FORMS[form] not in redacted and MASK in redacted
    assert redacted.startswith("error: request had Authorization=") and redacted.endswith("; try again")


@given(prefix=st.text(max_size=40), suffix=st.text(max_size=40))
def test_no_excerpt_keeps_a_piece_of_the_key(prefix: str, suffix: str) -> None:
    for limit in (10, 25, 60):
        excerpt = Redactor([KEY]).excerpt(prefix + KEY + suffix, limit)
        assert KEY[:8] not in excerpt or KEY[:8] in prefix + suffix


def test_credentials_are_removed_from_urls() -> None:
    assert without_credentials("https://user:hunter2@ingest.example:8443/x?y=1") == "https://ingest.example:8443/x?y=1"
    assert without_credentials("https://ingest.example/x") == "https://ingest.example/x"
