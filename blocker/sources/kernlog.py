"""Follow a syslog kern.log through rotation, copytruncate and re-creation, woken by inotify.

inotify on the file's directory only wakes the daemon's loop; what happened is decided by
comparing the open descriptor with a fresh stat() of the path, so a lost or merged event
(queue overflow, coalescing) never loses a line.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from blocker.sources.base import MAX_LINE_BYTES, LineSplitter, SourceLine, decode_line
from blocker.sources.dirwatch import (
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_Q_OVERFLOW,
    DirectoryWatcher,
    DirEvent,
    PyinotifyWatcher,
)

READ_BUDGET = 1 << 20  # bytes per read() call, so a replay never builds one giant batch
CHUNK = 64 * 1024
FINGERPRINT_BYTES = 256


@dataclass(slots=True)
class _OpenFile:
    fd: int
    dev: int
    ino: int
    base: int  # file offset where the splitter started
    splitter: LineSplitter = field(default_factory=LineSplitter)
    fingerprint: str | None = None

    @property
    def committed(self) -> int:
        """Offset just past the last complete line handed out."""
        return self.base + self.splitter.consumed

    @property
    def read_pos(self) -> int:
        return self.committed + self.splitter.pending


@dataclass(frozen=True, slots=True)
class _SavedPosition:
    inode: int
    offset: int
    fingerprint: str


def _saved_position(start: dict[str, object] | None) -> _SavedPosition | None:
    if start is None:
        return None
    inode, offset, fingerprint = start.get("inode"), start.get("offset"), start.get("fingerprint")
    # bool is an int subclass; a saved True is corruption, not inode 1.
    if type(inode) is not int or type(offset) is not int or not isinstance(fingerprint, str):
        return None
    if offset < 0:
        return None
    return _SavedPosition(inode, offset, fingerprint)


def file_fingerprint(fd: int) -> str:
    """sha256 of the file's first line (at most FINGERPRINT_BYTES): tells a reused inode apart."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    return hashlib.sha256(head).hexdigest()


def _end_offset(fd: int, size: int) -> int:
    """Where "start at the end" begins: after the last newline, so a line being written counts."""
    window = min(size, MAX_LINE_BYTES)
    tail = os.pread(fd, window, size - window)
    newline = tail.rfind(b"\n")
    return size if newline < 0 else size - window + newline + 1


def _mismatch(fd: int, path: str, saved: _SavedPosition) -> str | None:
    """None: another file; "": the saved file, resumable; else why it cannot be resumed."""
    try:
        info = os.fstat(fd)
        if info.st_ino != saved.inode:
            return None
        if saved.offset > info.st_size:
            return f"saved offset {saved.offset} is past the end of {path}"
        # At offset 0 nothing was read yet, so the inode alone is enough.
        if saved.offset > 0 and file_fingerprint(fd) != saved.fingerprint:
            return f"{path} has the saved inode but another first line"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return ""


class KernlogSource:
    """Follows one log file; lines carry time=None because the syslog header holds it."""

    def __init__(
        self,
        path: str,
        start: dict[str, object] | None = None,
        from_start: bool = False,
        watcher_factory: Callable[[str], DirectoryWatcher] = PyinotifyWatcher,
    ) -> None:
        self.path = os.path.abspath(path)
        self.name = f"kernlog:{path}"
        self._base_name = os.path.basename(self.path)
        self._watcher = watcher_factory(os.path.dirname(self.path))
        self._file: _OpenFile | None = None
        self._detached = False  # the open file is no longer the one at self.path
        self._budget = 0
        self._lines = 0
        self._rotations = 0
        self._truncations = 0
        self._overflows = 0
        self._cut_done = 0
        self._error: str | None = None
        self._directory_gone = False
        self._last_error: str | None = None
        self._start_note = ""
        self._begin(_saved_position(start), start is not None, from_start)
        if self._file is not None:
            self._wake_if_unread(self._file)

    # -- the Source protocol ------------------------------------------------

    def fileno(self) -> int:
        return self._watcher.fileno()

    def read(self) -> list[SourceLine]:
        events = self._watcher.drain()
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                self._overflows += 1
            if event.name == "" and event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                self._directory_gone = True
                self._fail(f"{os.path.dirname(self.path)}: watched directory was removed or moved")
        if events and not self._wants_sync(events):
            return []
        out: list[SourceLine] = []
        self._budget = READ_BUDGET
        try:
            more = self._sync(out)
        except OSError as exc:
            self._fail(f"{exc.filename or self.path}: {exc.strerror or exc}")
            more = False
        else:
            self._error = None
        if more and self._file is not None:
            self._watcher.wake(self._file.fd)
        self._lines += len(out)
        return out

    def position(self) -> dict[str, object] | None:
        current = self._file
        if current is None:
            return None
        fingerprint = current.fingerprint
        if fingerprint is None:
            try:
                fingerprint = file_fingerprint(current.fd)
            except OSError:
                return None
        return {"inode": current.ino, "offset": current.committed, "fingerprint": fingerprint}

    def health(self) -> dict[str, object]:
        current = self._file
        if self._error is not None or self._directory_gone:
            state = "error"
        elif current is None:
            state = "waiting"
        else:
            state = "ok"
        return {
            "state": state,
            "kind": "kernlog",
            "path": self.path,
            "inode": None if current is None else current.ino,
            "offset": None if current is None else current.committed,
            "following_rotated_file": self._detached,
            "lines": self._lines,
            "rotations": self._rotations,
            "truncations": self._truncations,
            "cut_lines": self._cut_done + (0 if current is None else current.splitter.cut_lines),
            "inotify_overflows": self._overflows,
            "start": self._start_note,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file.fd)
            self._file = None
        self._watcher.close()

    # -- start ----------------------------------------------------------------

    def _begin(self, saved: _SavedPosition | None, had_start: bool, from_start: bool) -> None:
        why_not = ""
        if saved is not None:
            why_not = self._resume(saved)
            if not why_not:
                return
        elif had_start:
            why_not = "saved position unreadable"
        where = "start of file" if from_start else "end of file"
        self._start_note = f"{where} ({why_not})" if why_not else where
        try:
            fd = self._open(self.path)
        except OSError as exc:
            self._fail(f"{self.path}: {exc.strerror or exc}")
            return
        if fd is None:
            self._start_note += "; waiting for the file to appear"
            return
        size = os.fstat(fd).st_size
        self._adopt(fd, 0 if from_start else _end_offset(fd, size))

    def _resume(self, saved: _SavedPosition) -> str:
        """Open the file the saved position belongs to; return why not, or "" on success."""
        for candidate in (self.path, self.path + ".1"):
            try:
                fd = self._open(candidate)
            except OSError:
                continue
            if fd is None:
                continue
            why_not = _mismatch(fd, candidate, saved)
            if why_not is None:
                os.close(fd)
                continue
            if why_not:
                os.close(fd)
                return why_not
            self._adopt(fd, saved.offset)
            self._start_note = f"resumed {candidate} at offset {saved.offset}"
            return ""
        return f"saved inode {saved.inode} is neither {self.path} nor {self.path}.1"

    # -- following ------------------------------------------------------------

    def _wants_sync(self, events: list[DirEvent]) -> bool:
        if self._file is None or self._detached:
            return True
        # Other files in /var/log change all the time; only ours needs a look.
        return any(e.name in ("", self._base_name) or e.mask & IN_Q_OVERFLOW for e in events)

    def _sync(self, out: list[SourceLine]) -> bool:
        """Read what is new; return True when the budget ran out with data left."""
        if self._file is None:
            fd = self._open(self.path)
            if fd is None:
                return False
            self._adopt(fd, 0)  # it appeared after we started: all of it is new
        current = self._file
        assert current is not None
        if self._read_file(current, out):
            return True
        try:
            info: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None and (info.st_dev, info.st_ino) == (current.dev, current.ino):
            self._detached = False
            return False
        self._detached = True
        # Until the new file gets data the writer may still append to the old one.
        if info is None or info.st_size == 0:
            return False
        self._retire(current, out)
        self._rotations += 1
        fd = self._open(self.path)
        if fd is None:
            return False
        self._adopt(fd, 0)
        assert self._file is not None
        return self._read_file(self._file, out)

    def _read_file(self, current: _OpenFile, out: list[SourceLine]) -> bool:
        if os.fstat(current.fd).st_size < current.read_pos or (
            current.fingerprint is not None and file_fingerprint(current.fd) != current.fingerprint
        ):
            # copytruncate: same inode, emptied; what follows starts at 0. When the file was
            # written past our offset again before we looked, only its first line tells.
            self._truncations += 1
            self._emit(current.splitter.flush(), out)
            self._cut_done += current.splitter.cut_lines
            current.base = 0
            current.splitter = LineSplitter()
            current.fingerprint = None
        while True:
            if self._budget <= 0:
                return True
            chunk = os.pread(current.fd, min(CHUNK, self._budget), current.read_pos)
            if not chunk:
                if current.fingerprint is None and current.committed > 0:
                    self._remember_first_line(current)
                return False
            self._budget -= len(chunk)
            # _emit, inlined for whole chunks: this loop runs once per line read.
            out += [
                SourceLine(line.decode("utf-8", "replace"), None)
                for raw in current.splitter.feed(chunk)
                if (line := raw.lstrip(b"\0"))
            ]

    def _emit(self, raw: bytes | None, out: list[SourceLine]) -> None:
        if raw is None:
            return
        # A writer without O_APPEND after copytruncate leaves a run of NULs before its line.
        raw = raw.lstrip(b"\0")
        if raw:
            out.append(SourceLine(decode_line(raw), None))

    def _retire(self, current: _OpenFile, out: list[SourceLine]) -> None:
        """The old file is finished: its unterminated tail still counts as a line."""
        self._emit(current.splitter.flush(), out)
        self._cut_done += current.splitter.cut_lines
        os.close(current.fd)
        self._file = None
        self._detached = False

    def _open(self, path: str) -> int | None:
        """Open a log file; None if it does not exist, OSError for other failures."""
        try:
            # O_NONBLOCK so that a FIFO planted at the path cannot hang the daemon.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(0, "not a regular file", path)
        return fd

    def _adopt(self, fd: int, offset: int) -> None:
        info = os.fstat(fd)
        self._file = _OpenFile(fd=fd, dev=info.st_dev, ino=info.st_ino, base=offset)
        self._detached = False
        if offset > 0:  # a line ends before the offset: the first line is complete
            self._remember_first_line(self._file)

    @staticmethod
    def _remember_first_line(current: _OpenFile) -> None:
        """Keep the fingerprint of a first line that is complete, so it no longer changes
        unless the file is truncated and written again."""
        current.fingerprint = file_fingerprint(current.fd)

    def _wake_if_unread(self, current: _OpenFile) -> None:
        if os.fstat(current.fd).st_size > current.read_pos:
            self._watcher.wake(current.fd)

    def _fail(self, message: str) -> None:
        self._error = message
        self._last_error = message
