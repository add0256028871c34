"""pytest fixtures for testing code that talks to pagent, without pagent's servers.

This plugin is registered automatically (``pytest11`` entry point) when
``airflow-provider-pagent`` is installed; it provides:

* ``pagent_emulator``: a running :class:`~pagent_provider.testing.IngestEmulator`.
* ``pagent_connection``: the same emulator, with the Airflow connection
  ``pagent_default`` pointing at it.

Example::

    def test_upload(pagent_connection):
        run_my_dag_or_hook(conn_id="pagent_default")
        assert [e["session_id"] for e in pagent_connection.events()] == ["s1", "s2"]

    def test_retries(pagent_emulator):
        pagent_emulator.faults = Faults(fail_every=2)
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pagent_provider.testing.emulator import IngestEmulator


@pytest.fixture
def pagent_emulator() -> Iterator[IngestEmulator]:
    """A running pagent ingest emulator, stopped after the test.

    It listens on ``127.0.0.1`` on a free port (``pagent_emulator.url``) and
    accepts the API key ``"test-key"``. Inspect what it received with
    ``pagent_emulator.events()`` (events normalized to the v1 shape),
    ``.accepted()``, ``.requests()`` and ``.accepted_count``; inject faults by
    setting ``pagent_emulator.faults = Faults(...)``.

    Yields:
        The started :class:`~pagent_provider.testing.IngestEmulator`.
    """
    emulator = IngestEmulator(host="127.0.0.1", port=0, api_keys=("test-key",))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def pagent_connection(pagent_emulator: IngestEmulator, monkeypatch: pytest.MonkeyPatch) -> IngestEmulator:
    """The ``pagent_emulator``, with Airflow's ``pagent_default`` connection pointing at it.

    Sets the environment variable ``AIRFLOW_CONN_PAGENT_DEFAULT`` (for the
    duration of the test) to a JSON connection of type ``pagent`` with the
    emulator's host, port and the API key ``"test-key"`` as password, so hooks
    and operators using the default connection id talk to the emulator. No
    Airflow metadata database is needed.

    Returns:
        The running :class:`~pagent_provider.testing.IngestEmulator`.
    """
    monkeypatch.setenv("AIRFLOW_CONN_PAGENT_DEFAULT", pagent_emulator.airflow_connection_json())
    return pagent_emulator
