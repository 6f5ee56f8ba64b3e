import subprocess
import sys

HEAVY = ("torch", "transformers", "faster_whisper", "vllm", "ctranslate2", "sentence_transformers")


def test_import_labeler_is_light():
    code = (
        "import sys, labeler, labeler.cli, labeler.config, labeler.taxonomy, labeler.schema, labeler.sources;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import labeler pulled in heavy modules: {out.stdout.strip()}"


def test_cli_help_reads_well():
    out = subprocess.run([sys.executable, "-m", "labeler", "--help"], capture_output=True, text=True, check=True)
    for word in ("label", "inspect", "taxonomies", "RAY_ADDRESS", "examples:"):
        assert word in out.stdout
    out = subprocess.run([sys.executable, "-m", "labeler", "label", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--config", "--input", "--output", "--taxonomy", "--set", "--asr-model", "--scorer"):
        assert flag in out.stdout


def test_graph_reader_sees_every_kind_of_import(tmp_path):
    import importgraph

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import pkg.b\ndef f():\n    from pkg.sub.c import thing\n    from . import d\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    for name in ("c", "__init__"):
        (pkg / "sub" / f"{name}.py").write_text("")
    (pkg / "d.py").write_text("")
    graph = importgraph.import_graph("pkg", repo=tmp_path)
    assert graph["pkg.a"] == {"pkg.b", "pkg.sub.c", "pkg.d"} and graph["pkg.b"] == {"pkg.a"}
    assert importgraph.find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert importgraph.find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert importgraph.find_cycle({"x": {"b"}, "a": set(), "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_cycle_in_labeler():
    import importgraph

    graph = importgraph.import_graph("labeler")
    assert "labeler.stages.entail" in graph["labeler.pipeline"] and "labeler.runs" in graph["labeler.pipeline"]
    cycle = importgraph.find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_labeler_module_imports_alone():
    import importgraph

    names = sorted(m for m in importgraph.modules("labeler") if not m.endswith("__main__"))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    # one fresh interpreter per module: an import that only works after another would show
    for name in names:
        done = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"import {name}: {done.stderr[-2000:]}"
