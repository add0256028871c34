#!/usr/bin/env bash
# Build the sdist and the wheel, check what they contain (LICENSE, NOTICE, py.typed,
# and in the sdist what its tests need) and that `twine check` accepts them as PyPI
# would, install the wheel into a fresh virtual environment, and check that Airflow
# lists the provider with its version.
#
# Everything happens in a temporary directory (removed afterwards) except the
# built files, which are copied to dist/. The build tool lives in its own
# throw-away venv (with twine), so neither need be a project dependency.
#
#   scripts/check-wheel.sh            # PYTHON=python3.12 scripts/check-wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
START=$SECONDS

step() { printf '[check-wheel %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "check-wheel: FAILED: $*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pagent-check-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

read -r NAME VERSION < <("$PYTHON" - <<'EOF'
import re
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
# the version has one home, pagent_provider/__init__.py (pyproject reads it from there)
version = re.search(r'^__version__ = "([^"]+)"', open("pagent_provider/__init__.py").read(), re.M)
print(project["name"], version.group(1) if version else "")
EOF
)
[ -n "${VERSION:-}" ] || die "could not read the name (pyproject.toml) and version (pagent_provider/__init__.py)"
DIST_NAME="${NAME//-/_}"
step "$NAME $VERSION"

step "building sdist and wheel (python -m build, in a throw-away venv)"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile build twine >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "pip install build twine"; }
# The wheel is built from the sdist, so a file missing from the sdist shows up here.
"$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "python -m build"; }
SDIST="$WORK/dist/$DIST_NAME-$VERSION.tar.gz"
WHEEL="$WORK/dist/$DIST_NAME-$VERSION-py3-none-any.whl"
[ -f "$SDIST" ] || die "no sdist $(basename "$SDIST") in: $(ls "$WORK/dist")"
[ -f "$WHEEL" ] || die "no wheel $(basename "$WHEEL") in: $(ls "$WORK/dist")"

step "checking the wheel's contents"
"$PYTHON" - "$WHEEL" <<'EOF' || die "wheel contents"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
text = zipfile.ZipFile(sys.argv[1]).read(entry_points).decode()
problems = []
for needed in ("pagent_provider/get_provider_info.py", "pagent_provider/hooks/pagent.py",
               "pagent_provider/testing/emulator.py", "pagent_provider/assets/pagent.py",
               "pagent_provider/py.typed"):
    if needed not in names:
        problems.append(f"missing {needed}")
# PEP 639: license files live in <name>.dist-info/licenses/
for license_file in ("LICENSE", "NOTICE"):
    if not any(n.endswith(f".dist-info/licenses/{license_file}") for n in names):
        problems.append(f"missing .dist-info/licenses/{license_file}")
metadata = zipfile.ZipFile(sys.argv[1]).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
for field in ("License-Expression: Apache-2.0", "License-File: LICENSE", "License-File: NOTICE",
              "Project-URL: Documentation, ", "Classifier: Typing :: Typed"):
    if field not in metadata:
        problems.append(f"METADATA lacks {field!r}")
if "[apache_airflow_provider]" not in text or "pagent_provider.get_provider_info:get_provider_info" not in text:
    problems.append("no apache_airflow_provider entry point")
stray = sorted({n.split("/")[0] for n in names} - {"pagent_provider"} - {n.split("/")[0] for n in names if ".dist-info/" in n})
if stray:
    problems.append(f"unexpected top-level entries: {stray}")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

step "checking the sdist's contents (what its tests, the demo and the docs need)"
"$PYTHON" - "$SDIST" "$DIST_NAME-$VERSION" <<'EOF' || die "sdist contents"
import sys, tarfile
root = sys.argv[2]
names = {name.removeprefix(root + "/") for name in tarfile.open(sys.argv[1]).getnames()}
problems = []
for needed in ("LICENSE", "NOTICE", "README.md", "CHANGELOG.md", "Makefile", "pyproject.toml",
               "pagent_provider/py.typed", "tests/conftest.py", "scripts/check-wheel.sh", "docs/conf.py"):
    if needed not in names:
        problems.append(f"missing {needed}")
for folder in ("tests/workers/", "tests/dags/", "dags/", "dags/sql/", "scripts/", "benchmarks/"):
    if not any(name.startswith(folder) and name.endswith((".py", ".sql", ".sh")) for name in names):
        problems.append(f"missing {folder}")
stray = sorted(n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith(("benchmarks/results", ".venv")))
if stray:
    problems.append(f"unexpected files: {stray[:5]}")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

step "twine check --strict (the sdist and the wheel, as PyPI reads them)"
"$WORK/build-venv/bin/python" -m twine check --strict "$WORK"/dist/* \
    || die "twine check"

step "installing the wheel into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
# A current pip resolves Airflow's dependencies faster than the one venv bundles;
# --no-compile skips writing .pyc files for ~200 packages (about 30 s).
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >"$WORK/install.log" 2>&1 \
    || { tail -n 40 "$WORK/install.log" >&2; die "pip upgrade in the fresh venv"; }
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$WHEEL" >"$WORK/install.log" 2>&1 \
    || { tail -n 40 "$WORK/install.log" >&2; die "pip install of the wheel"; }

step "airflow providers list (temporary AIRFLOW_HOME)"
mkdir -p "$WORK/airflow-home" "$WORK/run"
# Run outside the checkout, without PYTHONPATH, so only the installed wheel can be imported.
(
    cd "$WORK/run" || exit 1
    unset PYTHONPATH
    for var in $(env | grep -o '^AIRFLOW[A-Z0-9_]*' || true); do unset "$var"; done
    export AIRFLOW_HOME="$WORK/airflow-home" AIRFLOW__CORE__LOAD_EXAMPLES=False
    # (set -e does not apply inside a subshell tested with ||: every step exits by itself)
    "$WORK/venv/bin/python" -c "import pagent_provider, sys; sys.exit(0 if pagent_provider.__file__.startswith('$WORK/venv/') else 'pagent_provider imported from ' + pagent_provider.__file__)" \
        || exit 1
    # `airflow providers list` shows the distribution's version; the provider info
    # Airflow reads (get_provider_info()["versions"]) must say the same.
    "$WORK/venv/bin/python" -c "
import sys
from pagent_provider.get_provider_info import get_provider_info
versions = get_provider_info()['versions']
sys.exit(0 if versions[0] == '$VERSION' else f'get_provider_info() versions {versions} != pyproject version $VERSION')" \
        || exit 1
    # Airflow's providers page links the documentation from the Project-URL "Documentation"
    "$WORK/venv/bin/python" -c "
import sys
from airflow.providers_manager import ProvidersManager
url = ProvidersManager().providers['$NAME'].data.get('documentation-url')
sys.exit(0 if url else 'the provider info has no documentation-url (Project-URL: Documentation)')" \
        || exit 1
    "$WORK/venv/bin/airflow" providers list --output json >"$WORK/providers.json" 2>"$WORK/providers.err" \
        || { cat "$WORK/providers.err" >&2; exit 1; }
    "$WORK/venv/bin/pagent-conversions" --help >/dev/null || exit 1
) || die "the installed wheel failed its checks"
"$PYTHON" - "$WORK/providers.json" "$NAME" "$VERSION" <<'EOF' || die "airflow providers list"
import json, sys
path, name, version = sys.argv[1:]
listed = {p["package_name"]: p["version"] for p in json.load(open(path))}
if listed.get(name) != version:
    sys.exit(f"  airflow providers list shows {name} as {listed.get(name)!r}, expected {version!r}; listed: {listed}")
print(f"  airflow providers list: {name} {version}")
EOF

mkdir -p "$ROOT/dist"
cp "$SDIST" "$WHEEL" "$ROOT/dist/"
step "OK: dist/$(basename "$SDIST") and dist/$(basename "$WHEEL") install and register with Airflow"
