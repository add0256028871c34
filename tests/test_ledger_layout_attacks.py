"""Attacks on ledger layout 2 (a short row per key, a row per claim in ``<table>_claims``).

Each test holds a delivery guarantee (a conversion is sent once, never lost,
never reported sent when it was not; a layout-1 ledger is moved without
losing or changing anything) against a race or a fault a hostile review
found: a late acknowledgement after an abandonment, a prune racing a claim,
forked processes, a stale cache, a collation merging details, a sync
during the move, a move killed mid-copy. Five of them broke the first cut of
the layout and were fixed. Real databases only: SQLite files, PostgreSQL and
MariaDB (the ``engine`` fixture), real processes where one must be killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from test_ledger import run_together  # the tests directory is on sys.path (rootdir conftest)
from test_ledger_migration import NAMESPACE, TABLE, make_layout_1

from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, Ledger, now_ms
from pagent_provider.core.ledger_dialects import ledger_dialect
from pagent_provider.core.ledger_migration import is_layout_1, layout_1_table
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.core.sync import ConversionSync, SyncOptions
from pagent_provider.core.transform import TransformConfig

ROOT = Path(__file__).resolve().parent.parent
#: The digest the ledger keeps of the content hash "h" most tests claim with.
H = content_digest("h")


def new_ledger(engine: sa.Engine, **options: object) -> Ledger:
    ledger = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner(), **options)  # type: ignore[arg-type]
    ledger.create_tables()
    return ledger


def statuses(ledger: Ledger, keys: list[str]) -> dict[str, str]:
    return {key: row.status for key, row in ledger.lookup(keys).items()}


def abandon(ledger: Ledger, claim_id: int) -> None:
    """The claim's owner stopped heartbeating long ago (it may still be alive, stalled)."""
    c = ledger.claims_table
    with ledger.engine.begin() as conn:
        conn.execute(c.update().where(c.c.claim_id == claim_id).values(heartbeat_at=0))


def orders(keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": keys,
            "session_id": [f"s{key}" for key in keys],
            "user_id": "u",
            "conversion_id": "c",
            "revenue": 12.5,
            "time": pd.Timestamp("2026-10-01 12:00:00"),
        }
    )


def sync(ledger: Ledger | None, url: str, rows: pd.DataFrame):
    client = PagentClient("test-key", base_url=url, pool_size=2)
    try:
        options = SyncOptions(max_workers=2)
        return ConversionSync(client, TransformConfig(key_column="order_id"), options, ledger=ledger).run([rows])
    finally:
        client.close()


# --------------------------------------------------------------------------- whole-claim marks vs per-key fates


def test_a_late_whole_claim_ack_after_a_skip_run_saw_the_claim_abandoned_is_recorded_sent(engine, pagent_emulator):
    keys = ["1", "2"]
    stalled = new_ledger(engine)
    claim = stalled.claim([(key, "h") for key in keys])
    assert claim.claimed == set(keys)
    abandon(stalled, claim.claim_id)  # a GC pause / network stall longer than claim_timeout

    skipping = new_ledger(engine, unknown_outcome="skip")
    seen = skipping.claim([(key, "h") for key in keys])
    assert sorted(seen.unknown_skipped) == keys and not seen.claimed

    # the stalled owner's request did reach pagent, and it records the acknowledgement
    assert sync(None, pagent_emulator.url, orders(keys)).sent == 2
    stalled.mark_claims_sent([claim.claim_id])

    recorded = statuses(new_ledger(engine), keys)
    resend = sync(new_ledger(engine, unknown_outcome="resend"), pagent_emulator.url, orders(keys))
    # each order once: the stalled owner's request, nothing more
    assert (pagent_emulator.accepted_count, resend.unknown_resent, recorded) == (2, 0, dict.fromkeys(keys, SENT))


def test_a_late_per_key_ack_after_a_skip_run_saw_the_claim_abandoned_is_recorded_sent(engine):
    """The by-key path (a bisection's acknowledged part) overrides the abandonment's 'unknown', as in layout 1."""
    keys = ["1", "2"]
    stalled = new_ledger(engine)
    claim = stalled.claim([(key, "h") for key in keys])
    abandon(stalled, claim.claim_id)
    assert sorted(new_ledger(engine, unknown_outcome="skip").claim([(k, "h") for k in keys]).unknown_skipped) == keys
    stalled.mark_sent(claim.claim_id, keys)
    assert statuses(new_ledger(engine), keys) == dict.fromkeys(keys, SENT)
    again = new_ledger(engine, unknown_outcome="resend").claim([(key, "h") for key in keys])
    assert sorted(again.already_sent) == keys and not again.claimed


def test_keys_sent_by_key_keep_sent_when_the_claim_is_then_marked_unknown(engine):
    keys = [f"k{i}" for i in range(6)]
    owner = new_ledger(engine)
    claim = owner.claim([(key, "h") for key in keys])
    owner.mark_sent(claim.claim_id, keys[:3])
    owner.mark_unknown(claim.claim_id, None, "the answer of the rest was lost")

    expected = {**dict.fromkeys(keys[:3], SENT), **dict.fromkeys(keys[3:], UNKNOWN)}
    for reader in (owner, new_ledger(engine)):
        assert statuses(reader, keys) == expected
        assert set(reader.sent_digests(keys)) == set(keys[:3])
    assert new_ledger(engine).count_by_status() == {SENT: 3, UNKNOWN: 3}
    # a whole-claim release from another object (a scan) leaves both fates alone
    new_ledger(engine).release(claim.claim_id)
    assert statuses(new_ledger(engine), keys) == expected
    # the unknown ones are resent once, the sent ones never
    again = new_ledger(engine, unknown_outcome="resend").claim([(key, "h") for key in keys])
    assert sorted(again.already_sent) == keys[:3] and again.unknown_taken_over == set(keys[3:])


def test_a_whole_claim_ack_before_a_takeover_makes_the_takeover_lose(engine):
    keys = ["a", "b"]
    owner = new_ledger(engine)
    claim = owner.claim([(key, "h") for key in keys])
    abandon(owner, claim.claim_id)
    owner.mark_claims_sent([claim.claim_id])
    other = new_ledger(engine, unknown_outcome="resend").claim([(key, "h") for key in keys])
    assert sorted(other.already_sent) == keys and not other.claimed


def test_a_takeover_moves_the_key_out_of_reach_of_the_old_claims_marks_and_release(engine):
    """After a takeover the old claim's whole-claim ack, release and heartbeat no longer touch the key."""
    keys = ["a", "b", "c"]
    owner = new_ledger(engine)
    claim = owner.claim([(key, "h") for key in keys])
    owner.mark_unknown(claim.claim_id, ["a"], "lost")
    taker = new_ledger(engine, unknown_outcome="resend")
    taken = taker.claim([("a", "h")])
    assert taken.unknown_taken_over == {"a"}

    owner.mark_claims_sent([claim.claim_id])  # b and c
    new_ledger(engine).release(claim.claim_id)  # from another object: nothing left to release
    rows = new_ledger(engine).lookup(keys)
    assert (rows["a"].status, rows["a"].claim_id, rows["a"].owner_run) == (
        CLAIMED,
        taken.claim_id,
        taker.owner.run_token,
    )
    assert (rows["b"].status, rows["c"].status) == (SENT, SENT)
    taker.release(taken.claim_id)  # the new owner's definite failure gives "a" back
    assert statuses(new_ledger(engine), keys) == {"b": SENT, "c": SENT}


def test_a_whole_claim_release_from_another_object_deletes_only_that_claims_claimed_keys(engine):
    owner = new_ledger(engine)
    first = owner.claim([(f"x{i}", "h") for i in range(5)])
    second = owner.claim([(f"y{i}", "h") for i in range(3)])
    owner.mark_sent(first.claim_id, ["x0"])
    owner.mark_unknown(first.claim_id, ["x1"], "lost")

    new_ledger(engine).release(first.claim_id)  # not this object's claim: the fallback scan

    everything = [f"x{i}" for i in range(5)] + [f"y{i}" for i in range(3)]
    assert statuses(new_ledger(engine), everything) == {
        "x0": SENT,
        "x1": UNKNOWN,
        **dict.fromkeys(["y0", "y1", "y2"], CLAIMED),
    }
    # and the owner's own release of the other claim (by key) behaves the same
    owner.release(second.claim_id)
    assert statuses(new_ledger(engine), everything) == {"x0": SENT, "x1": UNKNOWN}


# --------------------------------------------------------------------------- the per-object cache of sent claims


def test_a_claim_sent_as_a_whole_stays_sent_whoever_marks_it_unknown_later(engine):
    reader = new_ledger(engine)
    claim = reader.claim([("k", "h")])
    reader.mark_claims_sent([claim.claim_id])
    assert reader.sent_digests(["k"]) == {"k": H}  # the claim is cached as sent now

    new_ledger(engine).mark_unknown(claim.claim_id, None, "an operator learnt the answer was lost")

    # a claim once acknowledged as a whole stays sent, so the cache cannot disagree with the table
    assert statuses(reader, ["k"]) == {"k": SENT} == statuses(new_ledger(engine), ["k"])
    assert reader.sent_digests(["k"]) == {"k": H} == new_ledger(engine).sent_digests(["k"])


def test_the_sent_claims_cache_does_not_outlive_a_prune(engine):
    reader = new_ledger(engine)
    claim = reader.claim([("k", "h")])
    reader.mark_claims_sent([claim.claim_id])
    assert reader.sent_digests(["k"]) == {"k": H}
    assert new_ledger(engine).prune_sent(now_ms() + 1) == 1
    assert reader.sent_digests(["k"]) == {}  # gone from the ledger: the documented "pruned keys go out again"
    again = reader.claim([("k", "h")])
    assert again.claimed == {"k"} and again.claim_id != claim.claim_id


def test_a_taken_over_key_is_not_reported_sent_through_its_old_claims_cache_entry(engine):
    reader = new_ledger(engine)
    claim = reader.claim([("a", "h"), ("b", "h")])
    reader.mark_sent(claim.claim_id, ["a"])
    reader.mark_unknown(claim.claim_id, ["b"], "lost")
    reader.mark_claims_sent([claim.claim_id])  # nothing else of it: b keeps its own 'unknown'
    assert reader.sent_digests(["a", "b"]) == {"a": H}
    taken = new_ledger(engine, unknown_outcome="resend").claim([("b", "h2")])
    assert taken.unknown_taken_over == {"b"}
    assert reader.sent_digests(["a", "b"]) == {"a": H}  # b follows its new, claimed, claim


# --------------------------------------------------------------------------- prune and the claims rows


def test_prune_never_deletes_the_claims_row_of_a_claim_in_flight(engine, monkeypatch):
    old = new_ledger(engine)
    done = old.claim([("old", "h")])
    old.mark_claims_sent([done.claim_id])

    pruner = new_ledger(engine)
    syncer = new_ledger(engine)
    in_flight = {}
    scanned = pruner._prune_claims

    def claim_after_the_scan(before_ms: int, still_named: set[int]) -> None:
        # a sync's window commits between the key scan and the claims' clean-up
        in_flight["claim"] = syncer.claim([("zz-new", "h")])
        scanned(before_ms, still_named)

    monkeypatch.setattr(pruner, "_prune_claims", claim_after_the_scan)
    # a horizon at or after the claim's stamp: `ledger prune --older-than 0 --force`, or the syncing host's clock
    # behind the pruning one's
    assert pruner.prune_sent(now_ms() + 60_000) == 1

    claim = in_flight["claim"]
    while_in_flight = statuses(syncer, ["zz-new"])
    syncer.mark_claims_sent([claim.claim_id])  # pagent acknowledged it
    after_ack = statuses(new_ledger(engine), ["zz-new"])
    resend = new_ledger(engine, unknown_outcome="resend").claim([("zz-new", "h")])
    assert (while_in_flight, after_ack, resend.claimed) == ({"zz-new": CLAIMED}, {"zz-new": SENT}, set())


def test_prune_keeps_the_claims_named_by_unsettled_keys_and_deletes_the_rest(engine):
    owner = new_ledger(engine)
    mixed = owner.claim([("a", "h"), ("b", "h"), ("c", "h")])
    owner.mark_sent(mixed.claim_id, ["a"])
    owner.mark_unknown(mixed.claim_id, ["b"], "lost")  # c stays claimed
    full = owner.claim([(f"f{i}", "h") for i in range(4)])
    owner.mark_claims_sent([full.claim_id])
    empty = owner.claim([("e", "h")])
    owner.release(empty.claim_id)  # a claim row that no key names

    pruner = new_ledger(engine)
    c = pruner.claims_table
    with engine.begin() as conn:  # claims made and last heard of long ago
        conn.execute(c.update().values(claimed_at=0, heartbeat_at=0))
    assert pruner.prune_sent(now_ms() + 1, batch=2) == 5  # a, f0..f3, in pages of 2
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(c.c.claim_id)).scalars())
    assert left == {mixed.claim_id}
    assert statuses(pruner, ["a", "b", "c", "e", "f0"]) == {"b": UNKNOWN, "c": CLAIMED}
    # the claimed key still heartbeats and is still its owner's
    owner.heartbeat([mixed.claim_id])
    assert new_ledger(engine).claim([("c", "h")]).claimed_elsewhere == ["c"]


# --------------------------------------------------------------------------- claim ids


def _claim_in_child(ledger: Ledger, keys: list[str], outcome: str, queue) -> None:
    ledger.engine.dispose(close=False)  # the parent's pooled connections are not ours
    claim = ledger.claim([(key, "h") for key in keys])
    if outcome == "sent":
        ledger.mark_claims_sent([claim.claim_id])
    else:
        ledger.release(claim.claim_id)  # a definite failure: the keys must go out again later
    queue.put((claim.claim_id, sorted(claim.claimed)))


def test_processes_forked_from_one_ledger_never_share_a_claim(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger = new_ledger(engine)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        results = []
        for keys, outcome in ((["p0"], "sent"), (["p1"], "released")):
            child = context.Process(target=_claim_in_child, args=(ledger, keys, outcome, queue))
            child.start()
            results.append(queue.get(timeout=20))
            child.join(timeout=20)
            assert child.exitcode == 0
        (first_id, first_keys), (second_id, second_keys) = results
        assert (first_keys, second_keys) == (["p0"], ["p1"])
        # p1 was claimed, never sent, and released: it must be free for the next run
        assert statuses(new_ledger(engine), ["p0", "p1"]) == {"p0": SENT}
        assert first_id != second_id
    finally:
        engine.dispose()


def test_claim_ids_of_separate_ledgers_and_batches_never_repeat(engine):
    ledgers = [new_ledger(engine) for _ in range(4)]
    ids = [
        result.claim_id
        for ledger in ledgers
        for result in ledger.claim_batches([[(f"{id(ledger)}-{i}", "h")] for i in range(50)])
    ]
    assert len(set(ids)) == len(ids) == 200
    assert all(0 < claim_id < 2**63 for claim_id in ids)
    c = ledgers[0].claims_table
    with engine.connect() as conn:
        owners = dict(conn.execute(sa.select(c.c.claim_id, c.c.owner_run)).all())
    for ledger in ledgers:
        for result in ledger.claim_batches([[(f"again-{id(ledger)}", "h")]]):
            assert result.claim_id not in owners


# --------------------------------------------------------------------------- the layout-1 -> layout-2 move


def test_a_sync_starting_during_the_move_waits_for_it_and_sends_nothing_acknowledged(engine):
    old = make_layout_1(engine)
    keys = [str(row["event_key"]) for row in old]
    movers = [Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner()) for _ in range(2)]
    syncer = Ledger(engine, namespace=NAMESPACE, owner=ClaimOwner(), unknown_outcome="resend")

    def start_and_claim():
        syncer.create_tables()
        return syncer.claim_batches(
            [[(key, f"{int(key):032x}") for key in keys[i : i + 100]] for i in range(0, 1_250, 100)]
        )

    *_, claims = run_together(*(mover.create_tables for mover in movers), start_and_claim)

    already = {key for claim in claims for key in claim.already_sent}
    taken = {key for claim in claims for key in claim.unknown_taken_over}
    elsewhere = {key for claim in claims for key in claim.claimed_elsewhere}
    assert already == {str(k) for k in range(1, 1_051)}  # every acknowledged key, and none sent again
    assert taken == {str(k) for k in range(1_051, 1_151)}  # the lost answers and the dead run's keys
    assert elsewhere == {str(k) for k in range(1_151, 1_251)}  # the live run's
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}_layout1")).scalar_one() == len(old)
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}")).scalar_one() == len(old)
        assert not is_layout_1(conn, syncer.table)
    assert not sa.inspect(engine).has_table(f"{TABLE}_next")


_KILLED_MOVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import sqlalchemy as sa
    import pagent_provider.core.ledger_migration as migration
    from pagent_provider.core.ledger import Ledger

    url, ready = sys.argv[1], Path(sys.argv[2])
    migration.PAGE = 100
    copy = migration._copy_keys

    class Slow:
        def __init__(self, conn):
            self.conn, self.inserts = conn, 0
        def execute(self, statement, *args):
            result = self.conn.execute(statement, *args)
            if isinstance(statement, sa.sql.expression.Insert):
                self.inserts += 1
                if self.inserts == 4:  # the claims and 3 pages of keys are in; the rest never comes
                    ready.write_text("copying")
                    time.sleep(120)
            return result
        def __getattr__(self, name):
            return getattr(self.conn, name)

    migration._copy_keys = lambda conn, *rest: copy(Slow(conn), *rest)
    Ledger(sa.create_engine(url), namespace="pagent_default", table_name="pagent_ledger").create_tables()
    """
)


def test_a_move_killed_mid_copy_leaves_the_old_table_whole_and_is_done_again(engine, db_url, tmp_path):
    old = make_layout_1(engine)
    engine.dispose()
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_MOVE, db_url, str(ready)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None, "the move ended before it was killed"
            assert time.monotonic() < deadline, "the move never started copying"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)

    with engine.connect() as conn:
        old_table = layout_1_table(sa.Table(TABLE, sa.MetaData()), ledger_dialect(engine.dialect.name).key_type)
        assert is_layout_1(conn, old_table)  # nothing was swapped
        assert conn.execute(sa.select(sa.func.count()).select_from(old_table)).scalar_one() == len(old)

    ledger = new_ledger(engine)  # the next sync moves it again, from scratch
    assert ledger.count_by_status() == {SENT: 1_050, UNKNOWN: 50, CLAIMED: 150}
    rows = ledger.lookup([str(row["event_key"]) for row in old])
    assert {key: (row.status, row.content_digest) for key, row in rows.items()} == {
        str(row["event_key"]): (row["status"], content_digest(row["content_hash"])) for row in old
    }
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}_layout1")).scalar_one() == len(old)
        assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}_claims")).scalar_one() == 13
    assert not sa.inspect(engine).has_table(f"{TABLE}_next")


def _layout_1_rows(rows: list[tuple[str, str, str | None, str, int | None]]) -> list[dict[str, object]]:
    stamp = now_ms()
    return [
        {
            "namespace": NAMESPACE,
            "event_key": key,
            "status": status,
            "content_hash": "h",
            "claim_id": claim,
            "owner_run": "r" * 32,
            "owner_host": "old-host",
            "owner_pid": 1,
            "owner_task": None,
            "owner_try": None,
            "claimed_at": stamp,
            "heartbeat_at": stamp,
            "sent_at": sent_at,
            "detail": detail,
        }
        for key, status, detail, claim, sent_at in rows
    ]


def _details(ledger: Ledger, keys: list[str]) -> dict[str, str | None]:
    e, c = ledger.table, ledger.claims_table
    query = (
        sa.select(e.c.event_key, sa.func.coalesce(e.c.detail, c.c.detail))
        .select_from(e.outerjoin(c, c.c.claim_id == e.c.claim_id))
        .where(e.c.event_key.in_(keys))
    )
    with ledger.engine.connect() as conn:
        return dict(conn.execute(query).all())


def test_the_move_keeps_every_keys_own_status_sent_time_and_detail(engine, request):
    key = ledger_dialect(engine.dialect.name).key_type
    old = layout_1_table(sa.Table(TABLE, sa.MetaData()), key)
    old.metadata.create_all(engine)
    a, b = "ab" * 16, "cd" * 16
    rows = _layout_1_rows(
        [
            ("u1", UNKNOWN, "Timeout", a, None),  # one batch, two lost answers told apart by case only
            ("u2", UNKNOWN, "timeout", a, None),
            ("s1", SENT, None, b, 1_000),  # a bisected batch: sent at different times, and lost
            ("s2", SENT, None, b, 2_000),
            ("s3", UNKNOWN, "lost", b, None),
        ]
    )
    with engine.begin() as conn:
        conn.execute(old.insert(), rows)

    ledger = new_ledger(engine)
    assert statuses(ledger, ["u1", "u2", "s1", "s2", "s3"]) == {
        "u1": UNKNOWN,
        "u2": UNKNOWN,
        "s1": SENT,
        "s2": SENT,
        "s3": UNKNOWN,
    }
    # pruning before the later send keeps it (a prune never deletes a key sent after its horizon)
    assert ledger.prunable_sent(1_500) == 0
    assert _details(ledger, ["u1", "u2", "s3"]) == {"u1": "Timeout", "u2": "timeout", "s3": "lost"}
