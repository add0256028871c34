"""``pagent-conversions emulator``: the local ingest emulator, run by its own ``main``."""

from __future__ import annotations

from collections.abc import Sequence

from pagent_provider.testing.__main__ import main as emulator_main


def run_emulator(argv: Sequence[str]) -> int:
    """Serve the emulator until Ctrl-C or SIGTERM; ``argv`` are the arguments after ``emulator``."""
    return emulator_main(list(argv))
