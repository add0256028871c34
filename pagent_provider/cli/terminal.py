"""stderr for humans: a live progress line on terminals, and log records that do not garble it.

The progress line is redrawn in place (carriage return) by a background thread
that polls counters, so the sync engine needs no callback. Log records
(retries, warnings) go to the same stderr; the handler wipes the line before
writing a record, and the next tick redraws it below.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

_CLEAR_LINE = "\r\033[K"
_SPINNER = "-\\|/"


class StatusLine:
    """One line of a terminal that is rewritten in place; thread-safe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self._shown = False

    def show(self, text: str) -> None:
        """Replace the line with ``text``, cut to the terminal's width (a wrapped line cannot be rewritten)."""
        width = shutil.get_terminal_size((100, 24)).columns
        with self.lock:
            self.stream.write(_CLEAR_LINE + text[: max(width - 1, 10)])
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Wipe the line, if anything is on it."""
        with self.lock:
            self.clear_locked()

    def clear_locked(self) -> None:
        """Wipe the line; the caller holds :attr:`lock`."""
        if self._shown:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()
            self._shown = False


class LineSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler that wipes the progress line before writing a record."""

    def __init__(self, line: StatusLine) -> None:
        super().__init__(line.stream)
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        with self.line.lock:
            self.line.clear_locked()
            super().emit(record)


def configure_logging(line: StatusLine, *, verbose: bool) -> None:
    """Send log records to stderr: warnings (retries, rate limits) always, progress with ``verbose``."""
    handler = LineSafeHandler(line)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)


class ProgressLine:
    """Redraws ``describe()`` on a :class:`StatusLine` every ``interval_s`` until the block ends.

    Use it as a context manager around the long-running call; the line is
    wiped at the end so that the summary starts on a clean terminal.
    """

    def __init__(self, line: StatusLine, describe: Callable[[float], str], interval_s: float = 0.2) -> None:
        self.line = line
        self.describe = describe
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._redraw, name="pagent-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> ProgressLine:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.line.clear()

    def _redraw(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            elapsed = time.monotonic() - self._started
            self.line.show(f"{_SPINNER[tick % len(_SPINNER)]} {self.describe(elapsed)}")
            tick += 1


def sync_progress_text(rows_read: int, sent: int, already_sent: int, invalid: int, elapsed_s: float) -> str:
    """The progress line of a sync: counts and the read rate."""
    rate = rows_read / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"{rows_read:,} rows read | {sent:,} sent | {already_sent:,} already sent | "
        f"{invalid:,} invalid | {rate:,.0f} rows/s | {elapsed_s:.1f}s"
    )
