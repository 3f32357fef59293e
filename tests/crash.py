"""A real segfault of an unprivileged process whose file name holds a newline and a LOG-like
record: the forgery of issue 10 (the kernel's crash report quotes the file name).

    with exception_trace(), crashing_program("RTP " + record) as program:
        crash_as_nobody(program)     # the kernel prints "...segfault ... in x\\nRTP IN=..."

The crashing program is compiled with the system's cc; the crash is a read of address 0 in its
own text, so the report names the file. Reports are rate-limited (printk_ratelimit): callers
wait for the record and crash again when it does not come.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

EXCEPTION_TRACE = Path("/proc/sys/debug/exception-trace")
NOBODY = 65534
_PROGRAM = "int main(void) { volatile int *p = 0; return *p; }\n"


@contextmanager
def exception_trace() -> Iterator[None]:
    """Turn the kernel's report of unhandled user faults on (the default), restore after."""
    if not EXCEPTION_TRACE.exists():
        pytest.skip("no debug.exception-trace sysctl on this kernel")
    old = EXCEPTION_TRACE.read_text().strip()
    try:
        EXCEPTION_TRACE.write_text("1\n")
    except OSError as exc:
        pytest.skip(f"cannot set debug.exception-trace: {exc}")
    try:
        yield
    finally:
        EXCEPTION_TRACE.write_text(old + "\n")


@contextmanager
def crashing_program(record: str) -> Iterator[Path]:
    """The crashing program at /tmp/blocker-crash-*/'x\\n<record>', runnable by nobody;
    removed on exit."""
    if shutil.which("cc") is None or shutil.which("setpriv") is None:
        pytest.skip("needs cc and setpriv")
    if "/" in record or len(record.encode()) > 250:
        raise ValueError("a file name holds no '/' and at most 255 bytes")
    work = Path(tempfile.mkdtemp(prefix="blocker-crash-", dir="/tmp"))
    try:
        work.chmod(0o755)  # nobody must reach the program
        source = work / "crash.c"
        source.write_text(_PROGRAM)
        built = work / "crash"
        subprocess.run(
            ["cc", "-O0", "-o", str(built), str(source)], check=True, capture_output=True
        )
        target = work / f"x\n{record}"
        shutil.copy(built, target)
        target.chmod(0o755)
        yield target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def crash_as_nobody(program: Path) -> int:
    """Run `program` as nobody; return its exit status (-11: killed by SIGSEGV)."""
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", str(program)],
        capture_output=True,
        check=False,
        cwd="/",
        env={"PATH": os.defpath},
    )
    return done.returncode
