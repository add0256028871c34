"""The loggers that the sync and the run history write to.

A standard library :class:`logging.Logger` (or ``LoggerAdapter``), or the task
logger an operator's ``self.log`` is: a ``logging.Logger`` on Airflow 2.11, a
structlog logger from the Task SDK on Airflow 3. Only %-style messages are
written (``log.info("%d rows", n)``), which both understand.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TaskLogger"]


class TaskLogger(Protocol):
    """What is called on a logger: the levels, each with a %-style message and its arguments."""

    def debug(self, msg: Any, /, *args: Any) -> Any: ...

    def info(self, msg: Any, /, *args: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any) -> Any: ...

    def error(self, msg: Any, /, *args: Any) -> Any: ...
