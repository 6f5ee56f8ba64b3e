"""Every trainer module imports on its own, and trainer's modules import each other without
a cycle (module-level, function-level and TYPE_CHECKING imports all count)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from importgraph import REPO, find_cycle, import_graph, modules

MODULES = modules("trainer")


def test_the_graph_is_read():
    graph = import_graph("trainer")
    # A function-level import, a module-level one and the lazy package __getattr__ are all seen.
    assert "trainer.evaluate" in graph["trainer.jobs"] and "trainer.errors" in graph["trainer.jobs"]
    assert "trainer.corpora" in graph["trainer.ingest"] and {"trainer.config", "trainer.jobs"} <= graph["trainer"]


def test_trainer_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(import_graph("trainer"))
    assert cycle is None, "import cycle among trainer modules: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_package_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "pretrain" in done.stdout, done.stderr[-3000:]
