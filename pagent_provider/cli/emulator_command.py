"""``pagent-conversions emulator``: the local ingest emulator, run by its own ``main``."""

from __future__ import annotations

from collections.abc import Sequence

from pagent_provider.cli.parser import EMULATOR_PROG
from pagent_provider.testing.__main__ import main as emulator_main


def run_emulator(argv: Sequence[str]) -> int:
    """Serve the emulator until Ctrl-C or SIGTERM; ``argv`` are the arguments after ``emulator``.

    The emulator's ``main`` parses them again with the same flags (and checks
    what one flag cannot, e.g. ``--redirect-status`` without ``--redirect-to``),
    naming this command in its usage errors.
    """
    return emulator_main(list(argv), prog=EMULATOR_PROG)
