"""Child process for the signal tests: one ``dag.test()`` run of the example daily DAG, as a real OS process.

Usage: python dag_worker.py CONFIG_JSON_FILE

The config (JSON) holds ``airflow_home``, ``dags_folder``, ``logical_date``
(ISO), ``connections`` (conn id -> AIRFLOW_CONN_* JSON) and ``result_file``,
where ``{"state": ..., "result": ...}`` is written when the run ends. The
environment is set before Airflow is imported, as Airflow requires.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path


def main(config_file: str) -> int:
    config = json.loads(Path(config_file).read_text())
    home = config["airflow_home"]
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": config["dags_folder"],
        }
    )
    for conn_id, value in config["connections"].items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = value

    from pagent_provider.testing.dag_runs import load_dag, run_dag

    dag = load_dag(config["dags_folder"], config["dag_id"])
    Path(config["ready_file"]).touch()
    run = run_dag(dag, datetime.fromisoformat(config["logical_date"]), task_id=config["task_id"])
    Path(config["result_file"]).write_text(json.dumps({"state": run.state, "result": run.result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
