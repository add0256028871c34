"""The ledger's namespaces by id, and the 32-bit content digests its keys keep, on real SQLite, PostgreSQL and MariaDB.

A namespace is written once in ``<table>_namespaces`` and by a two-byte id in
every key's row; a key's content is remembered by a 32-bit digest of its
content hash. These tests hold the registration to what the keys rely on
(one id per namespace, never one id for two, even when runs register at
once), show that reading never writes, and pin the digest: a ledger written
by this release must read the same under the next.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from test_ledger import NAMESPACE, entries, keys, make_ledger, run_together

from pagent_provider.core.ledger import SENT, Ledger
from pagent_provider.core.ledger_namespaces import MAX_NAMESPACES
from pagent_provider.core.ledger_statements import content_digest
from pagent_provider.core.owner import ClaimOwner
from pagent_provider.exceptions import PagentLedgerError


def registered(ledger: Ledger) -> dict[str, int]:
    table = ledger.namespaces_table
    with ledger.engine.connect() as conn:
        return {name: number for number, name in conn.execute(sa.select(table.c.namespace_id, table.c.namespace))}


def test_each_namespace_gets_its_own_id_once_and_keeps_it(engine: sa.Engine) -> None:
    first = make_ledger(engine, namespace="shop-eu")
    second = make_ledger(engine, namespace="shop-us")
    again = make_ledger(engine, namespace="shop-eu")
    assert registered(first) == {"shop-eu": 1, "shop-us": 2}
    assert (first.register_namespace(), second.register_namespace(), again.register_namespace()) == (1, 2, 1)


def test_the_same_key_in_two_namespaces_is_two_keys(engine: sa.Engine) -> None:
    eu, us = make_ledger(engine, namespace="shop-eu"), make_ledger(engine, namespace="shop-us")
    claim = eu.claim(entries(keys(5)))
    eu.mark_sent(claim.claim_id)
    other = us.claim(entries(keys(5)))
    assert other.claimed == set(keys(5)), "a key sent in one namespace was taken as sent in another"
    assert eu.count_by_status() == {SENT: 5}
    assert us.count_by_status() == {"claimed": 5}
    assert eu.sent_digests(keys(5)).keys() == set(keys(5))
    assert us.sent_digests(keys(5)) == {}


def test_runs_registering_at_once_agree_on_one_id_per_namespace(engine: sa.Engine) -> None:
    """Twelve runs, four namespaces, released together: each namespace one id, no id for two namespaces."""
    make_ledger(engine, namespace="warm-up")  # the tables exist, as they do when syncs start
    names = [f"account-{i % 4}" for i in range(12)]
    ledgers = [Ledger(engine, namespace=name, owner=ClaimOwner()) for name in names]
    ids = run_together(*(ledger.register_namespace for ledger in ledgers))
    by_name: dict[str, set[object]] = {}
    for name, number in zip(names, ids, strict=True):
        by_name.setdefault(name, set()).add(number)
    assert all(len(numbers) == 1 for numbers in by_name.values()), by_name
    table = registered(ledgers[0])
    assert {name: next(iter(numbers)) for name, numbers in by_name.items()} == {
        name: number for name, number in table.items() if name != "warm-up"
    }
    assert len(set(table.values())) == len(table) == 5


def test_runs_claiming_at_once_in_a_new_namespace_claim_each_key_once(engine: sa.Engine) -> None:
    make_ledger(engine, namespace="warm-up")
    ledgers = [Ledger(engine, namespace="brand-new", owner=ClaimOwner()) for _ in range(4)]
    results = run_together(*(lambda ledger=ledger: ledger.claim(entries(keys(50))) for ledger in ledgers))
    claimed = [key for result in results for key in result.claimed]  # type: ignore[attr-defined]
    assert sorted(claimed) == keys(50), "a key was claimed twice, or not at all"


def test_reading_an_unregistered_namespace_finds_nothing_and_writes_nothing(engine: sa.Engine) -> None:
    writer = make_ledger(engine)
    writer.mark_sent(writer.claim(entries(keys(3))).claim_id)
    reader = Ledger(engine, namespace="never-written", owner=ClaimOwner())  # a read-only CLI: no create_tables()
    assert reader.lookup(keys(3)) == {}
    assert reader.sent_digests(keys(3)) == {}
    assert reader.count_by_status() == {}
    assert reader.keys_with_status(SENT) == set()
    assert reader.prunable_sent(2**62) == 0
    assert registered(writer) == {NAMESPACE: 1}, "a read registered its namespace"
    # once another run writes to it, the same object sees its keys: an unregistered id is not kept
    Ledger(engine, namespace="never-written", owner=ClaimOwner()).claim(entries(keys(2)))
    assert set(reader.lookup(keys(3))) == set(keys(2))


def test_a_full_namespace_table_says_what_to_do(engine: sa.Engine) -> None:
    first = make_ledger(engine)
    with engine.begin() as conn:
        conn.execute(first.namespaces_table.insert().values(namespace_id=MAX_NAMESPACES, namespace="the-last"))
    with pytest.raises(PagentLedgerError, match="ledger table of its own") as raised:
        make_ledger(engine, namespace="one-too-many")
    assert "32767 namespaces" in str(raised.value)
    assert make_ledger(engine, namespace="the-last").register_namespace() == MAX_NAMESPACES


def test_a_changed_row_is_told_by_its_digest_and_the_stored_digest_is_the_claims(engine: sa.Engine) -> None:
    ledger = make_ledger(engine)
    sent = entries(keys(4))
    ledger.mark_sent(ledger.claim(sent).claim_id)
    assert ledger.sent_digests(keys(4)) == {key: content_digest(h) for key, h in sent}
    later = make_ledger(engine).claim(entries(keys(2)) + entries(keys(2, first=2), version="v2"))
    assert sorted(later.changed_after_send) == keys(2, first=2)
    assert sorted(later.already_sent) == keys(4)


# --------------------------------------------------------------------------- the digest itself

#: Digests written by this release: a later one must compute the same, or its ledgers misreport changed rows.
PINNED = {
    "": -2147483648,
    "h": 292226791,
    "0123456789abcdef0123456789abcdef": -145115890,
    "9dd4e461268c8034f5c8564e155c67a6": -759500467,
}


def test_the_digest_of_a_content_hash_is_pinned() -> None:
    assert {text: content_digest(text) for text in PINNED} == PINNED


@given(st.text())
def test_every_content_hash_has_a_signed_32_bit_digest(text: str) -> None:
    try:
        value = content_digest(text)
    except UnicodeEncodeError:  # a lone surrogate: no content hash (hex digits) is one
        return
    assert -(2**31) <= value < 2**31


def test_digests_of_distinct_hashes_rarely_collide() -> None:
    hashes = [f"{i * 2654435761 % 2**128:032x}" for i in range(200_000)]
    digests = {content_digest(h) for h in hashes}
    # 200,000 draws from 2**32: about 4.7 collisions expected; a weak digest would show hundreds
    assert len(hashes) - len(digests) < 40


def test_registration_is_safe_under_threads_of_one_process(engine: sa.Engine) -> None:
    """One Ledger object per thread of a sync (the senders share theirs): the id is the same whoever asks."""
    ledger = Ledger(engine, namespace="shared", owner=ClaimOwner())
    ledger.create_tables()
    seen: list[int] = []
    lock = threading.Lock()

    def ask() -> None:
        number = ledger.register_namespace()
        with lock:
            seen.append(number)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(seen) == {ledger.register_namespace()}
    assert len(seen) == 8


def test_a_run_that_loses_the_next_id_to_another_takes_the_one_after(engine: sa.Engine) -> None:
    """The race made certain: just before our INSERT, another run takes the id we chose, and commits."""
    make_ledger(engine, namespace="first")
    ledger = Ledger(engine, namespace="second", owner=ClaimOwner())
    table = ledger.namespaces_table
    intrusions: list[int] = []

    def take_it_first(conn, cursor, statement, parameters, context, executemany) -> None:
        if not intrusions and statement.lstrip().upper().startswith("INSERT") and table.name in statement:
            intrusions.append(1)
            other = sa.create_engine(engine.url)
            with other.begin() as their:
                their.execute(table.insert().values(namespace_id=2, namespace="intruder"))
            other.dispose()

    sa.event.listen(engine, "before_cursor_execute", take_it_first)
    try:
        number = ledger.register_namespace()
    finally:
        sa.event.remove(engine, "before_cursor_execute", take_it_first)
    assert intrusions == [1]
    assert (number, registered(ledger)) == (3, {"first": 1, "intruder": 2, "second": 3})
