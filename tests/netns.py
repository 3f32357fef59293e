"""Network namespaces for root tests: unique names, veth links, commands inside, sure teardown.

Every namespace and process made here is removed when its context manager exits, even when
the test fails. Addresses are checked against the documentation ranges (RFC 5737, RFC 3849),
so a test cannot send traffic anywhere real by mistake.

    with linked_pair() as (server, client):
        server.run("iptables", "-S")
        listener = server.spawn("nc", "-l", "-k", "192.0.2.1", "8080")
        client.run("nc", "-z", "-w", "2", SERVER_V4, "8080")

`Namespace.run` returns the CompletedProcess (text mode); with check=True (the default) a
non-zero exit raises CalledProcessError carrying stdout and stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network

DOC_NETWORKS = tuple(
    ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)

# The default pair: "server" side and "client" side of one veth link.
SERVER_V4, CLIENT_V4 = "192.0.2.1", "192.0.2.2"
SERVER_V6, CLIENT_V6 = "2001:db8:1::1", "2001:db8:1::2"


def unique_name(prefix: str = "blk") -> str:
    """A fresh name like 'blk-1a2b3c4d' (short enough for interfaces and ipsets)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def is_documentation(address: str) -> bool:
    """True when an address or interface ('192.0.2.1/24') lies in a documentation range."""
    net = ip_interface(address).network
    for doc in DOC_NETWORKS:
        if isinstance(net, IPv4Network) and isinstance(doc, IPv4Network) and net.subnet_of(doc):
            return True
        if isinstance(net, IPv6Network) and isinstance(doc, IPv6Network) and net.subnet_of(doc):
            return True
    return False


@dataclass
class Namespace:
    """A named network namespace; `run` and `spawn` execute commands inside it."""

    name: str
    _processes: list[subprocess.Popen[str]] = field(default_factory=list, repr=False)

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self, *command: str, check: bool = True, timeout: float = 20, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return subprocess.run(
            self.argv(*command),
            check=check,
            timeout=timeout,
            input=stdin,
            capture_output=True,
            text=True,
        )

    def spawn(self, *command: str) -> subprocess.Popen[str]:
        """Start a background command inside the namespace; it and its children die at teardown."""
        process = subprocess.Popen(
            self.argv(*command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so teardown also kills its children
        )
        self._processes.append(process)
        return process

    def stop_processes(self) -> None:
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                process.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a child escaped the group and holds the pipes
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
                process.wait(timeout=5)
        self._processes.clear()


def _has_carrier(ns: Namespace, ifname: str) -> bool:
    return "LOWER_UP" in ns.run("ip", "-o", "link", "show", ifname).stdout


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=20)


@contextmanager
def namespace(prefix: str = "blk") -> Iterator[Namespace]:
    """A new namespace with loopback up; deleted (with its processes) on exit."""
    ns = Namespace(unique_name(prefix))
    _ip("netns", "add", ns.name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        ns.stop_processes()
        subprocess.run(
            ["ip", "netns", "delete", ns.name], check=False, capture_output=True, timeout=20
        )


@contextmanager
def veth(
    left: Namespace,
    right: Namespace,
    left_addresses: Sequence[str] = (f"{SERVER_V4}/24", f"{SERVER_V6}/64"),
    right_addresses: Sequence[str] = (f"{CLIENT_V4}/24", f"{CLIENT_V6}/64"),
) -> Iterator[tuple[str, str]]:
    """Link two namespaces with a veth pair; yields the (left, right) interface names.

    Only documentation addresses are accepted. IPv6 addresses skip duplicate address
    detection so they work at once; returns once both ends have carrier. The pair is deleted
    on exit (deleting either end is enough).
    """
    for address in (*left_addresses, *right_addresses):
        if not is_documentation(address):
            raise ValueError(f"{address} is not a documentation address")
    tag = uuid.uuid4().hex[:8]
    left_if, right_if = f"v{tag}a", f"v{tag}b"
    _ip("link", "add", left_if, "netns", left.name, "type", "veth",
        "peer", "name", right_if, "netns", right.name)  # fmt: skip
    try:
        for ns, ifname, addresses in (
            (left, left_if, left_addresses),
            (right, right_if, right_addresses),
        ):
            for address in addresses:
                extra = ("nodad",) if ":" in address else ()
                ns.run("ip", "addr", "add", address, "dev", ifname, *extra)
            ns.run("ip", "link", "set", ifname, "up")
        for ns, ifname in ((left, left_if), (right, right_if)):
            if not wait_until(partial(_has_carrier, ns, ifname)):
                raise RuntimeError(f"{ifname} in {ns.name} has no carrier")
        yield left_if, right_if
    finally:
        left.run("ip", "link", "delete", left_if, check=False)


@contextmanager
def linked_pair(prefix: str = "blk") -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces (server, client) on one veth link with the SERVER_*/CLIENT_* addresses."""
    with ExitStack() as stack:
        server = stack.enter_context(namespace(prefix))
        client = stack.enter_context(namespace(prefix))
        stack.enter_context(veth(server, client))
        yield server, client


def wait_until(condition: Callable[[], bool], timeout: float = 10, interval: float = 0.1) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
