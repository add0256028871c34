"""The main job on embedded defaults: a SQLite warehouse, the local emulator, real Airflow.

Generates three days of realistic purchases, starts the pagent ingest emulator
on 127.0.0.1, runs the example DAG ``pagent_daily_conversions`` through
Airflow (``dag.test()``) once per day, then runs the first day again to show
that nothing is sent twice. Everything lives in a temporary directory.

Run it with ``make demo``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = 6_000
DAYS = 3


def configure_airflow(home: Path) -> None:
    """Airflow reads its configuration on import: set it first."""
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def run_day(dag, logical_date) -> dict:
    from pagent_provider.testing.dag_runs import run_dag

    run = run_dag(dag, logical_date, task_id="sync_purchases")
    if run.state != "success":
        raise SystemExit(f"the DAG run for {logical_date:%Y-%m-%d} ended {run.state}; see the log above")
    return run.result


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="pagent-demo-"))
    configure_airflow(work / "airflow")

    from pagent_provider.testing import IngestEmulator
    from pagent_provider.testing.sample_warehouse import generate_conversions, sample_period, write_conversions

    start, end = sample_period(DAYS)
    warehouse = work / "warehouse.db"
    purchases = generate_conversions(ROWS, start=start, end=end)
    expected_cents = int(sum(purchases["amount_usd"]) * 100)
    write_conversions(f"sqlite:///{warehouse}", purchases)
    print(f"warehouse: {ROWS} purchases from {start:%Y-%m-%d} to {end:%Y-%m-%d} in {warehouse}")

    with IngestEmulator(api_keys=("demo-key",)) as emulator:
        print(f"pagent emulator listening on {emulator.url}")
        os.environ["AIRFLOW_CONN_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
        os.environ["AIRFLOW_CONN_PAGENT_DEFAULT"] = emulator.airflow_connection_json()

        import pendulum

        from pagent_provider.testing.dag_runs import load_dag

        dag = load_dag(ROOT / "dags", "pagent_daily_conversions")
        days = [pendulum.instance(start, tz="UTC") + timedelta(days=n) for n in range(DAYS)]
        # A manual run at midnight D syncs the complete day before D (see the DAG's docstring).
        results = [(f"{day:%Y-%m-%d}", run_day(dag, day + timedelta(days=1))) for day in days]
        results.append((f"{days[0]:%Y-%m-%d} again", run_day(dag, days[0] + timedelta(days=1))))

        columns = ("rows", "valid", "invalid", "sent", "accepted", "already_sent", "unknown", "batches", "duration_s")
        print()
        print(f"{'run':<18}" + "".join(f"{name:>14}" for name in columns))
        for name, summary in results:
            print(f"{name:<18}" + "".join(f"{summary[c]:>14}" for c in columns))
        received = len(emulator.events())
        unique = len({(e["session_id"], e["time"], e.get("revenue")) for e in emulator.events()})
        revenue = sum(e.get("revenue", 0) for e in emulator.events())
    print()
    print(f"emulator received {received} events ({unique} distinct), revenue {revenue} cents")
    print(f"warehouse holds   {ROWS} purchases, revenue {expected_cents} cents")
    ok = received == unique == ROWS and revenue == expected_cents
    print("every purchase delivered exactly once" if ok else "MISMATCH: see the table above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
