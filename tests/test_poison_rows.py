"""Poison rows: a row whose event JSON or UTF-8 cannot carry is rejected with a reason; the sync goes on.

Each test drives :class:`~pagent_provider.core.sync.ConversionSync` over a real
warehouse (SQLite, and PostgreSQL for ``numeric 'NaN'``), a real ledger and the
pagent emulator over HTTP, and judges the outcome by what the EMULATOR stored
(counted per order id carried in the properties) and what the ledger's
``<table>_rejects`` holds, not only by the summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pagent_provider.core import preparation
from pagent_provider.core.client import PagentClient
from pagent_provider.core.ledger import Ledger
from pagent_provider.core.preparation import ChunkPreparer
from pagent_provider.core.reading import read_sql_chunks
from pagent_provider.core.sync import ConversionSync, SyncOptions, SyncSummary
from pagent_provider.core.transform import TransformConfig, transform_chunk
from pagent_provider.core.transport import RetryPolicy
from pagent_provider.testing import IngestEmulator

KEY = "test-key"
NAMESPACE = "poison"
LEDGER_TABLE = "pagent_ledger"
START = datetime(2026, 1, 5, 9, 0, 0)
GOOD_ROWS = 300
CONFIG = TransformConfig(
    columns={"time": "converted_at", "revenue": "amount_usd"},
    key_column="order_id",
    properties_columns=["note"],
)
OPTIONS = SyncOptions(batch_size=40, max_workers=2, max_invalid_rows=50)
QUERY = "SELECT * FROM conversions ORDER BY order_id"

# order_id -> (SQL expressions for amount_usd, properties, note, session_id; expected field; words of the reason)
SQLITE_POISON: dict[int, tuple[str, str, str, str, str, str]] = {
    # JSON text with an escaped lone surrogate: json.loads hands back '\ud800'
    1001: ("19.99", """'{"order_id": 1001, "comment": "\\ud800"}'""", "'x'", "'s1001'", "properties", "lone surrogate"),
    # a number beyond float64 in JSON text: json.loads turns it into inf
    1002: ("19.99", """'{"order_id": 1002, "price": 1e400}'""", "'x'", "'s1002'", "properties", "not a finite number"),
    # NaN revenue as SQLite hands it back (SQLite stores NaN itself as NULL)
    1003: ("'NaN'", """'{"order_id": 1003}'""", "'x'", "'s1003'", "revenue", "not NULL"),
    # an infinite REAL revenue
    1004: ("9e999", """'{"order_id": 1004}'""", "'x'", "'s1004'", "revenue", "not a finite number"),
    # an odd type in a gathered column: binary data that is not UTF-8
    1005: ("19.99", """'{"order_id": 1005}'""", "X'FFFE00'", "'s1005'", "properties", "not UTF-8"),
    # broken UTF-8 text, decoded by the driver with surrogateescape: 'ab\udcff'
    1006: ("19.99", """'{"order_id": 1006}'""", "CAST(X'6162FF' AS TEXT)", "'s1006'", "properties", "lone surrogate"),
    # the same in an id column
    1007: ("19.99", """'{"order_id": 1007}'""", "'x'", "CAST(X'73FF' AS TEXT)", "session_id", "lone surrogate"),
    # hostile nesting: json.loads would hit a RecursionError
    1008: ("19.99", "'" + '{"a":' * 5000 + "1" + "}" * 5000 + "'", "'x'", "'s1008'", "properties", "deeper than"),
    # NaN inside nested JSON text is not JSON
    1009: ("19.99", """'{"order_id": 1009, "items": [{"price": NaN}]}'""", "'x'", "'s1009'", "properties", "NaN"),
    # deep but parseable nesting, beyond the properties depth limit
    1010: ("19.99", "'" + '{"a":' * 40 + "1" + "}" * 40 + "'", "'x'", "'s1010'", "properties", "deeper than 32"),
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[IngestEmulator]:
    with IngestEmulator(api_keys=(KEY,)) as running:
        yield running


@pytest.fixture
def client(emulator: IngestEmulator) -> Iterator[PagentClient]:
    emulator.reset()
    with PagentClient(KEY, base_url=emulator.url, policy=RetryPolicy(backoff_initial_s=0.01)) as pagent:
        yield pagent


def sqlite_warehouse(path: str) -> sa.Engine:
    """A SQLite engine whose driver decodes broken UTF-8 with surrogateescape, as some drivers do."""
    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _decode_like_a_lenient_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")

    return engine


def fill_sqlite(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        # Columns without a declared type keep what is stored (REAL, TEXT or BLOB).
        conn.exec_driver_sql(
            "CREATE TABLE conversions (order_id INTEGER PRIMARY KEY, session_id, user_id TEXT, "
            "conversion_id TEXT, amount_usd, converted_at TEXT, properties TEXT, note)"
        )
        conn.execute(
            sa.text(
                "INSERT INTO conversions VALUES (:order_id, :session_id, 'u', 'goal', :amount, :at, :properties, :note)"
            ),
            [good_row(i) for i in range(1, GOOD_ROWS + 1)],
        )
        for order_id, (amount, properties, note, session_id, _, _) in SQLITE_POISON.items():
            conn.exec_driver_sql(
                f"INSERT INTO conversions VALUES ({order_id}, {session_id}, 'u', 'goal', {amount}, "
                f"'{(START + timedelta(minutes=order_id)).isoformat()}', {properties}, {note})"
            )


def good_row(i: int) -> dict[str, Any]:
    # Every good row is a little different: NULL revenue (allowed: no revenue field),
    # non-ASCII and non-BMP text, and a NULL note.
    return {
        "order_id": i,
        "session_id": f"sess_{i:05d}",
        "amount": None if i % 50 == 0 else round(i * 1.25, 2),
        "at": (START + timedelta(minutes=i)).isoformat(),
        "properties": json.dumps({"order_id": i, "city": "Zürich", "mood": "\U0001f600"}, ensure_ascii=i % 2 == 0),
        "note": None if i % 7 == 0 else f"note {i} \u4e2d",
    }


def run_sync(client: PagentClient, warehouse: sa.Engine, ledger_engine: sa.Engine) -> SyncSummary:
    ledger = Ledger(ledger_engine, namespace=NAMESPACE, table_name=LEDGER_TABLE)
    sync = ConversionSync(client, CONFIG, OPTIONS, ledger=ledger)
    return sync.run(read_sql_chunks(warehouse, QUERY, chunksize=64))


def received(emulator: IngestEmulator) -> Counter[int]:
    return Counter(event["properties"]["order_id"] for event in emulator.events())


def ledger_rejects(engine: sa.Engine) -> list[sa.Row[Any]]:
    table = sa.Table(f"{LEDGER_TABLE}_rejects", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).where(table.c.namespace == NAMESPACE).order_by(table.c.id)))


# --------------------------------------------------------------------------- SQLite


def test_poison_rows_are_rejected_and_every_good_row_is_delivered_once(client, emulator, tmp_path):
    warehouse = sqlite_warehouse(str(tmp_path / "warehouse.db"))
    ledger_engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    fill_sqlite(warehouse)

    summary = run_sync(client, warehouse, ledger_engine)

    assert received(emulator) == Counter(range(1, GOOD_ROWS + 1))
    assert (summary.rows, summary.sent, summary.invalid) == (GOOD_ROWS + len(SQLITE_POISON), GOOD_ROWS, 10)
    rejects = ledger_rejects(ledger_engine)
    assert [row.row_ref for row in rejects] == [str(order_id) for order_id in SQLITE_POISON]
    for row, (order_id, expected) in zip(rejects, SQLITE_POISON.items(), strict=True):
        *_, field, words = expected
        assert (row.source, row.field) == ("invalid", field), order_id
        assert words in row.reason, (order_id, row.reason)
        row.reason.encode("utf-8")  # stored, so encodable: the poison is only ever shown escaped
    assert "properties.comment" in rejects[0].reason and "properties.price" in rejects[1].reason
    assert "amount_usd" in rejects[2].reason and "amount_usd" in rejects[3].reason  # names the revenue column
    assert "'note'" in rejects[4].reason and "'note'" in rejects[5].reason

    # NULL revenue is not NaN: those rows went out without a revenue field.
    by_id = {event["properties"]["order_id"]: event for event in emulator.events()}
    assert "revenue" not in by_id[50] and by_id[51]["revenue"] == 6375
    assert by_id[3]["properties"] == {"order_id": 3, "city": "Zürich", "mood": "\U0001f600", "note": "note 3 \u4e2d"}

    requests = len(emulator.requests())
    again = run_sync(client, warehouse, ledger_engine)
    assert (again.sent, again.already_sent, again.invalid) == (0, GOOD_ROWS, len(SQLITE_POISON))
    assert len(emulator.requests()) == requests  # the re-run sent nothing at all
    assert received(emulator) == Counter(range(1, GOOD_ROWS + 1))
    warehouse.dispose()
    ledger_engine.dispose()


def test_too_many_poison_rows_still_fail_the_sync(client, emulator, tmp_path):
    from pagent_provider.exceptions import PagentDeliveryError

    warehouse = sqlite_warehouse(str(tmp_path / "warehouse.db"))
    ledger_engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    fill_sqlite(warehouse)
    ledger = Ledger(ledger_engine, namespace=NAMESPACE, table_name=LEDGER_TABLE)
    sync = ConversionSync(client, CONFIG, SyncOptions(batch_size=40, max_invalid_rows=3), ledger=ledger)
    with pytest.raises(PagentDeliveryError) as raised:
        sync.run(read_sql_chunks(warehouse, QUERY, chunksize=64))
    assert raised.value.summary["invalid"] == len(SQLITE_POISON)  # a clean failure, not a UnicodeEncodeError
    warehouse.dispose()
    ledger_engine.dispose()


# --------------------------------------------------------------------------- events that fail to encode


def poisoning(keys_to_values: dict[str, Any]):
    """A transform_chunk that puts a value JSON cannot carry into chosen events, as a transform bug would."""

    def transform(df: pd.DataFrame, config: TransformConfig, **kwargs: Any):
        chunk = transform_chunk(df, config, **kwargs)
        for index, event in enumerate(chunk.events):
            key = chunk.keys[index] if chunk.keys is not None else str(event["properties"]["order_id"])
            if key in keys_to_values:
                event["properties"] = {"order_id": int(key), "bad": keys_to_values[key]}
        return chunk

    return transform


def test_an_event_that_fails_to_encode_is_a_reject_not_a_crash(client, emulator, tmp_path, monkeypatch):
    """The encoding safety net: whatever slips past the transform costs one row, not the run."""
    loop: list[Any] = []
    loop.append(loop)
    poison = {"7": "x\ud800", "8": float("nan"), "9": {1, 2}, "10": loop}
    monkeypatch.setattr(preparation, "transform_chunk", poisoning(poison))
    warehouse = sqlite_warehouse(str(tmp_path / "warehouse.db"))
    ledger_engine = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    fill_sqlite(warehouse)
    with warehouse.begin() as conn:
        conn.exec_driver_sql("DELETE FROM conversions WHERE order_id > 1000")

    summary = run_sync(client, warehouse, ledger_engine)

    good = set(range(1, GOOD_ROWS + 1)) - {7, 8, 9, 10}
    assert received(emulator) == Counter(good)
    assert (summary.valid, summary.invalid, summary.sent) == (len(good), 4, len(good))
    rejects = {row.row_ref: row for row in ledger_rejects(ledger_engine)}
    assert sorted(rejects) == ["10", "7", "8", "9"]
    assert all(row.field == "properties" for row in rejects.values())
    assert "properties.bad" in rejects["7"].reason and "lone surrogate" in rejects["7"].reason
    assert "not a finite number" in rejects["8"].reason
    assert "set" in rejects["9"].reason
    assert "deeper than" in rejects["10"].reason
    warehouse.dispose()
    ledger_engine.dispose()


def test_unkeyed_encoding_rejects_name_the_row_across_chunks(monkeypatch):
    monkeypatch.setattr(preparation, "transform_chunk", poisoning({"70": "\udfff", "3": float("inf")}))
    frame = pd.DataFrame([good_row(i) for i in range(1, 101)]).rename(columns={"amount": "amount_usd"})
    frame["converted_at"] = frame.pop("at")
    frame["user_id"], frame["conversion_id"] = "u", "goal"
    config = TransformConfig(columns={"time": "converted_at", "revenue": "amount_usd"})
    preparer = ChunkPreparer(config, None, dry_run=True)
    first, second = preparer.prepare(frame.iloc[:64]), preparer.prepare(frame.iloc[64:])
    assert [(r.row, r.field) for r in first.rejects + second.rejects] == [
        ("row 2", "properties"),
        ("row 69", "properties"),
    ]
    assert (first.valid, second.valid) == (63, 35)
    assert len(first.pending) + len(second.pending) == 98


# --------------------------------------------------------------------------- PostgreSQL


def fill_postgres(engine: sa.Engine) -> dict[int, tuple[str, str]]:
    """Good rows 1..100, then poison rows; returns order_id -> (field, words) of the poison rows."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE conversions (order_id bigint PRIMARY KEY, session_id text, user_id text, "
            "conversion_id text, amount_usd numeric(12, 2), converted_at timestamp, properties json, "
            "note double precision)"
        )
        conn.execute(
            sa.text(
                "INSERT INTO conversions VALUES (:order_id, :session_id, 'u', 'goal', :amount, "
                "CAST(:at AS timestamp), CAST(:properties AS json), :weight)"
            ),
            [{**good_row(i), "weight": i / 4} for i in range(1, 101)],
        )
        poison = {
            # numeric 'NaN' reaches Python as Decimal('NaN'): a value, not NULL
            201: ("'NaN'::numeric", """'{"order_id": 201}'""", "1.5", "revenue", "NaN"),
            # the json type (unlike jsonb) keeps a lone surrogate escape; the driver's json.loads decodes it
            202: ("1.00", """'{"order_id": 202, "c": "\\udc00"}'""", "1.5", "properties", "lone surrogate"),
            # ... and a number beyond float64, which json.loads turns into inf
            203: ("1.00", """'{"order_id": 203, "p": -1e400}'""", "1.5", "properties", "not a finite number"),
            # an infinite double precision in a gathered column
            204: ("1.00", """'{"order_id": 204}'""", "'Infinity'::float8", "properties", "not a finite number"),
        }
        for order_id, (amount, properties, note, _, _) in poison.items():
            conn.exec_driver_sql(
                f"INSERT INTO conversions VALUES ({order_id}, 's{order_id}', 'u', 'goal', {amount}, "
                f"'2026-01-06 10:00:00', {properties}::json, {note})"
            )
    return {order_id: (field, words) for order_id, (*_, field, words) in poison.items()}


def test_postgresql_numeric_nan_revenue_is_invalid_and_null_is_not(client, emulator, postgres_url):
    engine = sa.create_engine(postgres_url)
    poison = fill_postgres(engine)
    try:
        summary = run_sync(client, engine, engine)  # the ledger lives in the same database
        assert received(emulator) == Counter(range(1, 101))
        assert (summary.sent, summary.invalid) == (100, len(poison))
        rejects = ledger_rejects(engine)
        assert [int(row.row_ref) for row in rejects] == list(poison)
        for row, (field, words) in zip(rejects, poison.values(), strict=True):
            assert (row.field, words in row.reason) == (field, True), row.reason
        assert "amount_usd" in rejects[0].reason and "not NULL" in rejects[0].reason
        by_id = {event["properties"]["order_id"]: event for event in emulator.events()}
        assert "revenue" not in by_id[50] and by_id[49]["revenue"] == 6125  # NULL: no revenue field, allowed

        requests = len(emulator.requests())
        again = run_sync(client, engine, engine)
        assert (again.sent, again.already_sent, again.invalid) == (0, 100, len(poison))
        assert len(emulator.requests()) == requests
    finally:
        engine.dispose()
