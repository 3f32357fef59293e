"""blockerd with a memory timeline, for bench_storm_daemon.py --timeline (the bench's blockerd
only, never the shipped one). Root of nothing: it runs blocker.daemon.main in this process.

    python storm_probe.py OUT SECONDS [--tracemalloc TOP] -- BLOCKERD-ARGS...

Every SECONDS a thread appends one JSON line to OUT: whole-process VmRSS and VmHWM, glibc's
mallinfo2 (heap bytes in use and free, mmapped bytes), pymalloc's arenas (sys._debugmallocstats:
arenas held, bytes in live blocks, bytes free inside them) and, under tracemalloc, the traced
total and the TOP allocation sites alive at that moment. Where RSS runs above what is alive,
these say which allocator holds the difference. SIGUSR2 appends one sample at once.
STORM_PROBE_TRIM=1 calls malloc_trim(0) before each sample (an experiment: how much of RSS is
free heap that glibc could give back).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, float]:
    libc = ctypes.CDLL(None)
    try:
        call = libc.mallinfo2
    except AttributeError:
        return {}
    call.restype = _MallInfo2
    info = call()
    return {
        "heap_mb": info.arena / 1e6,  # brk heap (and other arenas) held from the kernel
        "heap_used_mb": info.uordblks / 1e6,
        "heap_free_mb": info.fordblks / 1e6,  # free inside the heap: fragmentation
        "mmap_mb": info.hblkhd / 1e6,  # big blocks, each its own mapping
    }


_STAT = re.compile(r"^#? ?(.*?)\s+=\s+([\d,]+)$")


def _pymalloc() -> dict[str, float]:
    """sys._debugmallocstats() (it prints to fd 2, so fd 2 goes to a file meanwhile; the
    logging handlers' locks are held so no log line lands there)."""
    import logging  # noqa: PLC0415

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.acquire()
    try:
        with tempfile.TemporaryFile("w+") as out:
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            out.seek(0)
            text = out.read()
    finally:
        for handler in handlers:
            handler.release()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _STAT.match(line)
        if match:
            name, value = match.group(1), int(match.group(2).replace(",", ""))
            if "unused pools" in name:
                name = "unused pools"
            found[name] = value
    return {
        "arenas": found.get("arenas allocated current", 0),  # 1 MiB each (3.10+)
        "arenas_peak": found.get("arenas highwater mark", 0),
        "py_used_mb": found.get("bytes in allocated blocks", 0) / 1e6,
        "py_free_mb": found.get("bytes in available blocks", 0) / 1e6,  # in used pools
        "py_pools_free_mb": found.get("unused pools", 0) / 1e6,  # empty pools in arenas
    }


def _status() -> dict[str, float]:
    found: dict[str, float] = {}
    for text in Path("/proc/self/status").read_text().splitlines():
        key, _, value = text.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            found[key] = int(value.split()[0]) / 1024
    return found


def main() -> int:
    out, seconds = sys.argv[1], float(sys.argv[2])
    rest = sys.argv[3:]
    top = 0
    if rest[:1] == ["--tracemalloc"]:
        top = int(rest[1])
        rest = rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if top:
        tracemalloc.start()
    began = time.monotonic()
    lock = threading.Lock()

    def sample() -> None:
        with lock:
            row: dict[str, object] = {"t": round(time.monotonic() - began, 1)}
            row.update({k: round(v, 1) for k, v in _status().items()})
            row.update({k: round(v, 1) for k, v in _mallinfo().items()})
            row.update({k: round(v, 1) for k, v in _pymalloc().items()})
            if top:
                current, peak = tracemalloc.get_traced_memory()
                row["traced_mb"] = round(current / 1e6, 1)
                row["traced_peak_mb"] = round(peak / 1e6, 1)
                stats = tracemalloc.take_snapshot().statistics("lineno")[:top]
                row["top"] = [
                    [
                        round(s.size / 1e6, 1),
                        s.count,
                        f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                    ]
                    for s in stats
                ]
            with open(out, "a") as file:
                file.write(json.dumps(row) + "\n")

    trim = ctypes.CDLL(None).malloc_trim if os.environ.get("STORM_PROBE_TRIM") else None

    def every() -> None:
        while True:
            time.sleep(seconds)
            if trim is not None:  # an experiment: would giving back free heap pages help?
                trim(0)
            sample()

    threading.Thread(target=every, daemon=True).start()
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=sample).start())
    from blocker.daemon import main as blockerd  # noqa: PLC0415

    return blockerd(rest)


if __name__ == "__main__":
    sys.exit(main())
