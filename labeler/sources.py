"""Resolve a run's input to rows ``(utt_id, uri, source_row, error)``.

Inputs:
- a directory: every audio file below it, recursively (sorted, so runs are repeatable);
- a glob (``clips/**/*.flac``, ``s3://bucket/corpus/*.wav``);
- a manifest: ``.parquet``, ``.csv`` or ``.jsonl``/``.json`` with a ``uri`` column and an
  optional ``utt_id`` column. Relative ``uri`` values are resolved against the manifest's folder.

``utt_id`` is stable: the manifest's, or derived from the URI (for a directory or glob, the
path below its root without the extension: ``speaker1/clip03``; for a manifest row without
an id, the URI). A duplicated input row (same URI, or same given ``utt_id``) is kept as an
error row whose ``utt_id`` gets a ``#dup<k>`` suffix, so every input row is accounted for
and ``utt_id`` stays unique within a run.

An input entry that names audio but cannot be read as a file is an error row too (never
dropped, never opened): a broken symbolic link, or a FIFO/named pipe, socket or device file
(opening a FIFO for reading would block the run forever). Local paths are checked with
``os.stat``/``os.lstat`` only; remote URIs are left to the decoder.

Each row also carries what the listing says about the file without opening it:
``source_size`` (bytes) and ``source_version`` (``mtime_ns:<n>`` for a local file or a
pyarrow listing; the object's ETag / version id / generation where an fsspec listing gives
one). A label run trusts a source whose URI, size and version match an earlier run's
(the ``sources/`` table) and takes its sha256 from there instead of reading it again
(``cache.rehash`` turns that off). A row whose listing gives no metadata (a remote
manifest row, an error row) has nulls there and is always read.
"""

from __future__ import annotations

import errno
import glob as _glob
import os
import posixpath
import stat as _stat
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.errors import InputError
from labeler.io import filesystem, is_local, local_path, redact
from labeler.packing import runs_by_weight

AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm",
    ".mp4", ".aiff", ".aif", ".au", ".amr", ".mka", ".caf", ".oga", ".spx",
)
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".json", ".ndjson")

INPUT_SCHEMA = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("source_size", pa.int64()),
        pa.field("source_version", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)  # slots: a listing holds one per file
class _Item:
    utt_id: str
    uri: str
    error: str | None = None
    size: int | None = None
    version: str | None = None


def _local_meta(st: os.stat_result | None) -> tuple[int | None, str | None]:
    """(size, version) of a regular local file from its ``stat``: the version is the
    modification time in nanoseconds."""
    if st is None or not _stat.S_ISREG(st.st_mode):
        return None, None
    return st.st_size, f"mtime_ns:{st.st_mtime_ns}"


def _remote_meta(info) -> tuple[int | None, str | None]:
    """(size, version) from a pyarrow ``FileInfo`` or an fsspec info dict: an ETag, version
    id or generation when the store gives one, else the modification time."""
    if isinstance(info, dict):
        size = info.get("size")
        for key in ("VersionId", "version_id", "generation", "ETag", "etag", "md5Hash"):
            if info.get(key):
                return size, f"{key.lower()}:{info[key]}"
        for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
            if info.get(key) is not None:
                return size, f"mtime:{info[key]}"
        return size, None
    size = info.size if info.size is not None and info.size >= 0 else None
    mtime_ns = getattr(info, "mtime_ns", None)
    return size, (f"mtime_ns:{mtime_ns}" if mtime_ns is not None else None)


def resolve_input(spec: str, start_ray: Optional[Callable[[], None]] = None) -> pa.Table:
    """Return the run's input rows as an Arrow table with :data:`INPUT_SCHEMA`: the
    :func:`list_input` listing gathered here."""
    return list_input(spec, start_ray).gather()


@dataclass
class Listing:
    """A run's input listing: its rows (:data:`LISTED_SCHEMA`; numbered rows,
    :data:`INPUT_SCHEMA`, once a task numbered them) in parts whose concatenation is the
    listing in path order. A part listed by a Ray task is an ``ObjectRef`` and stays in the
    object store: the driver holds its row count and the least and greatest (redacted) URI
    in it, which :func:`labeler.runs.known_inputs` uses to send each part only the earlier
    runs' ``sources/`` rows of its range. Ids and URIs are unique across the parts (a
    duplicated row is an error row of a listing built here, :func:`_dedupe`)."""

    parts: list[Any]  # pa.Table or ObjectRef of one
    rows: list[int]
    bounds: list[tuple[Optional[str], Optional[str]]]  # (least, greatest) redacted URI of each part; (None, None): any

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    @property
    def offsets(self) -> list[int]:
        """The listing row number of each part's first row, while the parts are not yet
        numbered (a numbered part keeps its numbers: :func:`number`)."""
        return [int(x) for x in np.cumsum([0, *self.rows[:-1]])]

    def gather(self) -> pa.Table:
        """The whole listing as one table here, its rows numbered."""
        parts = list(self.parts)
        refs = [k for k, p in enumerate(parts) if not isinstance(p, pa.Table)]
        if refs:
            import ray

            for k, t in zip(refs, ray.get([parts[k] for k in refs])):
                parts[k] = t
        return pa.concat_tables([number(p, o) for p, o in zip(parts, self.offsets)])


def number(part: pa.Table, offset: int) -> pa.Table:
    """A listing part with its rows numbered from ``offset`` (:data:`INPUT_SCHEMA`), as it is
    when it already is."""
    if "source_row" in part.column_names:
        return part
    rows = pa.array(np.arange(offset, offset + part.num_rows, dtype=np.int64))
    return part.append_column("source_row", rows).select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA)


def list_input(spec: str, start_ray: Optional[Callable[[], None]] = None) -> Listing:
    """The run's input rows as a :class:`Listing`.

    A folder's sub-folders (a bucket prefix's sub-prefixes) are listed by Ray tasks when it
    has several and ``start_ray`` is given (called first, to connect): each task walks a run
    of them, with the top folder's files that fall between them in path order, and its part
    of the listing stays in the object store, so the listing streams into the run's dataset
    without being gathered on the driver. Only when the listing holds a duplicate (two files
    of one id, ``a.wav`` and ``a.flac``) is it gathered here to mark it. The input is
    checked (found, a folder) before Ray starts, so a mistyped path fails at once. A Parquet
    manifest of several row groups is listed by Ray tasks too, a run of row groups each
    (:func:`_parquet_manifest`); another manifest, or a glob, is listed here, as one part."""
    if not spec:
        raise InputError("no input given")
    lower = spec.lower().split("?")[0]
    if lower.endswith(".parquet") and start_ray is not None:
        listing = _parquet_manifest(spec, start_ray)
        if listing is not None:
            return listing
    if lower.endswith(MANIFEST_EXTENSIONS):
        listed = _dedupe(_table(_from_manifest(spec)))
    elif any(ch in spec for ch in "*?["):
        listed = _dedupe(_table(_from_glob(spec)))
    else:
        listing, unique = _from_directory(spec, start_ray)
        if not listing.num_rows:
            raise InputError(f"no audio files ({', '.join(AUDIO_EXTENSIONS[:6])}, ...) found under {redact(spec)}")
        return listing if unique else _marked(listing)
    return _one_part(listed)


def _marked(listing: Listing) -> Listing:
    """A listing that holds a duplicate, gathered here to mark it (:func:`_dedupe`), then cut
    again into its parts (the rows keep their order and URIs, so the parts their bounds)."""
    listed = _dedupe(listing.gather().drop_columns(["source_row"]))
    return Listing([listed.slice(o, n) for o, n in zip(listing.offsets, listing.rows)], listing.rows, listing.bounds)


#: The columns of a listing before its rows are numbered and checked for duplicates.
LISTED_SCHEMA = pa.schema([f for f in INPUT_SCHEMA if f.name != "source_row"])


def _table(items: list[_Item]) -> pa.Table:
    return pa.table({"utt_id": [it.utt_id for it in items], "uri": [it.uri for it in items],
                     "error": [it.error for it in items], "source_size": [it.size for it in items],
                     "source_version": [it.version for it in items]}, schema=LISTED_SCHEMA)


def _listed(root: str, base: str, found: list[tuple[str, str | None, tuple]]) -> pa.Table:
    """Listing rows of ``found`` entries ``(path, error, (size, version))`` under the folder
    ``base`` of the input ``root``, in path order."""
    found = sorted(found, key=lambda f: f[0])
    return _table([_Item(_strip_ext(_relative(p, base)), _to_uri(root, base, p), err, *meta) for p, err, meta in found])


def _from_directory(root: str, start_ray: Optional[Callable[[], None]] = None) -> tuple[Listing, bool]:
    """The listing of a folder or prefix, and whether its ids and URIs are unique."""
    fs, path = filesystem(root)
    if is_local(root):
        return _from_local_directory(root, path, start_ray)
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {redact(root)}")
    if info.type == pafs.FileType.File:
        return _one_part(_table([_single_file(root, path)])), True
    top = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    found, subs = _remote_found(root, path, top), sorted(f.path for f in top if f.type == pafs.FileType.Directory)
    while len(subs) == 1:  # a lone sub-prefix: the tasks take the first level that fans out
        below = fs.get_file_info(pafs.FileSelector(subs[0], recursive=False))
        found += _remote_found(root, path, below)
        subs = sorted(f.path for f in below if f.type == pafs.FileType.Directory)
    return _list_runs(root, path, found, [(sub, (root, path, sub)) for sub in subs], _listed_remote, start_ray)


def _remote_found(root: str, path: str, infos) -> list[tuple[str, str | None, tuple]]:
    import pyarrow.fs as pafs

    return [(f.path, None if f.type == pafs.FileType.File else f"input: not a regular file (unknown type), not read: {redact(_to_uri(root, path, f.path))}",
             _remote_meta(f) if f.type == pafs.FileType.File else (None, None))
            for f in infos
            if f.type in (pafs.FileType.File, pafs.FileType.Unknown) and f.path.lower().endswith(AUDIO_EXTENSIONS)]


def _listed_remote(root: str, path: str, sub: str) -> pa.Table:
    """The listing of one sub-prefix ``sub`` of the input ``root`` (a Ray task's work)."""
    import pyarrow.fs as pafs

    fs, _ = filesystem(root)
    return _listed(root, path, _remote_found(root, path, fs.get_file_info(pafs.FileSelector(sub, recursive=True))))


def _unique(t: pa.Table) -> bool:
    n = t.num_rows
    return len(pc.unique(t.column("utt_id"))) == n and len(pc.unique(t.column("uri"))) == n


def _one_part(t: pa.Table) -> Listing:
    return Listing([t], [t.num_rows], [(None, None)])


#: An entry of a folder's listing, in path order: a file of the folder itself (``path``,
#: ``error``, ``(size, version)``) or a sub-folder (``("dir", args of its listing)``).
_Entry = tuple[str, Any]


def _list_runs(root: str, base: str, files: list[tuple[str, str | None, tuple]], folders: list[tuple[str, tuple]],
               list_folder: Callable[..., pa.Table], start_ray: Optional[Callable[[], None]]) -> tuple[Listing, bool]:
    """The listing of the folder ``base`` of the input ``root``: its own ``files`` and its
    sub-folders (``(path, args of list_folder)``), in path order. A sub-folder's paths are
    contiguous in that order (they start with its path and a ``/``), so the entries are
    sorted once and cut into runs, each listed whole into one part: by a Ray task (two per
    CPU of the cluster) when there are several sub-folders and ``start_ray`` is given, else
    here, as one part. Whether the whole is unique follows from the parts (a sub-folder's
    ids and paths start with its own name and a ``/``, a top file's have no ``/``) and from
    the top files as a whole."""
    keys = sorted([(p, 0, k) for k, (p, _, _) in enumerate(files)] + [(f.rstrip("/") + "/", 1, k) for k, (f, _) in enumerate(folders)])
    entries: list[_Entry] = [("file", files[k]) if kind == 0 else ("dir", folders[k][1]) for _, kind, k in keys]
    top_ids = [_strip_ext(_relative(p, base)) for p, _, _ in files]
    top_unique = len(set(top_ids)) == len(top_ids)
    if len(folders) < 2 or start_ray is None:
        part, info = _list_run(root, base, list_folder, entries)
        return _one_part(part), top_unique and info["unique"]
    start_ray()
    import ray

    tasks = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    # runs of about as many sub-folders each, the top files riding along between them
    runs = [[entries[k] for k in run] for run in runs_by_weight([float(kind == "dir") for kind, _ in entries],
                                                                  -(-len(folders) // tasks))]
    task = ray.remote(num_returns=2, max_retries=3)(_list_run)
    out = [task.remote(root, base, list_folder, run) for run in runs]
    infos = ray.get([i for _, i in out])
    listing = Listing([p for p, _ in out], [i["rows"] for i in infos], [(i["least"], i["greatest"]) for i in infos])
    return listing, top_unique and all(i["unique"] for i in infos)


def _list_run(root: str, base: str, list_folder: Callable[..., pa.Table], entries: list[_Entry]) -> tuple[pa.Table, dict[str, Any]]:
    """One run of a folder's entries listed (a Ray task's work): the part, and its row
    count, whether its ids and URIs are unique, its least and greatest redacted URI."""
    pieces, files = [], []
    for kind, item in entries:
        if kind == "file":
            files.append(item)
            continue
        if files:
            pieces.append(_listed(root, base, files))
            files = []
        pieces.append(list_folder(*item))
    if files:
        pieces.append(_listed(root, base, files))
    t = pa.concat_tables(pieces) if pieces else LISTED_SCHEMA.empty_table()
    return t, {"rows": t.num_rows, "unique": _unique(t), **_bounds(t)}


def _bounds(t: pa.Table) -> dict[str, Optional[str]]:
    """The least and greatest URI of a listing part, as ``sources/`` stores them (redacted,
    which may change their order)."""
    if not t.num_rows:
        return {"least": None, "greatest": None}
    bounds = pc.min_max(pa.array([redact(u) for u in t.column("uri").to_pylist()], pa.string())).as_py()
    return {"least": bounds["min"], "greatest": bounds["max"]}


def _single_file(root: str, path: str) -> _Item:
    if path.lower().endswith(AUDIO_EXTENSIONS):
        return _Item(_strip_ext(posixpath.basename(path)), root)
    raise InputError(
        f"input {redact(root)} is a file but neither audio ({', '.join(AUDIO_EXTENSIONS[:6])}, ...) "
        f"nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})"
    )


def _from_local_directory(root: str, path: str, start_ray: Optional[Callable[[], None]] = None) -> tuple[Listing, bool]:
    """A local folder, walked with ``os.scandir``: pyarrow's listing silently drops broken
    symbolic links and reports FIFOs/sockets as ``FileType.Unknown``; here each entry
    named like audio becomes a row, with an error when it is not a readable regular file.
    Symbolic links to files and folders are followed (as pyarrow does), except a link back
    to a folder above it, which would list the same files again and again."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"input not found: {redact(root)} is a broken symbolic link (target missing)") from None
        raise InputError(f"input not found: {redact(root)}") from None
    except OSError as exc:
        raise InputError(f"cannot read input {redact(root)}: {exc.strerror or exc}") from None
    if _stat.S_ISREG(st.st_mode):
        item = _single_file(root, path)
        return _one_part(_table([_Item(item.utt_id, item.uri, None, *_local_meta(st))])), True
    if not _stat.S_ISDIR(st.st_mode):
        raise InputError(f"input {redact(root)} is not a regular file or folder ({_kind(st.st_mode)}); not read")
    found, folders = _scan_local(path, frozenset([(st.st_dev, st.st_ino)]), recurse=False)
    while len(folders) == 1:  # corpus/wav/<speaker>/...: the tasks take the first level that fans out
        more, folders = _scan_local(*folders[0], recurse=False)
        found += more
    return _list_runs(root, path, found, [(folder, (root, path, folder, above)) for folder, above in folders], _listed_local, start_ray)


def _listed_local(root: str, path: str, folder: str, above: frozenset) -> pa.Table:
    """The listing of one sub-folder of the input folder (a Ray task's work)."""
    return _listed(root, path, _scan_local(folder, above)[0])


def _scan_local(top: str, above: frozenset, recurse: bool = True) -> tuple[list[tuple[str, str | None, tuple]], list[tuple[str, frozenset]]]:
    """``(path, error, (size, version))`` for every entry named like audio in ``top`` (and
    below it, with ``recurse``), and the sub-folders not walked (without ``recurse``: those
    of ``top``) with the folders above each (``(st_dev, st_ino)``, ``top``'s included)."""
    found: list[tuple[str, str | None, tuple]] = []
    stack: list[tuple[str, frozenset]] = [(top, above)]
    pending: list[tuple[str, frozenset]] = []
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise InputError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
        below = stack if recurse else pending
        for entry in entries:
            p = os.path.join(folder, entry.name)
            audio = entry.name.lower().endswith(AUDIO_EXTENSIONS)
            try:
                if entry.is_symlink():
                    try:
                        st = os.stat(p)
                    except OSError as exc:
                        if audio and os.path.lexists(p):
                            found.append((p, _unreadable_error(p, exc), (None, None)))
                        continue
                elif entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    below.append((p, above | {(st.st_dev, st.st_ino)}))
                    continue
                elif not audio:
                    continue
                elif entry.is_file(follow_symlinks=False):
                    found.append((p, None, _local_meta(entry.stat(follow_symlinks=False))))
                    continue
                else:
                    st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            if _stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in above:
                    below.append((p, above | {key}))
            elif audio:
                found.append((p, _special_file_error(p, st.st_mode), _local_meta(st)))
    return found, pending


def _from_glob(pattern: str) -> list[_Item]:
    errors: dict[str, str | None] = {}
    meta: dict[str, tuple] = {}
    if is_local(pattern):
        pat = local_path(pattern)
        paths = []
        for p in sorted(_glob.glob(pat, recursive=True)):
            kind, err, st = _check_local(p)
            if kind == "file":
                paths.append(p)
                errors[p] = err
                meta[p] = _local_meta(st)
        base = _glob_base(pat)
        uris = paths
    else:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(pattern)
        proto = pattern.split("://", 1)[0]
        stripped = pattern.split("://", 1)[1]
        found = fs.glob(stripped, detail=True)
        paths = sorted(p for p, info in found.items() if info.get("type", "file") == "file")
        meta = {p: _remote_meta(found[p]) for p in paths}
        base = _glob_base(stripped)
        uris = [f"{proto}://{p}" for p in paths]
    if not paths:
        raise InputError(f"no files match {redact(pattern)}")
    return [_Item(_strip_ext(_relative(p, base)), u, errors.get(p), *meta.get(p, (None, None))) for p, u in zip(paths, uris)]


def _check_local(p: str) -> tuple[str, str | None, os.stat_result | None]:
    """``("file", error, stat)`` for a path that is an input row (``error`` None for a regular
    file or a link to one; set for a broken link, FIFO, socket or device), ``("dir", None, stat)``
    for a folder or a link to one, ``("gone", None, None)`` for a path that does not exist."""
    try:
        st = os.stat(p)
    except ValueError:  # e.g. an embedded NUL byte: no such local file
        return "gone", None, None
    except OSError as exc:
        if os.path.lexists(p):
            return "file", _unreadable_error(p, exc), None
        return "gone", None, None
    if _stat.S_ISDIR(st.st_mode):
        return "dir", None, st
    return "file", _special_file_error(p, st.st_mode), st


def _special_file_error(p: str, mode: int) -> str | None:
    if _stat.S_ISREG(mode):
        return None
    return f"input: not a regular file ({_kind(mode)}), not read: {redact(p)}"


def _unreadable_error(p: str, exc: OSError) -> str:
    if os.path.islink(p):
        if isinstance(exc, FileNotFoundError):
            return f"input: broken symbolic link (target missing): {redact(p)}"
        if exc.errno == errno.ELOOP:
            return f"input: broken symbolic link (link loop): {redact(p)}"
        return f"input: symbolic link whose target cannot be inspected ({exc.strerror or exc}), not read: {redact(p)}"
    return f"input: cannot inspect file ({exc.strerror or exc}), not read: {redact(p)}"


def _kind(mode: int) -> str:
    if _stat.S_ISFIFO(mode):
        return "a FIFO/named pipe"
    if _stat.S_ISSOCK(mode):
        return "a socket"
    if _stat.S_ISCHR(mode):
        return "a character device"
    if _stat.S_ISBLK(mode):
        return "a block device"
    if _stat.S_ISDIR(mode):
        return "a folder"
    return "an unknown file type"


def _from_manifest(spec: str) -> list[_Item]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from labeler.io import read_small_file

    lower = spec.lower().split("?")[0]
    data = read_small_file(spec, "manifest")
    buf = pa.BufferReader(data)
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(buf)
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(buf, convert_options=pacsv.ConvertOptions(column_types={"uri": pa.string(), "utt_id": pa.string()}))
        else:
            table = pajson.read_json(buf)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"malformed manifest {redact(spec)}: {exc}") from None
    if "uri" not in table.column_names:
        raise InputError(f"manifest {redact(spec)} has no 'uri' column (columns: {table.column_names}); it needs 'uri' and may have 'utt_id'")
    if table.num_rows == 0:
        raise InputError(f"manifest {redact(spec)} has no rows")
    items, problems = _manifest_items(table, spec)
    if problems:
        raise _malformed(spec, problems[:5], len(problems))
    return items


def _malformed(spec: str, head: list[str], count: int) -> InputError:
    more = f"; and {count - len(head)} more" if count > len(head) else ""
    return InputError(f"malformed manifest {redact(spec)}: {'; '.join(head)}{more}")


def _manifest_items(table: pa.Table, spec: str, offset: int = 0) -> tuple[list[_Item], list[str]]:
    """The listing items of manifest rows (``offset``: the first one's row number), and the
    rows' problems (an empty ``uri``): none are listed when there is one."""
    uris = table.column("uri").to_pylist()
    ids = table.column("utt_id").to_pylist() if "utt_id" in table.column_names else [None] * len(uris)
    base = _parent(spec)
    problems = [f"row {offset + i}: uri is empty" for i, u in enumerate(uris) if not isinstance(u, str) or not u.strip()]
    if problems:
        return [], problems
    items = []
    for written, utt in zip(uris, ids):
        written = written.strip()
        uri = written
        if is_local(uri) and not os.path.isabs(local_path(uri)) and base is not None:
            uri = _join_base(base, local_path(uri))
        # Derived ids use the URI as written, so a relative manifest gives ids that do
        # not change when the corpus moves.
        utt_id = str(utt).strip() if utt is not None and str(utt).strip() else redact(written)
        items.append(_Item(utt_id, uri, *_manifest_row_check(uri)))
    return items, []


def _parquet_manifest(spec: str, start_ray: Callable[[], None]) -> Optional[Listing]:
    """A Parquet manifest of several row groups listed by Ray tasks, each a run of row groups
    into one part (its local rows checked with ``stat`` there too), so the manifest never
    reaches the driver: it reads the footer only. Whether its ids and URIs are unique across
    the parts is checked by one task on 64-bit hashes of them; a duplicate (or a hash
    collision) sends it to :func:`_dedupe` here, as a folder's. None when the manifest is
    not such a file (one row group, no ``uri`` column, unreadable): then it is read here,
    with the usual errors."""
    import pyarrow.parquet as pq

    try:
        fs, path = filesystem(spec)
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowInvalid, ValueError):
        return None
    if meta.num_row_groups < 2 or "uri" not in meta.schema.names or not meta.num_rows:
        return None
    start_ray()
    import ray

    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    runs = runs_by_weight(sizes, sum(sizes) / max(2, 2 * int(ray.cluster_resources().get("CPU", 1))))
    offsets = np.cumsum([0, *sizes])
    task = ray.remote(num_returns=3, max_retries=3)(_manifest_part)
    out = [task.remote(spec, run, int(offsets[run[0]])) for run in runs]
    infos = ray.get([i for _, _, i in out])
    problems = [p for i in infos for p in i["problems"]]
    if problems:
        raise _malformed(spec, problems[:5], sum(i["problem_count"] for i in infos))
    listing = Listing([p for p, _, _ in out], [i["rows"] for i in infos], [(i["least"], i["greatest"]) for i in infos])
    return listing if ray.get(ray.remote(max_retries=3)(_hashes_unique).remote(*[k for _, k, _ in out])) else _marked(listing)


def _manifest_part(spec: str, groups: list[int], offset: int) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """One run of a Parquet manifest's row groups listed (a Ray task's work): the part, the
    64-bit hashes of its ids and URIs, and its row count, bounds and problems."""
    import pyarrow.parquet as pq

    fs, path = filesystem(spec)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        t = pf.read_row_groups(groups, columns=[c for c in ("uri", "utt_id") if c in pf.schema_arrow.names])
    items, problems = _manifest_items(t, spec, offset)
    part = _table(items)
    return part, _key_hashes(part), {"rows": part.num_rows, "problems": problems[:5], "problem_count": len(problems),
                                    **_bounds(part)}


def _key_hashes(t: pa.Table) -> np.ndarray:
    """64-bit hashes (:func:`labeler.cache.key64`) of each row's ``utt_id`` and of its URI,
    kept apart by a first part."""
    from labeler.cache import key64

    ids, uris = t.column("utt_id").to_pylist(), t.column("uri").to_pylist()
    return np.array([key64("id", x) for x in ids] + [key64("uri", x) for x in uris], np.uint64)


def _hashes_unique(*hashes: np.ndarray) -> bool:
    keys = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    return len(np.unique(keys)) == len(keys)


def _manifest_row_check(uri: str) -> tuple[str | None, int | None, str | None]:
    """(error, size, version) of a manifest row. The error is for a local row that must not be
    handed to the decoder: a FIFO, socket or device (opening a FIFO blocks forever) or a
    broken symbolic link. Missing files and folders are left to the decoder, which fails on
    them without blocking; remote URIs are not touched here (no metadata: always read)."""
    if not is_local(uri):
        return None, None, None
    kind, err, st = _check_local(local_path(uri))
    if kind != "file":
        return None, None, None
    return (err, None, None) if err else (None, *_local_meta(st))


def _dedupe(listed: pa.Table) -> pa.Table:
    """The listing, its rows numbered; a row whose URI or ``utt_id`` an earlier row has
    becomes an error row with a ``#dup<k>`` id. A folder or a glob lists each URI once and
    rarely two files with one id, so that common case is checked with Arrow first, without
    the per-row bookkeeping."""
    if _unique(listed):
        return number(listed, 0)
    n = listed.num_rows
    rows = pa.array(np.arange(n, dtype=np.int64))
    first_by_uri: dict[str, str] = {}
    first_by_id: dict[str, int] = {}
    dup_count: dict[str, int] = {}
    utt_ids, errors, sizes, versions = [], [], [], []
    for i, (utt_id, uri, error, size, version) in enumerate(zip(*(listed.column(c).to_pylist() for c in LISTED_SCHEMA.names))):
        err = None
        if uri in first_by_uri:
            err = f"input: duplicate row, same uri as utt_id {first_by_uri[uri]!r}"
        elif utt_id in first_by_id:
            err = f"input: duplicate utt_id {utt_id!r} (first at input row {first_by_id[utt_id]}) for a different uri"
        if err:
            k = dup_count.get(utt_id, 0) + 1
            dup_count[utt_id] = k
            utt_id = f"{utt_id}#dup{k}"
        else:
            first_by_uri[uri] = utt_id
            first_by_id[utt_id] = i
            err = error
        utt_ids.append(utt_id)
        errors.append(err)
        sizes.append(None if err else size)
        versions.append(None if err else version)
    return pa.table(
        {"utt_id": utt_ids, "uri": listed.column("uri"), "source_row": rows, "error": errors,
         "source_size": sizes, "source_version": versions},
        schema=INPUT_SCHEMA,
    )


def _strip_ext(p: str) -> str:
    root, ext = posixpath.splitext(p)
    return root if ext else p


def _relative(p: str, base: str) -> str:
    p = p.replace(os.sep, "/")
    base = base.replace(os.sep, "/").rstrip("/")
    if base and p.startswith(base + "/"):
        return p[len(base) + 1:]
    return posixpath.basename(p)


def _to_uri(root: str, root_path: str, p: str) -> str:
    if is_local(root):
        return p
    scheme = root.split("://", 1)[0]
    return f"{scheme}://{p}"


def _glob_base(pattern: str) -> str:
    parts = pattern.replace(os.sep, "/").split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed)


def _parent(spec: str) -> str | None:
    if is_local(spec):
        return os.path.dirname(os.path.abspath(local_path(spec)))
    return spec.rsplit("/", 1)[0]


def _join_base(base: str, rel: str) -> str:
    if is_local(base):
        return os.path.normpath(os.path.join(base, rel))
    return base.rstrip("/") + "/" + rel
