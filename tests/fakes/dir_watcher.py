"""A scripted stand-in for the pyinotify directory watch (the edge, faked in unit tests)."""

from __future__ import annotations

import os

from blocker.sources.dirwatch import IN_MODIFY, IN_OPEN, DirectoryWatcher, DirEvent


class FakeDirectoryWatcher(DirectoryWatcher):  # checked against the protocol by mypy
    """Events come from push(); a real pipe backs fileno() so select() behaves as with inotify."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.wakes: list[str] = []
        self.closed = False
        self._queued: list[DirEvent] = []
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)

    def push(self, name: str, mask: int = IN_MODIFY) -> None:
        self._queued.append(DirEvent(name=name, mask=mask))
        os.write(self._write_end, b"x")

    def fileno(self) -> int:
        return self._read_end

    def drain(self) -> list[DirEvent]:
        try:
            while os.read(self._read_end, 4096):
                pass
        except BlockingIOError:
            pass
        events, self._queued = self._queued, []
        return events

    def wake(self, fd: int) -> None:
        # Like the real watcher: re-opening the file reports IN_OPEN under its current name.
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        self.wakes.append(name)
        self.push(name, IN_OPEN)

    def close(self) -> None:
        self.closed = True
        os.close(self._read_end)
        os.close(self._write_end)
