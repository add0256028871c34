"""Sphinx configuration of the airflow-provider-pagent documentation (``make docs``)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# autodoc imports the provider, hence Airflow: keep Airflow's files out of ~/airflow
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="pagent-docs-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from pagent_provider import __version__  # noqa: E402

project = "airflow-provider-pagent"
author = "The airflow-provider-pagent authors"
copyright = "2026, The airflow-provider-pagent authors"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "readme_sections",  # docs/_ext: pages made of README sections
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3

# Google-style docstrings (Args:, Returns:, Raises:, Attributes:)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"airflow-provider-pagent {release}"
html_theme_options = {
    "source_repository": "https://github.com/airflow-provider-pagent/airflow-provider-pagent",
    "source_branch": "main",
    "source_directory": "docs/",
}
