"""Credentials in URIs never reach a table, a manifest, a run report, the CLI's output or
Ray's logs.

A local path cannot carry ``user:password``, so the run reads a manifest with one real
clip and one object-store row whose URI carries an access key and a secret. There is no
network here: that row fails to read and becomes an error row, which is exactly where a
secret would leak (the error message, the ``uri`` column, the manifest's error sample).
The CLI runs in a fresh process whose local Ray keeps its logs in a private folder, so
those logs are searched too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures import REPO, SAMPLES

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")
KEY, SECRET = "AKIAEXAMPLE", "SuperSecret123"
SECRET_URI = f"s3://{KEY}:{SECRET}@bucket/corpus/x.wav"


def leaks(text) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [s for s in (KEY, SECRET) if s in text]


@pytest.fixture()
def ray_tmp():
    """A private, short Ray temp folder (Ray's socket paths must stay under 108 characters)."""
    path = tempfile.mkdtemp(prefix="lsec", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli(*args, ray_tmp: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "labeler", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_credentials_in_a_manifest_row_leak_nowhere(tmp_path, ray_tmp):
    shutil.copy(SAMPLES / "happy.flac", tmp_path / "happy.flac")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"uri,utt_id\nhappy.flac,happy\n{SECRET_URI},\n")  # no utt_id: derived from the URI
    out = tmp_path / "out"

    t0 = time.perf_counter()
    proc = cli("label", "--config", DEMO, "--input", str(manifest), "--output", str(out), "--no-progress", ray_tmp=ray_tmp)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert took < 120, f"an unreachable object store must fail fast, the run took {took:.0f} s"

    # The rows: the real clip is labeled, the unreachable one is an error row with a readable reason.
    (labels_file,) = (out / "labels").rglob("*.parquet")
    rows = {r["utt_id"]: r for r in pq.read_table(labels_file).to_pylist()}
    assert rows["happy"]["label"] == "joy"
    bad = rows["s3://***@bucket/corpus/x.wav"]
    assert bad["status"] == "error" and bad["uri"] == "s3://***@bucket/corpus/x.wav"
    assert bad["error"].startswith("decode: cannot read s3://***@bucket/corpus/x.wav")

    # Every file the run wrote: table columns (Parquet is compressed, so read it), the
    # manifest, the report JSON and the PNG's bytes.
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".parquet", ".json", ".png"}
    for p in written:
        content = str(pq.read_table(p).to_pylist()) if p.suffix == ".parquet" else p.read_bytes()
        assert not leaks(content), f"secret in {p.relative_to(out)}"
    (manifest_file,) = [p for p in (out / "runs").glob("*.json")]
    m = json.loads(manifest_file.read_text())
    assert m["counts"]["status"] == {"labeled": 1, "error": 1} and m["counts"]["error_stages"] == {"decode": 1}
    assert m["errors_sample"][0].startswith("decode: cannot read s3://***@bucket/corpus/x.wav")
    # Unreachable object store: seconds (pyarrow's default 3 attempts), not minutes of retries.
    assert m["stage_busy_seconds"]["decode"] < 30

    # What a person sees: the summary, and `inspect` afterwards.
    assert not leaks(proc.stdout) and not leaks(proc.stderr)
    assert "s3://***@bucket/corpus/x.wav" in proc.stdout and "reports/" in proc.stdout
    shown = cli("inspect", str(out), ray_tmp=ray_tmp)
    assert shown.returncode == 0 and not leaks(shown.stdout + shown.stderr)

    # Ray's own logs of that run (driver, workers, raylet, Ray Data).
    logs = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert any("logs" in p.parts for p in logs), "the run's Ray logs were not where expected"
    assert [str(p) for p in logs if leaks(p.read_bytes())] == []


@pytest.mark.parametrize(
    "args, rc",
    [
        (["label", "--config", DEMO, "--input", f"s3://{KEY}:{SECRET}@bucket/corpus/manifest.csv", "--output", "{tmp}/o"], 2),
        (["label", "--config", DEMO, "--input", str(SAMPLES / "happy.flac"), "--output", f"s3://{KEY}:{SECRET}@bucket/lanser"], 1),
        (["inspect", f"s3://{KEY}:{SECRET}@bucket/lanser"], 1),
    ],
    ids=["input-uri", "output-uri", "inspect-uri"],
)
def test_credentials_in_an_unreachable_root_stay_out_of_errors(tmp_path, ray_tmp, args, rc):
    proc = cli(*[a.format(tmp=tmp_path) for a in args], "--no-progress" if args[0] == "label" else "--json",
               ray_tmp=ray_tmp, timeout=180)
    assert proc.returncode == rc, proc.stderr[-2000:]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("lanser-label: error:") and "bucket" in last, proc.stderr[-2000:]
    assert not leaks(proc.stdout + proc.stderr)
    assert [str(p) for p in Path(ray_tmp).rglob("*") if p.is_file() and leaks(p.read_bytes())] == []
