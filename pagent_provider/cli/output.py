"""The sync summary on stdout: an aligned two-column table, or one JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def summary_document(summary: Mapping[str, Any], error: str | None) -> dict[str, Any]:
    """``SyncSummary.as_dict()`` with ``status`` first, and the ``error`` message when the sync failed."""
    document: dict[str, Any] = {"status": STATUS_FAILED if error is not None else STATUS_OK}
    document.update(summary)
    if error is not None:
        document["error"] = error
    return document


def render_json(document: Mapping[str, Any]) -> str:
    """One JSON object (pretty-printed: ``jq`` reads it, people too)."""
    return json.dumps(document, indent=2, ensure_ascii=False, default=str)


def render_table(document: Mapping[str, Any]) -> str:
    """The summary as ``name  value`` rows aligned on the longest name, then its warnings and reject examples.

    The error message is left out: it goes to stderr, where errors belong.
    """
    hidden = ("reject_examples", "warnings", "error", "metrics")  # metrics repeat the counts: JSON only
    rows = [(name, _cell(value)) for name, value in document.items() if name not in hidden]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines.extend(f"warning: {warning}" for warning in document.get("warnings") or [])
    examples = document.get("reject_examples") or []
    if examples:
        lines.append("reject examples:")
        lines.extend(f"  {example}" for example in examples)
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
