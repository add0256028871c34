"""Testing helpers for the pagent provider: a local emulator of pagent's ingest API.

:class:`IngestEmulator` is a real HTTP server implementing pagent's documented
conversions endpoints (``/v1/conversions``, ``/v2/conversions``,
``/v2/conversions/bulk``), with injectable :class:`Faults`. Use it in tests,
demos and benchmarks instead of pagent's servers::

    from pagent_provider.testing import IngestEmulator

    with IngestEmulator() as emulator:      # accepts the API key "test-key"
        ...                                 # send to emulator.url
        print(emulator.events())

pytest users get the fixtures ``pagent_emulator`` and ``pagent_connection``
automatically (see :mod:`pagent_provider.testing.pytest_plugin`). From a shell:
``python -m pagent_provider.testing --port 8080``.

This package uses the standard library only and imports nothing from Airflow
or from the rest of :mod:`pagent_provider`.
"""

from pagent_provider.testing.emulator import AcceptedEvent, Faults, IngestEmulator, RequestRecord

__all__ = ["AcceptedEvent", "Faults", "IngestEmulator", "RequestRecord"]
