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
# two files in sub-folders: the folder is listed by Ray tasks in parts, each joined with the
# sources/ rows of its URI range
PATHS = {"angry": "angry.wav", "happy": "h/happy.wav", "sad": "s/sad.wav", "fear": "fear.wav"}


def rows_of(root, run_id):
    return {r[0].rsplit("/", 1)[-1]: r[1:] for r in duckdb.sql(
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
    for name in NAMES:
        (clips / PATHS[name]).parent.mkdir(parents=True, exist_ok=True)
        write_audio(clips / PATHS[name], load_sample(name), 16_000)
    original = {n: (clips / PATHS[n]).read_bytes() for n in NAMES}

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
        noise_over(clips / PATHS[name], k)
    quiet = label(clips, out)
    assert quiet["audio_files_read"] == 0 and quiet["counts"]["sources_read"] == 0
    assert quiet["counts"]["sources_skipped_by_metadata"] == 4 and quiet["counts"]["sources_changed"] == 0
    assert quiet["cache"]["transcribed"] == 0 and rows_of(out, quiet["run_id"]) == want

    # one file changes (its original bytes back, a new mtime): exactly that one is read, and found in the cache by sha256
    (clips / PATHS["happy"]).write_bytes(original["happy"])
    st = os.stat(clips / PATHS["happy"])
    os.utime(clips / PATHS["happy"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    # (and the caches in 3 shards: built by map and reduce tasks, looked up shard by shard)
    one = label(clips, out, **{"cache.shards": 3})
    assert one["counts"]["sources_read"] == 1 and one["counts"]["sources_changed"] == 1
    assert one["counts"]["sources_skipped_by_metadata"] == 3 and one["cache"]["transcribed"] == 0
    assert one["cache_sizes"]["transcripts_shards"] == 3 and one["cache_sizes"]["score_pairs_shards"] == 3
    assert one["cache"]["n_pairs_scored"] == 0 and one["cache_sizes"]["score_pairs"] == quiet["cache_sizes"]["score_pairs"]
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


def test_cached_rows_are_known_files_transcribed_as_this_run_would(tmp_path):
    """The rows that get the blocked pass (large blocks, no audio, every stage one call per
    block): a file known unchanged whose transcript under this run's settings is in the
    transcript cache, whole for a clip and segmented for a long recording. A known file
    transcribed with other ASR settings, a recording cached whole that this run would
    segment, an unknown file and a sha256 the cache lacks are read as usual."""
    import datetime as dt

    import pyarrow.parquet as pq

    from labeler import schema as S
    from labeler.cache import TranscriptCache, cached_mask
    from labeler.runs import CACHED_ROWS_PER_BLOCK, input_blocks

    cfg = load_config(DEMO, {"segment.mode": "auto"})
    whole, segmented = cfg.asr.config_hash(), cfg.segmented_hash()
    long_s = cfg.segment.min_source_s + 10
    # (sha, asr config hash, duration, utterances)
    stored = [("clip", whole, 3.0, 1), ("rec", segmented, long_s, 3), ("other", "another-asr-config", 3.0, 1),
              ("rec-whole", whole, long_s, 1)]
    rows = []
    for sha, h, dur, n in stored:
        for k in range(n):
            rows.append({"audio_sha256": sha, "asr_config_hash": h, "duration_s": dur, "segment_index": k, "segment_count": n,
                         "start_s": k * 2.0, "end_s": k * 2.0 + 1.5, "text": f"{sha} {k}", "utt_id": f"{sha}-{k}", "uri": f"/a/{sha}.wav",
                         "source_id": sha, "language": "en", "language_prob": 1.0, "avg_logprob": -0.2, "no_speech_prob": 0.01,
                         "asr_model": "tiny", "error": None,
                         "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)})
    part = S.transcripts_partition(str(tmp_path), "20260101T000000Z-aaaaaaaa")
    os.makedirs(part)
    pq.write_table(S.conform(pa.Table.from_pylist(rows), S.TRANSCRIPTS_FILE_SCHEMA), os.path.join(part, "part-0.parquet"))
    cache = TranscriptCache.load(str(tmp_path), (whole, segmented))
    shas = pa.array(["clip", "rec", "other", "rec-whole", None, "never-seen"])
    assert cached_mask(cache, shas, whole, segmented, cfg.segment).tolist() == [True, True, False, False, False, False]
    assert not cached_mask(None, shas, whole, segmented, cfg.segment).any()
    todo = pa.table({"utt_id": [f"f{k}" for k in range(CACHED_ROWS_PER_BLOCK + 5)]})
    blocks = input_blocks(todo, CACHED_ROWS_PER_BLOCK)
    assert [b.num_rows for b in blocks] == [CACHED_ROWS_PER_BLOCK, 5]
    assert [u for b in blocks for u in b.column("utt_id").to_pylist()] == todo.column("utt_id").to_pylist()


def test_sharded_caches_find_what_one_cache_finds(tmp_path):
    """A cache built in shards (map tasks each split a run of the table's files by the sha256
    its entries are keyed by; one task builds each shard) finds what the cache built whole
    finds: each file's newest complete transcription, each scored pair. The map and reduce
    functions are called here as the Ray tasks call them."""
    import datetime as dt
    import hashlib

    import pyarrow.parquet as pq

    from labeler import schema as S
    from labeler.cache import CacheSource, Shards, cached_mask, find_cached, key64, shard_of, text_sha256
    from labeler.runs import _build_shard, _cached_in_shard, _split_files, _split_known, file_groups

    cfg = load_config(DEMO, {"segment.mode": "auto"})
    whole, segmented = cfg.asr.config_hash(), cfg.segmented_hash()
    shas = [hashlib.sha256(f"audio {i}".encode()).hexdigest() for i in range(60)]
    old, new = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    long_s = cfg.segment.min_source_s + 10
    runs: dict[int, list] = {0: [], 1: [], 2: []}
    for i, sha in enumerate(shas):
        n = 1 + i % 3  # clips, and recordings of 2-3 utterances
        versions = [(i % 3, new, n, n)] + ([((i + 1) % 3, old, n, n)] if i % 5 == 0 else [])
        if i % 11 == 0:
            versions = [(i % 3, new, n + 1, n)]  # the newest transcription lost an utterance: not a hit
        for run, created, count, written in versions:
            for k in range(written):
                runs[run].append({"audio_sha256": sha, "asr_config_hash": segmented if n > 1 else whole,
                                  "duration_s": long_s if n > 1 else 3.0, "segment_index": k, "segment_count": count,
                                  "start_s": 2.0 * k, "end_s": 2.0 * k + 1.5, "text": f"{sha[:6]} {k} {created.month}",
                                  "utt_id": f"u{i}-{k}", "uri": f"/a/{i}.wav", "source_id": f"u{i}", "language": "en",
                                  "language_prob": 1.0, "avg_logprob": -0.2, "no_speech_prob": 0.01, "asr_model": "tiny",
                                  "error": None, "created_at": created})
    scorer = cfg.scorer.key_hash()
    texts = [f"text {i}" for i in range(40)]
    for run, rows in runs.items():
        part = S.transcripts_partition(str(tmp_path), f"2026010{run}T000000Z-aaaaaaaa")
        os.makedirs(part)
        pq.write_table(S.conform(pa.Table.from_pylist(rows), S.TRANSCRIPTS_FILE_SCHEMA), os.path.join(part, "part-0.parquet"))
        scored = [t for i, t in enumerate(texts) if i % 3 == run]
        part = S.scores_partition(str(tmp_path), scorer, f"2026010{run}T000000Z-aaaaaaaa")
        os.makedirs(part)
        pq.write_table(pa.table({
            "pair_key": pa.array([key64(scorer, t, h) for t in scored for h in ("h1", "h2")], pa.uint64()),
            "text_sha256": [text_sha256(t) for t in scored for _ in range(2)], "hypothesis": ["h1", "h2"] * len(scored),
            "raw_score": pa.array([float(len(t) + len(h)) for t in scored for h in ("h1", "h2")], pa.float32()),
            "scorer": ["nli:x"] * (2 * len(scored)), "created_at": pa.array([new] * (2 * len(scored)), S.TIMESTAMP)}),
            os.path.join(part, "part-0.parquet"))

    def sharded(src, k):
        groups = file_groups(src.files(), k)
        assert len(groups) == 3  # one map task per file here: the three are about the same size
        pieces = [_split_files(src, g, k) for g in groups]
        parts = [_build_shard(src, *(p[j] for p in pieces)) for j in range(k)]
        assert sum(n > 0 for _, n in parts) > 1
        return Shards([c for c, _ in parts], sum(n for _, n in parts))

    src = CacheSource("transcripts", str(tmp_path), ((whole, segmented),))
    one, four = Shards.of(_build_shard(src)[0]), sharded(src, 4)
    assert len(one) == len(four) == 60 - len(range(0, 60, 11))
    asked = shas + [hashlib.sha256(b"never seen").hexdigest()]
    (s1, g1), (s4, g4) = (find_cached(c, asked, whole, segmented, cfg.segment.applies) for c in (one, four))
    assert ((g1 >= 0) == (g4 >= 0)).all() and (s4 == shard_of(asked, 4)).all()
    for i in np.flatnonzero(g1 >= 0).tolist():
        a, na = one.get(0).rows(np.array([g1[i]]))
        b, nb = four.get(int(s4[i])).rows(np.array([g4[i]]))
        assert a.equals(b) and na.tolist() == nb.tolist() and a.column("text")[0].as_py().endswith(" 2")  # the newest
    # which listed files are cached: split by shard (the map side), looked up beside each shard
    known = pa.array(asked[:-3] + [None, asked[-3], asked[-1]])
    listed = pa.table({"utt_id": [f"u{i}" for i in range(len(known))], "known_sha256": known})
    want = listed.filter(pa.array(cached_mask(one.get(0), known, whole, segmented, cfg.segment)))
    *by_shard, no_sha, counts = _split_known(listed, 4)
    assert no_sha.column("utt_id").to_pylist() == [f"u{len(known) - 3}"] and sum(counts) == len(known)
    hits, misses = [], [no_sha]
    for j, piece in enumerate(by_shard):
        assert piece is None or (shard_of(piece.column("known_sha256"), 4) == j).all()
        if piece is not None and four.get(j) is not None:
            yes, no, n = _cached_in_shard(four.get(j), whole, segmented, cfg.segment, piece)
            assert n == (yes.num_rows, no.num_rows) and yes.num_rows + no.num_rows == piece.num_rows
            hits.append(yes)
            misses.append(no)
        elif piece is not None:
            misses.append(piece)
    assert sorted(pa.concat_tables(hits).column("utt_id").to_pylist()) == sorted(want.column("utt_id").to_pylist())
    assert sum(t.num_rows for t in hits + misses) == len(known) and want.num_rows > 30

    src = CacheSource("scores", str(tmp_path), (scorer, ["h1", "h2"]))
    one, four = Shards.of(_build_shard(src)[0]), sharded(src, 4)
    keys = np.array([key64(scorer, t, h) for t in texts + ["unscored"] for h in ("h1", "h2")], np.uint64)
    found, raw = one.get(0).lookup(keys)
    shard = np.repeat(shard_of([text_sha256(t) for t in texts + ["unscored"]], 4), 2)
    for j in range(4):
        rows = np.flatnonzero(shard == j)
        f, r = four.get(j).lookup(keys[rows])
        assert f.tolist() == found[rows].tolist() and r.tolist() == raw[rows].tolist()
    assert found.sum() == 80 and not found[-2:].any()



def test_listing_parts_join_the_sources_table_as_the_whole_table_would(ray_local, tmp_path, monkeypatch):
    """A folder listed in parts by Ray tasks stays in the object store (the driver holds refs,
    row counts and each part's URI range). The map-reduce join with ``sources/`` (its files'
    rows sent to the part whose range they fall in) gives every file the sha256 and the
    counts that one join of the whole listing with the whole table gives, and the stages'
    blocks cut from the parts hold every row once, in listing order."""
    import datetime as dt

    import pyarrow.parquet as pq
    import ray

    from labeler import schema as S
    from labeler.cache import known_sources, read_sources
    from labeler.runs import cut_blocks, known_inputs
    from labeler.sources import list_input

    d, out = tmp_path / "in", str(tmp_path / "out")
    names = ["a.wav", "m.wav", "z.wav", *(f"{k:02d}/f{j}.wav" for k in range(6) for j in range(3))]
    for i, name in enumerate(names):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"x" * (10 + i))
    listing = list_input(str(d), start_ray=lambda: None)
    assert len(listing.parts) > 2 and not any(isinstance(p, pa.Table) for p in listing.parts)
    whole = listing.gather()
    assert whole.column("uri").to_pylist() == sorted(str(d / n) for n in names)
    uris, sizes, versions = (whole.column(c).to_pylist() for c in ("uri", "source_size", "source_version"))
    old, new = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i, (u, n, v) in enumerate(zip(uris, sizes, versions)):
        if i % 4 == 0:
            rows.append((u, n, v, f"new-{i}", new))  # unchanged: known
            rows.append((u, n, v, f"old-{i}", old))  # an older read of the same version: the newest wins
        elif i % 4 == 1:
            rows.append((u, n + 1, v, f"was-{i}", old))  # changed since
    rows += [(str(d / "01" / "f1x.wav"), 3, "mtime_ns:1", "gone", old), (str(tmp_path / "other.wav"), 3, "mtime_ns:1", "other", old)]
    for r in range(3):
        part = os.path.join(out, "sources", f"run_id=r{r}")
        os.makedirs(part)
        mine = rows[r::3]
        pq.write_table(pa.table({c: [x[k] for x in mine] for k, c in enumerate(S.SOURCES_FILE_SCHEMA.names)},
                                schema=S.SOURCES_FILE_SCHEMA), os.path.join(part, "part-0.parquet"))
    for rehash in (False, True):
        inputs, counts = known_inputs(out, listing, rehash)
        want, want_counts = known_sources(whole, read_sources(out), rehash)
        got = pa.concat_tables(ray.get(inputs.parts))
        assert got.to_pylist() == want.to_pylist() and counts == want_counts and inputs.num_rows == len(names)
    known = want if not rehash else known_sources(whole, read_sources(out), False)[0]
    assert known.column("known_sha256").to_pylist()[::4] == [f"new-{i}" for i in range(0, len(names), 4)]
    assert counts == {"sources_new": len(names) - len(range(0, len(names), 4)) - len(range(1, len(names), 4)),
                      "sources_changed": len(range(1, len(names), 4))}
    blocks = ray.get(cut_blocks(inputs.pieces, 4))
    assert max(b.num_rows for b in blocks) == 4
    assert [u for b in blocks for u in b.column("uri").to_pylist()] == uris

    import labeler.runs as runs

    staged = [0, 5, 11, len(names) - 1]  # what an earlier attempt staged (settle_staged reads it from _staging/)
    monkeypatch.setattr(runs, "settle_staged", lambda *a, **k: {whole.column("utt_id")[i].as_py() for i in staged})
    left, resumed = runs.remaining(listing, out, "r1")
    assert resumed == len(staged) and len(left.parts) == len(listing.parts)
    inputs, _ = known_inputs(out, left, False)
    got = pa.concat_tables(ray.get(inputs.parts))
    kept = [i for i in range(len(names)) if i not in staged]
    assert got.column("source_row").to_pylist() == kept and got.to_pylist() == known.take(kept).to_pylist()
    # a Parquet manifest of the same files, out of order in 3 row groups: its parts' URI ranges
    # overlap, and each part gets every sources/ row of its range
    m = tmp_path / "list.parquet"
    shuffled = [uris[k] for k in np.random.default_rng(0).permutation(len(uris))]
    pq.write_table(pa.table({"uri": shuffled}), m, row_group_size=7)
    manifest = list_input(str(m), start_ray=lambda: None)
    assert len(manifest.parts) == 3 and not runs._disjoint(manifest.bounds, manifest.rows)
    inputs, counts = known_inputs(out, manifest, False)
    want, want_counts = known_sources(manifest.gather(), read_sources(out), False)
    assert pa.concat_tables(ray.get(inputs.parts)).to_pylist() == want.to_pylist() and counts == want_counts

    # a part Ray made again by listing a folder that changed meanwhile is refused, not renumbered
    from labeler.errors import InputError

    with pytest.raises(InputError, match="input listing changed during the run"):
        runs._known_part(whole.slice(0, 3), 0, 4, False, None)
