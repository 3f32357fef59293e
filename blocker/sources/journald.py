"""Kernel lines from the systemd journal, read from a `journalctl --follow --output=json` child.

Only entries whose trusted _TRANSPORT field is "kernel" are accepted: journald sets fields
that start with "_" itself and drops such fields when a client sends them. For kernel entries
journald also sets PRIORITY from the record's level: only the LOG rule's level (`log_level`)
is accepted. A MESSAGE holding a newline or another control character is refused: the kernel
quotes user-chosen text in some records (a segfault names the crashing file, whose name may
hold a newline and a LOG-like record), and netfilter's LOG target never prints one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from blocker.refusals import RefusalLog
from blocker.sources.base import (
    MAX_LINE_BYTES,
    LineSplitter,
    SourceError,
    SourceLine,
    decode_line,
)

JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
# A MESSAGE of bytes is a JSON list of numbers, up to four characters per byte.
JSON_LINE_LIMIT = 8 * MAX_LINE_BYTES
READ_BUDGET = 1 << 20  # bytes per read() call; the pipe stays readable for the rest
STABLE_SECONDS = 30.0  # a child that lived this long resets the backoff
MAX_BACKOFF_SECONDS = 60.0
# Waits before exec without blocking the daemon, so the pipe exists during the backoff.
_DELAYED_EXEC = 'sleep "$0" && exec "$@"'
WARNING = 4  # the level iptables' and nftables' LOG use unless told otherwise
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_REJECTED = "MESSAGE holds a newline or control character"
log = logging.getLogger("blocker.sources")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One parsed JSON line: the accepted line, or why it was rejected."""

    line: SourceLine | None
    cursor: str | None
    rejected: str | None = None


def _field_text(value: object) -> str | None:
    """A journal field as text: JSON string, list of byte values, or the first of many values."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(type(item) is int and 0 <= item <= 255 for item in value):
            return decode_line(bytes(value))
        return _field_text(value[0])
    return None


def _realtime(value: object) -> float | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) / 1e6
    return None


def parse_journal_line(raw: bytes, levels: frozenset[int] = frozenset((WARNING,))) -> JournalEntry:
    """Parse one line of `journalctl --output=json`; never raises."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return JournalEntry(None, None, "not JSON")
    if not isinstance(entry, dict):
        return JournalEntry(None, None, "not a JSON object")
    cursor = entry.get("__CURSOR")
    cursor = cursor if isinstance(cursor, str) and cursor else None
    if entry.get("_TRANSPORT") != "kernel":
        return JournalEntry(None, cursor, "_TRANSPORT is not kernel")
    priority = _field_text(entry.get("PRIORITY"))
    if priority is None or not (priority.isascii() and priority.isdigit()):
        return JournalEntry(None, cursor, "no PRIORITY")
    if int(priority) not in levels:
        return JournalEntry(None, cursor, f"PRIORITY {priority} is not the LOG level")
    message = _field_text(entry.get("MESSAGE"))
    if message is None:
        return JournalEntry(None, cursor, "no readable MESSAGE")
    message = message.rstrip("\n")
    if _CONTROL.search(message):
        return JournalEntry(None, cursor, CONTROL_REJECTED)
    encoded = message.encode("utf-8", errors="replace")
    if len(encoded) > MAX_LINE_BYTES:
        message = decode_line(encoded[:MAX_LINE_BYTES])
    return JournalEntry(SourceLine(message, _realtime(entry.get("__REALTIME_TIMESTAMP"))), cursor)


def journal_usable() -> bool:
    """journalctl is installed and a journal directory exists."""
    return shutil.which("journalctl") is not None and any(os.path.isdir(d) for d in JOURNAL_DIRS)


def _saved_cursor(start: dict[str, object] | None) -> str | None:
    cursor = None if start is None else start.get("cursor")
    if isinstance(cursor, str) and cursor and "\n" not in cursor:
        return cursor
    return None


class JournaldSource:
    """Follows journalctl; restarts it with backoff when it exits.

    fileno() is a private epoll set holding the child's stdout and stderr, so it stays the
    same descriptor across restarts and the daemon registers it once.
    """

    def __init__(
        self,
        start: dict[str, object] | None = None,
        from_start: bool = False,
        command: Sequence[str] = ("journalctl",),
        backoff_base: float = 1.0,
        levels: frozenset[int] = frozenset((WARNING,)),
    ) -> None:
        self.name = "journald"
        self._levels = levels
        self._command = list(command)
        self._from_start = from_start
        self._backoff_base = backoff_base
        self._cursor = _saved_cursor(start)
        # The first start's time: if journalctl started from the end of the journal is
        # restarted before an entry gave a cursor, it resumes from here, losing no entry.
        self._since: float | None = None
        self._epoll = select.epoll()
        self._proc: subprocess.Popen[bytes] | None = None
        self._splitter = LineSplitter(JSON_LINE_LIMIT)
        self._started_at = 0.0
        self._failures = 0
        self._restarts = 0
        self._lines = 0
        self._refusals = RefusalLog(log, "journald: ")
        self._rejected = 0
        self._last_rejected: str | None = None
        self._stderr_tail = ""
        self._last_error: str | None = None
        self._backoff = 0.0
        self._start_note = (
            "after saved cursor"
            if self._cursor
            else ("start of journal" if from_start else "end of journal")
        )
        try:
            self._spawn(0.0)
        except OSError as exc:
            self._epoll.close()
            raise SourceError(f"cannot run {self._command[0]}: {exc.strerror or exc}") from exc

    def command_line(self) -> list[str]:
        """The journalctl command for the next (re)start."""
        args = [*self._command, "--follow", "--output=json", "--no-pager"]
        if self._cursor:
            args.append(f"--after-cursor={self._cursor}")
        elif self._from_start:
            args.append("--lines=all")
        elif self._since is not None:
            args.append(f"--since=@{self._since:.6f}")
        else:
            args.append("--lines=0")
        # journald sets _TRANSPORT itself; this match is a first filter, the parser the second.
        args.append("_TRANSPORT=kernel")
        args += [f"PRIORITY={level}" for level in sorted(self._levels)]  # ORed by journalctl
        return args

    def _spawn(self, delay: float) -> None:
        args = self.command_line()
        if self._since is None:  # used by command_line() only when there is no cursor
            self._since = time.time()  # the wall clock, as journald's realtime stamps
        if delay > 0:
            args = ["/bin/sh", "-c", _DELAYED_EXEC, f"{delay:g}", *args]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group, so close() also ends the delay's sleep
        )
        assert proc.stdout is not None and proc.stderr is not None
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self._epoll.register(stream.fileno(), select.EPOLLIN)
        self._proc = proc
        self._splitter = LineSplitter(JSON_LINE_LIMIT)
        self._started_at = time.monotonic()

    # -- the Source protocol ------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno()

    def read(self) -> list[SourceLine]:
        proc = self._proc
        if proc is None:
            return []
        assert proc.stdout is not None
        self._drain_stderr(proc)
        out: list[SourceLine] = []
        budget = READ_BUDGET
        ended = False
        while budget > 0:
            try:
                chunk = os.read(proc.stdout.fileno(), min(65536, budget))
            except BlockingIOError:
                break
            if not chunk:
                ended = True
                break
            budget -= len(chunk)
            for raw in self._splitter.feed(chunk):
                self._take(parse_journal_line(raw, self._levels), out)
        if ended:
            self._restart(proc)
        self._refusals.flush(time.monotonic())
        self._lines += len(out)
        return out

    def _take(self, entry: JournalEntry, out: list[SourceLine]) -> None:
        if entry.cursor is not None:
            self._cursor = entry.cursor
        if entry.line is None:
            self._rejected += 1
            self._last_rejected = entry.rejected
            if entry.rejected == CONTROL_REJECTED:
                self._refusals.note(
                    "control",
                    "refused a kernel entry whose MESSAGE holds a newline or control "
                    "character (LOG never prints one: a kernel message quoting a forged "
                    "record? see README, 'Only the kernel can write')",
                    time.monotonic(),
                )
        else:
            out.append(entry.line)

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        try:
            data = os.read(proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        text = decode_line(data).strip()
        if text:
            self._stderr_tail = text.splitlines()[-1][:500]

    def _restart(self, proc: subprocess.Popen[bytes]) -> None:
        self._drain_stderr(proc)
        code = self._stop(proc)
        lived = time.monotonic() - self._started_at
        self._failures = 0 if lived >= STABLE_SECONDS else self._failures + 1
        self._backoff = (
            0.0
            if self._failures == 0
            else min(MAX_BACKOFF_SECONDS, self._backoff_base * 2 ** (self._failures - 1))
        )
        self._last_error = f"journalctl exited with status {code}: {self._stderr_tail or '-'}"
        self._stderr_tail = ""
        self._restarts += 1
        try:
            self._spawn(self._backoff)
        except OSError as exc:
            self._last_error = f"cannot restart journalctl: {exc.strerror or exc}"

    def _stop(self, proc: subprocess.Popen[bytes]) -> int:
        assert proc.stdout is not None and proc.stderr is not None
        for stream in (proc.stdout, proc.stderr):
            self._epoll.unregister(stream.fileno())
            stream.close()
        try:
            return proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
        finally:
            self._proc = None

    def position(self) -> dict[str, object] | None:
        return None if self._cursor is None else {"cursor": self._cursor}

    def health(self) -> dict[str, object]:
        proc = self._proc
        return {
            "state": "error" if proc is None or self._failures else "ok",
            "kind": "journald",
            "path": " ".join(self.command_line()),
            "pid": None if proc is None else proc.pid,
            "lines": self._lines,
            "rejected": self._rejected,
            "last_rejected": self._last_rejected,
            "cut_lines": self._splitter.cut_lines,
            "restarts": self._restarts,
            "backoff_seconds": self._backoff,
            "cursor": self._cursor,
            "start": self._start_note,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            self._stop(proc)
        self._epoll.close()
