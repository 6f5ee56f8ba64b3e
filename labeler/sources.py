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
"""

from __future__ import annotations

import glob as _glob
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from labeler.errors import InputError
from labeler.io import filesystem, is_local, local_path, redact

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
    ]
)


@dataclass(frozen=True)
class _Item:
    utt_id: str
    uri: str


def resolve_input(spec: str) -> pa.Table:
    """Return the run's input rows as an Arrow table with :data:`INPUT_SCHEMA`."""
    if not spec:
        raise InputError("no input given")
    lower = spec.lower().split("?")[0]
    if lower.endswith(MANIFEST_EXTENSIONS):
        items = _from_manifest(spec)
    elif any(ch in spec for ch in "*?["):
        items = _from_glob(spec)
    else:
        items = _from_directory(spec)
    return _dedupe(items)


def _from_directory(root: str) -> list[_Item]:
    fs, path = filesystem(root)
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {redact(root)}")
    if info.type == pafs.FileType.File:
        if path.lower().endswith(AUDIO_EXTENSIONS):
            return [_Item(_strip_ext(posixpath.basename(path)), root)]
        raise InputError(
            f"input {redact(root)} is a file but neither audio ({', '.join(AUDIO_EXTENSIONS[:6])}, ...) "
            f"nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})"
        )
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    paths = sorted(f.path for f in files if f.type == pafs.FileType.File and f.path.lower().endswith(AUDIO_EXTENSIONS))
    if not paths:
        raise InputError(f"no audio files ({', '.join(AUDIO_EXTENSIONS[:6])}, ...) found under {redact(root)}")
    return [_Item(_strip_ext(_relative(p, path)), _to_uri(root, path, p)) for p in paths]


def _from_glob(pattern: str) -> list[_Item]:
    if is_local(pattern):
        pat = local_path(pattern)
        paths = sorted(p for p in _glob.glob(pat, recursive=True) if os.path.isfile(p))
        base = _glob_base(pat)
        uris = paths
    else:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(pattern)
        proto = pattern.split("://", 1)[0]
        stripped = pattern.split("://", 1)[1]
        paths = sorted(fs.glob(stripped))
        base = _glob_base(stripped)
        uris = [f"{proto}://{p}" for p in paths]
    if not paths:
        raise InputError(f"no files match {redact(pattern)}")
    return [_Item(_strip_ext(_relative(p, base)), u) for p, u in zip(paths, uris)]


def _from_manifest(spec: str) -> list[_Item]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from labeler.io import open_input_stream

    lower = spec.lower().split("?")[0]
    try:
        with open_input_stream(spec) as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"manifest not found: {redact(spec)}") from None
    except OSError as exc:
        raise InputError(f"cannot read manifest {redact(spec)}: {exc}") from None
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
    uris = table.column("uri").to_pylist()
    ids = table.column("utt_id").to_pylist() if "utt_id" in table.column_names else [None] * len(uris)
    base = _parent(spec)
    problems = [f"row {i}: uri is empty" for i, u in enumerate(uris) if not isinstance(u, str) or not u.strip()]
    if problems:
        head = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"malformed manifest {redact(spec)}: {head}")
    items = []
    for written, utt in zip(uris, ids):
        written = written.strip()
        uri = written
        if is_local(uri) and not os.path.isabs(local_path(uri)) and base is not None:
            uri = _join_base(base, local_path(uri))
        # Derived ids use the URI as written, so a relative manifest gives ids that do
        # not change when the corpus moves.
        utt_id = str(utt).strip() if utt is not None and str(utt).strip() else redact(written)
        items.append(_Item(utt_id, uri))
    return items


def _dedupe(items: list[_Item]) -> pa.Table:
    first_by_uri: dict[str, str] = {}
    first_by_id: dict[str, int] = {}
    dup_count: dict[str, int] = {}
    utt_ids, uris, errors = [], [], []
    for i, it in enumerate(items):
        err = None
        utt_id = it.utt_id
        if it.uri in first_by_uri:
            err = f"input: duplicate row, same uri as utt_id {first_by_uri[it.uri]!r}"
        elif utt_id in first_by_id:
            err = f"input: duplicate utt_id {utt_id!r} (first at input row {first_by_id[utt_id]}) for a different uri"
        if err:
            k = dup_count.get(utt_id, 0) + 1
            dup_count[utt_id] = k
            utt_id = f"{utt_id}#dup{k}"
        else:
            first_by_uri[it.uri] = utt_id
            first_by_id[utt_id] = i
        utt_ids.append(utt_id)
        uris.append(it.uri)
        errors.append(err)
    return pa.table(
        {"utt_id": utt_ids, "uri": uris, "source_row": list(range(len(items))), "error": errors},
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
