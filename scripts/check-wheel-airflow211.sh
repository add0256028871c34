#!/usr/bin/env bash
# The built wheel in a user's Airflow 2.11 environment, end to end:
#   1. the wheel: dist/'s when it is newer than the sources (scripts/check-wheel.sh
#      leaves it there), else built now (python -m build of the main venv);
#   2. a fresh venv (temporary, never the project installed editable) gets Airflow and
#      the providers of a user's environment: those of scripts/test-matrix.sh, at the
#      versions its venv of that line resolved (.venvs/airflow-<line>) when it exists;
#   3. `pip install <wheel>[sqlite]`, with no pin, must leave that Airflow's version
#      unchanged;
#   4. from a temporary directory outside the checkout (pagent_provider must come from
#      the venv's site-packages), with a temporary AIRFLOW_HOME, a copy of dags/ and
#      a SQLite warehouse of sample purchases, the example DAG pagent_daily_conversions
#      runs through dag.test() against the emulator started from the wheel
#      (python -m pagent_provider.testing), connections as AIRFLOW_CONN_* variables;
#      the emulator must have stored every purchase exactly once (0 missing,
#      0 duplicates, the revenue sum equal), and a second run must send 0.
#
#   scripts/check-wheel-airflow211.sh            # Airflow 2.11
#   scripts/check-wheel-airflow211.sh 2.11 3.0   # the same for other lines of the matrix
#   make check-wheel-airflow211                  # WHEEL_LINES="2.11 3.0" for more lines
#
# Results in test-artifacts/wheel-airflow/<line>.json. Everything else lives in a
# temporary directory, removed afterwards (KEEP_WORK=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
MAIN_VENV="${VENV:-.venv}"
VENVS="${MATRIX_VENVS:-$ROOT/.venvs}"
RESULTS="${WHEEL_RESULTS:-$ROOT/test-artifacts/wheel-airflow}"
ROWS="${WHEEL_ROWS:-1500}"
# One day of purchases, in the past (times ahead of now are refused), after the DAG's start_date.
DAY=2026-11-10
START=$SECONDS

step() { printf '[wheel-airflow %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "check-wheel-airflow211: FAILED: $*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pagent-wheel-airflow.XXXXXX")"
EMULATOR_PID=
cleanup() {
    if [ -n "$EMULATOR_PID" ]; then kill "$EMULATOR_PID" 2>/dev/null || true; fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Only the installed wheel may be imported, and only this script's Airflow settings apply.
unset PYTHONPATH
for var in $(env | grep -o '^AIRFLOW[A-Z0-9_]*' || true); do unset "$var"; done

read -r NAME VERSION < <("$PYTHON" - <<'EOF'
import re
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
version = re.search(r'^__version__ = "([^"]+)"', open("pagent_provider/__init__.py").read(), re.M)
print(project["name"], version.group(1) if version else "")
EOF
)
[ -n "${VERSION:-}" ] || die "could not read the name (pyproject.toml) and version (pagent_provider/__init__.py)"
WHEEL="$ROOT/dist/${NAME//-/_}-$VERSION-py3-none-any.whl"
newer="$([ -f "$WHEEL" ] && find pagent_provider pyproject.toml MANIFEST.in README.md -type f -not -name '*.pyc' \
    -newer "$WHEEL" -print -quit)" || newer=missing
if [ -z "$newer" ]; then
    step "reusing $(basename "$WHEEL") (newer than the sources)"
else
    [ -x "$MAIN_VENV/bin/python" ] || die "no main venv at $MAIN_VENV to build the wheel with (run make test first)"
    step "building the wheel ($MAIN_VENV/bin/python -m build)"
    "$MAIN_VENV/bin/python" -m build --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
        || { tail -n 40 "$WORK/build.log" >&2; die "python -m build"; }
    WHEEL="$WORK/dist/$(basename "$WHEEL")"
    [ -f "$WHEEL" ] || die "no wheel $(basename "$WHEEL") in: $(ls "$WORK/dist")"
fi

airflow_version() { "$1/bin/python" -c 'from importlib.metadata import version; print(version("apache-airflow"))'; }

# Creates the user's environment of one line in $WORK/venv-<line>; sets AIRFLOW_BEFORE.
prepare_venv() {
    local line="$1" venv="$2" requirements constraints=()
    requirements="$(scripts/test-matrix.sh --requirements "$line")" || die "unknown Airflow line $line"
    if [ -x "$VENVS/airflow-$line/bin/python" ]; then
        # The versions the matrix resolved for this line (its editable project left out):
        # the same environment, without resolving it again.
        "$VENVS/airflow-$line/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable \
            | grep '==' | grep -vi "^${NAME}==" >"$WORK/constraints-$line.txt"
        constraints=(-c "$WORK/constraints-$line.txt")
        step "$line: a fresh venv with $(echo $requirements), at the versions of $VENVS/airflow-$line"
    else
        step "$line: a fresh venv with $(echo $requirements) (no $VENVS/airflow-$line: resolving anew)"
    fi
    "$PYTHON" -m venv "$venv"
    local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile)
    "${pip[@]}" --upgrade pip >"$venv.log" 2>&1 || { tail -n 30 "$venv.log" >&2; die "$line: pip upgrade"; }
    # shellcheck disable=SC2086 # one requirement a line
    "${pip[@]}" $requirements "${constraints[@]}" >>"$venv.log" 2>&1 \
        || { tail -n 30 "$venv.log" >&2; die "$line: installing Airflow"; }
    AIRFLOW_BEFORE="$(airflow_version "$venv")"
}

check_line() {
    local line="$1" venv="$WORK/venv-$1" run="$WORK/run-$1" started=$SECONDS after port
    rm -f "$RESULTS/$line".{json,log}
    prepare_venv "$line" "$venv"
    step "$line: pip install $(basename "$WHEEL")[sqlite] (no pin on Airflow $AIRFLOW_BEFORE)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$WHEEL[sqlite]" \
        >>"$venv.log" 2>&1 || { tail -n 30 "$venv.log" >&2; die "$line: pip install of the wheel"; }
    after="$(airflow_version "$venv")"
    [ "$AIRFLOW_BEFORE" = "$after" ] || die "$line: installing the wheel changed Airflow $AIRFLOW_BEFORE -> $after"
    step "$line: Airflow $after kept; installed in $((SECONDS - started)) s"

    # Outside the checkout: a copy of the DAGs folder (with sql/), its own AIRFLOW_HOME.
    mkdir -p "$run/airflow-home"
    cp -R "$ROOT/dags" "$run/dags"
    find "$run/dags" -name __pycache__ -prune -exec rm -rf {} +
    cd "$run"
    export AIRFLOW_HOME="$run/airflow-home" AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$run/airflow-home/airflow.db"
    export AIRFLOW__CORE__DAGS_FOLDER="$run/dags" AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
    "$venv/bin/python" - <<'EOF' || die "$line: pagent_provider is not the installed wheel"
import json, sys, sysconfig
from importlib.metadata import distribution
from pathlib import Path
import pagent_provider
site = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(pagent_provider.__file__).resolve()
if site not in where.parents:
    sys.exit(f"  pagent_provider imported from {where}, not from {site}")
direct_url = json.loads(distribution("airflow-provider-pagent").read_text("direct_url.json") or "{}")
if direct_url.get("dir_info", {}).get("editable") or not direct_url.get("url", "").endswith(".whl"):
    sys.exit(f"  airflow-provider-pagent is not installed from a wheel: {direct_url}")
print(f"  pagent_provider {pagent_provider.__version__} from {where.parent}")
EOF

    step "$line: a SQLite warehouse of $ROWS purchases on $DAY (pagent_provider.testing.sample_warehouse)"
    "$venv/bin/python" - "$run/warehouse.db" "$run/expected.json" "$ROWS" "$DAY" <<'EOF' || die "$line: the warehouse"
import json, sys
from datetime import UTC, datetime, timedelta
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions
path, expected_path, rows, day = sys.argv[1], sys.argv[2], int(sys.argv[3]), datetime.fromisoformat(sys.argv[4])
frame = generate_conversions(rows, start=day, end=day + timedelta(days=1), seed=211)
write_conversions(f"sqlite:///{path}", frame)
# What pagent must receive, computed here (not by the provider): one event per purchase.
events = [
    [row.session_id, int(row.converted_at.to_pydatetime().replace(tzinfo=UTC).timestamp() * 1000),
     int(row.amount_usd * 100)]
    for row in frame.itertuples()
]
json.dump({"events": events, "revenue": sum(e[2] for e in events)}, open(expected_path, "w"))
EOF

    step "$line: the emulator from the wheel (python -m pagent_provider.testing --port 0: a free port)"
    "$venv/bin/python" -m pagent_provider.testing --port 0 --key wheel-check-key >"$run/emulator.log" 2>&1 &
    EMULATOR_PID=$!
    port=
    for _ in $(seq 100); do
        port="$(sed -n 's|^pagent emulator listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$run/emulator.log")"
        [ -n "$port" ] && break
        kill -0 "$EMULATOR_PID" 2>/dev/null || break
        sleep 0.2
    done
    [ -n "$port" ] || { cat "$run/emulator.log" >&2; die "$line: the emulator did not start"; }
    step "$line: emulator on 127.0.0.1:$port; dag.test() of pagent_daily_conversions, twice"
    export AIRFLOW_CONN_WAREHOUSE="{\"conn_type\": \"sqlite\", \"host\": \"$run/warehouse.db\"}"
    export AIRFLOW_CONN_PAGENT_DEFAULT="{\"conn_type\": \"pagent\", \"host\": \"http://127.0.0.1\", \"port\": $port, \"password\": \"wheel-check-key\"}"
    mkdir -p "$RESULTS"
    "$venv/bin/python" - "$run" "$port" "$DAY" "$RESULTS/$line.json" "$line" >"$run/dag.log" 2>&1 <<'EOF' \
        || { tail -n 60 "$run/dag.log" >&2; die "$line: the DAG runs (the last lines of their log above)"; }
import json, sys, time
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from urllib.request import urlopen

from pagent_provider.testing.dag_runs import load_dag, run_dag

run, port, day, out, line = Path(sys.argv[1]), sys.argv[2], datetime.fromisoformat(sys.argv[3]), sys.argv[4], sys.argv[5]
expected = json.loads((run / "expected.json").read_text())

def emulator(path):
    with urlopen(f"http://127.0.0.1:{port}/_emulator/{path}", timeout=30) as answer:
        return json.load(answer)

dag = load_dag(run / "dags", "pagent_daily_conversions")
# A manual run at midnight after DAY syncs DAY (its data interval; see the DAG's docstring).
logical_date = (day + timedelta(days=1)).replace(tzinfo=UTC)
runs = []
for _ in range(2):
    started = time.monotonic()
    result = run_dag(dag, logical_date, task_id="sync_purchases")
    runs.append({"state": result.state, "seconds": round(time.monotonic() - started, 1),
                 **{k: (result.result or result.summary or {}).get(k) for k in ("rows", "sent", "already_sent", "invalid")}})
    if len(runs) == 1:
        after_first = emulator("events")["events"]
summary = emulator("summary")

def keyed(events):
    return Counter((e["session_id"], e["time"], e.get("revenue")) for e in events)

want = Counter(tuple(e) for e in expected["events"])  # [session_id, time, revenue]
got = keyed(after_first)
report = {
    "line": line,
    "airflow": version("apache-airflow"),
    "pagent_provider": version("airflow-provider-pagent"),
    "purchases": len(expected["events"]),
    "stored": len(after_first),
    "missing": sum((want - got).values()),
    "duplicates": sum(n - 1 for n in got.values() if n > 1),
    "unexpected": sum((got - want).values()),
    "revenue_expected": expected["revenue"],
    "revenue_stored": sum(e.get("revenue", 0) for e in after_first),
    "accepted_after_second_run": summary["accepted_count"],
    "runs": runs,
}
Path(out).write_text(json.dumps(report, indent=2) + "\n")
EOF
    kill "$EMULATOR_PID" && wait "$EMULATOR_PID" || true
    EMULATOR_PID=
    cd "$ROOT"
    cp "$run/dag.log" "$RESULTS/$line.log"
    "$PYTHON" - "$RESULTS/$line.json" "$((SECONDS - started))" <<'EOF' \
        || { grep -v Warning "$RESULTS/$line.log" | tail -n 40 >&2; die "$line: the emulator did not receive each purchase exactly once (log: $RESULTS/$line.log)"; }
import json, sys
r = json.load(open(sys.argv[1]))
first, second = r["runs"]
for n, run in enumerate(r["runs"], 1):
    print(f"  run {n}: {run['state']}, rows {run['rows']}, sent {run['sent']}, already_sent {run['already_sent']},"
          f" invalid {run['invalid']} ({run['seconds']} s)")
print(f"  emulator: {r['stored']} events stored for {r['purchases']} purchases: {r['missing']} missing,"
      f" {r['duplicates']} duplicates, {r['unexpected']} unexpected; revenue {r['revenue_stored']}"
      f" of {r['revenue_expected']} cents; {r['accepted_after_second_run']} after the second run")
checks = {
    "both runs succeed": first["state"] == second["state"] == "success",
    "the first run sends every purchase": first["sent"] == r["purchases"],
    "each purchase stored exactly once": r["stored"] == r["purchases"] and r["missing"] == r["duplicates"] == r["unexpected"] == 0,
    "the revenue sum is the warehouse's": r["revenue_stored"] == r["revenue_expected"],
    "the second run sends nothing": second["sent"] == 0 and second["already_sent"] == r["purchases"],
    "the emulator got nothing more": r["accepted_after_second_run"] == r["purchases"],
}
r["seconds"] = int(sys.argv[2])
json.dump(r, open(sys.argv[1], "w"), indent=2)
failed = [name for name, ok in checks.items() if not ok]
for name in failed:
    print(f"  NOT {name}", file=sys.stderr)
sys.exit(1 if failed else 0)
EOF
    step "$line: OK, the wheel on Airflow $after delivered each purchase exactly once ($((SECONDS - started)) s)"
}

lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(2.11)
for line in "${lines[@]}"; do
    check_line "$line"
done
step "done in $((SECONDS - START)) s: Airflow ${lines[*]}"
