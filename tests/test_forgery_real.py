"""The segfault trick against the kmsg and journald sources, with a real crash (issue 10).

An unprivileged program (run as nobody) whose file name holds a newline and a LOG record
crashes; with debug.exception-trace=1 (the default) the kernel reports it at info level,
quoting the name. The kernel's record is read back from /dev/kmsg and shown to be a working
forgery for the parser on its own; the sources must refuse it. This VM runs no journald, so
the journald case feeds the same kernel record, unescaped as journald's kmsg reader does, to
the real journalctl through a journal file (systemd-journal-remote).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from crash import crash_as_nobody, crashing_program, exception_trace
from fakes.select_loop import settle

from blocker.netfilter import KernelLogParser
from blocker.sources.journald import JournaldSource
from blocker.sources.kmsg import KmsgSource, parse_kmsg_record

pytestmark = pytest.mark.root

FORGED = "203.0.113.77"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def forged_record(tag: str) -> str:
    return (
        f"{tag} IN=eth0 OUT= SRC={FORGED} DST=198.51.100.1 LEN=40 TOS=0x00 PREC=0x00 "
        "TTL=64 ID=0 PROTO=TCP SPT=80 DPT=4444 WINDOW=0 RES=0x00 ACK SYN URGP=0 "
    )


@pytest.fixture
def crash_record() -> Iterator[tuple[str, bytes, list[KmsgSource]]]:
    """(tag, the kernel's raw /dev/kmsg record of the crash, sources opened before it):
    the sources are a default one (log_level warning) and one at the crash's info level."""
    tag = f"RTP{os.getpid() % 100000}x{time.monotonic_ns() % 100000}"
    raw_fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(raw_fd, 0, os.SEEK_END)
    sources = [KmsgSource(), KmsgSource(levels=frozenset((6,)))]
    try:
        with exception_trace(), crashing_program(forged_record(tag)) as program:
            record = b""
            for _ in range(5):  # printk_ratelimit may drop a report: crash again
                assert crash_as_nobody(program) == -signal.SIGSEGV
                record = _wait_for(raw_fd, f"{tag} IN=eth0 OUT=".encode())
                if record:
                    break
                time.sleep(1)
        if not record:
            pytest.skip("the kernel printed no report of the crash (rate limit?)")
        yield tag, record, sources
    finally:
        os.close(raw_fd)
        for source in sources:
            source.close()


def _wait_for(fd: int, needle: bytes, timeout: float = 3.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = os.read(fd, 8192)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        except BrokenPipeError:
            continue
        if needle in raw:
            return raw
    return b""


def test_a_crash_report_is_a_forgery_the_kmsg_source_refuses(
    crash_record: tuple[str, bytes, list[KmsgSource]], caplog: pytest.LogCaptureFixture
) -> None:
    tag, raw, (default, at_info) = crash_record
    parsed = parse_kmsg_record(raw)
    assert parsed is not None
    assert parsed.facility == 0  # the kernel's own record: facility alone cannot tell
    assert parsed.level == 6
    assert "\\x0a" in parsed.message
    # Let through, it would count: the parser finds a LOG record from FORGED in it.
    packet = KernelLogParser().parse(parsed.message, time.time(), source_time=time.time())
    assert packet is not None and str(packet.src) == FORGED

    with caplog.at_level("WARNING", logger="blocker.sources"):
        for source in (default, at_info):
            lines = [line.text for line in settle(source)]
            assert not [text for text in lines if tag in text]
    assert cast(int, default.health()["rejected_level"]) >= 1  # info level: not the LOG level
    assert cast(int, at_info.health()["rejected_control_chars"]) >= 1  # at its level: the newline
    logged = [r.getMessage() for r in caplog.records]
    assert (
        "/dev/kmsg: refused a LOG-like record at level 6: log_level is [4] (if your LOG "
        "rules use that level, set log_level to it)" in logged
    )
    assert any(m.startswith("/dev/kmsg: refused a kernel record holding a newline") for m in logged)


def journal_export(fields: dict[str, bytes]) -> bytes:
    """One entry in the journal export format (binary-safe fields get a length prefix)."""
    out = b""
    for key, value in fields.items():
        if b"\n" in value or any(byte < 32 for byte in value):
            out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key.encode() + b"=" + value + b"\n"
    return out + b"\n"


def test_the_same_crash_report_through_journalctl_is_refused(
    crash_record: tuple[str, bytes, list[KmsgSource]], tmp_path: Path
) -> None:
    if not os.path.exists(JOURNAL_REMOTE) or shutil.which("journalctl") is None:
        pytest.skip("needs journalctl and systemd-journal-remote")
    tag, raw, _ = crash_record
    parsed = parse_kmsg_record(raw)
    assert parsed is not None
    # journald's kmsg reader unescapes \xNN: its MESSAGE holds the real newline.
    message = re.sub(
        rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), parsed.message.encode()
    )
    assert b"\n" in message
    entry = {
        "__CURSOR": b"s=1",
        "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000).encode(),
        "__MONOTONIC_TIMESTAMP": b"1000",
        "_BOOT_ID": b"4d4c38e9199a40e5b869a5befe2adb1b",
        "_HOSTNAME": b"blocker-test",
        "_TRANSPORT": b"kernel",
        "PRIORITY": str(parsed.level).encode(),
        "MESSAGE": message,
    }
    path = tmp_path / "crash.journal"
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(path), "-"],
        input=journal_export(entry),
        check=True,
        capture_output=True,
    )
    command = ["journalctl", f"--file={path}"]
    for levels, why in [
        (frozenset((4,)), None),  # journalctl's PRIORITY=4 match skips it
        (frozenset((6,)), "MESSAGE holds a newline or control character"),
    ]:
        source = JournaldSource(from_start=True, command=command, levels=levels)
        try:
            deadline = time.monotonic() + 5
            lines = []
            while time.monotonic() < deadline and source.health()["cursor"] is None:
                lines += settle(source)
                if why is None:
                    break
            lines += settle(source)
            assert not [line for line in lines if tag in line.text]
            assert source.health()["last_rejected"] == why
        finally:
            source.close()
