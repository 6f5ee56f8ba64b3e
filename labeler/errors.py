"""Errors that stop a run with a one-line reason (the CLI prints it and exits non-zero).

Per-row problems are never raised: they become data in the ``error`` column.
"""

from __future__ import annotations

import re
from typing import Optional


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


def find_lanser_error(exc: BaseException) -> Optional[LanserError]:
    """Ray wraps an actor's exception; dig out our own fatal error to report it plainly."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LanserError):
            return e
        stack.extend([e.__cause__, e.__context__])
        val = getattr(e, "cause", None)
        if isinstance(val, BaseException):
            stack.append(val)
    # An actor that died in __init__ (e.g. a model that cannot load) reaches the driver as
    # ActorDiedError carrying only the remote traceback's text: recover our error from it.
    found = re.findall(r"labeler\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, msg = found[-1]
        cls = globals().get(name)
        if isinstance(cls, type) and issubclass(cls, LanserError):
            return cls(msg.strip())
    return None
