"""The control channel: JSON lines over a root-only Unix socket, dispatched through a table.

Request:  {"cmd": "status" | "list" | "ban" | "unban" | "reload" | "explain", ...}\\n
Reply:    {"ok": true, "result": ...}\\n  or  {"ok": false, "error": "why"}\\n
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from blocker.commands import Handler as Handler  # noqa: PLC0414 (the handlers' table type)
from blocker.commands import RequestError as RequestError  # noqa: PLC0414 (refusals go back)
from blocker.commands import Streamed as Streamed  # noqa: PLC0414 (replies made as read)
from blocker.private_dir import open_private_dir
from blocker.refusals import RefusalLog

DEFAULT_SOCKET = "/run/blocker/blocker.sock"
MAX_REQUEST = 64 * 1024
MAX_REPLY = 1 << 30  # `list` of a million bans is ~150 MB of JSON
ACCEPT_BACKOFF = 1.0  # seconds without accepting after running out of descriptors
IDLE_TIMEOUT = 10.0  # seconds a client may take to send its request or to read more reply
MAX_CONNECTIONS = 32  # served at once; more wait in the listen queue
STREAM_BUFFER = 256 * 1024  # a streamed reply makes its next batch below this many unsent bytes
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
log = logging.getLogger("blocker.control")


class ControlError(Exception):
    """The daemon could not be reached or answered nonsense."""


def request(path: str, message: dict[str, object], timeout: float = 10.0) -> dict[str, Any]:
    data = (json.dumps(message) + "\n").encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            # Refused at once (SO_PEERCRED), the answer is already waiting to be read.
            with contextlib.suppress(BrokenPipeError):
                sock.sendall(data)
            reply = _read_line(sock, limit=MAX_REPLY)
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket (is blockerd running?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (blockerctl needs root)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        decoded = json.loads(reply)
    except ValueError:
        raise ControlError("blockerd sent an unreadable reply (cut short? see its log)") from None
    if not isinstance(decoded, dict):
        raise ControlError("blockerd sent an unexpected reply")
    return decoded


def _read_line(sock: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > limit:
            break
    return b"".join(chunks).split(b"\n", 1)[0]


def dispatch(handlers: dict[str, Handler], raw: bytes) -> dict[str, object]:
    """One request line in, one reply out. Never raises: every failure becomes an error reply."""
    if len(raw) > MAX_REQUEST:
        return {"ok": False, "error": f"request too large (max {MAX_REQUEST} bytes)"}
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {"ok": False, "error": "request is not valid JSON"}
    if not isinstance(message, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    command = message.get("cmd")
    handler = handlers.get(command) if isinstance(command, str) else None
    if handler is None:
        known = ", ".join(sorted(handlers))
        return {"ok": False, "error": f"unknown command {command!r} (known: {known})"}
    try:
        return {"ok": True, "result": handler(message)}
    except RequestError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bug in one command must not take the daemon down
        log.exception("control: %r failed", command)
        return {"ok": False, "error": f"internal error in {command!r}: {exc}"}


class _Writer:
    """One reply on its way out: bytes not yet sent, and the batches not yet made."""

    __slots__ = ("batches", "deadline", "first", "pending")

    def __init__(
        self, data: bytes, batches: Iterator[Sequence[object]] | None, deadline: float
    ) -> None:
        self.pending = bytearray(data)
        self.batches = batches
        self.first = True
        self.deadline = deadline


class ControlServer:
    """Listens on a Unix socket (mode 0600) and answers one JSON request per connection.

    Connections are non-blocking and registered in the daemon's selector, so a slow or silent
    client never stalls log reading: a request must arrive within IDLE_TIMEOUT, a reply must
    keep being read within it, at most MAX_CONNECTIONS are served at once, and a large reply
    (Streamed) is made a batch at a time as the client reads it. Peers are checked with
    SO_PEERCRED: only root (and the daemon's own uid) are served, whatever the socket file's
    mode says; a refused peer gets its answer without the loop waiting on it.
    """

    def __init__(
        self,
        path: str,
        selector: selectors.BaseSelector,
        handlers: Callable[[], dict[str, Handler]],
        *,
        allowed_uids: frozenset[int] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self.selector = selector
        self.handlers = handlers
        self.allowed_uids = frozenset({0, os.geteuid()}) if allowed_uids is None else allowed_uids
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.served = 0
        self.refused = 0
        self.timed_out = 0
        self.paused_until: float | None = None  # monotonic time; None when accepting
        self.refusals = RefusalLog(log, "control: ")
        self._buffers: dict[socket.socket, bytearray] = {}
        self._deadlines: dict[socket.socket, float] = {}
        self._writers: dict[socket.socket, _Writer] = {}
        # The socket's directory: private to root, or a user could swap the socket's path.
        os.close(open_private_dir(Path(os.path.dirname(os.path.abspath(path))), "socket dir"))
        _remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)  # created 0600 by the umask: no chmod by path afterwards
        finally:
            os.umask(old_umask)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self._listening = False
        self._update_listening()

    @property
    def connections(self) -> int:
        return len(self._buffers) + len(self._writers)

    def _accept(self) -> None:
        now = time.monotonic()
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # The pending connection stays queued, so the socket stays readable:
                    # stop watching it for a while instead of spinning on the error.
                    self.pause(now + ACCEPT_BACKOFF)
                self.refusals.note("accept failed", f"control socket accept failed: {exc}", now)
                return
            conn.setblocking(False)
            uid = _peer_uid(conn)
            if uid not in self.allowed_uids:
                self.refused += 1
                self.refusals.note(f"uid {uid}", f"refused a peer with uid {uid}", now)
                _answer_and_close(conn, {"ok": False, "error": f"permission denied for uid {uid}"})
                continue
            self._buffers[conn] = bytearray()
            self._deadlines[conn] = now + self.idle_timeout
            self.selector.register(conn, selectors.EVENT_READ, lambda c=conn: self._read(c))
            if self.connections >= self.max_connections:
                # Full: the next clients wait in the listen queue, at no cost to the loop,
                # until a connection ends (served, or closed when idle).
                self.refusals.note(
                    "full",
                    f"all {self.max_connections} connections are busy; "
                    "new ones wait in the listen queue",
                    now,
                )
                self._update_listening()
                return

    def pause(self, until: float) -> None:
        """Stop accepting until the monotonic time `until` (see resume)."""
        self.paused_until = until
        self._update_listening()

    def resume(self, now: float) -> None:
        """Accept again once a pause has run out; the daemon's loop calls this every turn
        and wakes up by `paused_until` at the latest."""
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            self._update_listening()

    def _update_listening(self) -> None:
        """Watch the listening socket unless paused or full."""
        wanted = self.paused_until is None and self.connections < self.max_connections
        if wanted and not self._listening:
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)
        elif not wanted and self._listening:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
        self._listening = wanted

    def tick(self, now: float) -> None:
        """Every loop turn (monotonic `now`): resume accepting, close connections idle past
        their deadline, report held-back refusals."""
        self.resume(now)
        for conn, deadline in list(self._deadlines.items()):
            if now >= deadline:
                self.timed_out += 1
                self.refusals.note(
                    "idle", f"closed a connection idle for {self.idle_timeout:g}s", now
                )
                self._drop(conn)
        for conn, writer in list(self._writers.items()):
            if now >= writer.deadline:
                self.timed_out += 1
                self.refusals.note(
                    "not reading",
                    "closed a connection whose client stopped "
                    f"reading its reply for {self.idle_timeout:g}s",
                    now,
                )
                self._drop(conn)
        self.refusals.flush(now)

    def next_wake(self) -> float:
        """The monotonic time by which tick() must run again (inf: nothing waits)."""
        times = [*self._deadlines.values(), *(w.deadline for w in self._writers.values())]
        if self.paused_until is not None:
            times.append(self.paused_until)
        return min(times, default=math.inf)

    def _read(self, conn: socket.socket) -> None:
        buffer = self._buffers[conn]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk and not buffer.strip():
            self._drop(conn)
            return
        buffer += chunk
        newline = buffer.find(b"\n")
        if newline < 0 and chunk and len(buffer) <= MAX_REQUEST:
            return  # more to come (a request ends at a newline or at end of input)
        raw = bytes(buffer[:newline]) if newline >= 0 else bytes(buffer)
        self._buffers.pop(conn, None)
        self._deadlines.pop(conn, None)
        reply = dispatch(self.handlers(), raw)
        self.served += 1
        self._start_reply(conn, reply)

    def _start_reply(self, conn: socket.socket, reply: dict[str, object]) -> None:
        result = reply.get("result")
        deadline = time.monotonic() + self.idle_timeout
        if isinstance(result, Streamed):
            writer = _Writer(b'{"ok": true, "result": [', result.batches, deadline)
        else:
            writer = _Writer((json.dumps(reply) + "\n").encode(), None, deadline)
        self._writers[conn] = writer
        self.selector.modify(conn, selectors.EVENT_WRITE, lambda c=conn: self._write(c))
        self._write(conn)

    def _write(self, conn: socket.socket) -> None:
        writer = self._writers.get(conn)
        if writer is None:
            return
        if writer.batches is not None and len(writer.pending) < STREAM_BUFFER:
            self._next_batch(conn, writer)
        try:
            sent = conn.send(writer.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("control: could not send a reply: %s", exc)
            self._drop(conn)
            return
        if sent:
            del writer.pending[:sent]
            writer.deadline = time.monotonic() + self.idle_timeout
        if not writer.pending and writer.batches is None:
            self._drop(conn)

    def _next_batch(self, conn: socket.socket, writer: _Writer) -> None:
        """Add one batch of a Streamed reply to what is to be sent (the end when none is
        left). A failure midway cuts the reply short: the client sees no closing line."""
        assert writer.batches is not None
        try:
            batch = next(writer.batches, None)
            text = "" if batch is None else ", ".join(map(json.dumps, batch))
        except Exception as exc:  # a listing that fails midway must not take the daemon down
            log.error("control: a streamed reply failed midway, cutting it short: %s", exc)
            writer.batches = None
            writer.pending += b"\n"  # an unterminated JSON line: the client reports it
            return
        if batch is None:
            writer.batches = None
            writer.pending += b"]}\n"
        elif text:
            writer.pending += (text if writer.first else ", " + text).encode()
            writer.first = False

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        self._deadlines.pop(conn, None)
        writer = self._writers.pop(conn, None)
        if writer is not None and writer.batches is not None:
            close = getattr(writer.batches, "close", None)
            if close is not None:
                close()  # a generator's finally: (a kernel dump socket) runs now
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()
        if not self._listening:
            self._update_listening()

    def close(self) -> None:
        for conn in [*self._buffers, *self._writers]:
            self._drop(conn)
        self.paused_until = math.inf
        self._update_listening()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _answer_and_close(conn: socket.socket, reply: dict[str, object]) -> None:
    """Answer a refused peer without waiting for it: whatever it sent already is read (so
    closing does not reset the connection before it reads the answer), the answer goes out if
    the socket buffer takes it, and the connection is closed."""
    with contextlib.suppress(OSError):
        conn.recv(MAX_REQUEST + 1)
    with contextlib.suppress(OSError):
        conn.send((json.dumps(reply) + "\n").encode())
    conn.close()


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by a dead daemon; refuse to start beside a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another blockerd is already listening")
