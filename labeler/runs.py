"""Run identity, resumption and exclusion.

A run's *key* hashes everything that decides its output (input, taxonomy version and
hypotheses, ASR and scorer settings, abstain rules). Re-running the same command after a
crash finds the unfinished run with the same key under ``_staging/`` and resumes it:
utterances already in its staged part files are skipped, the rest are processed, and the
commit checks that together they hold every input row exactly once. So a killed run,
re-run, converges to the table a clean run would give, with nothing lost or duplicated.

While a run is in progress its driver holds a lock on ``_staging/<run_id>/.lock``
(``flock`` on local/POSIX filesystems, released by the OS if the process dies). A run
whose lock is held is never resumed by another process; that process starts a run of its
own, in its own staging folder, so two concurrent runs never interleave their output.
On object stores a lease file with a heartbeat plays the lock's part.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
from typing import Any, Optional

from labeler.io import filesystem, is_local, join, local_path
from labeler.table import now_utc, read_manifest, staging_dir

LEASE_SECONDS = 300


class RunLock:
    """Exclusive ownership of one staged run for the life of this process."""

    def __init__(self, root: str, run_id: str) -> None:
        self.path = join(staging_dir(root, run_id), ".lock")
        self._fd: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def acquire(self) -> bool:
        fs, path = filesystem(self.path)
        fs.create_dir(posixpath.dirname(path), recursive=True)
        if is_local(self.path):
            import fcntl

            fd = os.open(local_path(path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            self._fd = fd
            return True
        # object stores: a lease renewed by a heartbeat thread
        if _lease_alive(fs, path):
            return False
        _write_lease(fs, path)
        self._thread = threading.Thread(target=self._heartbeat, args=(fs, path), daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self, fs, path) -> None:
        while not self._stop.wait(LEASE_SECONDS / 5):
            _write_lease(fs, path)

    def release(self) -> None:
        self._stop.set()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _write_lease(fs, path) -> None:
    with fs.open_output_stream(path) as f:
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}).encode())


def _lease_alive(fs, path) -> bool:
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    try:
        with fs.open_input_stream(path) as f:
            at = json.loads(f.read().decode()).get("at", 0)
    except (OSError, ValueError):
        return False
    return time.time() - at < LEASE_SECONDS


def write_run_info(root: str, run_id: str, key: str, kind: str) -> None:
    fs, path = filesystem(join(staging_dir(root, run_id), "run.json"))
    info = {"run_id": run_id, "key": key, "kind": kind, "started_at": now_utc().isoformat()}
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(info).encode())


def staged_runs(root: str) -> list[dict[str, Any]]:
    """run.json of every unfinished run under ``_staging/``, oldest first."""
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, "_staging"))
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, "run.json")) as f:
                out.append(json.loads(f.read().decode()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("run_id", ""))


def claim_run(root: str, key: str, kind: str, requested: Optional[str], new_id) -> tuple[str, RunLock, bool]:
    """Pick the run id for this command and lock it: (run_id, lock, resumed).

    - ``requested`` given: that id (resumed if staged); fails if another process holds it.
    - else: the newest unfinished run with the same key whose lock is free, or a new id.
    """
    from labeler.errors import LanserError

    if requested:
        lock = RunLock(root, requested)
        if not lock.acquire():
            raise LanserError(f"run {requested} is in progress in another process (lock {lock.path}); wait for it or choose another --run-id")
        staged = any(r["run_id"] == requested for r in staged_runs(root))
        if not staged:
            write_run_info(root, requested, key, kind)
        return requested, lock, staged
    for info in reversed(staged_runs(root)):
        if info.get("key") != key or read_manifest(root, info["run_id"]) is not None:
            continue
        lock = RunLock(root, info["run_id"])
        if lock.acquire():
            return info["run_id"], lock, True
    run_id = new_id()
    lock = RunLock(root, run_id)
    if not lock.acquire():  # pragma: no cover - a fresh random id
        raise LanserError(f"cannot lock new run {run_id}")
    write_run_info(root, run_id, key, kind)
    return run_id, lock, False
