"""Write ``ledger_0_1.sql``: a SQLite ledger as release 0.1 leaves it after a sync that lost answers.

Run against the 0.1 code (commit ab24eea), from a checkout of it::

    PYTHONPATH=<checkout of ab24eea> python tests/data/make_ledger_0_1.py tests/data/ledger_0_1.sql

The sync sends :func:`rows` (1,000 orders) to an emulator that drops every
4th connection after storing the events, so the run stops at the first lost
answer: some batches are ``sent``, some ``unknown``, the rest never claimed.
A second owner then claims keys 991 to 1,000 and is never heard of again:
by the time a test loads the dump, a run that died with claims. ``tests/test_ledger_migration.py`` loads the dump into a new SQLite
file and syncs the same rows with the current code.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

NAMESPACE = "pagent_default"
ROWS = 1_000


def rows(count: int = ROWS) -> pd.DataFrame:
    """The warehouse rows both releases sync (keyed by ``order_id``; session ``s<i>`` is order ``i + 1``)."""
    return pd.DataFrame(
        {
            "order_id": [str(i) for i in range(1, count + 1)],
            "session_id": [f"s{i}" for i in range(count)],
            "user_id": "u",
            "conversion_id": "c",
            "revenue": 12.5,
            "time": pd.Timestamp("2026-10-01 12:00:00"),
        }
    )


def main(out: Path) -> None:
    from pagent_provider.core.client import PagentClient
    from pagent_provider.core.ledger import Ledger
    from pagent_provider.core.owner import ClaimOwner
    from pagent_provider.core.sync import ConversionSync, SyncOptions
    from pagent_provider.core.transform import TransformConfig
    from pagent_provider.exceptions import PagentUnknownOutcomeError
    from pagent_provider.testing import IngestEmulator
    from pagent_provider.testing.faults import Faults

    with tempfile.TemporaryDirectory() as scratch, IngestEmulator(faults=Faults(drop_every=4)) as emulator:
        path = Path(scratch) / "ledger.db"
        engine = sa.create_engine(f"sqlite:///{path}")
        ledger = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner())
        client = PagentClient("test-key", base_url=emulator.url, pool_size=4)
        frame = rows().iloc[:990]
        chunks = [frame.iloc[i : i + 500] for i in range(0, len(frame), 500)]
        try:
            ConversionSync(
                client, TransformConfig(key_column="order_id"), SyncOptions(max_workers=4), ledger=ledger
            ).run(chunks)
        except PagentUnknownOutcomeError:
            pass
        finally:
            client.close()
        live = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner(host="live-host"))
        live.claim([(str(key), "h") for key in range(991, 1_001)])
        engine.dispose()
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            out.write_text("\n".join(conn.iterdump()) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
