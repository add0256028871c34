"""Child process for the delivery-guarantee tests: one ConversionSync run, as a real OS process.

Usage: python sync_worker.py CONFIG_JSON_FILE

The config (JSON) holds:
    warehouse_url, ledger_url: SQLAlchemy URLs (they may be the same database);
    emulator_url: base URL of the pagent emulator;
    start, end: ISO datetimes of the interval ``[start, end)`` to sync;
    policy: the ledger's unknown_outcome ("resend" or "skip");
    max_workers, batch_size, chunksize: engine settings;
    descending: read the interval newest first (other workers read oldest first);
    ready_file, go_file (optional): write ready_file once set up (imports done,
        engines created), then wait for go_file to appear, so that several
        workers start sending at the same moment;
    result_file: where the outcome goes, as JSON:
        {"pid", "summary", "error": null or the exception class name}.

The test process imports :func:`build_sync` and :func:`run_interval` from this file
too, so that a run in the test process and a run in a child are built the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions, SyncSummary
from pagent_provider.core.transform import TransformConfig
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.exceptions import PagentError

API_KEY = "test-key"
NAMESPACE = "pagent_default"
# order_id also travels in the event's properties, so that the tests can count
# what the emulator received per warehouse row (session ids are random and may repeat).
TRANSFORM = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"},
    key_column="order_id",
    properties_columns=["order_id"],
)
INTERVAL_SQL = "SELECT * FROM conversions WHERE converted_at >= :start AND converted_at < :end ORDER BY order_id"


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get a generous timeout, like the ledger's busy timeout."""
    if url.startswith("sqlite"):
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(url)


def build_sync(
    ledger_engine: sa.Engine,
    emulator_url: str,
    *,
    policy: str = "resend",
    max_workers: int = 4,
    batch_size: int = 100,
    max_invalid_rows: int = 0,
    max_retries: int = 5,
    owner: ClaimOwner | None = None,
    api: str = "v1",
) -> tuple[ConversionSync, PagentClient, Ledger]:
    """The engine wired as the operator wires it (the caller closes the client)."""
    client = PagentClient(
        API_KEY,
        base_url=emulator_url,
        policy=RetryPolicy(max_retries=max_retries, backoff_initial_s=0.05, backoff_max_s=2, read_timeout_s=5),
    )
    ledger = Ledger(
        ledger_engine,
        namespace=NAMESPACE,
        owner=owner,
        unknown_outcome=policy,  # type: ignore[arg-type]
        claim_timeout_s=600,
    )
    options = SyncOptions(
        batch_size=batch_size,
        max_workers=max_workers,
        max_invalid_rows=max_invalid_rows,
        api=api,  # type: ignore[arg-type]
    )
    return ConversionSync(client, TRANSFORM, options, ledger=ledger), client, ledger


def run_interval(
    warehouse: sa.Engine,
    sync: ConversionSync,
    start: datetime,
    end: datetime,
    *,
    chunksize: int = 500,
    descending: bool = False,
) -> SyncSummary:
    """Sync the warehouse rows of ``[start, end)``."""
    sql = INTERVAL_SQL + (" DESC" if descending else "")
    return sync.run(read_sql_chunks(warehouse, sql, {"start": start, "end": end}, chunksize=chunksize))


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.005)


def main(config_file: str) -> int:
    config: dict[str, Any] = json.loads(Path(config_file).read_text())
    warehouse = make_engine(config["warehouse_url"])
    ledger_engine = warehouse if config["ledger_url"] == config["warehouse_url"] else make_engine(config["ledger_url"])
    sync, client, _ = build_sync(
        ledger_engine,
        config["emulator_url"],
        policy=config.get("policy", "resend"),
        max_workers=config.get("max_workers", 4),
        batch_size=config.get("batch_size", 100),
        # an Airflow task instance's try, when the test plays one
        owner=ClaimOwner(task=config["task"], try_number=config["try_number"]) if config.get("task") else None,
    )
    if config.get("ready_file"):
        Path(config["ready_file"]).write_text(str(os.getpid()))
        _wait_for(Path(config["go_file"]))
    error: str | None = None
    try:
        summary = run_interval(
            warehouse,
            sync,
            datetime.fromisoformat(config["start"]),
            datetime.fromisoformat(config["end"]),
            chunksize=config.get("chunksize", 500),
            descending=config.get("descending", False),
        ).as_dict()
    except PagentError as exc:
        error = type(exc).__name__
        summary = getattr(exc, "summary", sync.summary.as_dict())
    finally:
        client.close()
        warehouse.dispose()
        ledger_engine.dispose()
    result = {"pid": os.getpid(), "summary": summary, "error": error}
    Path(config["result_file"]).write_text(json.dumps(result))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
