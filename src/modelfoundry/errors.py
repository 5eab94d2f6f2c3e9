"""User-facing errors: every failure a person can fix is a FoundryError with a message and a hint.

The CLI prints them without a traceback and exits with `exit_code`; the server (a later stage) answers
with `http_status`. Both map errors here and nowhere else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FoundryError(Exception):
    """Base class: `message` says what is wrong (with the value received), `hint` what to do next."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class ConfigError(FoundryError):
    """The YAML config (or a command-line option standing in for it) is invalid."""

    exit_code = 2
    http_status = 400


class DataError(FoundryError):
    """A data file or dataset cannot be used as asked: missing file, unknown column, bad values."""

    exit_code = 3
    http_status = 422


class RunDirError(FoundryError):
    """A run directory is missing, incomplete, or does not match what is asked of it."""

    exit_code = 4
    http_status = 404


class ModelNotFound(FoundryError):
    """A registered model, version or alias does not exist."""

    exit_code = 6
    http_status = 404


class RegistryError(FoundryError):
    """The registry refused an operation (nothing to roll back to, a bad reference, ...)."""

    exit_code = 6
    http_status = 409


class TrainingError(FoundryError):
    """Training could not go on (for example the loss became NaN)."""

    exit_code = 5
    http_status = 500


class CompressError(FoundryError):
    """No compressed variant met the accuracy guard (or none improved on the original); the original is kept."""

    exit_code = 9
    http_status = 500


class DriftDetected(FoundryError):
    """`foundry monitor` found drift that alerts (per --fail-on); its own exit code lets CI gate on it. The
    report is written before it is raised."""

    exit_code = 10
    http_status = 409


class DataCheckFailed(FoundryError):
    """`foundry data check` found what --fail-on names (a severity or finding kinds); its own exit code lets CI gate
    on it. The report is written before it is raised."""

    exit_code = 11
    http_status = 422


class ExportError(FoundryError):
    """An export failed or its parity check exceeded the tolerance; nothing half-written is left."""

    exit_code = 7
    http_status = 500


class ServingError(FoundryError):
    """A request the server refuses for a reason other than its content (auth, limits, load)."""

    exit_code = 8


class AuthError(ServingError):
    """A missing or unknown API key."""

    http_status = 401


class PayloadTooLarge(ServingError):
    """A request body over the server's limit."""

    http_status = 413


class UnsupportedMediaType(ServingError):
    """A request body in a format the server does not read (it reads JSON)."""

    http_status = 415


class RetryLater(ServingError):
    """The client should retry after `retry_after_s` seconds (sent as the Retry-After header)."""

    def __init__(self, message: str, hint: str | None = None, *, retry_after_s: float = 1.0):
        super().__init__(message, hint)
        self.retry_after_s = retry_after_s


class RateLimited(RetryLater):
    """A key sent more requests than its rate limit allows."""

    http_status = 429


class Overloaded(RetryLater):
    """The server is saturated: its queue is full, or a request waited too long in it."""

    http_status = 503


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix when `name` is close to one of `choices`, else ''."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """The standard sentence for a name missing from a lookup table."""
    choices = sorted(choices)
    return f"Unknown {kind} '{name}'.{did_you_mean(name, choices)} Valid names: {', '.join(choices)}."


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its class name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
