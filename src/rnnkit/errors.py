"""Errors a user can cause.

Every mistake a user can make (a bad flag, a bad file, a wrong shape) raises an :class:`RnnkitError`
that says what was wrong and what to do. The CLI prints it as one line ``error: ...`` and exits 2;
anything else is a bug in rnnkit and keeps its traceback.

A message is written once, in the words of the command line (``use a shorter --horizon``,
``pass --fill interpolate``), and each audience reads it in its own: in Python, ``str(error)`` speaks
of the API's arguments (``use a shorter horizon``, ``pass fill='interpolate'``: the flags translated
with the CLI's own table, :func:`rnnkit.cli.as_arguments`); while the CLI runs
(:func:`on_the_command_line`) it is the message as written, flags and all, and so is an error's
message quoted inside another's. Commands quoted in backticks stay as they are.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_CLI = contextvars.ContextVar("rnnkit_errors_speak_to_the_cli", default=False)


@contextlib.contextmanager
def on_the_command_line() -> Iterator[None]:
    """While inside, errors read as the CLI says them (its flags)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


class RnnkitError(ValueError):
    """A mistake the user can fix. Subclasses ValueError so library callers can catch either.

    ``RnnkitError(message)``: the message as the CLI says it (``cli_message``); ``str()`` is its
    Python wording outside :func:`on_the_command_line`. ``api``: that wording where it is not the
    translation of the flags (e.g. a config key ``data.horizon``, which the API calls ``horizon``)."""

    def __init__(self, message: str = "", *, api: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = message
        self._api = api

    def __str__(self) -> str:
        if _CLI.get():
            return self.cli_message
        if self._api is None:
            from .cli import as_arguments  # the flags are the CLI's

            self._api = as_arguments(self.cli_message)
        return self._api


class ShapeError(RnnkitError):
    """An input or state tensor has the wrong rank or size."""


class ConfigError(RnnkitError):
    """A flag, config key or constructor argument has an invalid value."""


class DataError(RnnkitError):
    """A series or CSV file cannot be used as given."""


class RunError(RnnkitError):
    """A run directory is missing, incomplete, or inconsistent with its weights."""


class TrainingError(RnnkitError):
    """Training diverged (NaN/inf loss or exploding gradients)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a finished epoch, whose checkpoint was saved. A KeyboardInterrupt,
    so code that does not know rnnkit stops as it would on any Ctrl-C."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training interrupted after epoch {epoch}")
        self.epoch = epoch
