"""How a training worker uses its machine: the number of torch threads
(:func:`choose_threads`) and glibc's policy for freed memory (:func:`keep_freed_memory`).
Both are pure functions of what they are given, or no-ops where they cannot apply.

    >>> from trainer.runtime import choose_threads
    >>> choose_threads("auto", cpus_per_worker=1.0, cores=2, local_workers=1)
    2
    >>> choose_threads("auto", cpus_per_worker=0.5, cores=16, local_workers=4)
    4
    >>> choose_threads(3, cpus_per_worker=1.0, cores=2, local_workers=1)
    3
"""

from __future__ import annotations

import math
import os
import sys


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity mask: what a container's cpuset
    or ``taskset`` allows), else the machine's core count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(setting: int | str, *, cpus_per_worker: float, cores: int, local_workers: int) -> int:
    """torch intra-op threads for one CPU training worker.

    An explicit number is used as it is. ``"auto"``: the ``cores`` this worker can run on,
    shared evenly among the ``local_workers`` training workers on its node, but at least
    ``cpus_per_worker`` rounded up (Ray's CPU number is a reservation, not a core binding:
    1.5 means 2 busy threads, not 1) and never more than ``cores``.
    """
    if setting != "auto":
        return int(setting)
    cores = max(1, int(cores))
    share = cores // max(1, int(local_workers))
    return max(1, min(cores, max(share, math.ceil(cpus_per_worker))))


#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Tell glibc's allocator to keep up to ``threshold_bytes`` of freed memory in the
    process and to serve blocks below that size from the heap rather than from fresh
    ``mmap`` calls. Without it, every training step unmaps the multi-MB feature batch and
    activation buffers when they are freed and page-faults them in again on the next step.

    Returns True when the setting took effect; False (doing nothing) where it cannot
    apply: not Linux, not glibc, or ``mallopt`` refused.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl (Alpine) or no libc.so.6
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; M_MMAP_THRESHOLD is capped at 32 MiB on 64-bit glibc.
    trim = mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes)) == 1
    mmap = mallopt(_M_MMAP_THRESHOLD, min(int(threshold_bytes), 32 << 20)) == 1
    return trim and mmap
