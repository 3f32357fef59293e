"""A directory watch for the kern.log follower: pyinotify, polled with timeout 0.

The watch only says "something changed in this directory"; the follower decides what.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Protocol

from blocker.sources.base import SourceError

with warnings.catch_warnings():
    # pyinotify imports asyncore (deprecated); the warning is not ours to fix.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

IN_MODIFY: int = pyinotify.IN_MODIFY
IN_ATTRIB: int = pyinotify.IN_ATTRIB
IN_CLOSE_WRITE: int = pyinotify.IN_CLOSE_WRITE
IN_OPEN: int = pyinotify.IN_OPEN
IN_MOVED_FROM: int = pyinotify.IN_MOVED_FROM
IN_MOVED_TO: int = pyinotify.IN_MOVED_TO
IN_CREATE: int = pyinotify.IN_CREATE
IN_DELETE: int = pyinotify.IN_DELETE
IN_DELETE_SELF: int = pyinotify.IN_DELETE_SELF
IN_MOVE_SELF: int = pyinotify.IN_MOVE_SELF
IN_Q_OVERFLOW: int = pyinotify.IN_Q_OVERFLOW
IN_IGNORED: int = pyinotify.IN_IGNORED

# IN_OPEN is there so that re-opening our own file can wake the loop (see wake()).
WATCH_MASK = (
    IN_CREATE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_DELETE
    | IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_ATTRIB
    | IN_OPEN
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


@dataclass(frozen=True, slots=True)
class DirEvent:
    """One inotify event in the watched directory; name is "" for the directory itself."""

    name: str
    mask: int


class DirectoryWatcher(Protocol):
    def fileno(self) -> int: ...

    def drain(self) -> list[DirEvent]:
        """Events that arrived since the last call, without blocking."""
        ...

    def wake(self, fd: int) -> None:
        """Make fileno() readable again soon: there is data left in the file behind `fd`."""
        ...

    def close(self) -> None: ...


class PyinotifyWatcher:
    """The real directory watch: a pyinotify Notifier polled with timeout 0."""

    def __init__(self, directory: str) -> None:
        self._events: list[DirEvent] = []
        self._wm = pyinotify.WatchManager()
        try:
            self._wm.add_watch(directory, WATCH_MASK, quiet=False)
        except pyinotify.WatchManagerError as exc:
            self._wm.close()
            raise SourceError(f"{directory}: cannot watch directory: {exc}") from exc
        self._notifier = pyinotify.Notifier(self._wm, default_proc_fun=self._record, timeout=0)

    def _record(self, event: pyinotify.Event) -> None:
        self._events.append(DirEvent(name=str(event.name or ""), mask=int(event.mask)))

    def fileno(self) -> int:
        return int(self._wm.get_fd())

    def drain(self) -> list[DirEvent]:
        if self._notifier.check_events(timeout=0):
            self._notifier.read_events()
            self._notifier.process_events()
        events, self._events = self._events, []
        return events

    def wake(self, fd: int) -> None:
        # Opening the file again queues IN_OPEN on the directory, even after a rename;
        # if that fails, the next write to the file wakes us instead.
        with contextlib.suppress(OSError):
            os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK))

    def close(self) -> None:
        self._notifier.stop()
