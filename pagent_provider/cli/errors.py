"""Exit statuses of ``pagent-conversions`` and the error that means "fix the command line"."""

from __future__ import annotations

from pagent_provider.exceptions import PagentAuthError, PagentConfigError

EXIT_OK = 0
#: The sync (or the check) ran but failed: rows refused beyond the limit, outcomes unknown, pagent unavailable.
EXIT_FAILED = 1
#: A usage or configuration mistake: bad flags, missing API key, a missing column (argparse uses 2 too).
EXIT_USAGE = 2
#: pagent refused the API key (401/403).
EXIT_AUTH = 3
#: Stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell convention), after draining the requests in flight.
EXIT_INTERRUPTED = 130


# The core's messages name the operator's parameters; these are the flags that set them.
_FLAGS_OF_PARAMETERS = {
    "columns=": "--columns FIELD=COLUMN",
    "require_time": "--no-require-time",
    "max_invalid_rows": "--max-invalid-rows",
    "unknown_outcome": "--unknown-outcome",
    "batch_size": "--batch-size",
    "max_workers": "--max-workers",
}


class UsageError(Exception):
    """A mistake in the command line or the environment that the user must fix; exits 2."""


def exit_code_for(error: BaseException) -> int:
    """The exit status that reports ``error``."""
    if isinstance(error, UsageError | PagentConfigError):
        return EXIT_USAGE
    if isinstance(error, PagentAuthError):
        return EXIT_AUTH
    return EXIT_FAILED


def with_flag_names(message: str) -> str:
    """``message``, followed by the command-line flags of the operator parameters it names."""
    flags = [flag for parameter, flag in _FLAGS_OF_PARAMETERS.items() if parameter in message]
    if not flags:
        return message
    return f"{message}\n(on the command line: {', '.join(flags)})"
