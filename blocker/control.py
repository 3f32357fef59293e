"""The control channel: JSON lines over a root-only Unix socket, dispatched through a table.

Request:  {"cmd": "status" | "list" | "ban" | "unban" | "reload" | "explain", ...}\\n
Reply:    {"ok": true, "result": ...}\\n  or  {"ok": false, "error": "why"}\\n
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

DEFAULT_SOCKET = "/run/blocker/blocker.sock"
MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], object]


class ControlError(Exception):
    """The daemon could not be reached or answered nonsense."""


class RequestError(ValueError):
    """A request the daemon refuses: the message goes back to the client."""


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
    except (UnicodeDecodeError, ValueError):
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
