"""Errors that stop a run with a one-line reason (the CLI prints it and exits non-zero).

Per-row problems are never raised: they become data in the ``error`` column.
"""


class LanserError(Exception):
    """Base of every fatal lanser error."""


class ConfigError(LanserError, ValueError):
    """Invalid configuration; the message lists every problem."""


class TaxonomyError(LanserError, ValueError):
    """The taxonomy file is invalid; the message lists every problem."""


class InputError(LanserError, ValueError):
    """The input as a whole cannot be used (per-file problems become error rows instead)."""


class ModelLoadError(LanserError, RuntimeError):
    """A model could not be loaded or an engine died: the job stops with this message."""


class DeviceError(LanserError, RuntimeError):
    """The device failed mid-run (out of memory, a CUDA error): a problem of the job, not of
    one row, so it stops the job instead of turning every row into an error row."""


class CommitError(LanserError, RuntimeError):
    """A run's output could not be committed (e.g. row counts do not add up)."""
