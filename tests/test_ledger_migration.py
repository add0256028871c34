"""A ledger of the first layout (one wide row per key, release 0.1) is moved to the current one and keeps every promise.

The first layout's table is built here as that release built it
(:func:`layout_1_table` and its claim index) and filled as its runs left it:
sent batches, a batch half sent and half lost in a bisection, a batch an
abandoned run still held, a batch a live run holds. After the move, a real
sync over the same rows against the emulator sends exactly the keys that
were never acknowledged, and a second one sends nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from data.make_ledger_0_1 import rows as old_release_rows
from test_ledger import run_together  # the tests directory is on sys.path (rootdir conftest)

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, Ledger, now_ms
from pagent_provider.core.ledger_dialects import ledger_dialect
from pagent_provider.core.ledger_migration import is_layout_1, layout_1_table
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig

NAMESPACE = "pagent_default"
TABLE = "pagent_ledger"
ROWS = 1_500


def _old_claim(number: int) -> str:
    return f"{'ab' * 8}{number:016x}"  # the first layout's claim ids: 32 hex digits


def layout_1_row(
    namespace: str,
    key: str,
    status: str,
    content_hash: str,
    claim_id: str,
    *,
    owner_run: str,
    stamp: int,
    heartbeat: int,
    host: str = "old-host",
    detail: str | None = None,
) -> dict[str, object]:
    """One key's row as the first layout's runs wrote it."""
    return {
        "namespace": namespace,
        "event_key": key,
        "status": status,
        "content_hash": content_hash,
        "claim_id": claim_id,
        "owner_run": owner_run,
        "owner_host": host,
        "owner_pid": 4242,
        "owner_task": None,
        "owner_try": None,
        "claimed_at": heartbeat,
        "heartbeat_at": heartbeat,
        "sent_at": stamp if status == SENT else None,
        "detail": detail,
    }


def old_rows(stamp: int) -> list[dict[str, object]]:
    """What the first layout's runs left behind for keys 1 to 1,250."""

    def row(key: int, status: str, claim: int, *, heartbeat: int = stamp, host: str = "old-host", detail=None):
        return layout_1_row(
            NAMESPACE,
            str(key),
            status,
            f"{key:032x}",
            _old_claim(claim),
            owner_run=f"{claim:032x}",
            stamp=stamp,
            heartbeat=heartbeat,
            host=host,
            detail=detail,
        )

    rows = [row(key, SENT, (key - 1) // 100) for key in range(1, 1_001)]  # ten sent batches
    rows += [row(key, SENT, 10) for key in range(1_001, 1_051)]  # a bisected batch: half acknowledged,
    rows += [row(key, UNKNOWN, 10, detail="the answer was lost") for key in range(1_051, 1_101)]  # half lost
    rows += [row(key, CLAIMED, 11, heartbeat=0) for key in range(1_101, 1_151)]  # its run died long ago
    rows += [row(key, CLAIMED, 12, host="live-host") for key in range(1_151, 1_251)]  # a run sending right now
    return rows


def make_layout_1(engine: sa.Engine) -> list[dict[str, object]]:
    """The first layout's ledger table, with its claim index, as that release created and filled it."""
    key = ledger_dialect(engine.dialect.name).key_type
    table = layout_1_table(sa.Table(TABLE, sa.MetaData()), key)
    sa.Index(f"ix_{TABLE}_claim", table.c.namespace, table.c.claim_id)
    table.metadata.create_all(engine)
    rows = old_rows(now_ms())
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    if engine.dialect.name == "sqlite":  # as release 0.1 left its file
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    engine.dispose()  # the ledgers' connections are their own, with their busy timeout
    return rows


def frame() -> pd.DataFrame:
    return old_release_rows(ROWS)


def sync(ledger: Ledger, url: str, rows: pd.DataFrame):
    client = PagentClient("test-key", base_url=url, pool_size=4)
    try:
        chunks = [rows.iloc[i : i + 500] for i in range(0, len(rows), 500)]
        options = SyncOptions(max_workers=4)
        return ConversionSync(client, TransformConfig(key_column="order_id"), options, ledger=ledger).run(chunks)
    finally:
        client.close()


def count(engine: sa.Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one())


def namespaces(ledger: Ledger) -> list[tuple[int, str]]:
    """``(namespace_id, namespace)`` of every namespace registered in the ledger's namespaces table."""
    n = ledger.namespaces_table
    with ledger.engine.connect() as conn:
        return [
            tuple(row) for row in conn.execute(sa.select(n.c.namespace_id, n.c.namespace).order_by(n.c.namespace_id))
        ]


def test_a_first_layout_ledger_is_moved_and_sends_only_what_was_never_acknowledged(engine, pagent_emulator):
    old = make_layout_1(engine)
    ledger = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner())
    ledger.create_tables()

    assert count(engine, f"{TABLE}_layout1") == len(old)  # kept, untouched, for the user to drop
    assert ledger.count_by_status() == {SENT: 1_050, UNKNOWN: 50, CLAIMED: 150}
    rows = ledger.lookup(["1", "1051", "1101", "1151"])
    assert (rows["1"].status, rows["1"].content_digest, rows["1"].owner_host) == (
        SENT,
        content_digest(f"{1:032x}"),
        "old-host",
    )
    assert namespaces(ledger) == [(1, NAMESPACE)]  # the first layout's one namespace, given the first id
    assert rows["1051"].status == UNKNOWN and rows["1101"].heartbeat_at == 0
    assert rows["1151"].owner_host == "live-host"

    # the live run's batch is not part of this sync: it would wait for it
    without_live = frame()[~frame()["order_id"].astype(int).between(1_151, 1_250)]
    first = sync(ledger, pagent_emulator.url, without_live)
    # never acknowledged: the 50 lost in the bisection, the 50 the dead run held, the 250 new ones
    assert (first.sent, first.already_sent, first.unknown_resent) == (350, 1_050, 100)
    assert pagent_emulator.accepted_count == 350

    again = sync(Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner()), pagent_emulator.url, without_live)
    assert (again.sent, again.already_sent) == (0, 1_400)
    assert pagent_emulator.accepted_count == 350
    live = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner()).claim([("1151", "h"), ("1152", "h")])
    assert sorted(live.claimed_elsewhere) == ["1151", "1152"] and not live.claimed
    with engine.connect() as conn:
        assert not is_layout_1(conn, ledger.table)


def test_workers_starting_together_move_the_table_once(engine):
    old = make_layout_1(engine)
    ledgers = [Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner()) for _ in range(3)]
    run_together(*(ledger.create_tables for ledger in ledgers))

    assert count(engine, f"{TABLE}_layout1") == len(old)
    assert count(engine, TABLE) == len(old)
    assert ledgers[0].count_by_status() == {SENT: 1_050, UNKNOWN: 50, CLAIMED: 150}
    assert namespaces(ledgers[0]) == [(1, NAMESPACE)]  # registered once, by the move, whoever made it
    inspector = sa.inspect(engine)
    assert not inspector.has_table(f"{TABLE}_next")


def test_a_move_that_died_before_the_swap_is_done_again(engine):
    """What a move killed half way left (a partial copy, claim and namespace rows) is thrown away; the move starts over."""
    old = make_layout_1(engine)
    dead = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner(), table_name=f"{TABLE}_next")
    dead.table.create(engine)  # a partial copy, as a move that died would leave it
    with engine.begin() as conn:
        conn.execute(
            dead.table.insert(),
            [{"namespace_id": 1, "event_key": "1", "content_digest": content_digest("x"), "claim_id": 1}],
        )
    ledger = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner())
    ledger.claims_table.create(engine)
    ledger.namespaces_table.create(engine)
    with engine.begin() as conn:
        conn.execute(ledger.namespaces_table.insert(), [{"namespace_id": 1, "namespace": "left-by-the-dead-move"}])
        conn.execute(
            ledger.claims_table.insert(),
            [
                {
                    "claim_id": 7,
                    "namespace": NAMESPACE,
                    "status": SENT,
                    "owner_run": "x",
                    "claimed_at": 0,
                    "heartbeat_at": 0,
                }
            ],
        )

    ledger.create_tables()

    assert count(engine, TABLE) == len(old)
    assert ledger.count_by_status() == {SENT: 1_050, UNKNOWN: 50, CLAIMED: 150}
    owners = {row.owner_run for row in ledger.lookup([str(key) for key in range(1, 1_251)]).values()}
    assert "x" not in owners and len(owners) == 13  # the 13 claims of the first layout, not the dead move's row
    assert count(engine, f"{TABLE}_claims") == 13
    assert namespaces(ledger) == [(1, NAMESPACE)]
    assert ledger.lookup(["1"])["1"].content_digest == content_digest(f"{1:032x}")  # not the dead move's copy


@pytest.mark.parametrize("status", [SENT])
def test_a_current_layout_table_is_left_alone(engine, status):
    ledger = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner())
    ledger.create_tables()
    claim = ledger.claim([("k", "h")])
    ledger.mark_claims_sent([claim.claim_id])
    Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner()).create_tables()
    assert ledger.count_by_status() == {status: 1}
    assert not sa.inspect(engine).has_table(f"{TABLE}_layout1")


def test_a_ledger_written_by_release_0_1_itself_is_moved_and_sends_nothing_twice(tmp_path, pagent_emulator):
    """``data/ledger_0_1.sql``: what the 0.1 code left after a sync that lost answers (``data/make_ledger_0_1.py``)."""
    import sqlite3

    from data.make_ledger_0_1 import NAMESPACE as OLD_NAMESPACE

    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "ledger_0_1.sql").read_text())
        before = dict(conn.execute("SELECT status, COUNT(*) FROM pagent_ledger GROUP BY status").fetchall())
        old_sent = {key for (key,) in conn.execute("SELECT event_key FROM pagent_ledger WHERE status = 'sent'")}
        old_unknown = {key for (key,) in conn.execute("SELECT event_key FROM pagent_ledger WHERE status = 'unknown'")}
    assert before["sent"] and before["unknown"] and before["claimed"] == 10  # what the fixture promises
    assert len(old_sent) + len(old_unknown) + 10 == sum(before.values())
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        ledger = Ledger(engine, namespace=OLD_NAMESPACE, owner=ClaimOwner())
        ledger.create_tables()
        assert ledger.count_by_status() == before
        assert namespaces(ledger) == [(1, OLD_NAMESPACE)]

        with sqlite3.connect(path) as conn:  # keys 991 to 1,000: claimed by a 0.1 run that died since
            old_claimed = {
                key for (key,) in conn.execute("SELECT event_key FROM pagent_ledger_layout1 WHERE status = 'claimed'")
            }
        frame = old_release_rows()
        first = sync(ledger, pagent_emulator.url, frame)
        # session "s<i>" is order i + 1 (the fixture's rows)
        resent = {str(int(event["session_id"][1:]) + 1) for event in pagent_emulator.events()}
        never_claimed = {str(key) for key in range(1, 1_001)} - old_sent - old_unknown - old_claimed
        assert resent & old_sent == set()  # nothing acknowledged under 0.1 goes out again
        # the lost answers and the dead run's claims (policy resend), and the rest
        assert resent == old_unknown | old_claimed | never_claimed
        assert (first.sent, first.already_sent) == (len(resent), len(old_sent))
        assert first.unknown_resent == len(old_unknown) + len(old_claimed)

        again = sync(Ledger(engine, namespace=OLD_NAMESPACE, owner=ClaimOwner()), pagent_emulator.url, frame)
        assert (again.sent, again.already_sent) == (0, 1_000)
        assert pagent_emulator.accepted_count == len(resent)
    finally:
        engine.dispose()
