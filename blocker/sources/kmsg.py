"""Kernel lines straight from /dev/kmsg, one record per read().

Only facility 0 (kernel) is accepted. The kernel gives every record written to /dev/kmsg
from user space facility LOG_USER (1) unless the writer names a facility other than 0
(devkmsg_write in kernel/printk/printk.c), so user space cannot produce a facility-0 record.

Kernel records may still quote text a user chose (a segfault report names the crashing file,
and a file name may hold a newline and a LOG-like record). So a record is also refused when it
is not at the LOG rule's level (`log_level`, warning by default) or when it holds an escaped
control character: /dev/kmsg prints a newline in a record as "\\x0a" (and a backslash as
"\\x5c"), and netfilter's LOG target never prints one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from blocker.netfilter import looks_like_netfilter
from blocker.refusals import RefusalLog
from blocker.sources.base import MAX_LINE_BYTES, SourceError, SourceLine, decode_line

DEVICE = "/dev/kmsg"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
RECORD_BYTES = 8192  # CONSOLE_EXT_LOG_MAX: a smaller read buffer gets EINVAL
log = logging.getLogger("blocker.sources")
RECORDS_PER_READ = 4096  # /dev/kmsg stays readable, so the rest waits for the next call
KERNEL_FACILITY = 0
WARNING = 4  # the level iptables' and nftables' LOG use unless told otherwise
# How /dev/kmsg escapes a C0 control character or DEL inside a record.
_ESCAPED_CONTROL = re.compile(r"\\x(?:[01][0-9a-f]|7f)")


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    facility: int
    level: int
    seq: int
    usec: int
    message: str


def parse_kmsg_record(raw: bytes) -> KmsgRecord | None:
    """Parse "pri,seq,usec,flags[,...];message\\n[ KEY=value\\n...]"; None if malformed."""
    head, sep, rest = raw.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 4:
        return None
    try:
        pri, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if min(pri, seq, usec) < 0:
        return None
    # Lines after the first are " KEY=value" dictionary entries, not log text.
    message = rest.split(b"\n", 1)[0][:MAX_LINE_BYTES]
    return KmsgRecord(pri >> 3, pri & 7, seq, usec, decode_line(message))


def _read_boot_id(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, ValueError):
        return None


def _saved(start: dict[str, object] | None) -> tuple[int, str] | None:
    if start is None:
        return None
    seq, boot_id = start.get("seq"), start.get("boot_id")
    if type(seq) is int and seq >= 0 and isinstance(boot_id, str):
        return seq, boot_id
    return None


def read_record(fd: int) -> bytes:
    """One /dev/kmsg record (a module function so tests can script EPIPE)."""
    return os.read(fd, RECORD_BYTES)


class RecordFilter:
    """Keeps facility-0 records at the LOG level without control characters, skips those
    seen before a restart, counts gaps in seq."""

    def __init__(
        self,
        boot_time: float,
        last_seq: int | None = None,
        levels: frozenset[int] = frozenset((WARNING,)),
    ) -> None:
        self.boot_time = boot_time
        self.last_seq = last_seq
        self.levels = levels
        self.rejected = 0
        self.wrong_level = 0
        self.log_like_wrong_level: int | None = None  # the level of the last such record
        self.control_chars = 0
        self.malformed = 0
        self.lost = 0
        self.skipped = 0

    def take(self, raw: bytes) -> SourceLine | None:
        record = parse_kmsg_record(raw)
        if record is None:
            self.malformed += 1
            return None
        if self.last_seq is not None:
            if record.seq <= self.last_seq:
                self.skipped += 1
                return None
            # seq numbers are consecutive: a gap is records overwritten before we read them.
            self.lost += record.seq - self.last_seq - 1
        self.last_seq = record.seq
        if record.facility != KERNEL_FACILITY:
            self.rejected += 1
            return None
        if record.level not in self.levels:
            self.wrong_level += 1
            if looks_like_netfilter(record.message):
                self.log_like_wrong_level = record.level
            return None
        if "\\x" in record.message and _ESCAPED_CONTROL.search(record.message):
            self.control_chars += 1
            return None
        return SourceLine(record.message, self.boot_time + record.usec / 1e6)


class KmsgSource:
    """Reads the kernel ring buffer; records overwritten before we read them are counted."""

    def __init__(
        self,
        start: dict[str, object] | None = None,
        from_start: bool = False,
        device: str = DEVICE,
        boot_id_path: str = BOOT_ID_PATH,
        levels: frozenset[int] = frozenset((WARNING,)),
    ) -> None:
        self.name = "kmsg"
        self._device = device
        try:
            self._fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise SourceError(f"{device}: {exc.strerror or exc}") from exc
        # Record times count from boot on the monotonic clock (local_clock(), no suspend).
        self._filter = RecordFilter(
            time.time() - time.clock_gettime(time.CLOCK_MONOTONIC), levels=levels
        )
        self._boot_id = _read_boot_id(boot_id_path)
        self._lines = 0
        self._refusals = RefusalLog(log, f"{device}: ")
        self._overruns = 0
        self._last_error: str | None = None
        self._failing = False
        self._start_note = self._seek(_saved(start), start is not None, from_start)

    def _seek(self, saved: tuple[int, str] | None, had_start: bool, from_start: bool) -> str:
        why_not = ""
        if saved is not None:
            seq, boot_id = saved
            if self._boot_id is not None and boot_id == self._boot_id:
                os.lseek(self._fd, 0, os.SEEK_SET)
                self._filter.last_seq = seq  # read() skips what was already seen
                return f"resumed after seq {seq}"
            if self._boot_id is not None:
                # The host rebooted since the position was saved: every record of this boot,
                # early-boot probes included, came after the last one read.
                os.lseek(self._fd, 0, os.SEEK_SET)
                return "start of ring buffer (saved position is from an earlier boot)"
            why_not = "boot id unreadable"
        elif had_start:
            why_not = "saved position unreadable"
        if from_start:
            os.lseek(self._fd, 0, os.SEEK_SET)
            where = "start of ring buffer"
        else:
            os.lseek(self._fd, 0, os.SEEK_END)
            where = "end of ring buffer"
        return f"{where} ({why_not})" if why_not else where

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[SourceLine]:
        out: list[SourceLine] = []
        controls_before = self._filter.control_chars
        for _ in range(RECORDS_PER_READ):
            try:
                raw = read_record(self._fd)
            except BlockingIOError:
                break
            except BrokenPipeError:
                # Our next record was overwritten; the seq gap of the next one counts them.
                self._overruns += 1
                continue
            except OSError as exc:
                self._failing = True
                self._last_error = f"{self._device}: {exc.strerror or exc}"
                break
            if not raw:
                break
            self._failing = False
            line = self._filter.take(raw)
            if line is not None:
                out.append(line)
        self._lines += len(out)
        self._report_refusals(controls_before)
        return out

    def _report_refusals(self, controls_before: int) -> None:
        now = time.monotonic()
        records = self._filter
        if records.control_chars > controls_before:
            self._refusals.note(
                "control",
                "refused a kernel record holding a newline or control character "
                "(LOG never prints one: a kernel message quoting a forged record? see README, "
                "'Only the kernel can write')",
                now,
            )
        if records.log_like_wrong_level is not None:
            self._refusals.note(
                "level",
                f"refused a LOG-like record at level {records.log_like_wrong_level}: "
                f"log_level is {sorted(records.levels)} (if your LOG rules use that level, "
                "set log_level to it)",
                now,
            )
            records.log_like_wrong_level = None
        self._refusals.flush(now)

    def position(self) -> dict[str, object] | None:
        if self._filter.last_seq is None or self._boot_id is None:
            return None
        return {"seq": self._filter.last_seq, "boot_id": self._boot_id}

    def health(self) -> dict[str, object]:
        return {
            "state": "error" if self._failing else "ok",
            "kind": "kmsg",
            "path": self._device,
            "lines": self._lines,
            "rejected_not_kernel": self._filter.rejected,
            "rejected_level": self._filter.wrong_level,
            "rejected_control_chars": self._filter.control_chars,
            "log_levels": sorted(self._filter.levels),
            "malformed": self._filter.malformed,
            "lost_records": self._filter.lost,
            "overruns": self._overruns,
            "skipped_on_resume": self._filter.skipped,
            "last_seq": self._filter.last_seq,
            "boot_id": self._boot_id,
            "start": self._start_note,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        os.close(self._fd)
