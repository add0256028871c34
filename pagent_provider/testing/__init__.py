"""Testing helpers for the pagent provider: a local emulator of pagent's ingest API.

:class:`IngestEmulator` is a real HTTP server implementing pagent's documented
conversions endpoints (``/v1/conversions``, ``/v2/conversions``,
``/v2/conversions/bulk``), with injectable :class:`Faults`, hostile modes
included (mismatched acknowledgements, redirects, size limits, echoed
credentials, trickled answers). Use it in tests, demos and benchmarks instead
of pagent's servers::

    from pagent_provider.testing import IngestEmulator

    with IngestEmulator() as emulator:      # accepts the API key "test-key"
        ...                                 # send to emulator.url
        print(emulator.events())

The emulator is split by idea: :mod:`~pagent_provider.testing.emulator` (the
server and what it received), :mod:`~pagent_provider.testing.validation` (the
documented 400 rules) and :mod:`~pagent_provider.testing.faults`.
:class:`WebAppServer` stands in for the web app a misconfigured base URL
redirects to.

pytest users get the fixtures ``pagent_emulator`` and ``pagent_connection``
automatically (see :mod:`pagent_provider.testing.pytest_plugin`). From a shell:
``python -m pagent_provider.testing --port 8765``.

This package uses the standard library only and imports nothing from Airflow
or from the rest of :mod:`pagent_provider`.
"""

from pagent_provider.testing.emulator import AcceptedEvent, Faults, IngestEmulator, RequestRecord
from pagent_provider.testing.webapp import WebAppRequest, WebAppServer

__all__ = ["AcceptedEvent", "Faults", "IngestEmulator", "RequestRecord", "WebAppRequest", "WebAppServer"]
