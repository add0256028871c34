"""A real Airflow 3 deployment on this machine, on the CeleryExecutor, for tests/test_celery_scale_out.py.

What a CeleryExecutor deployment runs, each as its own process:

* a Redis broker: Debian's ``redis-server`` on a free 127.0.0.1 port, without
  persistence (never the machine's own Redis on 6379);
* ``airflow db migrate`` once, on a PostgreSQL metadata database;
* ``airflow api-server``: the REST API the test drives, and the execution API
  that every task's supervisor talks to on Airflow 3 (it has no database
  access of its own; ``[core] execution_api_server_url`` points at it);
* ``airflow scheduler`` (the CeleryExecutor sends each task to Redis);
* ``airflow dag-processor`` (parses the DAG files, which the scheduler no
  longer does on Airflow 3);
* ``airflow celery worker``, as many as asked, each with its own Celery node
  name and an Airflow hostname of its own (:func:`worker_hostname`), so the
  task instances tell which worker ran them.

Every process starts in a session of its own (its pid is its process group),
writes to a log file, and is ended by :meth:`AirflowCluster.stop`: SIGTERM to
its group, then SIGKILL. Only the processes started here are ever signalled.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

HERE = Path(__file__).resolve().parent
REDIS_SERVER = os.environ.get("PAGENT_REDIS_SERVER", "/usr/bin/redis-server")


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the test's workers: the name each was started with."""
    return os.environ["PAGENT_TEST_WORKER"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@dataclass
class Service:
    """One process of the deployment, the leader of its own process group."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def process_groups(self) -> set[int]:
        """Its own process group and those of every process below it.

        Airflow 3's task supervisor puts each task in a process group of its
        own (so it can signal the task's children), so signalling a worker's
        group alone leaves its running tasks alive, orphaned.
        """
        groups = {self.pid}
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                try:
                    groups.add(os.getpgid(child.pid))
                except ProcessLookupError:
                    pass
        except psutil.NoSuchProcess:
            pass
        return groups

    def kill_everything(self) -> set[int]:
        """SIGKILL to its process group and to the groups of its tasks, as a machine lost at once."""
        groups = self.process_groups()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)
        return groups

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to its group (and its tasks' groups), then SIGKILL to whatever is left."""
        groups = self.process_groups()
        if self.alive():
            for group in groups:
                try:
                    os.killpg(group, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)


@dataclass
class AirflowCluster:
    """The deployment: start it, drive it through the REST API, stop it.

    Args:
        home: an empty directory: AIRFLOW_HOME, the logs, Redis' working directory.
        metadata_url: SQLAlchemy URL of an empty PostgreSQL database for Airflow's metadata.
        dags_folder: the DAG files to run.
        environment: more variables for every Airflow process (``AIRFLOW_CONN_*``).
    """

    home: Path
    metadata_url: str
    dags_folder: Path
    environment: Mapping[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    redis_port: int = 0

    def __post_init__(self) -> None:
        self.logs = self.home / "service-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.session = requests.Session()
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__")) and k != "PYTHONPATH"
        }
        self.env = {
            **inherited,
            "AIRFLOW_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.metadata_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            # A task whose worker died is failed (and retried) once its heartbeat is this old.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            # A task handed to a worker that died before starting it is given to another one.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
            **self.environment,
        }

    # --- processes -----------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Service:
        log = self.logs / f"{name}.log"
        handle = log.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env or self.env),
                cwd=self.home,
                start_new_session=True,
            )
        finally:
            handle.close()
        service = Service(name, popen, log)
        self.services[name] = service
        return service

    def _airflow(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).parent / "airflow"), *args]

    def start_redis(self) -> None:
        """Debian's redis-server on a free port, without persistence; the broker of every Airflow process."""
        for _ in range(5):
            self.redis_port = free_port()
            argv = [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--protected-mode", "no"]
            redis = self._spawn("redis", [*argv, "--save", "", "--appendonly", "no", "--dir", str(self.home)])
            try:
                wait_until(lambda r=redis: self._redis_answers() or not r.alive(), 10, "redis-server to answer PING")
            except TimeoutError:
                redis.stop()
                continue
            if redis.alive():
                self.env["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
                return
        raise RuntimeError(f"redis-server did not start:\n{self.services['redis'].tail()}")

    def _redis_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_emulator(self, *flags: str) -> str:
        """The pagent ingest emulator as a process on a free port (``python -m pagent_provider.testing``); its URL."""
        emulator = self._spawn("emulator", [sys.executable, "-m", "pagent_provider.testing", "--port", "0", *flags])
        pattern = re.compile(r"pagent emulator listening on (http://127\.0\.0\.1:\d+)")

        def listening() -> str | None:
            self._died(emulator)
            match = pattern.search(emulator.tail(5))
            return match.group(1) if match else None

        return wait_until(listening, 30, "the pagent emulator")

    def migrate(self) -> None:
        done = subprocess.run(
            self._airflow("db", "migrate"), env=self.env, cwd=self.home, capture_output=True, text=True, timeout=180
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def start_api_server(self) -> None:
        self._spawn("api-server", self._airflow("api-server", "--host", "127.0.0.1", "--port", str(self.api_port)))

    def start_scheduler(self) -> None:
        self._spawn("scheduler", self._airflow("scheduler", "--skip-serve-logs"))

    def start_dag_processor(self) -> None:
        self._spawn("dag-processor", self._airflow("dag-processor"))

    def start_worker(self, name: str, concurrency: int = 2) -> Service:
        """A Celery worker whose task instances report ``name`` as their hostname."""
        env = {
            **self.env,
            "PAGENT_TEST_WORKER": name,
            "PYTHONPATH": str(HERE),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_cluster.worker_hostname",
        }
        argv = self._airflow("celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", str(concurrency))
        return self._spawn(name, [*argv, "--skip-serve-logs", "--without-mingle", "--without-gossip"], env)

    def wait_for_workers(self, names: Iterable[str], timeout: float = 90) -> None:
        for name in names:
            service = self.services[name]
            wait_until(
                lambda service=service: " ready." in service.tail(200) or self._died(service),
                timeout,
                f"Celery worker {name}",
            )

    def _died(self, service: Service) -> bool:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited with {service.popen.returncode}:\n{service.tail()}")
        return False

    def check_alive(self, *names: str) -> None:
        """Fail with its log's end if one of the services has exited."""
        for name in names or self.services:
            self._died(self.services[name])

    def stop(self) -> None:
        """Workers first (their tasks), then the rest, Redis last."""
        order = sorted(self.services.values(), key=lambda s: (s.name in ("api-server", "redis"), s.name == "redis"))
        for service in order:
            service.stop()

    def report(self, lines: int = 25) -> str:
        """The end of every service's log, for a failure message."""
        return "\n".join(
            f"--- {s.name} (pid {s.pid}, rc {s.popen.poll()})\n{s.tail(lines)}" for s in self.services.values()
        )

    # --- the REST API ---------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/v2"

    def api(self, method: str, path: str, *, ok: Iterable[int] = (200,), **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
        if answer.status_code not in tuple(ok):
            raise RuntimeError(f"{method} {path} -> {answer.status_code}: {answer.text[:2000]}")
        return answer.json() if answer.content else None

    def api_ready(self) -> bool:
        self._died(self.services["api-server"])
        try:
            return self.session.get(f"{self.api_url}/monitor/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def scheduler_healthy(self) -> bool:
        self.check_alive("scheduler", "dag-processor")
        health = self.api("GET", "/monitor/health")
        return health.get("scheduler", {}).get("status") == "healthy"

    def dag_parsed(self, dag_id: str) -> bool:
        self.check_alive("dag-processor")
        answer = self.session.get(f"{self.api_url}/dags/{dag_id}", timeout=10)
        return answer.status_code == 200

    def import_errors(self) -> list[dict]:
        return self.api("GET", "/importErrors")["import_errors"]

    def set_pool(self, name: str, slots: int) -> None:
        body = {"name": name, "slots": slots, "description": "pagent ingest: concurrent requests"}
        self.api("POST", "/pools", json={**body, "include_deferred": False}, ok=(201,))

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any]) -> None:
        body = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)}
        self.api("POST", f"/dags/{dag_id}/dagRuns", json=body, ok=(200,))

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict]:
        params = {"limit": 100} | ({"task_id": task_id} if task_id else {})
        found = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params=params)["task_instances"]
        return sorted(found, key=lambda ti: (ti["task_id"], ti["map_index"]))

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.api("GET", path, params={"map_index": map_index, "deserialize": True})["value"]

    def wait_for_runs(self, dag_id: str, run_ids: Iterable[str], timeout: float) -> dict[str, str]:
        """Wait until every run has finished; their end states."""
        run_ids = list(run_ids)

        def finished() -> dict[str, str] | None:
            self.check_alive("scheduler", "api-server", "dag-processor")
            states = {run_id: self.run_state(dag_id, run_id) for run_id in run_ids}
            return states if all(s in ("success", "failed") for s in states.values()) else None

        return wait_until(finished, timeout, f"DAG runs {run_ids}", poll=0.5)
