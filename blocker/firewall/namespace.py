"""Work inside a named network namespace: netlink sockets via setns, commands via `ip netns exec`.

A netlink socket belongs to the namespace it was opened in, so opening it while the thread is
switched into the namespace is enough; the thread switches back at once.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from blocker.firewall.base import FirewallError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def check_netns(name: str | None) -> str | None:
    """Return a safe namespace name (or None for the current namespace); raise ValueError if not."""
    if name is None:
        return None
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid network namespace name: {name!r}")
    return name


def command(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv, run inside `netns` when one is given."""
    return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]


@contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside `netns` (None: stay where we are)."""
    if netns is None:
        yield
        return
    try:
        target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise FirewallError(f"network namespace {netns!r} not found: {err.strerror}") from err
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if int(libc.setns(fd, CLONE_NEWNET)) != 0:
        errno = ctypes.get_errno()
        raise FirewallError(f"setns failed: {os.strerror(errno)}")
