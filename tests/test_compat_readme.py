"""README's compatibility table against the declared ranges and the matrix definition.

``scripts/matrix_table.py check`` (CI, after the matrix) compares the table with
what the matrix ran; this test, in every ``make test``, keeps it consistent with
``pyproject.toml`` and ``scripts/test-matrix.sh`` without running the matrix.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- compatibility-table:begin"
END = "<!-- compatibility-table:end -->"


def table_rows() -> list[dict[str, str]]:
    text = (ROOT / "README.md").read_text()
    body = text.split(BEGIN, 1)[1].split("\n", 1)[1].split(END, 1)[0]
    lines = [line for line in body.strip().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def declared() -> dict[str, Requirement]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {requirement.name.lower(): requirement for requirement in map(Requirement, dependencies)}


def lower_bound(requirement: Requirement) -> Version:
    [bound] = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return bound


def matrix_pins() -> dict[str, str]:
    """line -> pinned Airflow version, from scripts/test-matrix.sh."""
    script = (ROOT / "scripts" / "test-matrix.sh").read_text()
    return dict(re.findall(r'^\s+([0-9.]+)\) echo "apache-airflow==([0-9.]+)', script, re.M))


def test_the_table_lists_every_line_of_the_matrix_each_passed() -> None:
    rows = table_rows()
    # the latest Airflow once per declared Python (3.11 in the main venv, then 3.12 and 3.13)
    assert [row["Airflow"] for row in rows] == [*(f"{line}.x" for line in matrix_pins()), *["latest 3.x"] * 3]
    assert [row["Python"] for row in rows[-3:]] == ["3.11", "3.12", "3.13"]
    for row in rows:
        assert row["Matrix"] == "passed", row
        line = row["Airflow"].removesuffix(".x")
        if line in matrix_pins():
            assert row["Tested with"] == matrix_pins()[line]


def test_the_declared_ranges_are_what_the_matrix_tested() -> None:
    rows = table_rows()
    requirements = declared()
    for column, name in (("Tested with", "apache-airflow"), ("SQLAlchemy", "sqlalchemy"), ("pandas", "pandas")):
        requirement = requirements[name]
        tested = sorted(Version(row[column]) for row in rows)
        for version in tested:
            assert requirement.specifier.contains(version), f"{name} {version} was tested but is outside {requirement}"
        # the lowest version allowed is of the lowest series tested (no untested older series)
        bound = lower_bound(requirement)
        assert bound.release[:2] == tested[0].release[:2], f"{name}: declared {requirement}, lowest tested {tested[0]}"
        assert bound <= tested[0]
