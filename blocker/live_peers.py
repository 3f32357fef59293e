"""Does an address (or any address of a network) hold a live connection with this host?

Asked before a ban on spoofable evidence (issue 10.3): anyone can forge a SYN/ACK or a scan in
a peer's name, nobody can forge a connection conntrack saw answered both ways (ASSURED) and
that carried traffic within the window. The answer comes from the kernel's conntrack table
over netlink (conntrack_wire.py), in the network namespace this object was opened in.

Only established, assured TCP counts: its handshake cannot be completed blind, so the peer
really answered the host. UDP does not: a forger can send a request in a peer's name to a UDP
service, let the host's answer go to the real peer, and send more in its name; conntrack then
marks the flow assured although the peer never spoke. Closing or half-open connections never
count either. How idle a connection is: conntrack resets an established entry's timeout on
every packet (net.netfilter.nf_conntrack_tcp_timeout_established, 5 days by default), so
idle = that timeout - seconds left.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from dataclasses import dataclass
from ipaddress import ip_address

from blocker import conntrack_wire
from blocker.conntrack_wire import Entry
from blocker.records import Address, Network

_SYSCTL = "/proc/sys/net/netfilter/"
DEFAULT_TCP_ESTABLISHED = 432000
DUMP_TIMEOUT = 2.0
SNAPSHOT_TTL = 1.0  # seconds one dump of the table answers for
_TCP = 6


class ConntrackError(Exception):
    """conntrack cannot be asked (no module, no permission, a broken answer)."""


@dataclass(frozen=True)
class LiveConnection:
    peer: Address  # the address the connection proves
    local: Address
    proto: str  # "TCP"
    peer_port: int
    local_port: int
    idle: float  # seconds since its last packet
    opened_by_peer: bool

    def describe(self) -> str:
        who = "it opened" if self.opened_by_peer else "this host opened"
        return (
            f"{self.peer} has a live {self.proto} connection that {who} "
            f"({self.peer}:{self.peer_port} <-> {self.local}:{self.local_port}, "
            f"idle {self.idle:.0f}s)"
        )


def idle_seconds(entry: Entry, tcp_established: float) -> float | None:
    """How long `entry` has carried no packet; None when it does not prove a live peer."""
    if not entry.status & conntrack_wire.IPS_ASSURED or entry.status & conntrack_wire.IPS_DYING:
        return None
    if entry.proto != _TCP or entry.tcp_state != conntrack_wire.TCP_CONNTRACK_ESTABLISHED:
        return None
    return max(0.0, tcp_established - entry.timeout)


def live_connection(
    entries: list[Entry], target: Network, window: float, tcp_established: float
) -> LiveConnection | None:
    """The most recently active connection of `entries` with an end in `target` that
    carried traffic within `window` seconds, or None."""
    best: LiveConnection | None = None
    for entry in entries:
        idle = idle_seconds(entry, tcp_established)
        if idle is None or idle > window:
            continue
        src, dst = ip_address(entry.src), ip_address(entry.dst)
        if src in target:
            found = LiveConnection(src, dst, "TCP", entry.sport, entry.dport, idle, True)
        elif dst in target:
            found = LiveConnection(dst, src, "TCP", entry.dport, entry.sport, idle, False)
        else:
            continue  # a kernel that ignored the filter: every entry came back
        if best is None or found.idle < best.idle:
            best = found
    return best


class LivePeers:
    """Asks conntrack, over its own netlink socket, in the namespace it was opened in.

    A dump walks the kernel's whole conntrack hash (shared by every namespace: 262,144
    buckets here, ~10 ms of kernel time) whatever it filters on, so one dump of a family's
    assured entries answers every question for SNAPSHOT_TTL: a burst of thousands of bans
    costs one walk, not one per ban. A connection opened within the TTL may be missed.
    """

    def __init__(self, sysctl_dir: str = _SYSCTL, ttl: float = SNAPSHOT_TTL) -> None:
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW, conntrack_wire.NETLINK_NETFILTER
            )
            self._sock.bind((0, 0))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError as exc:
            raise ConntrackError(f"cannot open a netfilter netlink socket: {exc}") from exc
        self._sysctl = sysctl_dir
        self._ttl = ttl
        self._seq = 0
        self._snapshots: dict[int, tuple[float, list[Entry]]] = {}
        self._tcp_established = float(DEFAULT_TCP_ESTABLISHED)
        self.dumps = 0

    def find(self, target: Network, window: float) -> LiveConnection | None:
        """A live connection with an end in `target` (a host or a network)."""
        entries = self._snapshot(target.version)
        return live_connection(entries, target, window, self._tcp_established)

    def live_addresses(self, version: int, window: float) -> set[int]:
        """Every address (as an int) at either end of a live connection within `window`, in
        one pass over the table: a batch of bans (a fleet catching up) is sorted by set
        lookups instead of a pass per ban; find() then describes the few that hold one."""
        entries = self._snapshot(version)
        found: set[int] = set()
        for entry in entries:
            idle = idle_seconds(entry, self._tcp_established)
            if idle is not None and idle <= window:
                found.add(int.from_bytes(entry.src, "big"))
                found.add(int.from_bytes(entry.dst, "big"))
        return found

    def _snapshot(self, version: int) -> list[Entry]:
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        taken = time.monotonic()
        snapshot = self._snapshots.get(family)
        if snapshot is None or not taken - self._ttl < snapshot[0] <= taken:
            # The timeout is read with the entries it interprets.
            self._tcp_established = float(
                _read_int(
                    self._sysctl + "nf_conntrack_tcp_timeout_established", DEFAULT_TCP_ESTABLISHED
                )
            )
            snapshot = (taken, self._dump(family))
            self._snapshots[family] = snapshot
        return snapshot[1]

    def _dump(self, family: int) -> list[Entry]:
        self._seq += 1
        self.dumps += 1
        seq = self._seq
        try:
            self._sock.send(conntrack_wire.dump_request(family, seq))
        except OSError as exc:
            raise ConntrackError(f"conntrack request failed: {exc}") from exc
        entries: list[Entry] = []
        deadline = time.monotonic() + DUMP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                raise ConntrackError(f"conntrack did not answer within {DUMP_TIMEOUT:g} s")
            try:
                data = self._sock.recv(1 << 18)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise ConntrackError("conntrack dump overran the socket") from exc
                raise ConntrackError(f"conntrack answer failed: {exc}") from exc
            found, end = conntrack_wire.dump_replies(data, seq)
            entries += found
            if end is None:
                continue
            if end == errno.ENOENT:  # nf_conntrack not loaded here: no connections at all
                return entries
            if end:
                raise ConntrackError(f"conntrack refused the dump: {os.strerror(end)}")
            return entries

    def close(self) -> None:
        self._sock.close()


def _read_int(path: str, default: int) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return default
