"""What every log source hands the daemon: complete lines, a resume point, a health report."""

from __future__ import annotations

from typing import NamedTuple, Protocol

# A kernel line is at most a few KiB; a longer "line" is garbage that must not grow memory.
MAX_LINE_BYTES = 64 * 1024


# One per line read, on the hot path: a NamedTuple is immutable and ~4x cheaper to build
# than a frozen dataclass.
class SourceLine(NamedTuple):
    """One complete log line, without its newline, and the event time the source gave it."""

    text: str
    time: float | None


class Source(Protocol):
    """A log source that plugs into the daemon's single selectors loop."""

    name: str

    def fileno(self) -> int:
        """A descriptor that is readable when read() may return lines."""
        ...

    def read(self) -> list[SourceLine]:
        """Return what is available without blocking; never raises on bad data."""
        ...

    def position(self) -> dict[str, object] | None:
        """A JSON-able resume point to persist, or None when there is none yet."""
        ...

    def health(self) -> dict[str, object]:
        """A JSON-able report: state ("ok"/"waiting"/"error"), counters, last error."""
        ...

    def close(self) -> None: ...


class SourceError(Exception):
    """A source cannot be opened at all (missing directory, no such device)."""


def decode_line(raw: bytes) -> str:
    """Bytes of one line as text; invalid UTF-8 becomes U+FFFD instead of an error."""
    return raw.decode("utf-8", errors="replace")


class LineSplitter:
    """Cuts a byte stream into lines, keeping at most `limit` bytes of any one line.

    `consumed` counts the bytes of every line handed out (dropped parts and newline
    included), so a file follower can persist an offset that never splits a line.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._dropped = 0
        self.consumed = 0
        self.cut_lines = 0

    @property
    def pending(self) -> int:
        """Bytes of the unfinished last line (kept or dropped) not yet handed out."""
        return len(self._buf) + self._dropped

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        if self._buf or self._dropped:  # first finish the line the last read left open
            newline = data.find(b"\n")
            start = len(data) if newline < 0 else newline + 1
            lines += self._feed_bytewise(data[:start])
        last = data.rfind(b"\n", start)
        if last >= start:
            # Every complete line at once, split in C; an overlong one (rare) goes bytewise.
            whole = data[start:last].split(b"\n")
            if max(map(len, whole)) <= self._limit:
                self.consumed += last + 1 - start
                lines += whole
                start = last + 1
        if start < len(data):
            lines += self._feed_bytewise(data[start:])
        return lines

    def feed_block(self, data: bytes) -> bytes:
        """feed() as one block: the complete lines, each ending in a newline (b"" if none).

        When no line of `data` can be over the limit (checked in C, window by window), the
        block is a slice of `data`: nothing is split and joined again.
        """
        head = b""
        if self._buf or self._dropped:  # first finish the line the last read left open
            newline = data.find(b"\n")
            if newline < 0:
                self._feed_bytewise(data)
                return b""
            head = self._feed_bytewise(data[: newline + 1])[0] + b"\n"
            data = data[newline + 1 :]
        last = data.rfind(b"\n")
        if last >= 0 and _no_line_over(data, last, self._limit):
            self.consumed += last + 1
            if last + 1 < len(data):
                self._feed_bytewise(data[last + 1 :])  # the unfinished tail: buffered
            return head + data[: last + 1]
        lines = self.feed(data)
        return head + b"\n".join(lines) + b"\n" if lines else head

    def _feed_bytewise(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        size = len(data)
        while start < size:
            newline = data.find(b"\n", start)
            end = size if newline < 0 else newline
            room = self._limit - len(self._buf)
            if end - start <= room:
                self._buf += data[start:end]
            else:
                self._buf += data[start : start + room]
                self._dropped += end - start - room
            if newline < 0:
                break
            lines.append(self._take(newline_bytes=1))
            start = newline + 1
        return lines

    def flush(self) -> bytes | None:
        """Hand out the unfinished tail as a line because its stream has ended."""
        if self.pending == 0:
            return None
        return self._take(newline_bytes=0)

    def _take(self, newline_bytes: int) -> bytes:
        line = bytes(self._buf)
        if self._dropped:
            self.cut_lines += 1
        self.consumed += len(self._buf) + self._dropped + newline_bytes
        self._buf.clear()
        self._dropped = 0
        return line


def _no_line_over(data: bytes, last: int, limit: int) -> bool:
    """True when no line of data[:last + 1] (which ends in a newline) is longer than `limit`:
    every window of limit // 2 bytes holds a newline, so no run without one reaches limit."""
    step = max(1, limit // 2)
    find = data.find
    return all(find(b"\n", i, i + step) >= 0 for i in range(0, last + 1, step))
