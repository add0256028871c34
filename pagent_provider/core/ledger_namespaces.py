"""The namespaces of one ledger, each by a small id in ``<table>_namespaces``.

Every key's row and its primary-key entry name their namespace. By its text
(the operator's default is the pagent connection id, ``pagent_default``) that
was 15 bytes twice a key; by a ``SMALLINT`` it is 2. The id is looked up
once per ledger object, and given to a namespace the first time a run writes
to it: the next id (the largest + 1), inserted under the table's primary key
and its unique namespace, so that two runs registering at once either get
the same id (one namespace) or different ones (two), never one id for two.
A run that loses the next id to another tries the one after: of ``n`` runs
registering at once, one wins each round, so the last tries ``n`` times.
An id keys still carry is never given again: when a row of the table was
deleted by hand, registering refuses and says how to put it back, rather
than hand those keys to another namespace. (A row renumbered by hand while
a run is live is not caught: the run keeps the id it read. The table is
written by the ledger only.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, TypeVar

import sqlalchemy as sa

from pagent_provider.exceptions import PagentLedgerError

T = TypeVar("T")

#: The largest id a SMALLINT holds: how many namespaces one ledger table can have.
MAX_NAMESPACES = 32_767


def find_namespace_id(conn: sa.Connection, namespaces: sa.Table, namespace: str) -> int | None:
    """The id of ``namespace``, or ``None`` when no run has written to it."""
    query = sa.select(namespaces.c.namespace_id).where(namespaces.c.namespace == namespace)
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def _largest_id(conn: sa.Connection, namespaces: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.max(namespaces.c.namespace_id))).scalar_one_or_none() or 0)


def _ids_of_keys(conn: sa.Connection, events: sa.Table) -> set[int]:
    """The namespace ids the keys carry: one probe of the primary key per namespace, not a scan of the keys."""
    ids: set[int] = set()
    first = sa.func.min(events.c.namespace_id)
    current = conn.execute(sa.select(first)).scalar_one_or_none()
    while current is not None:
        ids.add(int(current))
        current = conn.execute(sa.select(first).where(events.c.namespace_id > current)).scalar_one_or_none()
    return ids


def _registered_ids(conn: sa.Connection, events: sa.Table, namespaces: sa.Table) -> set[int]:
    """The ids of the namespaces table, after checking that every id the keys carry is among them.

    The keys first: a key is written only after its namespace's row was
    committed, so a read of the namespaces that starts later sees that row
    even where each statement has a snapshot of its own (PostgreSQL's READ
    COMMITTED); read the other way round, a run registering meanwhile would
    look like a deleted row.
    """
    carried = _ids_of_keys(conn, events)
    registered = {int(number) for number in conn.execute(sa.select(namespaces.c.namespace_id)).scalars()}
    orphans = sorted(carried - registered)
    if orphans:
        raise PagentLedgerError(
            f"ledger table {events.name!r} holds keys of namespace ids {orphans[:5]} that {namespaces.name!r} no "
            "longer names (a row of it was deleted or changed by hand). A new namespace could take such an id "
            "and its keys, and the namespace they belong to would send them again. Put the rows back "
            f"(INSERT INTO {namespaces.name} (namespace_id, namespace) VALUES (<id>, '<namespace>')) or delete "
            "those keys, then run again; never edit the namespaces table by hand."
        )
    return registered


def _insert_next(conn: sa.Connection, events: sa.Table, namespaces: sa.Table, namespace: str, tried: list[int]) -> int:
    found = find_namespace_id(conn, namespaces, namespace)
    if found is not None:
        return found
    # an id that keys still carry is never given again, to this namespace or another
    registered = _registered_ids(conn, events, namespaces)
    namespace_id = max(registered, default=0) + 1
    tried.append(namespace_id)
    if namespace_id > MAX_NAMESPACES:
        raise PagentLedgerError(
            f"ledger table {namespaces.name!r} already holds {MAX_NAMESPACES} namespaces, as many as it can; "
            "give this one a ledger table of its own (ledger_table)"
        )
    conn.execute(namespaces.insert().values(namespace_id=namespace_id, namespace=namespace))
    return namespace_id


def _lost_to_another_run(conn: sa.Connection, namespaces: sa.Table, namespace: str, tried: list[int]) -> bool:
    """Whether another run explains a refused insert: it registered this namespace, or took the id tried."""
    if find_namespace_id(conn, namespaces, namespace) is not None:
        return True
    return bool(tried) and _largest_id(conn, namespaces) >= tried[-1]


class Transaction(Protocol):
    """Runs ``work`` in one transaction (retried while the database fails transiently) and returns its result."""

    def __call__(self, work: Callable[[sa.Connection], T]) -> T: ...


def register_namespace(transaction: Transaction, events: sa.Table, namespaces: sa.Table, namespace: str) -> int:
    """The id of ``namespace``, given to it now if it has none.

    Raises:
        PagentLedgerError: the table holds :data:`MAX_NAMESPACES` already;
            keys carry an id the table no longer names; or the database
            refused the insert for a reason no other run explains.
    """
    while True:
        tried: list[int] = []
        try:
            return transaction(
                functools.partial(_insert_next, events=events, namespaces=namespaces, namespace=namespace, tried=tried)
            )
        except sa.exc.IntegrityError as error:
            # Each loss is another run's progress, so this ends (at MAX_NAMESPACES at the latest).
            lost = functools.partial(_lost_to_another_run, namespaces=namespaces, namespace=namespace, tried=tried)
            if not transaction(lost):
                raise PagentLedgerError(
                    f"the database refused to register namespace {namespace!r} in {namespaces.name!r} "
                    f"({type(error).__name__}), and no other run took its id: check the table's constraints"
                ) from None
