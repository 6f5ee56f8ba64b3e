"""The trainer's fatal errors: each stops a job with a one-line reason that says what to change.

They belong to lanser's one hierarchy (:class:`labeler.errors.LanserError`). A bad config is
a :class:`labeler.errors.ConfigError` wherever it is found (the shared YAML reader and
``--set`` parser raise it themselves), so the CLI has one class to map to exit status 2.
"""

from __future__ import annotations

from labeler.errors import ConfigError, LanserError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetLayoutError",
    "JobConfigError",
    "JobError",
    "LanserError",
    "TrainerError",
]


class TrainerError(LanserError):
    """Base of the trainer's fatal errors."""


class JobConfigError(TrainerError, ConfigError):
    """A job config that fails validation; ``problems`` holds one line per problem, each
    naming the field, the value received and what is allowed."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        super().__init__(f"invalid {source} ({n} problem{'s' * (n != 1)}): " + "; ".join(self.problems))


class DataError(TrainerError, ValueError):
    """The requested training data does not exist or cannot be used; the message says what
    exists."""


class DatasetLayoutError(DataError):
    """A path does not look like the corpus it was declared to be, or a label map or split
    setting does not fit the corpus."""


class CheckpointError(TrainerError, ValueError):
    """The path is not a lanser checkpoint (nor a run directory that names one)."""


class JobError(TrainerError, RuntimeError):
    """A training or evaluation job cannot start or did not finish (a run name already
    taken, an empty split, no checkpoint reported)."""
