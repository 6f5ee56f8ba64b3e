"""Exclusive ownership of a staged run while its driver works on it.

``flock`` on ``_staging/<run_id>/.lock`` on local/POSIX filesystems (released by the OS if
the process dies); on object stores a lease file renewed by a heartbeat thread.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
from typing import Optional

from labeler.io import filesystem, is_local, join, local_path
from labeler.schema import staging_dir

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
