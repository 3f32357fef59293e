"""glibc's malloc set up for a daemon that grows tables of a million entries (issue 9 (d)).

Under a storm blockerd's tables (dict tables, arrays of active bans) grow by allocating a
bigger block and freeing the old one. glibc serves a block above its mmap threshold as a
mapping of its own, given back to the kernel whole on free; but each time such a block is
freed it raises the threshold to that block's size (up to 32 MiB), and from then on the next
big tables come from the brk heap, where a freed one is a hole the heap keeps while anything
above it lives. bench/bench_storm_daemon.py --timeline measured that at the end of a
1M-reflector storm: 148 MB of heap of which 37-43 MB free, 60 MB mapped. With the threshold
fixed at MMAP_THRESHOLD (mallopt(M_MMAP_THRESHOLD), which also stops its growth), every block
of 256 KiB or more is a mapping of its own: 14 MB of heap (2-3 MB free), and blockerd's peak
RSS in that storm 355 MB instead of 389 (bench/README.md).

Blocks below the threshold (Python's own small objects come from pymalloc's 1 MiB arenas,
mapped anyway) are unchanged. Not glibc (musl), or MALLOC_MMAP_THRESHOLD_ set by the admin:
nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 256 * 1024  # bytes: the blocks that churn in a storm are megabytes


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes -> whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not _glibc():  # the admin's setting stays
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def _glibc() -> bool:
    """Another libc's mallopt may read the same number as something else."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False
