import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.errors import InputError
from labeler.io import redact, redact_text
from labeler.sources import list_input, resolve_input


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_directory_is_recursive_sorted_with_relative_ids(tmp_path):
    _touch(tmp_path / "b" / "two.flac")
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "notes.txt")
    t = resolve_input(str(tmp_path))
    assert t.column("utt_id").to_pylist() == ["a", "b/two"]
    assert t.column("uri").to_pylist() == [str(tmp_path / "a.wav"), str(tmp_path / "b" / "two.flac")]


def test_glob(tmp_path):
    _touch(tmp_path / "s1" / "x.wav")
    _touch(tmp_path / "s2" / "y.wav")
    _touch(tmp_path / "s2" / "z.mp3")
    t = resolve_input(str(tmp_path / "*" / "*.wav"))
    assert t.column("utt_id").to_pylist() == ["s1/x", "s2/y"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests(tmp_path, fmt):
    rows = [{"uri": "clips/a.wav", "utt_id": "u1"}, {"uri": str(tmp_path / "b.wav"), "utt_id": None}]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("uri,utt_id\nclips/a.wav,u1\n" + f"{tmp_path / 'b.wav'},\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    t = resolve_input(str(path))
    assert t.column("uri").to_pylist() == [str(tmp_path / "clips" / "a.wav"), str(tmp_path / "b.wav")]
    assert t.column("utt_id").to_pylist() == ["u1", str(tmp_path / "b.wav")]
    assert t.column("error").null_count == 2


def test_duplicates_become_error_rows_with_unique_ids(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("uri,utt_id\n/a.wav,a\n/a.wav,a2\n/b.wav,a\n/a.wav,\n")
    t = resolve_input(str(m))
    ids = t.column("utt_id").to_pylist()
    errs = t.column("error").to_pylist()
    assert t.num_rows == 4 and len(set(ids)) == 4
    assert errs[0] is None
    assert "same uri" in errs[1] and "duplicate utt_id" in errs[2] and "same uri" in errs[3]
    assert ids[2] == "a#dup1"


@pytest.mark.parametrize(
    "content, match",
    [("path,id\n/a.wav,1\n", "no 'uri' column"), ("uri\n", "no rows"), ('uri,utt_id\n"/a.wav\n', "malformed manifest"), ("uri,utt_id\n,x\n", "uri is empty")],
    ids=["no-uri-column", "empty", "broken-csv", "empty-uri"],
)
def test_malformed_manifests(tmp_path, content, match):
    m = tmp_path / "m.csv"
    m.write_text(content)
    with pytest.raises(InputError, match=match):
        resolve_input(str(m))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve_input(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="no audio files"):
        resolve_input(str(tmp_path))
    with pytest.raises(InputError, match="no files match"):
        resolve_input(str(tmp_path / "*.wav"))


def test_redaction():
    assert redact("s3://AKIA:SECRET@bucket/x.wav") == "s3://***@bucket/x.wav"
    assert redact("https://h/x.wav?X-Amz-Signature=abc") == "https://h/x.wav?***"
    assert redact("/local/path.wav") == "/local/path.wav"
    assert "SECRET" not in redact_text("cannot read s3://AKIA:SECRET@bucket/x.wav: denied")


# --- special files inside an input folder: every entry named like audio is a row -------------
# A broken symbolic link and a FIFO/named pipe (or socket) named like audio must become error
# rows, and a FIFO must never be opened: opening one for reading blocks forever. Every
# resolve_input below runs in a thread joined with a timeout, so a blocking open fails the
# test instead of hanging it.

import os
import socket
import threading

_RESOLVE_TIMEOUT_S = 20


def _resolve_guarded(spec, fifos=()):
    out = {}

    def target():
        try:
            out["table"] = resolve_input(spec)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["exc"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(_RESOLVE_TIMEOUT_S)
    if th.is_alive():
        for f in fifos:  # release a reader blocked in open(): give it a writer
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        th.join(5)
        pytest.fail(f"resolve_input({spec!r}) blocked for {_RESOLVE_TIMEOUT_S}s: a FIFO was opened")
    if "exc" in out:
        raise out["exc"]
    return out["table"]


def _special_folder(root):
    """good.wav, link.wav -> good.wav, x.wav -> missing target, y.wav a FIFO, below ``root/c``."""
    d = root / "c"
    _touch(d / "good.wav")
    os.symlink(d / "good.wav", d / "link.wav")
    os.symlink(d / "missing-target.wav", d / "x.wav")
    os.mkfifo(d / "y.wav")
    return d


def _rows(t):
    return list(zip(t.column("utt_id").to_pylist(), t.column("uri").to_pylist(), t.column("error").to_pylist()))


def test_directory_with_broken_link_and_fifo(tmp_path):
    d = _special_folder(tmp_path)
    _touch(d / "notes.txt")
    os.mkfifo(d / "pipe.txt")  # not named like audio: not an input, as notes.txt
    t = _resolve_guarded(str(d), fifos=[d / "y.wav"])
    assert t.column("source_row").to_pylist() == [0, 1, 2, 3]
    assert _rows(t) == [
        ("good", str(d / "good.wav"), None),
        ("link", str(d / "link.wav"), None),  # a link to a good file is a normal input
        ("x", str(d / "x.wav"), f"input: broken symbolic link (target missing): {d / 'x.wav'}"),
        ("y", str(d / "y.wav"), f"input: not a regular file (a FIFO/named pipe), not read: {d / 'y.wav'}"),
    ]


def test_directory_special_files_in_subfolders_sockets_loops_and_folder_links(tmp_path):
    d = _special_folder(tmp_path)
    sub = d / "sub"
    _touch(sub / "a.flac")
    os.mkfifo(sub / "p.mp3")
    os.symlink(sub / "loop.wav", sub / "loop.wav")
    real = tmp_path / "elsewhere"
    _touch(real / "inner.wav")
    os.symlink(real, d / "dirlink.wav")  # a link to a folder named like audio: a folder, followed
    os.symlink(d, sub / "up.wav")  # a link back up: not followed again (no endless a.flac copies)
    # AF_UNIX paths are limited to ~108 bytes: bind from inside the folder.
    cwd = os.getcwd()
    sock = socket.socket(socket.AF_UNIX)
    try:
        os.chdir(sub)
        sock.bind("s.wav")
    finally:
        os.chdir(cwd)
    try:
        t = _resolve_guarded(str(d), fifos=[d / "y.wav", sub / "p.mp3"])
    finally:
        sock.close()
    rows = _rows(t)
    assert [r[0] for r in rows] == ["dirlink.wav/inner", "good", "link", "sub/a", "sub/loop", "sub/p", "sub/s", "x", "y"]
    errs = {r[0]: r[2] for r in rows}
    assert errs["dirlink.wav/inner"] is None and errs["good"] is None and errs["link"] is None and errs["sub/a"] is None
    assert errs["sub/loop"] == f"input: broken symbolic link (link loop): {sub / 'loop.wav'}"
    assert errs["sub/p"] == f"input: not a regular file (a FIFO/named pipe), not read: {sub / 'p.mp3'}"
    assert errs["sub/s"] == f"input: not a regular file (a socket), not read: {sub / 's.wav'}"
    assert errs["x"].startswith("input: broken symbolic link") and errs["y"].startswith("input: not a regular file")
    assert t.column("uri").to_pylist()[0] == str(d / "dirlink.wav" / "inner.wav")


def test_directory_with_only_special_files_still_lists_them(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    os.mkfifo(d / "only.wav")
    t = _resolve_guarded(str(d), fifos=[d / "only.wav"])
    assert _rows(t) == [("only", str(d / "only.wav"), f"input: not a regular file (a FIFO/named pipe), not read: {d / 'only.wav'}")]


def test_single_special_file_as_input_is_refused(tmp_path):
    os.mkfifo(tmp_path / "y.wav")
    os.symlink(tmp_path / "missing.wav", tmp_path / "x.wav")
    with pytest.raises(InputError, match=r"not a regular file or folder \(a FIFO/named pipe\)"):
        _resolve_guarded(str(tmp_path / "y.wav"), fifos=[tmp_path / "y.wav"])
    with pytest.raises(InputError, match="not found.*broken symbolic link"):
        _resolve_guarded(str(tmp_path / "x.wav"))


@pytest.mark.parametrize("pattern, prefix", [("c/*.wav", ""), ("**/*.wav", "c/")])
def test_glob_with_broken_link_and_fifo(tmp_path, pattern, prefix):
    d = _special_folder(tmp_path)
    (d / "folder.wav").mkdir()  # a folder matched by the glob is no input, as before
    t = _resolve_guarded(str(tmp_path / pattern), fifos=[d / "y.wav"])
    assert _rows(t) == [
        (f"{prefix}good", str(d / "good.wav"), None),
        (f"{prefix}link", str(d / "link.wav"), None),
        (f"{prefix}x", str(d / "x.wav"), f"input: broken symbolic link (target missing): {d / 'x.wav'}"),
        (f"{prefix}y", str(d / "y.wav"), f"input: not a regular file (a FIFO/named pipe), not read: {d / 'y.wav'}"),
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_listing_a_fifo_and_a_broken_link(tmp_path, fmt):
    d = _special_folder(tmp_path)
    rows = [
        {"uri": "c/good.wav", "utt_id": "g"},
        {"uri": "c/y.wav", "utt_id": "fifo"},
        {"uri": str(d / "x.wav"), "utt_id": "dangling"},
        {"uri": "c/absent.wav", "utt_id": "absent"},  # missing: left to the decoder, as before
        {"uri": "s3://bucket/y.wav", "utt_id": "remote"},  # remote: not inspected here
        {"uri": "c/y.wav", "utt_id": "fifo-again"},
    ]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("uri,utt_id\n" + "".join(f"{r['uri']},{r['utt_id']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    t = _resolve_guarded(str(path), fifos=[d / "y.wav"])
    assert t.column("utt_id").to_pylist() == ["g", "fifo", "dangling", "absent", "remote", "fifo-again#dup1"]
    errs = t.column("error").to_pylist()
    assert errs[0] is None and errs[3] is None and errs[4] is None
    assert errs[1] == f"input: not a regular file (a FIFO/named pipe), not read: {d / 'y.wav'}"
    assert errs[2] == f"input: broken symbolic link (target missing): {d / 'x.wav'}"
    assert errs[5].startswith("input: duplicate row, same uri")


def test_sub_folders_listed_by_ray_tasks_give_the_same_listing(ray_local, tmp_path):
    """A folder with several sub-folders is listed by Ray tasks (each a run of sub-folders)
    and merged in path order with the top folder's own files: the same rows, ids, errors and
    order as one walk here, and that order is the paths' ("a-b/" < "a.wav" < "a/" < "a0")."""
    d = tmp_path / "in"
    for name in ["a.wav", "a/x.wav", "a-b/y.wav", "a0.wav", "b/c/d.wav", "b.flac", "b.wav", "c/e.mp3", "z.wav",
                 *(f"d{k}/f.wav" for k in range(7))]:
        _touch(d / name)
    os.symlink(d, d / "c" / "up")  # a link back up: not followed
    os.symlink(d / "missing.wav", d / "a" / "gone.wav")
    serial = resolve_input(str(d))
    started = []
    fanned = resolve_input(str(d), start_ray=lambda: started.append(True))
    assert started == [True] and fanned.equals(serial)
    uris = serial.column("uri").to_pylist()
    assert uris == sorted(uris) and len(uris) == 17
    assert serial.column("utt_id").to_pylist()[:9] == ["a-b/y", "a", "a/gone", "a/x", "a0", "b", "b#dup1", "b/c/d", "c/e"]
    errors = dict(zip(serial.column("utt_id").to_pylist(), serial.column("error").to_pylist()))
    assert errors["a/gone"].startswith("input: broken symbolic link") and errors["b#dup1"].startswith("input: duplicate utt_id 'b'")
    assert serial.column("source_row").to_pylist() == list(range(17))
    # the duplicate ("b" twice) is marked on the driver, and the listing keeps its parts
    listing = list_input(str(d), start_ray=lambda: None)
    assert len(listing.parts) > 1 and listing.gather().equals(serial)


def test_a_lone_sub_folder_is_stepped_into_so_its_sub_folders_are_listed_by_tasks(ray_local, tmp_path):
    """corpus/wav/<speaker>/...: the tasks take the first level with several sub-folders,
    and ids stay relative to the input folder."""
    d = tmp_path / "corpus"
    for name in ["top.wav", "wav/a.wav", *(f"wav/spk{k}/x{j}.wav" for k in range(4) for j in range(2))]:
        _touch(d / name)
    listing = list_input(str(d), start_ray=lambda: None)
    assert len(listing.parts) > 1 and not any(isinstance(p, pa.Table) for p in listing.parts)
    t = listing.gather()
    assert t.equals(resolve_input(str(d)))
    assert t.column("utt_id").to_pylist()[:4] == ["top", "wav/a", "wav/spk0/x0", "wav/spk0/x1"]


def test_bucket_prefix_is_listed_by_sub_prefix_in_path_order(tmp_path):
    """A remote prefix (here fsspec's in-memory store: it lives in this process, so its
    sub-prefixes are listed here, as a Ray task lists each on a cluster) gives every audio
    object below it, in path order, with ids relative to the prefix and remote URIs."""
    import fsspec

    store, bucket = fsspec.filesystem("memory"), f"bucket-{tmp_path.name}"
    for name in ["a.wav", "a/x.wav", "a-b/y.wav", "b.flac", "d/e/f.mp3", "notes.txt"]:
        store.pipe(f"/{bucket}/corpus/{name}", b"xx")
    t = resolve_input(f"memory://{bucket}/corpus")
    assert t.column("utt_id").to_pylist() == ["a-b/y", "a", "a/x", "b", "d/e/f"]
    assert t.column("uri").to_pylist()[1] == f"memory:///{bucket}/corpus/a.wav"
    assert t.column("source_size").to_pylist() == [2] * 5


def test_parquet_manifest_of_row_groups_is_listed_by_ray_tasks(ray_local, tmp_path):
    """A Parquet manifest of several row groups is listed by Ray tasks, a run of row groups
    each, into parts that stay in the object store: the same rows as the manifest read here
    (relative URIs resolved, given ids kept), a duplicate across row groups marked, an empty
    ``uri`` reported with its row number."""
    clips = tmp_path / "clips"
    names = [f"c{k:02d}.wav" for k in range(14)]
    for name in names:
        _touch(clips / name)
    order = [5, 0, 13, 7, 2, 11, 9, 1, 12, 3, 8, 6, 10, 4]  # not in URI order: the parts' ranges overlap
    uris = [f"clips/{names[k]}" for k in order]
    ids = [f"id{k}" if k % 3 == 0 else None for k in order]
    m = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uri": uris, "utt_id": ids}), m, row_group_size=4)
    listing = list_input(str(m), start_ray=lambda: None)
    assert len(listing.parts) > 1 and not any(isinstance(p, pa.Table) for p in listing.parts)
    t = listing.gather()
    assert t.equals(resolve_input(str(m))) and t.column("source_row").to_pylist() == list(range(14))
    assert t.column("uri").to_pylist()[0] == str(clips / names[5]) and t.column("utt_id").to_pylist()[1] == "id0"

    pq.write_table(pa.table({"uri": uris + [uris[1]], "utt_id": ids + [None]}), m, row_group_size=4)
    t = list_input(str(m), start_ray=lambda: None).gather()
    assert t.equals(resolve_input(str(m))) and t.column("error").to_pylist()[-1].startswith("input: duplicate")

    pq.write_table(pa.table({"uri": uris[:9] + ["  "] + uris[10:], "utt_id": ids}), m, row_group_size=4)
    with pytest.raises(InputError, match="row 9: uri is empty"):
        list_input(str(m), start_ray=lambda: None)
