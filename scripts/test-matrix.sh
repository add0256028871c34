#!/usr/bin/env bash
# The version matrix: the provider's hook, operator, ledger and end-to-end DAG
# tests on every Airflow line it supports, each in its own virtual environment.
#
#   scripts/test-matrix.sh                 # every line: 2.11 3.0 3.1 latest latest-py3.12 latest-py3.13
#   scripts/test-matrix.sh 2.11 3.0        # some of them
#   make test-matrix                       # the same, after `make test`'s install
#
# For each line except `latest`:
#   1. a venv in .venvs/airflow-<line> gets that Airflow (the newest patch, pinned
#      below) and the providers the tests use, as a user's Airflow environment;
#   2. the project is installed into it with `pip install -e '.[test]'` and NO pin
#      on Airflow, as a user would add the provider, and the script fails if pip
#      changed the Airflow version (it must keep the user's Airflow);
#   3. the representative subset ($MATRIX_TESTS) runs there.
# `latest` is the main venv (.venv, the newest Airflow 3, installed by `make test`, on
# Python 3.11); `latest-py3.12` and `latest-py3.13` are that same Airflow on the other
# Pythons the project declares, in venvs made with that interpreter (found on PATH or
# under pyenv; missing, the line fails: the classifiers claim it).
#
# Writes test-artifacts/matrix/<line>.json (versions, counts, skip reasons, times)
# and .xml (JUnit), then README's compatibility table is checked against them
# (scripts/matrix_table.py). Runs the lines one after the other (CI has 2 cores).
# A venv whose inputs (line spec, pyproject.toml) have not changed is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
VENVS="${MATRIX_VENVS:-$ROOT/.venvs}"
MAIN_VENV="${VENV:-.venv}"
RESULTS="${MATRIX_RESULTS:-$ROOT/test-artifacts/matrix}"
START=$SECONDS

step() { printf '[matrix %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "test-matrix: FAILED: $*" >&2; exit 1; }

airflow_version() { "$1/bin/python" -c 'from importlib.metadata import version; print(version("apache-airflow"))'; }

# The representative subset, by file: hook, provider registration, operator and DAG
# end to end, ledger, delivery guarantees, signals, and the compatibility checks.
MATRIX_TESTS="${MATRIX_TESTS:-tests/test_compat.py tests/test_client.py tests/test_provider.py tests/test_dag_e2e.py
  tests/test_ledger.py tests/test_ledger_hardening.py tests/test_delivery_guarantees.py tests/test_hook_hardening.py
  tests/test_signals.py}"

# Providers of a user's Airflow environment that the tests need (newest that
# support the line; pip picks them). FAB brings wtforms, which the connection
# form of Airflow < 3.2 is built with (Airflow 2.11 depends on it anyway).
PROVIDERS=(
    apache-airflow-providers-common-compat apache-airflow-providers-common-sql
    apache-airflow-providers-sqlite apache-airflow-providers-postgres
    apache-airflow-providers-mysql apache-airflow-providers-openlineage
    apache-airflow-providers-fab
)

# line -> the Airflow version it tests, and extra pins of the user's environment.
#   2.11, 3.0: Airflow caps SQLAlchemy below 2.0; pip then picks pandas 2.1 (see pyproject.toml).
#   3.0: Airflow 3.0.6 does not cap FastAPI, and with today's (and the cadwyn it brings)
#        its in-process execution API answers dag.test()'s task start with 422; the cap
#        is the one Airflow 3.1 declares. Alembic 1.17+ logs its plugin set-up at import,
#        which Airflow 3.0 prints to stdout, into `airflow ... -o json`. Airflow 3.0's
#        constraints file pins both (FastAPI 0.115, Alembic 1.16); it cannot be fetched here.
#   3.1: allows SQLAlchemy 2; pinned to the 2.0 series with pandas 2.2, so that the
#        matrix covers SQLAlchemy 1.4, 2.0 and 2.1 and pandas 2.1, 2.2 and 3.
#   latest: the main venv; SQLAlchemy 2.1 and pandas 3 there.
#   latest-py3.12, latest-py3.13: the main venv's Airflow version on those Pythons.
line_spec() {
    case "$1" in
        2.11) echo "apache-airflow==2.11.2" ;;
        3.0) echo "apache-airflow==3.0.6 fastapi<0.118 alembic<1.17" ;;
        3.1) echo "apache-airflow==3.1.8 sqlalchemy>=2.0,<2.1 pandas>=2.2,<2.3" ;;
        latest-py3.*) echo "apache-airflow==$(airflow_version "$MAIN_VENV")" ;;
        *) return 1 ;;
    esac
}

# The interpreter a line's venv is made with: $PYTHON, or for latest-py3.X that Python.
line_python() {
    case "$1" in
        latest-py3.*)
            local version="${1#latest-py}" found
            found="$(command -v "python$version" 2>/dev/null || true)"
            if [ -z "$found" ] || ! "$found" -c '' 2>/dev/null; then  # a pyenv shim of a version not selected fails
                found="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V | tail -n 1)"
            fi
            [ -n "$found" ] || die "$1: no python$version on PATH or under pyenv"
            echo "$found" ;;
        *) echo "$PYTHON" ;;
    esac
}

# `scripts/test-matrix.sh --requirements LINE`: a user's environment of that line, one
# requirement a line (its spec, then the providers), for scripts/check-wheel-airflow211.sh.
if [ "${1:-}" = --requirements ]; then
    line_spec "${2:-}" | tr ' ' '\n' || { echo "test-matrix: unknown Airflow line ${2:-}" >&2; exit 2; }
    printf '%s\n' "${PROVIDERS[@]}"
    exit 0
fi

# Tests not run on a line, as "test|reason" (the reason is shown in the results).
# None today: every test of the subset runs on every line. Add a line here, with
# the reason, for a test that cannot apply to a version.
deselected() {
    case "$1" in
        *) ;;
    esac
}


# Creates (or reuses) the venv of one line; prints nothing, sets INSTALL_S.
prepare_venv() {
    local line="$1" venv="$2" spec stamp before after started
    spec="$(line_spec "$line")" || die "unknown Airflow line $line (known: 2.11 3.0 3.1 latest latest-py3.12 latest-py3.13)"
    stamp="$(printf '%s\n' "$spec" "${PROVIDERS[*]}" | cat - pyproject.toml | sha256sum | cut -c1-16)"
    INSTALL_S=0
    if [ -f "$venv/.matrix-stamp" ] && [ "$(cat "$venv/.matrix-stamp")" = "$stamp" ]; then
        step "$line: reusing $venv (Airflow $(airflow_version "$venv"))"
        return
    fi
    started=$SECONDS
    rm -rf "$venv"
    "$(line_python "$line")" -m venv "$venv"
    local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
    "${pip[@]}" --upgrade pip >"$venv.log" 2>&1 || { tail -n 30 "$venv.log" >&2; die "$line: pip upgrade"; }
    # shellcheck disable=SC2086 # the spec is a list of requirements
    step "$line: installing $spec and the providers"
    "${pip[@]}" $spec "${PROVIDERS[@]}" >>"$venv.log" 2>&1 || { tail -n 30 "$venv.log" >&2; die "$line: installing Airflow"; }
    before="$(airflow_version "$venv")"
    step "$line: installing the project (pip install -e '.[test]', no pin on Airflow $before)"
    "${pip[@]}" -e "$ROOT[test]" >>"$venv.log" 2>&1 || { tail -n 30 "$venv.log" >&2; die "$line: installing the project"; }
    after="$(airflow_version "$venv")"
    [ "$before" = "$after" ] || die "$line: installing the project changed Airflow $before -> $after (see $venv.log)"
    step "$line: Airflow $after kept; installed in $((SECONDS - started)) s"
    echo "$stamp" >"$venv/.matrix-stamp"
    INSTALL_S=$((SECONDS - started))
}

run_line() {
    local line="$1" venv started status=0
    if [ "$line" = latest ]; then
        venv="$MAIN_VENV"
        [ -x "$venv/bin/python" ] || die "latest: no main venv at $venv (run make test first)"
        INSTALL_S=0
    else
        venv="$VENVS/airflow-$line"
        prepare_venv "$line" "$venv"
    fi
    local args=() files=" $(echo $MATRIX_TESTS) "
    while IFS='|' read -r test reason; do
        [ -n "$test" ] || continue
        case "$test" in
            *::*) args+=(--deselect "$test") ;;
            *) files="${files/ $test / }" ;;  # a whole file (one that cannot even be imported there)
        esac
        echo "$test|$reason" >>"$RESULTS/$line.deselected"
    done < <(deselected "$line")
    step "$line: running the subset with Airflow $(airflow_version "$venv")"
    started=$SECONDS
    # shellcheck disable=SC2086 # MATRIX_TESTS is a list of files
    "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs $files "${args[@]}" \
        --junitxml="$RESULTS/$line.xml" -o junit_family=xunit2 >"$RESULTS/$line.log" 2>&1 || status=$?
    tail -n 15 "$RESULTS/$line.log"
    "$venv/bin/python" scripts/matrix_table.py record "$line" --junit "$RESULTS/$line.xml" \
        --install-s "$INSTALL_S" --run-s "$((SECONDS - started))" --exit-status "$status" \
        --deselected "$RESULTS/$line.deselected" --out "$RESULTS/$line.json"
    return "$status"
}

mkdir -p "$VENVS" "$RESULTS"
lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(2.11 3.0 3.1 latest latest-py3.12 latest-py3.13)
failed=()
for line in "${lines[@]}"; do
    rm -f "$RESULTS/$line".{json,xml,log,deselected}
    touch "$RESULTS/$line.deselected"
    run_line "$line" || failed+=("$line")
done
"$PYTHON" scripts/matrix_table.py summary --results "$RESULTS" | tee "$RESULTS/summary.md"
step "done in $((SECONDS - START)) s"
[ ${#failed[@]} -eq 0 ] || die "tests failed on Airflow line(s): ${failed[*]} (logs in $RESULTS)"
# Only a run of every line can vouch for the whole table.
if [ $# -eq 0 ]; then
    "$PYTHON" scripts/matrix_table.py check --results "$RESULTS" \
        || die "README's compatibility table does not match what ran: scripts/matrix_table.py write updates it"
fi
