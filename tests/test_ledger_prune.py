"""Issue 12, ledger retention: ``Ledger.prune_sent`` and ``pagent-conversions ledger prune``, on each database.

Only ``sent`` keys older than the horizon go; ``claimed`` and ``unknown`` keys stay
however old; a re-run of a window within the horizon sends nothing; a pruned key
selected again is sent again (the documented trade-off).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pagent_provider.cli import main
from pagent_provider.core.ledger import CLAIMED, SENT, UNKNOWN, Ledger, now_ms
from pagent_provider.exceptions import PagentConfigError
from pagent_provider.testing.sample_warehouse import generate_conversions, write_conversions

NAMESPACE = "prune-test"
DAY_MS = 86_400_000


def namespace_id(conn: sa.Connection, ledger: Ledger) -> int:
    """The id under which the ledger's namespace is registered in ``<table>_namespaces``."""
    n = ledger.namespaces_table
    return conn.execute(sa.select(n.c.namespace_id).where(n.c.namespace == ledger.namespace)).scalar_one()


def backdate(ledger: Ledger, keys: list[str], days: float) -> None:
    """Move the claim and send times of ``keys`` ``days`` into the past.

    The times live on the claims: ``keys`` move to a copy of their claim made
    ``days`` ago (sent then if it was sent), as if an earlier run had claimed
    them, and the other keys of their claim keep its times.
    """
    t, c = ledger.table, ledger.claims_table
    stamp = now_ms() - round(days * DAY_MS)
    with ledger.engine.begin() as conn:
        where = (t.c.namespace_id == namespace_id(conn, ledger), t.c.event_key.in_(keys))
        claim_ids = set(conn.execute(sa.select(t.c.claim_id).where(*where)).scalars())
        assert claim_ids, "no key to backdate"
        for claim_id in claim_ids:
            claim = conn.execute(sa.select(c).where(c.c.claim_id == claim_id)).one()._asdict()
            old_id = secrets.randbits(63)
            sent_at = stamp if claim["sent_at"] is not None else None
            conn.execute(
                c.insert().values(
                    {**claim, "claim_id": old_id, "claimed_at": stamp, "heartbeat_at": stamp, "sent_at": sent_at}
                )
            )
            conn.execute(t.update().where(*where, t.c.claim_id == claim_id).values(claim_id=old_id))


def statuses(ledger: Ledger) -> dict[str, str]:
    """Every key of the ledger's namespace with its effective status (its own, else its claim's)."""
    t = ledger.table
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.event_key).where(t.c.namespace_id == namespace_id(conn, ledger)))
        event_keys = list(rows.scalars())
    return {key: row.status for key, row in ledger.lookup(event_keys).items()}


def test_only_old_sent_keys_are_pruned_in_batches(engine):
    ledger = Ledger(engine, namespace=NAMESPACE, claim_timeout_s=3600)
    other = Ledger(engine, namespace="another-namespace")
    ledger.create_tables()
    old_sent = [f"old-{i:03d}" for i in range(25)]
    recent_sent = [f"new-{i:03d}" for i in range(5)]
    claim = ledger.claim([(key, "h") for key in old_sent + recent_sent])
    ledger.mark_sent(claim.claim_id)
    claimed = ledger.claim([("old-claimed", "h")])  # a run in flight, claimed long ago
    unknown = ledger.claim([("old-unknown", "h")])
    ledger.mark_unknown(unknown.claim_id, None, "answer lost")
    elsewhere = other.claim([("old-000", "h")])  # the same key in another namespace
    other.mark_sent(elsewhere.claim_id)
    backdate(ledger, [*old_sent, "old-claimed", "old-unknown"], days=400)
    backdate(other, ["old-000"], days=400)
    assert claimed.claim_id

    horizon = now_ms() - 30 * DAY_MS
    assert ledger.prunable_sent(horizon) == 25
    assert ledger.prune_sent(horizon, batch=7) == 25  # four batches: 7, 7, 7, 4

    left = statuses(ledger)
    assert left == {**dict.fromkeys(recent_sent, SENT), "old-claimed": CLAIMED, "old-unknown": UNKNOWN}
    assert statuses(other) == {"old-000": SENT}  # another namespace is not touched
    assert ledger.prune_sent(horizon) == 0  # nothing more to do
    with pytest.raises(PagentConfigError):
        ledger.prune_sent(horizon, batch=0)


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    day = datetime(2026, 11, 10)
    write_conversions(url, generate_conversions(40, start=day, end=day + timedelta(days=1), seed=31))
    return url


SQL = "SELECT * FROM conversions WHERE order_id BETWEEN :first AND :last"
MAPPING = ["--columns", "time=converted_at", "revenue=amount_usd", "--key-column", "order_id"]


def sync(emulator, source: str, ledger_url: str, first: int, last: int, capsys) -> dict:
    where = ["--source-url", source, "--ledger-url", ledger_url, "--ledger-namespace", NAMESPACE]
    query = ["--sql", SQL, "--param", f"first={first}", f"last={last}", *MAPPING]
    status = main(["sync", "--json", "--base-url", emulator.url, *where, *query])
    document = json.loads(capsys.readouterr().out)
    assert status == 0, document
    return document


def prune(ledger_url: str, *extra: str) -> int:
    return main(["ledger", "prune", "--ledger-url", ledger_url, "--ledger-namespace", NAMESPACE, *extra])


def test_the_cli_prunes_and_a_rerun_within_the_horizon_sends_nothing(
    db_url, engine, source, pagent_emulator, monkeypatch, capsys
):
    monkeypatch.setenv("PAGENT_API_KEY", "test-key")
    assert sync(pagent_emulator, source, db_url, 1, 40, capsys)["sent"] == 40
    ledger = Ledger(engine, namespace=NAMESPACE)
    backdate(ledger, [str(n) for n in range(1, 21)], days=400)  # orders 1-20 were sent long ago

    assert prune(db_url, "--older-than", "3") == 2  # under 7 days: refused without --force
    assert "--force" in capsys.readouterr().err
    assert prune(db_url, "--older-than", "30", "--dry-run") == 0
    assert "20 sent keys older than 30 days" in capsys.readouterr().out
    assert len(statuses(ledger)) == 40  # a dry run deletes nothing
    assert prune(db_url, "--older-than", "30", "--batch", "6") == 0
    assert "deleted 20 sent keys" in capsys.readouterr().out
    assert sorted(map(int, statuses(ledger))) == list(range(21, 41))

    again = sync(pagent_emulator, source, db_url, 21, 40, capsys)  # within the horizon
    assert again["sent"] == 0 and again["already_sent"] == 20
    assert len(pagent_emulator.events()) == 40

    # The trade-off, as documented: a pruned key selected again is sent again.
    resent = sync(pagent_emulator, source, db_url, 1, 20, capsys)
    assert resent["sent"] == 20 and len(pagent_emulator.events()) == 60


def test_prune_of_a_ledger_that_does_not_exist_yet(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).connect().close()  # the file exists, the table does not
    assert prune(url, "--older-than", "90") == 0
    assert "nothing to prune" in capsys.readouterr().out
