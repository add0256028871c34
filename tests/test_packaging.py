"""The distributions as PyPI and an Airflow user see them: licence, metadata, py.typed, a testable sdist.

Builds the sdist and, from it, the wheel (as ``python -m build`` does) with this
environment's setuptools, then checks their contents, ``twine check --strict``,
and that tests run from the unpacked sdist.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import metadata, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = "airflow_provider_pagent"
VERSION = version("airflow-provider-pagent")
PROJECT_URLS = {"Documentation", "Source Code", "Bug Tracker", "Changelog"}
CLASSIFIERS = {
    "Development Status :: 4 - Beta",
    "Framework :: Apache Airflow",
    "Framework :: Apache Airflow :: Provider",
    "Intended Audience :: Developers",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Typing :: Typed",
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("build")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than the build-system's >= 77")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: this environment's setuptools, no download (its "wheel" requirement
    # is not needed by setuptools >= 70.1, hence --skip-dependency-check)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield out


def _wheel(dist: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(dist / f"{NAME}-{VERSION}-py3-none-any.whl")


def _sdist_names(dist: Path) -> set[str]:
    with tarfile.open(dist / f"{NAME}-{VERSION}.tar.gz") as sdist:
        return {name.removeprefix(f"{NAME}-{VERSION}/") for name in sdist.getnames()}


def test_the_wheel_ships_license_notice_and_py_typed(dist: Path) -> None:
    names = _wheel(dist).namelist()
    info = f"{NAME}-{VERSION}.dist-info"
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE", "pagent_provider/py.typed"} <= set(names)
    assert "pagent_provider/assets/pagent.py" in names
    license_text = _wheel(dist).read(f"{info}/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub


def test_the_wheel_metadata_has_urls_and_classifiers(dist: Path) -> None:
    raw = _wheel(dist).read(f"{NAME}-{VERSION}.dist-info/METADATA").decode()
    meta = email.parser.Parser().parsestr(raw)
    assert meta["License-Expression"] == "Apache-2.0"
    assert set(meta.get_all("License-File")) == {"LICENSE", "NOTICE"}
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL"))
    assert PROJECT_URLS <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    classifiers = set(meta.get_all("Classifier"))
    assert CLASSIFIERS <= classifiers
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert meta["Description-Content-Type"] == "text/markdown"


def test_the_sdist_carries_what_its_tests_need(dist: Path) -> None:
    names = _sdist_names(dist)
    needed = {
        "LICENSE",
        "NOTICE",
        "CHANGELOG.md",
        "README.md",
        "Makefile",
        "MANIFEST.in",
        "pyproject.toml",
        "pagent_provider/py.typed",
        "tests/conftest.py",
        "docs/conf.py",
        "dags/pagent_daily_conversions.py",
        "dags/sql/purchases.sql",
        "scripts/check-wheel.sh",
        "scripts/demo.py",
        "benchmarks/__main__.py",
    }
    assert needed <= names, sorted(needed - names)
    for folder in ("tests/workers/", "tests/dags/"):
        in_checkout = {f"{folder}{p.name}" for p in (ROOT / folder).glob("*.py")}
        assert in_checkout and in_checkout <= names, folder
    assert {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("benchmarks/results")]


def test_twine_check_passes_on_both(dist: Path) -> None:
    pytest.importorskip("twine")
    files = sorted(str(path) for path in dist.iterdir())
    assert len(files) == 2
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_tests_run_from_the_unpacked_sdist(dist: Path, tmp_path: Path) -> None:
    with tarfile.open(dist / f"{NAME}-{VERSION}.tar.gz") as sdist:
        sdist.extractall(tmp_path, filter="data")
    unpacked = tmp_path / f"{NAME}-{VERSION}"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "tests/test_asset_uris.py",
            "tests/test_compat_readme.py",
        ],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout and "error" not in ran.stdout.lower()


def test_airflow_shows_the_documentation_url() -> None:
    from airflow.providers_manager import ProvidersManager

    urls = dict(entry.split(", ", 1) for entry in metadata("airflow-provider-pagent").get_all("Project-URL") or [])
    if "Documentation" not in urls:
        pytest.skip("the installed metadata predates [project.urls]: reinstall the project (pip install -e .)")
    info = ProvidersManager().providers["airflow-provider-pagent"].data
    assert info["documentation-url"] == urls["Documentation"]
    assert info["documentation-url"].startswith("https://")
