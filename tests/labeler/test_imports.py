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
