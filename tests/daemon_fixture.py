"""A real blockerd (`python -m blocker.daemon --dry-run`) in a subprocess, for end-to-end tests.

Everything lives in one short directory under /tmp (AF_UNIX paths are limited to 108 bytes):
jails.toml, kern.log, the state directory, the control socket and an sd_notify socket.
Every wait polls with a deadline; nothing sleeps unbounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocker import cli
from blocker.control import ControlError, request

REPO = Path(__file__).resolve().parent.parent
FILTERS = REPO / "filters"
START_TIMEOUT = 30.0
WAIT = 15.0

CONFIG = f"""
filters_dir = "{FILTERS}"
[firewall]
backend = "dry-run"
rule_check_interval = "0.5s"
[defaults]
source = "kernlog"
[jails.probes]
filters = ["unsolicited_synack", "outgoing_rst"]
"""


@dataclass(frozen=True)
class CtlResult:
    code: int
    out: str
    err: str


def poll(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Call `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class NotifyListener:
    """The systemd side of sd_notify: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, field: str, timeout: float = WAIT) -> list[str]:
        """Receive until a message holding the line `field` arrives; return all so far."""
        deadline = time.monotonic() + timeout
        start = len(self.received)
        while not any(field in m.splitlines() for m in self.received[start:]):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {field!r} from blockerd; got {self.received}")
            self.sock.settimeout(remaining)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.received

    def close(self) -> None:
        self.sock.close()


class Blockerd:
    def __init__(self, root: Path, config_text: str = CONFIG, notify: bool = False) -> None:
        self.root = root
        self.config = root / "jails.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.log = root / "kern.log"
        self.state = root / "state"
        self.socket = str(root / "ctl.sock")
        self.stderr_path = root / "blockerd.stderr"
        self.notify = NotifyListener(root / "notify.sock") if notify else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: io.BufferedWriter | None = None

    # -- process ---------------------------------------------------------------------------
    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "blocker.daemon",
            "--dry-run",
            "--config",
            str(self.config),
            "--log",
            str(self.log),
            "--state-dir",
            str(self.state),
            "--socket",
            self.socket,
            *extra,
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["PYTHONPATH"] = str(REPO)
        if self.notify is not None:
            env["NOTIFY_SOCKET"] = str(self.notify.path)
        return env

    def start(self, *extra: str, wait: bool = True) -> Blockerd:
        assert self.proc is None or self.proc.poll() is not None
        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(*extra),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            env=self.env(),
            cwd=REPO,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"blockerd exited early:\n{self.stderr()}")
            try:
                return bool(request(self.socket, {"cmd": "status"}, timeout=2).get("ok"))
            except ControlError:
                return False

        poll(ready, timeout, "blockerd to answer status")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self._stderr is not None:
            self._stderr.close()
        if self.notify is not None:
            self.notify.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = WAIT) -> None:
        poll(lambda: text in self.stderr(), timeout, f"{text!r} in blockerd's log")

    # -- input -----------------------------------------------------------------------------
    def append(self, lines: Iterable[str | bytes]) -> None:
        with self.log.open("ab") as log:
            for line in lines:
                log.write((line.encode() if isinstance(line, str) else line) + b"\n")

    # -- blockerctl ------------------------------------------------------------------------
    def ctl(self, *args: str) -> CtlResult:
        return run_ctl(["--socket", self.socket, *args])

    def bans(self) -> list[dict[str, Any]]:
        result = self.ctl("list", "--json")
        assert result.code == 0, result
        decoded = json.loads(result.out)
        assert isinstance(decoded, list)
        return decoded

    def wait_ban(self, target: str, timeout: float = WAIT) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            assert self.alive, f"blockerd died:\n{self.stderr()}"
            return next((b for b in self.bans() if b.get("target") == target), None)

        ban: dict[str, Any] = poll(found, timeout, f"a ban of {target}")
        return ban


def run_ctl(argv: Sequence[str]) -> CtlResult:
    """blockerctl in this process: exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return CtlResult(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def short_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="blkd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_blockerd(
    config_text: str = CONFIG, notify: bool = False, start: bool = True, extra: Sequence[str] = ()
) -> Iterator[Blockerd]:
    with short_directory() as root:
        daemon = Blockerd(root, config_text, notify=notify)
        try:
            if start:
                daemon.start(*extra)
            yield daemon
        finally:
            daemon.close()


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blocker.daemon", "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
