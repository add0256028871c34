"""The namespaces of one ledger, each by a small id in ``<table>_namespaces``.

Every key's row and its primary-key entry name their namespace. By its text
(the operator's default is the pagent connection id, ``pagent_default``) that
was 15 bytes twice a key; by a ``SMALLINT`` it is 2. The id is looked up
once per ledger object, and given to a namespace the first time a run writes
to it: the next id (the largest + 1), inserted under the table's primary key
and its unique namespace, so that two runs registering at once either get
the same id (one namespace) or different ones (two), never one id for two.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from pagent_provider.exceptions import PagentLedgerError

#: The largest id a SMALLINT holds: how many namespaces one ledger table can have.
MAX_NAMESPACES = 32_767
#: Registrations lost to another run's at once before giving up (each one is progress for that run).
_ATTEMPTS = 10


def find_namespace_id(conn: sa.Connection, namespaces: sa.Table, namespace: str) -> int | None:
    """The id of ``namespace``, or ``None`` when no run has written to it."""
    query = sa.select(namespaces.c.namespace_id).where(namespaces.c.namespace == namespace)
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def _insert_next(conn: sa.Connection, namespaces: sa.Table, namespace: str) -> int:
    found = find_namespace_id(conn, namespaces, namespace)
    if found is not None:
        return found
    largest = conn.execute(sa.select(sa.func.max(namespaces.c.namespace_id))).scalar_one_or_none()
    namespace_id = int(largest or 0) + 1
    if namespace_id > MAX_NAMESPACES:
        raise PagentLedgerError(
            f"ledger table {namespaces.name!r} already holds {MAX_NAMESPACES} namespaces, as many as it can; "
            "give this one a ledger table of its own (ledger_table)"
        )
    conn.execute(namespaces.insert().values(namespace_id=namespace_id, namespace=namespace))
    return namespace_id


def register_namespace(
    write: Callable[[Callable[[sa.Connection], int]], int], namespaces: sa.Table, namespace: str
) -> int:
    """The id of ``namespace``, given to it now if it has none; ``write`` runs a function in a transaction.

    Raises:
        PagentLedgerError: the table holds :data:`MAX_NAMESPACES` already, or
            other runs kept taking the next id first.
    """
    for _ in range(_ATTEMPTS):
        try:
            return write(lambda conn: _insert_next(conn, namespaces, namespace))
        except sa.exc.IntegrityError:
            continue  # another run took that id (or registered this namespace) first: look again
    raise PagentLedgerError(
        f"could not register namespace {namespace!r} in {namespaces.name!r}: other runs took every id tried "
        f"({_ATTEMPTS} attempts); run the sync again"
    )
