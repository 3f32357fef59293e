"""The control channel: JSON lines over a root-only Unix socket, dispatched through a table.

Request:  {"cmd": "status" | "list" | "ban" | "unban" | "reload" | "explain", ...}\\n
Reply:    {"ok": true, "result": ...}\\n  or  {"ok": false, "error": "why"}\\n
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from blocker.commands import Handler as Handler  # noqa: PLC0414 (the handlers' table type)
from blocker.commands import RequestError as RequestError  # noqa: PLC0414 (refusals go back)

DEFAULT_SOCKET = "/run/blocker/blocker.sock"
MAX_REQUEST = 64 * 1024
ACCEPT_BACKOFF = 1.0  # seconds without accepting after running out of descriptors
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
            sock.sendall(data)
            reply = _read_line(sock, limit=64 * 1024 * 1024)
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket (is blockerd running?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (blockerctl needs root)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        decoded = json.loads(reply)
    except ValueError:
        raise ControlError("blockerd sent an unreadable reply") from None
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


class ControlServer:
    """Listens on a Unix socket (mode 0600) and answers one JSON request per connection.

    Connections are non-blocking and registered in the daemon's selector, so a slow or silent
    client never stalls log reading. Peers are checked with SO_PEERCRED: only root (and the
    daemon's own uid) are served, whatever the socket file's mode says.
    """

    def __init__(
        self,
        path: str,
        selector: selectors.BaseSelector,
        handlers: Callable[[], dict[str, Handler]],
        allowed_uids: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.selector = selector
        self.handlers = handlers
        self.allowed_uids = frozenset({0, os.geteuid()}) if allowed_uids is None else allowed_uids
        self.served = 0
        self.refused = 0
        self.paused_until: float | None = None  # monotonic time; None when accepting
        self._buffers: dict[socket.socket, bytearray] = {}
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        _remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # The pending connection stays queued, so the socket stays readable:
                    # stop watching it for a while instead of spinning on the error.
                    self.pause(time.monotonic() + ACCEPT_BACKOFF)
                log.warning("control socket accept failed: %s", exc)
                return
            uid = _peer_uid(conn)
            if uid not in self.allowed_uids:
                self.refused += 1
                log.warning("control: refused a peer with uid %s", uid)
                _drain_briefly(conn)
                self._reply(conn, {"ok": False, "error": f"permission denied for uid {uid}"})
                continue
            conn.setblocking(False)
            self._buffers[conn] = bytearray()
            self.selector.register(conn, selectors.EVENT_READ, lambda c=conn: self._read(c))

    def pause(self, until: float) -> None:
        """Stop accepting until the monotonic time `until` (see resume)."""
        if self.paused_until is None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
        self.paused_until = until

    def resume(self, now: float) -> None:
        """Accept again once a pause has run out; the daemon's loop calls this every turn
        and wakes up by `paused_until` at the latest."""
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)

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
        self._drop(conn, close=False)
        reply = dispatch(self.handlers(), raw)
        self.served += 1
        self._reply(conn, reply)

    def _reply(self, conn: socket.socket, reply: dict[str, object]) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(5.0)  # a client that stops reading must not hold the daemon
            conn.sendall((json.dumps(reply) + "\n").encode())
        except OSError as exc:
            log.info("control: could not send a reply: %s", exc)
        finally:
            conn.close()

    def _drop(self, conn: socket.socket, close: bool = True) -> None:
        self._buffers.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        if close:
            conn.close()

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        if self.paused_until is None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _drain_briefly(conn: socket.socket) -> None:
    """Read what a refused peer already sent, so closing does not reset its connection."""
    conn.settimeout(0.05)
    with contextlib.suppress(OSError):
        conn.recv(MAX_REQUEST + 1)


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
