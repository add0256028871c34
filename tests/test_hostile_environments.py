"""Issue 9: environments that break naive assumptions (found by attacking the hardening).

* two runs on one hostname in different PID namespaces (containers with host
  networking): a pid missing here is not a dead owner;
* SIGTERM while the warehouse is slow to produce the next chunk: the stop does
  not wait for the read, and records what pagent acknowledged meanwhile;
* a NUL character in a key (PostgreSQL text cannot hold one) and a latin1
  MariaDB database (no CJK reasons in VARCHAR): poison rows, not a stuck sync;
* NaN or infinite timeouts in a connection's extras: a configuration error.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger, RejectRecord
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentConfigError, PagentDeliveryError
from pagent_provider.hooks.pagent import PagentHook
from pagent_provider.testing import Faults, IngestEmulator

NAMESPACE = "pagent_default"
TRANSFORM = TransformConfig(key_column="order_id", require_time=False)


def frame(rows: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"o{i:05d}" for i in range(start, start + rows)],
            "session_id": [f"s{i}" for i in range(start, start + rows)],
            "user_id": "u1",
            "conversion_id": "goal-1",
        }
    )


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- PID namespaces


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root or user namespaces) to make a PID namespace")
def test_a_live_owner_in_another_pid_namespace_on_the_same_host_is_not_taken_over(tmp_path: Path) -> None:
    ledger_db = tmp_path / "ledger.db"
    ready, release = tmp_path / "claimed", tmp_path / "release"
    child = textwrap.dedent(f"""
        import time, pathlib, sqlalchemy as sa
        from pagent_provider.core.ledger import Ledger
        ledger = Ledger(sa.create_engine("sqlite:///{ledger_db}"), namespace="{NAMESPACE}")
        ledger.create_tables()
        ledger.claim([(f"k{{i}}", "h") for i in range(10)])  # then stays alive, holding them
        pathlib.Path("{ready}").touch()
        while not pathlib.Path("{release}").exists():
            time.sleep(0.05)
    """)
    # a few processes first, so the child's pid (small, in its own namespace) is not ours
    script = f"for i in 1 2 3 4 5 6 7 8; do /bin/true; done; exec {sys.executable} -c '{child}'"
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script])
    try:
        wait_for(ready.exists, 60, "the other namespace's claims")
        engine = sa.create_engine(f"sqlite:///{ledger_db}")
        row = Ledger(engine, namespace=NAMESPACE).lookup(["k0"])["k0"]
        assert row.owner_host != ClaimOwner().host  # same hostname, another PID namespace
        result = Ledger(engine, namespace=NAMESPACE).claim([(f"k{i}", "h") for i in range(10)])
        engine.dispose()
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert result.claimed == set() and result.unknown_taken_over == set()
    assert sorted(result.claimed_elsewhere) == sorted(f"k{i}" for i in range(10))


# --------------------------------------------------------------------------- a slow warehouse


def test_sigterm_while_the_warehouse_is_slow_stops_at_once_and_records_what_was_acknowledged(
    tmp_path: Path, pagent_emulator: IngestEmulator
) -> None:
    ledger_db = tmp_path / "ledger.db"
    pagent_emulator.faults = Faults(latency_s=0.5)
    child = textwrap.dedent(f"""
        import sys, time
        import pandas as pd, sqlalchemy as sa
        from pagent_provider.core.client import PagentClient
        from pagent_provider.core.ledger import Ledger
        from pagent_provider.core.stopping import stop_gracefully_on
        from pagent_provider.core.sync import ConversionSync, SyncOptions
        from pagent_provider.core.transform import TransformConfig

        def frame(rows, start=0):
            ids = range(start, start + rows)
            return pd.DataFrame({{"order_id": [f"o{{i:05d}}" for i in ids], "session_id": [f"s{{i}}" for i in ids],
                                 "user_id": "u1", "conversion_id": "goal-1"}})

        def chunks():
            yield frame(40)
            time.sleep(120)  # the warehouse takes two minutes for the next chunk
            yield frame(40, 40)

        ledger = Ledger(sa.create_engine("sqlite:///{ledger_db}"), namespace="{NAMESPACE}")
        client = PagentClient("test-key", base_url="{pagent_emulator.url}")
        sync = ConversionSync(client, TransformConfig(key_column="order_id", require_time=False),
                              SyncOptions(max_workers=4, batch_size=10), ledger=ledger)
        with stop_gracefully_on(sync.request_stop):
            try:
                sync.run(chunks())
            except Exception as error:
                print(type(error).__name__, flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(pagent_emulator.requests()) >= 1 or process.poll() is not None, 60, "a first answer")
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        stdout, stderr = process.communicate(timeout=20)
        took = time.monotonic() - stopped
    finally:
        process.kill()
        process.wait()

    assert b"PagentInterruptedError" in stdout, stderr.decode()[-2000:]
    assert took < 15, f"the stop waited {took:.0f}s for the warehouse"  # the read itself takes 120 s
    engine = sa.create_engine(f"sqlite:///{ledger_db}")
    statuses = Ledger(engine, namespace=NAMESPACE).count_by_status()
    engine.dispose()
    stored = len(pagent_emulator.events())
    assert stored >= 10 and statuses == {"sent": stored}  # every acknowledged batch recorded, none left claimed


# --------------------------------------------------------------------------- ledger databases that refuse text


def run(ledger_engine: sa.Engine, emulator: IngestEmulator, chunk: pd.DataFrame, **options: object) -> dict:
    ledger = Ledger(ledger_engine, namespace=NAMESPACE)
    with PagentClient("test-key", base_url=emulator.url, policy=RetryPolicy(max_retries=1)) as client:
        sync = ConversionSync(client, TRANSFORM, SyncOptions(**options), ledger=ledger)  # type: ignore[arg-type]
        try:
            return sync.run([chunk]).as_dict()
        except PagentDeliveryError as error:
            return error.summary  # type: ignore[attr-defined]


def test_a_nul_in_a_key_is_an_invalid_row_on_a_postgresql_ledger(postgres_url, pagent_emulator) -> None:
    chunk = frame(30)
    chunk.loc[5, "order_id"] = "o\x0005"
    engine = sa.create_engine(postgres_url)
    try:
        first = run(engine, pagent_emulator, chunk, max_invalid_rows=1)
        second = run(engine, pagent_emulator, chunk, max_invalid_rows=1)
        rejects = pd.read_sql(sa.select(Ledger(engine, namespace=NAMESPACE).rejects_table), engine)
    finally:
        engine.dispose()
    assert first["invalid"] == 1 and first["sent"] == 29
    assert second["sent"] == 0 and second["already_sent"] == 29
    assert len(pagent_emulator.events()) == 29
    assert "NUL" in rejects["reason"].iloc[0]


def test_a_latin1_mariadb_database_stores_any_reason(mariadb_url: str) -> None:
    admin = sa.create_engine(mariadb_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        database = sa.engine.make_url(mariadb_url).database
        conn.exec_driver_sql(f"ALTER DATABASE {database} CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    admin.dispose()
    engine = sa.create_engine(mariadb_url)
    try:
        ledger = Ledger(engine, namespace=NAMESPACE)
        ledger.create_tables()
        reason = "conversion_id '目標' is not a configured goal \x00 \ud800"
        ledger.record_rejects([RejectRecord(row="注文-1", field="conversion_id", reason=reason, source="invalid")])
        stored = pd.read_sql(sa.select(ledger.rejects_table), engine)
    finally:
        engine.dispose()
    assert stored["row_ref"].iloc[0] == "注文-1"
    assert stored["reason"].iloc[0].startswith("conversion_id '目標' is not a configured goal \\x00 \\ud800")


# --------------------------------------------------------------------------- connection extras


@pytest.mark.parametrize("timeout", ["nan", "inf", "1e309", "-1", "0"])
def test_a_timeout_that_is_not_a_sane_number_is_a_configuration_error(timeout: str, monkeypatch) -> None:
    conn = {"conn_type": "pagent", "host": "http://127.0.0.1:9", "password": "test-key", "extra": {"timeout": timeout}}
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", json.dumps(conn))
    with pytest.raises(PagentConfigError, match="timeout"):
        PagentHook().get_conn()
    ok, message = PagentHook().test_connection()
    assert not ok and "timeout" in message


def test_counts_stay_exact_when_nothing_is_odd(pagent_emulator, tmp_path) -> None:
    """The control: the same run on a plain SQLite ledger sends each row once."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        summary = run(engine, pagent_emulator, frame(30))
    finally:
        engine.dispose()
    assert summary["sent"] == 30
    assert Counter(e["session_id"] for e in pagent_emulator.events()) == Counter(frame(30)["session_id"])
