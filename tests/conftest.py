"""Shared test set-up: a throw-away AIRFLOW_HOME, and real databases.

Airflow reads its configuration when first imported, so the environment is
set here, before any test module imports it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pagent-airflow-home-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"

import pandas  # noqa: E402

# The reader builds Python-backed text columns on every machine (pagent_provider/core/frames.py);
# frames built by hand in tests do the same, whether or not pyarrow (which the Snowflake
# provider and fakesnow bring) is installed: pyarrow strings cannot hold a lone surrogate.
pandas.set_option("mode.string_storage", "python")

import sqlalchemy  # noqa: E402 - after the Airflow environment, as every import here

# psycopg 3 has a SQLAlchemy dialect from SQLAlchemy 2.0 on; under 1.4 (the Airflow 2.11
# to 3.1 lines of the version matrix) PostgreSQL is reached through psycopg2, as Airflow's
# PostgreSQL provider does there.
_POSTGRES_DRIVER = "psycopg" if int(sqlalchemy.__version__.split(".")[0]) >= 2 else "psycopg2"
POSTGRES_ADMIN_URL = os.environ.get(
    "PAGENT_TEST_POSTGRES_URL", f"postgresql+{_POSTGRES_DRIVER}://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get("PAGENT_TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/mysql")


def services_required() -> bool:
    """CI sets PAGENT_REQUIRE_SERVICES=1: a missing database is then a failure, never a skip."""
    return os.environ.get("PAGENT_REQUIRE_SERVICES") == "1"


def _unavailable(name: str, error: Exception) -> None:
    message = f"{name} is not reachable ({type(error).__name__}: {error})"
    if services_required():
        pytest.fail(f"{message}; PAGENT_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


def _scratch_database(admin_url: str, name: str) -> Iterator[str]:
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    database = f"pagent_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {database}")
    except Exception as error:  # noqa: BLE001 - any failure means the server is not usable
        admin.dispose()
        _unavailable(name, error)
    url = sa.engine.make_url(admin_url).set(database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped afterwards."""
    yield from _scratch_database(POSTGRES_ADMIN_URL, "PostgreSQL on 127.0.0.1:5432")


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh MariaDB database, dropped afterwards."""
    yield from _scratch_database(MARIADB_ADMIN_URL, "MariaDB on 127.0.0.1:3306")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each dialect the ledger runs on (SQLite as a file, like a real deployment)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mariadb_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sqlalchemy.Engine]:
    """An engine on :func:`db_url`, disposed afterwards."""
    engine = sqlalchemy.create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def snowflake_connection() -> str:
    """AIRFLOW_CONN_* JSON of a Snowflake connection for fakesnow (which patches the connector; nothing is reached)."""
    return json.dumps(
        {
            "conn_type": "snowflake",
            "login": "etl_user",
            "password": "not-a-real-password",
            "schema": "PUBLIC",
            "extra": {"account": "xy12345.eu-central-1", "warehouse": "COMPUTE_WH", "database": "SHOP", "role": "ETL"},
        }
    )


_CELERY_REPORT = ROOT / "test-artifacts" / "celery" / "scale_out.json"
_SESSION_STARTED = pytest.StashKey[float]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED] = time.time()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Show the Celery scale-out numbers in the run's output when this run measured them (tests/test_celery_scale_out.py)."""
    started = config.stash.get(_SESSION_STARTED, None)
    if started is None or not _CELERY_REPORT.exists() or _CELERY_REPORT.stat().st_mtime < started:
        return
    report = json.loads(_CELERY_REPORT.read_text())
    terminalreporter.section("Celery scale-out (tests/test_celery_scale_out.py)")
    for name in ("overlapping_runs", "killed_worker"):
        run = report.get(name)
        if run:
            bound = f" (bound {run['duplicate_bound']})" if "duplicate_bound" in run else ""
            terminalreporter.write_line(
                f"{name}: rows {run['rows']}, partitions {run['partitions']}, missing {run['missing']}, "
                f"duplicates {run['duplicates']}{bound}, peak requests in flight {run['peak_requests_in_flight']}"
            )
