"""Errors a user can cause.

Every mistake a user can make (a bad flag, a bad file, a wrong shape) raises an :class:`RnnkitError`
that says what was wrong and what to do. The CLI prints it as one line ``error: ...`` and exits 2;
anything else is a bug in rnnkit and keeps its traceback.
"""


class RnnkitError(ValueError):
    """A mistake the user can fix. Subclasses ValueError so library callers can catch either."""


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
