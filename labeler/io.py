"""Filesystem access by URI: local paths, ``file://``, and anything pyarrow or fsspec knows
(``s3://``, ``gs://``, ``hdfs://``, ``abfs://``, ...). Also credential redaction for URIs.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import IO, Iterator
from urllib.parse import urlsplit, urlunsplit

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_local(uri: str) -> bool:
    return not _SCHEME.match(uri) or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def redact(uri: str) -> str:
    """``s3://key:secret@bucket/x`` -> ``s3://***@bucket/x``; query strings that carry
    credentials (``?X-Amz-Signature=..``, ``?token=..``, ``?sig=..``) are dropped."""
    if not isinstance(uri, str) or not _SCHEME.match(uri):
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query and re.search(r"(sig|signature|token|key|secret|password|credential)", query, re.I):
        query = "***"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every URI with credentials inside free text (log lines, error messages)."""
    return re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+", lambda m: redact(m.group(0)), text)


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for ``uri``."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A scheme pyarrow has no native filesystem for: let fsspec handle it.
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@contextlib.contextmanager
def open_input_stream(uri: str) -> Iterator[IO[bytes]]:
    if is_local(uri):
        with open(local_path(uri), "rb") as f:
            yield f
        return
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        yield f


def join(root: str, *parts: str) -> str:
    root = root.rstrip("/")
    return "/".join([root, *[p.strip("/") for p in parts]])


def write_parquet_atomic(directory: str, name: str, table, compression: str = "zstd") -> None:
    """Write ``table`` as ``<directory>/<name>`` under a temporary name, then rename: a part
    file is either complete or absent, and a retried writer overwrites its own file."""
    import posixpath

    import pyarrow.parquet as pq

    fs, base = filesystem(directory)
    fs.create_dir(base, recursive=True)
    path = posixpath.join(base, name)
    with fs.open_output_stream(path + ".tmp") as f:
        pq.write_table(table, f, compression=None if compression == "none" else compression)
    fs.move(path + ".tmp", path)


def redact_uri_column(table):
    """Tables store the URI without credentials: the stages read the real one, the
    ``uri`` column gets ``s3://***@bucket/...`` (see :func:`redact`)."""
    import pyarrow as pa

    if "uri" not in table.column_names:
        return table
    uris = table.column("uri").to_pylist()
    clean = [redact(u) for u in uris]
    if clean == uris:
        return table
    return table.set_column(table.column_names.index("uri"), "uri", pa.array(clean, pa.string()))


def write_json_atomic(uri: str, payload: dict) -> None:
    """Write ``payload`` as JSON to ``uri`` under a temporary name, then rename."""
    import json

    write_bytes_atomic(uri, json.dumps(payload, indent=2, sort_keys=False, default=str).encode("utf-8"))


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` under a temporary name, then rename (its folder is created)."""
    import posixpath

    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_small_file(uri: str, what: str) -> bytes:
    """The whole of a small input file (a manifest, a gold file), or
    :class:`~labeler.errors.InputError` saying in one line that ``what`` is missing or unreadable."""
    from labeler.errors import InputError

    try:
        with open_input_stream(uri) as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {redact(uri)}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {redact(uri)}: {exc}") from None
