"""``labeler.models``: each module imports on its own, light, and knows nothing of Ray or of
stages; ``labeler.config`` imports no model module. (No import cycle anywhere in ``labeler``:
``test_imports.py``.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
from importgraph import REPO, imported_names, modules

MODELS = {m: p for m, p in modules("labeler.models").items() if m != "labeler.models"}
HEAVY = ("torch", "transformers", "faster_whisper", "vllm", "ctranslate2", "sentence_transformers", "ray")
# What a model module may import from this project (models know nothing of Ray or stages);
# labeler.segment is pure logic, and its Word is what ASR returns word timestamps as;
# labeler.packing (cutting ordered work into runs) is pure logic too.
ALLOWED = ("labeler.config", "labeler.errors", "labeler.audio", "labeler.segment", "labeler.packing", "labeler.models")


def test_models_import_only_config_errors_audio_segment_and_each_other():
    assert {m.rsplit(".", 1)[1] for m in MODELS} >= {"base", "nli", "embedding", "llm", "prompt", "vllm_engine", "factory",
                                                     "whisper", "registry"}
    for module, path in MODELS.items():
        names = imported_names(path, module)
        ours = {n for n in names if n.split(".")[0] == "labeler"}
        bad = {n for n in ours if not any(n == a or n.startswith(a + ".") for a in ALLOWED)}
        assert not bad, f"{module} imports {sorted(bad)}"
        assert not {n for n in names if n.split(".")[0] == "ray"}, f"{module} imports Ray"


def test_config_imports_no_model_module():
    names = imported_names(REPO / "labeler" / "config.py", "labeler.config")
    assert not {n for n in names if n.startswith("labeler.models")}


@pytest.mark.parametrize("module", sorted(MODELS))
def test_each_model_module_imports_alone_and_light(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"import {module} pulled in heavy modules: {out.stdout.strip()}"
