"""Results of the version matrix (scripts/test-matrix.sh) and README's compatibility table.

Standard library only: ``record`` runs in each matrix venv, the rest with any Python 3.11+.

    python scripts/matrix_table.py record LINE --junit X.xml --out X.json ...  # one line's result
    python scripts/matrix_table.py summary             # markdown of every result (CI log)
    python scripts/matrix_table.py check               # README's table == what the matrix ran
    python scripts/matrix_table.py write               # rewrite README's table from the results

The table holds only what a run of the same matrix reproduces (versions and the
outcome, not counts or times), so ``check`` fails only when the matrix changed
(another Airflow line or patch, other SQLAlchemy or pandas) or a line failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "test-artifacts" / "matrix"
BEGIN = "<!-- compatibility-table:begin (scripts/matrix_table.py write) -->"
END = "<!-- compatibility-table:end -->"
LINES = ("2.11", "3.0", "3.1", "latest", "latest-py3.12", "latest-py3.13")
PACKAGES = {
    "airflow": "apache-airflow",
    "task_sdk": "apache-airflow-task-sdk",
    "sqlalchemy": "sqlalchemy",
    "pandas": "pandas",
    "common_sql": "apache-airflow-providers-common-sql",
    "common_compat": "apache-airflow-providers-common-compat",
}


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def record(args: argparse.Namespace) -> int:
    """One line's result as JSON: the versions of this interpreter's packages and the JUnit counts."""
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    skipped: list[dict[str, str]] = []
    failures: list[str] = []
    junit = Path(args.junit)
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            counts["tests"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            if outcome is None:
                counts["passed"] += 1
            elif outcome.tag == "skipped":
                counts["skipped"] += 1
                skipped.append({"test": name, "reason": outcome.get("message", "")})
            else:
                counts["failed" if outcome.tag == "failure" else "errors"] += 1
                failures.append(name)
    deselected = []
    if args.deselected and Path(args.deselected).exists():
        for text in Path(args.deselected).read_text().splitlines():
            test, _, reason = text.partition("|")
            if test:
                deselected.append({"test": test, "reason": reason})
    result = {
        "line": args.line,
        "python": platform.python_version(),
        **{key: _version(name) for key, name in PACKAGES.items()},
        **counts,
        "failures": failures,
        "skipped_tests": skipped,
        "deselected": deselected,
        "exit_status": args.exit_status,
        "ok": args.exit_status == 0 and counts["tests"] > 0 and not failures,
        "install_s": args.install_s,
        "run_s": args.run_s,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def load(results: Path) -> list[dict]:
    found = {path.stem: json.loads(path.read_text()) for path in results.glob("*.json")}
    return [found[line] for line in LINES if line in found]


def summary(args: argparse.Namespace) -> int:
    rows = load(Path(args.results))
    print(
        "| line | Airflow | SQLAlchemy | pandas | passed | failed | errors | skipped | deselected | install s | run s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['line']} | {r['airflow']} | {r['sqlalchemy']} | {r['pandas']} | {r['passed']} | {r['failed']} "
            f"| {r['errors']} | {r['skipped']} | {len(r['deselected'])} | {r['install_s']} | {r['run_s']} |"
        )
    for r in rows:
        for skip in r["skipped_tests"] + r["deselected"]:
            print(f"- {r['line']}: {skip['test']} not run: {skip['reason']}")
    return 0


def table(rows: list[dict]) -> str:
    """README's table: one row per Airflow line, from the matrix results."""
    lines = [
        "| Airflow | Tested with | SQLAlchemy | pandas | Python | Matrix |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        line = "latest 3.x" if r["line"].startswith("latest") else f"{r['line']}.x"
        outcome = "passed" if r["ok"] else "FAILED"
        lines.append(
            f"| {line} | {r['airflow']} | {r['sqlalchemy']} | {r['pandas']} | {r['python'].rsplit('.', 1)[0]} "
            f"| {outcome} |"
        )
    return "\n".join(lines)


def _readme_parts() -> tuple[str, str, str]:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no compatibility table between {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    return head, body.strip("\n"), tail


def check(args: argparse.Namespace) -> int:
    rows = load(Path(args.results))
    missing = [line for line in LINES if line not in {r["line"] for r in rows}]
    if missing:
        print(f"matrix results missing for: {', '.join(missing)}", file=sys.stderr)
        return 1
    _, current, _ = _readme_parts()
    expected = table(rows)
    if current != expected:
        print("README.md's compatibility table differs from what the matrix ran.\nREADME:", file=sys.stderr)
        print(current, "\nmatrix:", expected, sep="\n", file=sys.stderr)
        return 1
    print("README.md's compatibility table matches the matrix results")
    return 0


def write(args: argparse.Namespace) -> int:
    head, _, tail = _readme_parts()
    README.write_text(f"{head}{BEGIN}\n{table(load(Path(args.results)))}\n{END}{tail}")
    print("README.md's compatibility table written")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="write one line's result (run with that line's Python)")
    rec.add_argument("line", choices=LINES)
    rec.add_argument("--junit", required=True)
    rec.add_argument("--out", required=True)
    rec.add_argument("--install-s", type=int, default=0)
    rec.add_argument("--run-s", type=int, default=0)
    rec.add_argument("--exit-status", type=int, default=0)
    rec.add_argument("--deselected")
    rec.set_defaults(run=record)
    for name, run in (("summary", summary), ("check", check), ("write", write)):
        sub = commands.add_parser(name)
        sub.add_argument("--results", default=str(RESULTS))
        sub.set_defaults(run=run)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
