"""Pages made of README sections, so that the README and the docs cannot drift apart.

A line ``% readme: <heading>`` (a MyST comment) in a page is replaced, before the
page is parsed, by the README section under ``## <heading>`` up to the next
``##`` heading, with every heading promoted one level (``## X`` becomes the
page's ``# X``, ``### Y`` its ``## Y``), outside code fences;
``% readme-subsection: <heading>`` keeps the README's levels (a section of the
page). A heading that is not in the README fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

PLACEHOLDER = re.compile(r"^% readme(?P<keep>-subsection)?: (?P<heading>.+?)\s*$", re.M)


def readme_section(readme: Path, heading: str, *, promote: bool = True) -> str:
    """The section under ``## heading``, its headings promoted one level unless ``promote`` is false."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index(f"## {heading}")
    except ValueError:
        raise ExtensionError(f"{readme} has no section '## {heading}'") from None
    section: list[str] = []
    fence: str | None = None
    for line in lines[start:]:
        marker = re.match(r"^(```+|~~~+)", line)
        if marker and (fence is None or line.startswith(fence)):
            fence = marker.group(1) if fence is None else None
        elif fence is None and line.startswith("## ") and section:
            break  # the next section
        if promote and fence is None and re.match(r"^#{2,6} ", line):
            line = line[1:]
        section.append(line)
    return "\n".join(section) + "\n"


def _fill(app: Sphinx, docname: str, source: list[str]) -> None:
    if not PLACEHOLDER.search(source[0]):
        return
    readme = Path(app.srcdir).parent / "README.md"
    app.env.note_dependency(str(readme))
    source[0] = PLACEHOLDER.sub(
        lambda match: readme_section(readme, match["heading"], promote=not match["keep"]), source[0]
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _fill)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
