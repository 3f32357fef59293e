"""A real redis-server (the Debian package) for tests: a private temp dir, a Unix socket, a
free loopback port (--port 0 picks none, so we pick one), killed and removed at the end.

    with redis_server() as server:
        server.url            # unix:///tmp/blkr-.../redis.sock
        server.kill(); server.start()   # Redis down, and back with its data (AOF)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.socket = root / "redis.sock"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        assert self.process is None
        with (self.root / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    "0",
                    "--unixsocket",
                    str(self.socket),
                    "--unixsocketperm",
                    "700",
                    "--dir",
                    str(self.root),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_until(self._answers, timeout=15, interval=0.05):
            self.kill()
            raise AssertionError(f"redis-server did not start:\n{self.log()}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.log()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket))
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, as a crash or a pulled cable would leave it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def log(self) -> str:
        try:
            return (self.root / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="blkr-", dir="/tmp"))  # short: AF_UNIX paths
    server = RedisServer(root, *extra)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
