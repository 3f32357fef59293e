"""A stand-in for blockerd's selector loop around a ControlServer, run in a thread.

The server is only ever touched from the loop thread (as in the daemon); tests talk to it
over its socket like blockerctl does. An exception escaping a handler stops the loop and is
kept in `errors`, the way it would stop the daemon.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from blocker.control import ControlServer, Handler


class ControlLoop:
    def __init__(
        self,
        path: str,
        handlers: Callable[[], dict[str, Handler]],
        allowed_uids: frozenset[int] | None = None,
        **options: Any,
    ) -> None:
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(
            path, self.selector, handlers, allowed_uids=allowed_uids, **options
        )
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self.selector.select(0.05):
                    key.data()
                self.server.tick(time.monotonic())
        except BaseException as exc:  # kept for the test to see, like a daemon crash
            self.errors.append(exc)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.close()
        self.selector.close()


def exchange(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends back before it hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def reply_of(raw: bytes) -> dict[str, Any]:
    """The one JSON line the server answers with."""
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw[:200]
    decoded = json.loads(raw)
    assert isinstance(decoded, dict)
    return decoded


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
