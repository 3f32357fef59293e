"""blocker.malloc_tuning: with the threshold fixed, a big block freed earlier no longer sends
the next big blocks into the brk heap (where a freed one stays held). Each case runs in a
fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from blocker.malloc_tuning import _glibc

pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")

PROBE = """
import ctypes, json, sys
from blocker.malloc_tuning import tune_malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]

info = ctypes.CDLL(None).mallinfo2
info.restype = Info
tuned = tune_malloc() if sys.argv[1] == "tune" else None
big = bytearray(8 << 20)  # mapped; freeing it raises glibc's own threshold to 8 MiB
del big
before = info().hblkhd
table = bytearray(2 << 20)  # a table of 2 MiB, as a storm's dicts and arrays grow
mapped = info().hblkhd - before
print(json.dumps({"tuned": tuned, "mapped": mapped}))
"""


def run(mode: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_big_blocks_stay_mappings_of_their_own_once_tuned() -> None:
    plain = run("plain")
    tuned = run("tune")
    assert plain["mapped"] == 0  # glibc's moving threshold: the 2 MiB came from the heap
    assert tuned["tuned"] is True
    assert isinstance(tuned["mapped"], int) and tuned["mapped"] >= 2 << 20


def test_the_admins_own_threshold_stays() -> None:
    tuned = run("tune", MALLOC_MMAP_THRESHOLD_=str(64 << 20))
    assert tuned == {"tuned": False, "mapped": 0}
