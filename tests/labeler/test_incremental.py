"""Issue 14: incremental nightly runs. A file listed with the same URI, size and mtime as one
an earlier run read is not opened (proved by overwriting every file's bytes with noise,
size and mtime restored); a changed file is read again; ``cache.rehash`` reads everything."""

import os
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from fixtures import REPO, load_sample, write_audio
from labeler.config import load_config
from labeler.pipeline import run_labeling

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")
NAMES = ("angry", "happy", "sad", "fear")


def rows_of(root, run_id):
    return {r[0]: r[1:] for r in duckdb.sql(
        f"SELECT utt_id, text, audio_sha256 FROM read_parquet('{root}/labels/**/*.parquet', hive_partitioning=true, "
        f"hive_types_autocast=false) WHERE run_id = '{run_id}'").fetchall()}


def label(clips, out, **over):
    return run_labeling(load_config(DEMO, {"input": str(clips), "output": str(out), "ray.progress": False, **over})).manifest


def noise_over(path, seed):
    """Every sample of a WAV replaced by noise, header kept: same size, same mtime (ns), other bytes."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    start = data.find(b"data") + 8
    data[start:] = np.random.default_rng(seed).integers(-3000, 3000, (len(data) - start) // 2, dtype=np.int16).tobytes()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def test_unchanged_files_are_not_read_changed_ones_are_and_rehash_reads_all(ray_local, tmp_path):
    clips, out = tmp_path / "clips", tmp_path / "out"
    clips.mkdir()
    for name in NAMES:
        write_audio(clips / f"{name}.wav", load_sample(name), 16_000)
    original = {n: (clips / f"{n}.wav").read_bytes() for n in NAMES}

    first = label(clips, out)
    assert first["counts"]["sources_read"] == 4 and first["counts"]["sources_new"] == 4
    assert first["counts"]["sources_skipped_by_metadata"] == 0 and first["cache"]["transcribed"] == 4
    want = rows_of(out, first["run_id"])
    assert "furious" in want["angry"][0].lower()

    # a root written before the sources/ table existed: its files are read once, from the cache
    shutil.rmtree(out / "sources")
    older = label(clips, out)
    assert older["counts"]["sources_read"] == 4 and older["cache"]["transcripts_from_cache"] == 4
    assert older["cache"]["transcribed"] == 0 and rows_of(out, older["run_id"]) == want

    # every file's bytes are now noise, size and mtime kept: nothing is opened, transcripts are the first run's
    for k, name in enumerate(NAMES):
        noise_over(clips / f"{name}.wav", k)
    quiet = label(clips, out)
    assert quiet["audio_files_read"] == 0 and quiet["counts"]["sources_read"] == 0
    assert quiet["counts"]["sources_skipped_by_metadata"] == 4 and quiet["counts"]["sources_changed"] == 0
    assert quiet["cache"]["transcribed"] == 0 and rows_of(out, quiet["run_id"]) == want

    # one file changes (its original bytes back, a new mtime): exactly that one is read, and found in the cache by sha256
    (clips / "happy.wav").write_bytes(original["happy"])
    st = os.stat(clips / "happy.wav")
    os.utime(clips / "happy.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    one = label(clips, out)
    assert one["counts"]["sources_read"] == 1 and one["counts"]["sources_changed"] == 1
    assert one["counts"]["sources_skipped_by_metadata"] == 3 and one["cache"]["transcribed"] == 0
    assert rows_of(out, one["run_id"]) == want

    # --rehash (cache.rehash): every file is read; the three noise files are new audio, transcribed anew
    again = label(clips, out, **{"cache.rehash": True})
    assert again["counts"]["sources_read"] == 4 and again["counts"]["sources_skipped_by_metadata"] == 0
    assert again["cache"]["transcribed"] == 3 and again["cache"]["transcripts_from_cache"] == 1
    got = rows_of(out, again["run_id"])
    assert got["happy"] == want["happy"]
    for name in ("angry", "sad", "fear"):
        assert got[name][1] != want[name][1]  # the noise's sha256, not the cached one
    assert "furious" not in (got["angry"][0] or "").lower()


def test_rehash_flag_sets_the_config():
    from labeler.cli import _overrides, build_parser

    args = build_parser().parse_args(["label", "--input", "x", "--output", "y", "--rehash"])
    assert _overrides(args)["cache.rehash"] is True
    assert "cache.rehash" not in _overrides(build_parser().parse_args(["label", "--input", "x", "--output", "y"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["relabel", "--output", "y", "--rehash"])  # relabel reads no audio


def test_listings_carry_size_and_mtime(tmp_path):
    from labeler.sources import resolve_input

    c = tmp_path / "c"
    (c / "a").mkdir(parents=True)
    (c / "a" / "x.wav").write_bytes(b"12345")
    (c / "y.flac").write_bytes(b"123")
    os.utime(c / "y.flac", ns=(1, 1_700_000_000_123_456_789))
    os.symlink(c / "y.flac", c / "link.flac")
    (tmp_path / "list.csv").write_text("uri\nc/a/x.wav\nc/y.flac\nc/missing.wav\n")
    want = {"a/x.wav": (5, f"mtime_ns:{os.stat(c / 'a' / 'x.wav').st_mtime_ns}"),
            "y.flac": (3, "mtime_ns:1700000000123456789"), "link.flac": (3, "mtime_ns:1700000000123456789")}
    for spec in (str(c), str(c / "**" / "*.*")):
        t = resolve_input(spec).to_pylist()
        got = {os.path.relpath(r["uri"], c): (r["source_size"], r["source_version"]) for r in t}
        assert got == want, spec
    t = resolve_input(str(tmp_path / "list.csv")).to_pylist()
    assert [(r["source_size"], r["source_version"]) for r in t] == [want["a/x.wav"], want["y.flac"], (None, None)]


def test_known_rows_travel_in_large_blocks():
    """Rows known unchanged (no audio to open) go to Ray Data in large blocks, the others in
    blocks of the first stage's batch; every row is in exactly one block."""
    from labeler.runs import KNOWN_ROWS_PER_BLOCK, input_blocks

    n_known, n_new = KNOWN_ROWS_PER_BLOCK + 5, 37
    ids = [f"f{k}" for k in range(n_known + n_new)]
    known = [f"sha{k}" for k in range(n_known)] + [None] * n_new
    order = list(range(len(ids)))[::-1]  # the new files first, as a listing may give them
    todo = pa.table({"utt_id": [ids[k] for k in order], "known_sha256": [known[k] for k in order]})
    blocks = input_blocks(todo, 16)
    assert sorted(u for b in blocks for u in b.column("utt_id").to_pylist()) == sorted(ids)
    big = [b for b in blocks if b.column("known_sha256").null_count == 0]
    small = [b for b in blocks if b.column("known_sha256").null_count == b.num_rows]
    assert len(big) + len(small) == len(blocks)  # no block mixes the two kinds
    assert [b.num_rows for b in big] == [KNOWN_ROWS_PER_BLOCK, 5] and max(b.num_rows for b in small) == 16
    assert sum(b.num_rows for b in small) == n_new
    without = todo.drop_columns(["known_sha256"])  # a plan without the metadata fast path
    assert [b.num_rows for b in input_blocks(without, 16)] == [16] * (todo.num_rows // 16) + [todo.num_rows % 16]
