"""The ledger's hot statements: as few, and as cached, as each database allows, with the same answers.

PostgreSQL runs a window's claims, its marks and a chunk's lookups as ONE
statement each, the keys in array parameters; SQLite runs plain SQL text built
once, through sqlite3, with multi-row VALUES and padded IN lists. Both must
answer exactly as the SQLAlchemy Core statements (the reference, which
MySQL/MariaDB and DuckDB run) do, on every kind of key.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_ledger import run_together  # the tests directory is on sys.path (rootdir conftest)

from pagent_provider.core.ledger import SENT, Ledger
from pagent_provider.core.ledger_statements import (
    ArrayStatements,
    LedgerStatements,
    SqliteStatements,
    _fetch_tuples,
    content_digest,
)
from pagent_provider.core.owner import ClaimOwner

# Keys that quoting, placeholders, escapes or collations could get wrong
AWKWARD_KEYS = [
    "O'Brien",
    'say "hi"',
    "back\\slash",
    "%s",
    "%(name)s",
    "?",
    "?1",
    ":name",
    "{a,b}",
    "NULL",
    "日本",
    "🎉 party",
    "x ",
    "x",
    "X",
    "e\u0301",
    "\u00e9",
    "tab\there",
    "new\nline",
    "01",
    "1",
]


def make_ledger(engine: sa.Engine, namespace: str = "pagent_default") -> Ledger:
    ledger = Ledger(engine, namespace=namespace, owner=ClaimOwner())
    ledger.create_tables()
    return ledger


def digest(key: str) -> str:
    return hashlib.md5(key.encode()).hexdigest()


def entries(event_keys: Sequence[str]) -> list[tuple[str, str]]:
    return [(key, digest(key)) for key in event_keys]


@contextmanager
def statements_run(engine: sa.Engine) -> Iterator[list[tuple[str, bool]]]:
    """Every statement sent to the driver while the block runs: ``(sql, executemany)``."""
    seen: list[tuple[str, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, executemany))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def writes(seen: Sequence[tuple[str, bool]], verb: str, table: str | None = None) -> list[tuple[str, bool]]:
    """The statements starting with ``verb``; with ``table``, only those on that table (``INSERT INTO t``...)."""
    found = [(sql, many) for sql, many in seen if sql.lstrip().upper().startswith(verb)]
    if table is None:
        return found
    position = 1 if verb == "UPDATE" else 2  # UPDATE t / INSERT INTO t / DELETE FROM t
    return [(sql, many) for sql, many in found if sql.split()[position] == table]


EVENTS, CLAIMS = "pagent_ledger", "pagent_ledger_claims"


def reference(ledger: Ledger) -> LedgerStatements:
    """The SQLAlchemy Core statements on the same table: what every faster path must agree with.

    They find the keys by the ledger's namespace id, as its own statements do (until the ledger has
    registered its namespace, none: the ledger gives them the id when it does).
    """
    statements = LedgerStatements(ledger.database, ledger.tables, ledger.namespace, ledger.owner, ledger.engine.dialect)
    statements.namespace_id = ledger._sql.namespace_id
    return statements


def windows(keys: Sequence[str], size: int = 400, batch: int = 100) -> Iterator[list[list[tuple[str, str]]]]:
    for start in range(0, len(keys), size):
        part = entries(keys[start : start + size])
        yield [part[b : b + batch] for b in range(0, len(part), batch)]


def test_each_database_gets_its_statements():
    assert Ledger(sa.create_engine("sqlite://"), namespace="n")._sql.__class__ is SqliteStatements
    pg = sa.create_engine("postgresql://u@127.0.0.1:1/x")
    assert Ledger(pg, namespace="n")._sql.__class__ is ArrayStatements
    mysql = sa.create_engine("mysql://u@127.0.0.1:1/x")
    assert Ledger(mysql, namespace="n")._sql.__class__ is LedgerStatements


def test_the_fast_statements_answer_as_the_core_ones(engine):
    """Claims, marks, sent digests and lookups of 1,234 keys (awkward ones among them) agree row for row."""
    keys = AWKWARD_KEYS + [f"order-{i}" for i in range(1_234 - len(AWKWARD_KEYS))]
    fast = make_ledger(engine, namespace="fast")
    core = make_ledger(engine, namespace="core")
    core._sql = reference(core)  # the same ledger, on the Core statements
    for ledger in (fast, core):
        sent = []
        for window in windows(keys):
            claims = ledger.claim_batches(window, mark_sent=sent)
            assert [claim.claimed for claim in claims] == [{key for key, _ in batch} for batch in window]
            sent = [claim.claim_id for claim in claims[:2]]  # half of each window ends up sent
        ledger.mark_claims_sent(sent)

    asked = [*reversed(keys), "never-claimed", *keys[:7]]  # unknown and repeated keys too
    with engine.connect() as conn:
        for ledger in (fast, core):
            for statements in (ledger._sql, reference(ledger)):
                digests = dict(statements.sent_digests(conn, asked))
                rows = {row[0]: row for row in statements.lookup(conn, asked)}
                assert set(rows) == set(keys)
                assert digests == {key: row[2] for key, row in rows.items() if row[1] == SENT}
                assert digests == {key: content_digest(digest(key)) for key in digests}
        fast_rows = {row[0]: row[1:3] for row in fast._sql.lookup(conn, keys)}
        core_rows = {row[0]: row[1:3] for row in core._sql.lookup(conn, keys)}
    assert fast_rows == core_rows
    assert fast.count_by_status() == core.count_by_status() == {"sent": 634, "claimed": 600}
    for key in ("O'Brien", "%s", "?1", "x ", "日本"):
        assert set(fast.sent_digests([key])) <= {key} and set(fast.lookup([key])) == {key}


def test_a_second_claim_of_the_same_keys_inserts_nothing_and_reports_them(engine):
    first, second = make_ledger(engine), make_ledger(engine)
    keys = [f"k{i}" for i in range(250)]
    claim = first.claim(entries(keys))
    first.mark_sent(claim.claim_id, keys[:100])
    with engine.begin() as conn:
        assert second._sql.insert_if_absent(conn, sorted((k, content_digest(digest(k)), 2) for k in keys), 1) in (
            None,
            set(),
        )
    again = second.claim(entries(keys))
    assert again.claimed == set()
    assert sorted(again.already_sent) == sorted(keys[:100])
    assert sorted(again.claimed_elsewhere) == sorted(keys[100:])


def test_a_key_repeated_in_two_batches_of_one_window_is_claimed_once(engine):
    ledger = make_ledger(engine)
    first, second = ledger.claim_batches([entries(["a", "b", "c"]), entries(["c", "d"])])
    assert first.claimed == {"a", "b", "c"}
    assert second.claimed == {"d"} and second.duplicate_keys == ["c"]
    ledger.release(first.claim_id, ["a"])
    ledger.mark_unknown(first.claim_id, ["b"], "answer lost")
    ledger.mark_sent(second.claim_id)
    assert {key: row.status for key, row in ledger.lookup(["a", "b", "c", "d"]).items()} == {
        "b": "unknown",
        "c": "claimed",
        "d": "sent",
    }


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url)
    yield engine
    engine.dispose()


def test_on_postgresql_a_window_is_one_statement_and_one_transaction(postgres):
    """Claims' rows, keys and the previous window's marks: one statement, one text, one transaction."""
    ledger = make_ledger(postgres)
    sent: list[int] = []
    keys = [f"order-{i}" for i in range(2_037)]
    claimed: list[list[int]] = []  # each window's claim ids
    with statements_run(postgres) as seen:
        for size in (400, 800, 37, 800):  # windows of 4, 8 and 1 batches
            window_keys, keys = keys[:size], keys[size:]
            claims = ledger.claim_batches(next(windows(window_keys, size)), mark_sent=sent)
            sent = [claim.claim_id for claim in claims]
            claimed.append(sent)
        ledger.mark_claims_sent(sent)
    window_statements = writes(seen, "WITH")
    assert len(window_statements) == 4 and len(seen) == 5  # one per window, then the last window's mark
    assert writes(seen, "UPDATE", CLAIMS) == writes(seen, "UPDATE") and len(writes(seen, "UPDATE")) == 1
    assert not any(many for _, many in seen), "an executemany: one round trip (and GIL wait) per row"
    assert len({sql for sql, _ in window_statements}) == 1  # one text: parsed once
    sql = window_statements[0][0]
    assert sql.index(f"INSERT INTO {CLAIMS} ") < sql.index(f"INSERT INTO {EVENTS} ") < sql.index(f"UPDATE {CLAIMS} ")
    assert "unnest" in sql and "ANY" in sql
    if postgres.dialect.driver == "psycopg":  # every array in binary: text arrays are quoted in Python
        assert "%(keys)b" in sql and not re.search(r"%\(\w+\)s AS \w+\[\]", sql)
    assert max(len(sql) for sql, _ in seen) < 2_000  # short enough for psycopg's query cache
    assert ledger.count_by_status() == {SENT: 2_037}
    with postgres.connect() as conn:
        # xmin: the transaction that wrote a row (inserted it, or last updated it)
        claim_xmin = dict(conn.exec_driver_sql(f"SELECT claim_id, xmin::text FROM {CLAIMS}").all())
        key_xmin = dict(conn.exec_driver_sql(f"SELECT DISTINCT claim_id, xmin::text FROM {EVENTS}").all())
    written_by = [{key_xmin[claim] for claim in window} for window in claimed]
    assert all(len(xmins) == 1 for xmins in written_by) and len(set.union(*written_by)) == 4
    for window, next_window in itertools.pairwise(range(4)):  # marked in the next window's transaction
        assert {claim_xmin[claim] for claim in claimed[window]} == written_by[next_window]

    every = [f"order-{i}" for i in range(2_037)] + [f"new-{i}" for i in range(10_000)]
    with statements_run(postgres) as seen:
        assert len(ledger.sent_digests(every)) == 2_037
        assert len(ledger.lookup(every)) == 2_037
    # the keys' rows, their claims' statuses (each claim asked once), the lookup
    assert len(seen) == 3
    with statements_run(postgres) as seen:
        assert len(ledger.sent_digests(every)) == 2_037
    assert len(seen) == 1  # a claim once sent stays sent: not asked again


def test_on_postgresql_a_window_meeting_taken_keys_is_claimed_again_at_once_with_on_conflict(postgres):
    """Free keys go in without ON CONFLICT; a taken one voids that try, and the next windows tolerate them."""
    from pagent_provider.core.ledger_statements import TOLERANT_WINDOWS_AFTER_CONFLICT

    other, ledger = make_ledger(postgres), make_ledger(postgres)
    taken = [f"order-{i}" for i in range(50, 60)]
    held = other.claim(entries(taken))  # another run holds ten of the keys
    keys = [f"order-{i}" for i in range(100)] + [f"new-{i}" for i in range(100 * (TOLERANT_WINDOWS_AFTER_CONFLICT + 2))]

    def window_plans(seen: Sequence[tuple[str, bool]]) -> list[str]:
        # the keys' insert of each window statement: with ON CONFLICT, or without
        return [
            "tolerant" if sql.count("ON CONFLICT DO NOTHING") == 2 else "optimistic" for sql, _ in writes(seen, "WITH")
        ]

    with statements_run(postgres) as seen:
        first = ledger.claim(entries(keys[:100]))
    assert window_plans(seen) == ["optimistic", "tolerant"]  # the first try was rolled back as a whole
    assert first.claimed == set(keys[:100]) - set(taken)
    assert sorted(first.claimed_elsewhere) == sorted(taken)
    with postgres.connect() as conn:
        owners = dict(conn.exec_driver_sql(f"SELECT event_key, claim_id FROM {EVENTS}").all())
    assert {owners[key] for key in taken} == {held.claim_id}
    assert {owners[key] for key in first.claimed} == {first.claim_id}
    assert len(owners) == 100  # nothing of the voided try left behind

    with statements_run(postgres) as seen:
        for start in range(100, len(keys), 100):
            assert ledger.claim(entries(keys[start : start + 100])).claimed == set(keys[start : start + 100])
    plans = window_plans(seen)
    assert plans == ["tolerant"] * (TOLERANT_WINDOWS_AFTER_CONFLICT - 1) + ["optimistic"] * 3, plans
    assert ledger.count_by_status() == {"claimed": len(keys)}


def test_psycopg_gets_its_arrays_in_binary_and_other_drivers_through_sqlalchemy_text(postgres, postgres_url):
    """psycopg 3: the statement text as it is, arrays as %(keys)b; psycopg2 (SQLAlchemy 1.4's driver): sa.text."""
    fast = make_ledger(postgres)
    with statements_run(postgres) as seen:
        fast.claim(entries(["a", "b"]))
    if postgres.dialect.driver == "psycopg":
        assert "%(keys)b" in writes(seen, "WITH")[0][0]
    url = sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    other = sa.create_engine(url)
    try:
        ledger = make_ledger(other, namespace="psycopg2")
        with statements_run(other) as seen:
            claims = ledger.claim_batches([entries(AWKWARD_KEYS[:10]), entries(AWKWARD_KEYS[10:])])
            ledger.mark_claims_sent([claims[0].claim_id])
        assert [claim.claimed for claim in claims] == [set(AWKWARD_KEYS[:10]), set(AWKWARD_KEYS[10:])]
        assert set(ledger.sent_digests(AWKWARD_KEYS)) == set(AWKWARD_KEYS[:10])
        assert set(ledger.lookup(AWKWARD_KEYS)) == set(AWKWARD_KEYS)
        [window] = writes(seen, "WITH")  # the claims' rows and the keys, in one statement
        assert "%(keys)b" not in window[0] and f"INSERT INTO {EVENTS}" in window[0]
        assert len(writes(seen, "UPDATE", CLAIMS)) == 1 and len(seen) == 2  # and the mark
    finally:
        other.dispose()


def test_on_postgresql_marks_and_releases_by_key_are_one_statement(postgres):
    ledger = make_ledger(postgres)
    keys = [f"k{i}" for i in range(1_200)]
    claim = ledger.claim(entries(keys))
    with statements_run(postgres) as seen:
        ledger.mark_sent(claim.claim_id, keys[:600])
        ledger.mark_unknown(claim.claim_id, keys[600:900], "lost")
        ledger.release(claim.claim_id, keys[900:])
    assert len(writes(seen, "UPDATE", EVENTS)) == 2 and len(writes(seen, "DELETE", EVENTS)) == 1
    # and the claim's sent_at (when its keys were sent, for a prune): one more, on its one row
    assert len(writes(seen, "UPDATE", CLAIMS)) == 1 and len(seen) == 4
    assert ledger.count_by_status() == {"sent": 600, "unknown": 300}


def test_on_postgresql_overlapping_windows_in_opposite_orders_do_not_deadlock(postgres):
    """Each insert locks its keys in key order, whatever order the batches came in: no deadlock, one owner each."""
    keys = [f"k{i:04d}" for i in range(3_000)]
    ledgers = [make_ledger(postgres), make_ledger(postgres)]
    forward = [entries(keys[i : i + 100]) for i in range(0, 3_000, 100)]
    backward = [list(reversed(batch)) for batch in reversed(forward)]
    for _ in range(3):
        results = run_together(lambda: ledgers[0].claim_batches(forward), lambda: ledgers[1].claim_batches(backward))
        claimed = [set().union(*(claim.claimed for claim in result)) for result in results]
        elsewhere = [set().union(*(claim.claimed_elsewhere for claim in result)) for result in results]
        assert not claimed[0] & claimed[1]
        assert claimed[0] | claimed[1] == set(keys)
        assert claimed[0] | elsewhere[0] == set(keys) == claimed[1] | elsewhere[1]
        with postgres.begin() as conn:
            conn.execute(ledgers[0].table.delete())


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Ledger]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield make_ledger(engine)
    engine.dispose()


def test_on_sqlite_the_statements_are_built_once_and_run_without_executemany(sqlite_ledger):
    ledger = sqlite_ledger
    keys = [f"order-{i}" for i in range(3_333)]
    sent: list[int] = []
    with statements_run(ledger.engine) as seen:
        for window in windows(keys):
            claims = ledger.claim_batches(window, mark_sent=sent)
            sent = [claim.claim_id for claim in claims]
        ledger.mark_claims_sent(sent)
        assert len(ledger.sent_digests(keys + ["x"] * 7_000)) == 3_333
    inserts, updates = writes(seen, "INSERT", EVENTS), writes(seen, "UPDATE", CLAIMS)
    assert len(inserts) == 9  # one per window of 400 rows
    assert len(updates) == 9  # one per window after the first, and the last
    assert writes(seen, "UPDATE") == updates  # a mark writes the claims' rows, none of their keys'
    # the claims' own rows (one per batch): one multi-row VALUES per window as well
    claim_rows = writes(seen, "INSERT", CLAIMS)
    assert len(claim_rows) == 9 and len(writes(seen, "INSERT")) == 18
    assert not any(many for _, many in seen)
    # a few texts, each prepared once by sqlite3 and found in its statement cache afterwards
    assert len({sql for sql, _ in inserts}) == 2  # 400 rows, and the last 133
    assert len({sql for sql, _ in updates}) == 1  # 4 claim ids, padded to 8
    selects = writes(seen, "SELECT")
    # 10,333 keys in IN lists of 500, then their claims' statuses in one list
    assert len(selects) == 22 and len({sql for sql, _ in selects}) == 2


def test_on_sqlite_an_error_while_fetching_rows_is_a_database_error_as_sqlalchemy_raises_it(sqlite_ledger):
    """Lookups fetch sqlite3's own tuples; a failure after the first row must still be retried like any other."""
    failing_on_the_second_row = "SELECT json_extract(v, '$') FROM (SELECT '1' AS v UNION ALL SELECT '{not json')"
    with sqlite_ledger.engine.connect() as conn:
        with pytest.raises(sa.exc.OperationalError, match="malformed JSON") as caught:
            _fetch_tuples(conn, failing_on_the_second_row, ())
        assert isinstance(caught.value.orig, sqlite3.OperationalError)
        # the connection is usable afterwards, and the lookups answer in plain tuples
        assert _fetch_tuples(conn, "SELECT 1, 'a'", ()) == [(1, "a")]


def test_on_sqlite_a_library_allowing_999_parameters_gets_smaller_statements(tmp_path):
    """SQLite before 3.32 (Ubuntu 20.04's 3.31) allows 999 parameters per statement: 332 rows of 3, and 1 shared."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")

    @sa.event.listens_for(engine, "connect")
    def old_limit(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    try:
        ledger = make_ledger(engine)
        keys = [f"k{i}" for i in range(1_000)]
        with statements_run(engine) as seen:
            claims = ledger.claim_batches([entries(keys[i : i + 100]) for i in range(0, 1_000, 100)])
            ledger.mark_claims_sent([claim.claim_id for claim in claims])
            assert len(ledger.sent_digests(keys)) == 1_000
        assert [claim.claimed for claim in claims] == [set(keys[i : i + 100]) for i in range(0, 1_000, 100)]
        rows = [sql.count("(?1,") for sql, _ in writes(seen, "INSERT", EVENTS)]
        assert rows == [332, 332, 332, 4]  # (999 - 1) // 3 rows each: the namespace once, 3 per key
        assert len(writes(seen, "INSERT", CLAIMS)) == 1  # the 10 claims' own rows
    finally:
        engine.dispose()


def test_on_sqlite_durability_is_what_sqlite_gives_a_plain_connection(sqlite_ledger, tmp_path):
    ledger = sqlite_ledger
    ledger.claim(entries(["a"]))
    plain = sqlite3.connect(tmp_path / "ledger.db")
    try:
        expected = plain.execute("PRAGMA synchronous").fetchone()
    finally:
        plain.close()
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").fetchone() == expected
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_the_statements_quote_a_schema_qualified_table(postgres):
    with postgres.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA ledgers")
    ledger = Ledger(postgres, namespace="n", owner=ClaimOwner(), table_name="ledgers.Deliveries_2026")
    ledger.create_tables()
    claim = ledger.claim(entries(["a", "b"]))
    ledger.mark_claims_sent([claim.claim_id])
    assert ledger.sent_digests(["a", "b", "c"]) == {"a": content_digest(digest("a")), "b": content_digest(digest("b"))}


def test_a_ledger_written_by_the_core_statements_still_stops_every_resend(engine, pagent_emulator):
    """Rows the Core statements wrote (keys and claims, the same tables) keep the fast path from resending any key."""
    import pandas as pd

    from pagent_provider.core.client import PagentClient
    from pagent_provider.core.sync import ConversionSync, SyncOptions
    from pagent_provider.core.transform import TransformConfig

    frame = pd.DataFrame(
        {
            "order_id": [str(i) for i in range(1, 1_251)],
            "session_id": [f"s{i}" for i in range(1_250)],
            "user_id": "u",
            "conversion_id": "c",
            "revenue": 12.5,
            "time": pd.Timestamp("2026-10-01 12:00:00"),
        }
    )
    transform = TransformConfig(key_column="order_id")

    def sync(ledger: Ledger) -> dict[str, int]:
        client = PagentClient("test-key", base_url=pagent_emulator.url, pool_size=4)
        try:
            chunks = [frame.iloc[i : i + 500] for i in range(0, len(frame), 500)]
            summary = ConversionSync(client, transform, SyncOptions(max_workers=4), ledger=ledger).run(chunks)
        finally:
            client.close()
        return {"sent": summary.sent, "already_sent": summary.already_sent}

    old = Ledger(engine, namespace="n", owner=ClaimOwner())
    old._sql = reference(old)  # what the release before this one ran
    assert sync(old) == {"sent": 1_250, "already_sent": 0}
    assert sync(Ledger(engine, namespace="n", owner=ClaimOwner())) == {"sent": 0, "already_sent": 1_250}
    assert pagent_emulator.accepted_count == 1_250
