"""The delivery ledger on real SQL: SQLite files, PostgreSQL and MariaDB.

Every claim rule of :mod:`pagent_provider.core.ledger` is exercised against
the real databases, with real concurrency (threads holding their own
connections) and real dead processes, because the guarantees live in the
SQL (insert-if-absent, compare-and-swap) and in the owner checks, not in
Python alone.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, ClaimResult, Ledger, LedgerRow, RejectRecord, now_ms
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.owner import ClaimOwner, process_is_alive, silence_ms

NAMESPACE = "pagent_default"
POLICIES = ["resend", "skip"]


# --------------------------------------------------------------------------- fixtures and helpers


def make_ledger(engine: sa.Engine, owner: ClaimOwner | None = None, **kwargs: object) -> Ledger:
    namespace = str(kwargs.pop("namespace", NAMESPACE))
    ledger = Ledger(engine, namespace=namespace, owner=owner or ClaimOwner(), **kwargs)  # type: ignore[arg-type]
    ledger.create_tables()
    return ledger


def keys(count: int, first: int = 0) -> list[str]:
    return [f"order-{i:05d}" for i in range(first, first + count)]


def digest(key: str, version: str = "v1") -> str:
    return hashlib.md5(f"{key}/{version}".encode()).hexdigest()


def entries(event_keys: Sequence[str], version: str = "v1") -> list[tuple[str, str]]:
    return [(key, digest(key, version)) for key in event_keys]


def rows_of(ledger: Ledger, event_keys: Sequence[str]) -> dict[str, LedgerRow]:
    """What the ledger holds for these keys, each with its claim's owner and heartbeat."""
    return ledger.lookup(list(event_keys))


def run_together(*jobs: Callable[[], object]) -> list[object]:
    """Run ``jobs`` in threads released at the same moment; return their results, re-raise their errors."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def runner(index: int, job: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = job()
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=runner, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a claiming thread hangs"
    if errors:
        raise errors[0]
    return results


def assert_partition(results: Sequence[ClaimResult], wanted: Sequence[Sequence[str]]) -> None:
    """Every key claimed by exactly one claimer; each claimer got the rest reported as claimed elsewhere."""
    everything = set().union(*map(set, wanted))
    claimed = [set(result.claimed) for result in results]
    for i, mine in enumerate(claimed):
        for other in claimed[i + 1 :]:
            assert not mine & other, f"keys claimed twice: {sorted(mine & other)[:5]}"
    assert set().union(*claimed) == everything
    for result, asked in zip(results, wanted, strict=True):
        assert result.claimed | set(result.claimed_elsewhere) == set(asked)
        assert not result.claimed & set(result.claimed_elsewhere)


def age_heartbeat(ledger: Ledger, claim_id: int, seconds: float) -> None:
    """Set the last heartbeat of one claim (its row in the claims table) ``seconds`` into the past."""
    c = ledger.claims_table
    with ledger.engine.begin() as conn:
        aged = conn.execute(
            c.update().where(c.c.claim_id == claim_id).values(heartbeat_at=now_ms() - int(seconds * 1000))
        )
        assert aged.rowcount == 1, "the claim to age is not in the claims table"


@pytest.fixture
def sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    """A real process on this host, killed (and reaped) at the end whatever happens."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --------------------------------------------------------------------------- tables


def test_tables_are_created_on_first_use_idempotently_even_when_workers_race(engine):
    """Four workers creating the tables at once: each finds all four tables there as soon as its call returns.

    And the namespace they all register at once gets one id.
    """
    table = "conv_ledger"
    assert not Ledger(engine, namespace=NAMESPACE, table_name=table).tables_exist()
    inspector_names: list[set[str]] = []

    def create_and_look() -> None:
        Ledger(engine, namespace=NAMESPACE, table_name=table).create_tables()
        inspector_names.append(set(sa.inspect(engine).get_table_names()))

    run_together(*[create_and_look] * 4)
    for names in inspector_names:
        assert {table, f"{table}_claims", f"{table}_rejects", f"{table}_namespaces"} <= names, (
            f"create_tables returned before the tables existed: {names}"
        )
    again = Ledger(engine, namespace=NAMESPACE, table_name=table)
    again.create_tables()  # and once more, when everything is there
    assert again.tables_exist()
    n = again.namespaces_table
    with engine.connect() as conn:
        registered = [tuple(row) for row in conn.execute(sa.select(n.c.namespace_id, n.c.namespace))]
    assert registered == [(1, NAMESPACE)]
    assert again.claim(entries(keys(3))).claimed == set(keys(3))


# --------------------------------------------------------------------------- claiming


def test_claim_is_atomic_between_two_runs(engine):
    """Two runs claiming overlapping keys at once, in opposite orders: every key goes to exactly one of them.

    Opposite orders are what two overlapping intervals read newest-first and
    oldest-first give; on PostgreSQL and MariaDB they used to deadlock about one
    round in four, so several rounds make a regression show.
    """
    for round_number in range(12):
        namespace = f"atomic-{round_number}"
        a = make_ledger(engine, namespace=namespace)
        b = make_ledger(engine, namespace=namespace)
        assert a.owner.run_token != b.owner.run_token
        a_keys, b_keys = keys(400), keys(400, first=100)[::-1]  # 300 keys wanted by both

        results = run_together(lambda: a.claim(entries(a_keys)), lambda: b.claim(entries(b_keys)))  # noqa: B023 - called at once
        assert_partition(results, [a_keys, b_keys])  # type: ignore[arg-type]
        owners = {key: row.owner_run for key, row in rows_of(a, keys(500)).items()}
        assert len(owners) == 500
        for result, ledger in zip(results, (a, b), strict=True):
            assert {owners[key] for key in result.claimed} == {ledger.owner.run_token}  # type: ignore[union-attr]


def test_already_sent_keys_are_reported_and_changed_content_is_flagged(engine):
    first = make_ledger(engine)
    claim = first.claim(entries(keys(10)))
    assert claim.claimed == set(keys(10))
    first.mark_sent(claim.claim_id)

    later = make_ledger(engine)
    same, changed = keys(5), keys(5, first=5)
    result = later.claim(entries(same) + entries(changed, version="v2"))
    assert result.claimed == set()
    assert sorted(result.already_sent) == keys(10)
    assert sorted(result.changed_after_send) == changed
    rows = rows_of(later, keys(10))
    assert {row.status for row in rows.values()} == {SENT}
    assert all(row.content_digest == content_digest(digest(key)) for key, row in rows.items()), (
        "a later claim overwrote a sent row"
    )


def test_release_lets_a_later_claim_take_the_key(engine):
    first = make_ledger(engine)
    claim = first.claim(entries(keys(5)))
    first.release(claim.claim_id, keys(2))

    later = make_ledger(engine)
    result = later.claim(entries(keys(5)))
    assert result.claimed == set(keys(2))
    assert sorted(result.claimed_elsewhere) == keys(3, first=2)

    first.mark_sent(claim.claim_id, [keys(5)[2]])
    first.release(claim.claim_id)  # the rest of the claim: neither a sent key nor the later run's keys go
    rows = rows_of(later, keys(5))
    assert set(rows) == set(keys(3))
    assert rows[keys(5)[2]].status == SENT
    assert {rows[key].owner_run for key in keys(2)} == {later.owner.run_token}


@pytest.mark.parametrize("policy", POLICIES)
def test_unknown_outcome_follows_the_policy_of_the_next_run(engine, policy):
    first = make_ledger(engine)
    claim = first.claim(entries(keys(10)))
    lost, acknowledged = keys(4), keys(6, first=4)
    first.mark_unknown(claim.claim_id, lost, "the connection dropped after the request was sent")
    first.mark_sent(claim.claim_id, acknowledged)
    assert first.count_by_status() == {UNKNOWN: 4, SENT: 6}

    later = make_ledger(engine, unknown_outcome=policy)
    result = later.claim(entries(keys(10)))
    assert sorted(result.already_sent) == acknowledged
    rows = rows_of(later, lost)
    if policy == "resend":
        assert result.claimed == result.unknown_taken_over == set(lost)
        assert result.unknown_skipped == []
        assert {(row.status, row.owner_run, row.claim_id) for row in rows.values()} == {
            (CLAIMED, later.owner.run_token, result.claim_id)
        }
    else:
        assert result.claimed == result.unknown_taken_over == set()
        assert sorted(result.unknown_skipped) == lost
        assert {(row.status, row.claim_id) for row in rows.values()} == {(UNKNOWN, claim.claim_id)}
        # and it stays that way for every later run with the same policy
        assert sorted(make_ledger(engine, unknown_outcome="skip").claim(entries(lost)).unknown_skipped) == lost


def test_concurrent_takeover_of_unknown_keys_has_one_winner_per_key(engine):
    first = make_ledger(engine)
    claim = first.claim(entries(keys(300)))
    first.mark_unknown(claim.claim_id, None, "lost")
    a, b = make_ledger(engine), make_ledger(engine)
    a_keys, b_keys = keys(300), keys(300)[::-1]
    results = run_together(lambda: a.claim(entries(a_keys)), lambda: b.claim(entries(b_keys)))
    assert_partition(results, [a_keys, b_keys])  # type: ignore[arg-type]
    assert results[0].unknown_taken_over == results[0].claimed  # type: ignore[union-attr]
    assert results[1].unknown_taken_over == results[1].claimed  # type: ignore[union-attr]


# --------------------------------------------------------------------------- owners that are gone, or not


@pytest.mark.parametrize("policy", POLICIES)
def test_claim_of_a_killed_process_on_this_host_is_taken_over_at_once(engine, policy, sleeping_child):
    dead_owner = ClaimOwner(pid=sleeping_child.pid)
    child_claim = make_ledger(engine, owner=dead_owner).claim(entries(keys(20)))
    assert child_claim.claimed == set(keys(20))

    # while the child lives, its claim is respected, whatever the policy
    alive = make_ledger(engine, unknown_outcome=policy).claim(entries(keys(20)))
    assert alive.claimed == set() and sorted(alive.claimed_elsewhere) == keys(20)

    sleeping_child.send_signal(signal.SIGKILL)
    sleeping_child.wait(timeout=10)
    assert not process_is_alive(sleeping_child.pid)

    after = make_ledger(engine, unknown_outcome=policy)
    result = after.claim(entries(keys(20)))
    rows = rows_of(after, keys(20))
    if policy == "resend":
        assert result.claimed == result.unknown_taken_over == set(keys(20))
        assert {row.owner_pid for row in rows.values()} == {os.getpid()}
    else:
        assert result.claimed == set() and sorted(result.unknown_skipped) == keys(20)
        assert {(row.status, row.owner_pid) for row in rows.values()} == {(UNKNOWN, sleeping_child.pid)}


def test_a_zombie_owner_counts_as_gone(tmp_path, sleeping_child):
    """Killed but not yet reaped by its parent: it runs no more, so its claim is taken over."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        make_ledger(engine, owner=ClaimOwner(pid=sleeping_child.pid)).claim(entries(keys(3)))
        os.kill(sleeping_child.pid, signal.SIGKILL)
        stat = Path(f"/proc/{sleeping_child.pid}/stat")
        wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", what="the child to be a zombie")
        assert make_ledger(engine).claim(entries(keys(3))).unknown_taken_over == set(keys(3))
    finally:
        engine.dispose()


def age_heartbeats(ledger: Ledger, by_ms: int) -> None:
    """Move every claim's last heartbeat ``by_ms`` into the past, as if its owner had gone quiet."""
    c = ledger.claims_table
    with ledger.engine.begin() as conn:
        aged = conn.execute(
            c.update().where(c.c.namespace == ledger.namespace).values(heartbeat_at=c.c.heartbeat_at - by_ms)
        )
        assert aged.rowcount >= 1, "no claim to age in the claims table"


def test_claim_of_an_earlier_try_of_the_same_task_instance_is_taken_over_once_it_is_silent(engine):
    task = "d/t/r/-1"
    first_try = make_ledger(engine, owner=ClaimOwner(task=task, try_number=1))
    first_try.claim(entries(keys(10)))

    other_task = make_ledger(engine, owner=ClaimOwner(task="d/other/r/-1", try_number=2)).claim(entries(keys(10)))
    assert other_task.claimed == set() and sorted(other_task.claimed_elsewhere) == keys(10)

    # A later try while the earlier one still heartbeats: an orphaned task process of a lost
    # Celery worker, still sending. Its claims are left alone.
    second_try = make_ledger(engine, owner=ClaimOwner(task=task, try_number=2))
    early = second_try.claim(entries(keys(10)))
    assert early.claimed == set() and sorted(early.claimed_elsewhere) == keys(10)

    # Silent for two heartbeat intervals (60 s of the default 600 s claim timeout): gone.
    age_heartbeats(first_try, silence_ms(600) + 1000)
    result = second_try.claim(entries(keys(10)))
    assert result.claimed == result.unknown_taken_over == set(keys(10))
    assert {row.owner_try for row in rows_of(second_try, keys(10)).values()} == {2}

    # the other way round, an earlier try never takes a later try's claim
    stale = make_ledger(engine, owner=ClaimOwner(task=task, try_number=1)).claim(entries(keys(10)))
    assert stale.claimed == set() and sorted(stale.claimed_elsewhere) == keys(10)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_live_owners_claim_is_left_alone(engine, policy):
    owner = make_ledger(engine)  # this process, alive, with its own run token
    claim = owner.claim(entries(keys(10)))
    before = rows_of(owner, keys(10))

    other = make_ledger(engine, unknown_outcome=policy)
    result = other.claim(entries(keys(10)))
    assert result.claimed == set() and sorted(result.claimed_elsewhere) == keys(10)
    assert result.unknown_skipped == [] and result.unknown_taken_over == set()
    assert rows_of(owner, keys(10)) == before, "a live owner's claim was modified"

    owner.mark_sent(claim.claim_id)  # and its owner can still finish it
    assert owner.count_by_status() == {SENT: 10}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stale_heartbeat_counts_as_abandoned(engine, policy):
    quiet = make_ledger(engine, claim_timeout_s=5)
    claim = quiet.claim(entries(keys(10)))
    age_heartbeat(quiet, claim.claim_id, seconds=6)

    later = make_ledger(engine, claim_timeout_s=5, unknown_outcome=policy)
    result = later.claim(entries(keys(10)))
    if policy == "resend":
        assert result.claimed == result.unknown_taken_over == set(keys(10))
    else:
        assert sorted(result.unknown_skipped) == keys(10)
        assert {row.status for row in rows_of(later, keys(10)).values()} == {UNKNOWN}


def test_a_heartbeat_keeps_a_claim_alive(engine):
    busy = make_ledger(engine, claim_timeout_s=5)
    claim = busy.claim(entries(keys(10)))
    age_heartbeat(busy, claim.claim_id, seconds=6)
    busy.heartbeat([claim.claim_id])
    result = make_ledger(engine, claim_timeout_s=5).claim(entries(keys(10)))
    assert result.claimed == set() and sorted(result.claimed_elsewhere) == keys(10)


def test_a_heartbeat_times_out_in_real_time(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        first = make_ledger(engine, claim_timeout_s=0.2)
        claim = first.claim(entries(keys(3)))
        [heartbeat] = {row.heartbeat_at for row in rows_of(first, keys(3)).values()}
        wait_until(lambda: now_ms() > heartbeat + 200, what="the claim timeout")
        result = make_ledger(engine, claim_timeout_s=0.2).claim(entries(keys(3)))
        assert result.unknown_taken_over == set(keys(3))
        first.mark_sent(claim.claim_id)  # too late: the stale claim id no longer matches anything
        assert first.count_by_status() == {CLAIMED: 3}
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- rejects


def test_rejects_are_recorded_in_the_sibling_table(engine):
    ledger = make_ledger(engine, table_name="conv_ledger")
    ledger.record_rejects(
        [
            RejectRecord(row="41", field="revenue", reason="revenue 9.999 is not whole cents", source="invalid"),
            RejectRecord(
                row="42", field="event", reason="events[0]: unknown session", source="refused", event_key="42"
            ),
            RejectRecord(row="43", field="time", reason="x" * 5000, source="invalid"),
        ]
    )
    rejects = ledger.rejects_table  # its key column is VARBINARY on MySQL/MariaDB: the table decodes it
    assert rejects.name == "conv_ledger_rejects"
    with engine.connect() as conn:
        rows = conn.execute(sa.select(rejects).order_by(rejects.c.row_ref)).all()
    assert [(r.row_ref, r.source, r.field, r.event_key) for r in rows] == [
        ("41", "invalid", "revenue", None),
        ("42", "refused", "event", "42"),
        ("43", "invalid", "time", None),
    ]
    assert rows[1].reason == "events[0]: unknown session"
    assert len(rows[2].reason) == 2000
    assert {(r.namespace, r.run_token) for r in rows} == {(NAMESPACE, ledger.owner.run_token)}
