"""IpsetBackend: bans as kernel ipset entries with kernel-side timeouts, plus the early INPUT rule.

One hash:net set per family (addresses and networks alike) created with timeout support, so
every entry expires in the kernel even when blockerd is not running. Sets are created and
destroyed through pyroute2's IPSet; bans, unbans and listings go as hand-packed messages
(ipset_wire.py) on a plain NETLINK_NETFILTER socket, because pyroute2's encoder and decoder are
too slow for bursts and for sets a flood filled.

pyroute2 0.7.x (Debian 12) and 0.9.x (PyPI) differ in ways handled here:
- 0.9.x binds an IPSet to the thread that opened it (a thread-local transport: used from
  another thread it silently opens a new socket in *that* thread's namespace). So each control
  operation opens a short-lived IPSet inside the namespace (< 1 ms) and closes it.
- 0.9.x returns generators from list()/headers() and raises on iteration; 0.7.x returns tuples.
  Every call is drained with list() inside the try.
- 0.9.x raises NoSuchObject/AlreadyExists, 0.7.x a bare _IPSetError; both are NetlinkError
  with an errno `.code`, which is all this module looks at.
- 0.9.x has no IPSet.request() and types IPSET_ATTR_LINENO differently; only the public
  create/destroy/headers/list/get_proto_version/close are used.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import ip_network
from types import TracebackType
from typing import Any

import pyroute2.ipset
from pyroute2.ipset import IPSet
from pyroute2.netlink.exceptions import NetlinkError

from blocker.firewall import ipset_wire, namespace
from blocker.firewall.base import (
    Bans,
    FirewallError,
    Repair,
    check_bans,
    check_targets,
)
from blocker.firewall.rules import InputRules, check_token
from blocker.records import Network, network_text

# 0.9.x grew an asyncio core (AsyncIPSet); Debian's 0.7.2 reports __version__ "unknown".
PYROUTE2_API = "0.9+ (asyncio core)" if hasattr(pyroute2.ipset, "AsyncIPSet") else "0.7 (sync)"
SET_TYPE = "hash:net"
DEFAULT_MAXELEM = 1_048_576
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}  # also NFPROTO_IPV4/IPV6 (2, 10)
_ACK_TIMEOUT = 10.0  # seconds to wait for the kernel's answer to one batch
_SOL_NETLINK, _NETLINK_CAP_ACK = 270, 10
_IPSET_ERR_BUSY = 4100
_LIST_SLICE = 128  # entries per batch of list_batches()
log = logging.getLogger(__name__)


class IpsetBackend:
    """Kernel bans: ipset sets `set4`/`set6` + one DROP rule first in INPUT per family.

    Timeouts live in the kernel: a finite ban is rounded up to whole seconds and clamped to
    2147483 s (~24.8 days, ipset's maximum, base.MAX_TIMEOUT); math.inf = timeout 0 = permanent.
    `maxelem` sizes a set blockerd creates; an existing set keeps its own size (setup() logs
    when it differs). A full set refuses new entries and ban() returns them with the kernel's
    reason; entries already in it stay, and refreshing one still succeeds; the kernel reclaims
    expired entries when the set is full. Nothing is flushed or re-created to make room.
    `netns` names a network namespace (under /run/netns) to work in instead of the current one.
    `iptables` picks the binary ("iptables", "iptables-nft", "iptables-legacy", or a path);
    ip6tables defaults to its counterpart. Thread-safe (one lock); close() releases the sockets.
    """

    def __init__(
        self,
        *,
        set4: str = "blocker4",
        set6: str = "blocker6",
        netns: str | None = None,
        iptables: str = "iptables",
        ip6tables: str | None = None,
        comment: str = "blocker",
        maxelem: int = DEFAULT_MAXELEM,
    ) -> None:
        self.sets = {4: check_token(set4, "set name"), 6: check_token(set6, "set name")}
        if set4 == set6:
            raise ValueError(f"IPv4 and IPv6 sets need different names, both are {set4!r}")
        if isinstance(maxelem, bool) or not isinstance(maxelem, int) or not 1 <= maxelem < 2**32:
            raise ValueError(f"maxelem must be an integer in 1..2**32-1: {maxelem!r}")
        self.maxelem = maxelem
        self.netns = namespace.check_netns(netns)
        self.rules = InputRules(
            self.sets, iptables=iptables, ip6tables=ip6tables, netns=self.netns, comment=comment
        )
        self._lock = threading.Lock()
        self._netlink: socket.socket | None = None  # batch socket, opened on first use
        self._protocol = 0
        self._seq = 0

    # -- connection ---------------------------------------------------------------------------

    @contextmanager
    def _control(self) -> Iterator[Any]:
        """A pyroute2 IPSet opened inside our namespace for one operation."""
        with namespace.entered(self.netns):
            try:
                ipset = IPSet()
            except (NetlinkError, OSError) as err:
                raise FirewallError(f"cannot open ipset netlink socket: {err}") from err
        try:
            yield ipset
        finally:
            ipset.close()

    def _batch_socket(self) -> socket.socket:
        if self._netlink is None:
            with self._control() as ipset:
                try:
                    reply = next(iter(ipset.get_proto_version()))
                except NetlinkError as err:
                    raise FirewallError(f"ipset protocol query failed: {err}") from err
                protocol = int(reply.get_attr("IPSET_ATTR_PROTOCOL"))
            try:
                sock = self._open_socket()
                try:
                    # Error replies then omit the echoed request (up to 44 KiB per batch).
                    sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
                except OSError:
                    sock.close()
                    raise
            except OSError as err:
                raise FirewallError(f"ipset netlink setup failed: {err}") from err
            self._netlink, self._protocol = sock, protocol
        return self._netlink

    def _open_socket(self) -> socket.socket:
        """A netfilter netlink socket in the backend's namespace, bound, with the ack
        timeout (closed again if that fails)."""
        with namespace.entered(self.netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ipset_wire.NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.settimeout(_ACK_TIMEOUT)
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Release the batch socket (it reopens on next use)."""
        with self._lock:
            if self._netlink is not None:
                self._netlink.close()
                self._netlink = None

    def __enter__(self) -> IpsetBackend:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- sets ---------------------------------------------------------------------------------

    def _header(self, family: int) -> tuple[str, int] | None:
        """(type name, nfproto family) of our set, or None when it does not exist."""
        try:
            with self._control() as ipset:
                reply = list(ipset.headers(self.sets[family]))
        except NetlinkError as err:
            if err.code == errno.ENOENT:
                return None
            raise FirewallError(f"ipset {self.sets[family]}: {err}") from err
        return str(reply[0].get_attr("IPSET_ATTR_TYPENAME")), int(
            reply[0].get_attr("IPSET_ATTR_FAMILY")
        )

    def _check_header(self, family: int, header: tuple[str, int]) -> None:
        if header != (SET_TYPE, _FAMILY[family]):
            kind, nfproto = header
            raise FirewallError(
                f"ipset {self.sets[family]} exists as {kind} family {nfproto}, expected {SET_TYPE}"
                f" family {_FAMILY[family]}: destroy it or configure another set name"
            )

    def _create(self, family: int) -> bool:
        """Create our set unless it exists (checking its type) -> True if it was created."""
        name = self.sets[family]
        try:
            with self._control() as ipset:
                ipset.create(
                    name, stype=SET_TYPE, family=_FAMILY[family], exclusive=True,
                    timeout=0, maxelem=self.maxelem,
                )  # fmt: skip
            return True
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise FirewallError(f"cannot create ipset {name}: {err}") from err
        header = self._header(family)
        if header is None:  # destroyed between our two calls: try once more next ensure()
            raise FirewallError(f"ipset {name} vanished while being created")
        self._check_header(family, header)
        return False

    def _destroy(self, family: int) -> None:
        name = self.sets[family]
        for _attempt in range(20):
            try:
                with self._control() as ipset:
                    ipset.destroy(name)
                return
            except NetlinkError as err:
                if err.code == errno.ENOENT:
                    return
                # nf_tables drops its reference to the set shortly after the rule goes.
                if err.code != _IPSET_ERR_BUSY:
                    raise FirewallError(f"cannot destroy ipset {name}: {err}") from err
            time.sleep(0.05)
        raise FirewallError(f"cannot destroy ipset {name}: still in use by another rule")

    # -- batches ------------------------------------------------------------------------------

    def _request(self, command: int, family: int, entries: Sequence[bytes]) -> int:
        """Send one batch and wait for its ack -> 0 or the kernel's error code."""
        sock = self._batch_socket()
        self._next_seq()
        data = ipset_wire.message(
            command,
            self.sets[family],
            _FAMILY[family],
            entries,
            seq=self._seq,
            protocol=self._protocol,
        )
        try:
            sock.send(data)
            while True:
                for seq, error in ipset_wire.acks(sock.recv(1 << 17)):
                    if seq == self._seq:
                        return error
        except OSError as err:  # includes the socket timeout
            raise FirewallError(f"ipset netlink request failed: {err}") from err

    def _next_seq(self) -> None:
        """A new sequence number for the next request on the batch socket (never 0)."""
        self._seq = self._seq % 0xFFFFFFFF + 1

    def _apply(
        self, command: int, batches: dict[int, list[tuple[Network, bytes]]]
    ) -> dict[Network, str]:
        """Send the batches -> {target: the kernel's reason} for each entry it refused."""
        refused: dict[Network, str] = {}
        for family, items in sorted(batches.items()):
            for start in range(0, len(items), ipset_wire.ENTRIES_PER_MESSAGE):
                chunk = items[start : start + ipset_wire.ENTRIES_PER_MESSAGE]
                error = self._request(command, family, [blob for _target, blob in chunk])
                if error == 0:
                    continue
                if error == errno.ENOENT:
                    raise FirewallError(
                        f"ipset {self.sets[family]} does not exist (ensure() re-creates it)"
                    )
                # The kernel stops at the first failing entry: redo one by one to name each
                # (in a full set, refreshing a present entry still succeeds).
                for target, blob in chunk:
                    error = self._request(command, family, [blob])
                    if error:
                        refused[target] = ipset_wire.describe(error)
        return refused

    # -- Backend ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create both sets (an existing set must match) and put the rules first in INPUT."""
        with self._lock:
            for family in self.sets:
                if not self._create(family):
                    fill = self._fill(family)
                    if fill is not None and fill[1] != self.maxelem:
                        log.warning(
                            "ipset %s exists with maxelem %d (configured: %d); it keeps "
                            "its size until it is destroyed",
                            self.sets[family],
                            fill[1],
                            self.maxelem,
                        )
            self.rules.ensure()

    def ban(self, entries: Sequence[tuple[Network, float]]) -> dict[Network, str]:
        """Add or refresh bans -> the entries the kernel refused (a full set), with its reason;
        InvalidBan (nothing applied) when any entry is malformed."""
        clean = check_bans(entries)
        batches: dict[int, list[tuple[Network, bytes]]] = defaultdict(list)
        for target, timeout in clean.items():
            batches[target.version].append((target, ipset_wire.entry(target, timeout)))
        with self._lock:
            return self._apply(ipset_wire.IPSET_CMD_ADD, batches)

    def unban(self, targets: Sequence[Network]) -> None:
        """Remove bans; absent targets are fine."""
        batches: dict[int, list[tuple[Network, bytes]]] = defaultdict(list)
        for target in check_targets(targets):
            batches[target.version].append((target, ipset_wire.entry(target, None)))
        with self._lock:
            refused = self._apply(ipset_wire.IPSET_CMD_DEL, batches)
        if refused:
            failures = [f"{network_text(t)}: {why}" for t, why in refused.items()]
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            raise FirewallError("ipset refused: " + "; ".join(failures[:5]) + more)

    def list(self) -> Bans:
        """Entries in the kernel sets with their remaining seconds (math.inf = permanent)."""
        bans: Bans = []
        with self._lock:
            for family in sorted(self.sets):
                bans += _bans_of(self._dump(family))
        return bans

    def list_batches(self) -> Generator[Bans, None, None]:
        """list() a slice of a kernel message at a time (up to 128 entries), on a netlink
        socket of its own: a caller can serve a million entries between other work, and bans
        keep using the batch socket meanwhile. Closing the generator ends the dump."""
        with self._lock:
            self._batch_socket()  # learns the protocol version
            protocol = self._protocol
        for family in sorted(self.sets):
            name = self.sets[family]
            try:
                sock = self._open_socket()
            except OSError as err:
                raise FirewallError(f"cannot list ipset {name}: {err}") from err
            try:
                sock.send(ipset_wire.list_request(name, _FAMILY[family], seq=1, protocol=protocol))
                while True:
                    found, end = ipset_wire.list_replies(sock.recv(1 << 16), 1)
                    # A message holds ~1,000 entries: converted and handed out a slice at a
                    # time, so the caller's work between two yields stays a few ms.
                    for start in range(0, len(found), _LIST_SLICE):
                        yield _bans_of(found[start : start + _LIST_SLICE])
                    if end is not None:
                        break
            except OSError as err:  # includes the socket timeout
                raise FirewallError(f"cannot list ipset {name}: {err}") from err
            finally:
                sock.close()
            if end and end != errno.ENOENT:  # a missing set holds nothing
                raise FirewallError(f"cannot list ipset {name}: {ipset_wire.describe(end)}")

    def _dump(self, family: int) -> Sequence[ipset_wire.DumpEntry]:
        """The entries of one set, dumped on the batch socket; [] when the set is missing."""
        sock = self._batch_socket()
        self._next_seq()
        name = self.sets[family]
        request = ipset_wire.list_request(
            name, _FAMILY[family], seq=self._seq, protocol=self._protocol
        )
        entries: list[ipset_wire.DumpEntry] = []
        try:
            sock.send(request)
            while True:
                # A dump skb is at most 32 KiB (netlink_dump), so one recv holds it whole.
                found, end = ipset_wire.list_replies(sock.recv(1 << 16), self._seq)
                entries += found
                if end is not None:
                    break
        except OSError as err:  # includes the socket timeout
            raise FirewallError(f"cannot list ipset {name}: {err}") from err
        if end == errno.ENOENT:
            return []  # missing set: nothing banned there; ensure() reports it
        if end:
            raise FirewallError(f"cannot list ipset {name}: {ipset_wire.describe(end)}")
        return entries

    def fill(self) -> dict[int, tuple[int, int]]:
        """{family: (entries, maxelem)} of each present set, from its header alone."""
        with self._lock:
            return {
                family: found
                for family in sorted(self.sets)
                if (found := self._fill(family)) is not None
            }

    def _fill(self, family: int) -> tuple[int, int] | None:
        sock = self._batch_socket()
        self._next_seq()
        name = self.sets[family]
        request = ipset_wire.header_request(
            name, _FAMILY[family], seq=self._seq, protocol=self._protocol
        )
        found: dict[str, int] = {}
        try:
            sock.send(request)
            while True:
                part, end = ipset_wire.header_replies(sock.recv(1 << 16), self._seq)
                found.update(part)
                if end is not None:
                    break
        except OSError as err:  # includes the socket timeout
            raise FirewallError(f"cannot read the header of ipset {name}: {err}") from err
        if end == errno.ENOENT:
            return None
        if end:
            raise FirewallError(
                f"cannot read the header of ipset {name}: {ipset_wire.describe(end)}"
            )
        return found.get("entries", 0), found.get("maxelem", 0)

    def ensure(self) -> Repair:
        """Re-create missing sets, put our rules back at #1 of INPUT; cheap when all is well."""
        with self._lock:
            recreated: list[int] = []
            for family in sorted(self.sets):
                header = self._header(family)
                if header is None:
                    if self._create(family):
                        recreated.append(family)
                else:
                    self._check_header(family, header)
            reinserted, removed = self.rules.ensure()
        return Repair(tuple(recreated), reinserted, removed)

    def teardown(self) -> None:
        """Delete our rules, then destroy our sets (missing ones are fine)."""
        with self._lock:
            self.rules.remove()
            for family in sorted(self.sets):
                self._destroy(family)

    def status(self) -> dict[str, object]:
        """Sets present with their fill against capacity, rule positions, and which iptables
        variant (nf_tables/legacy) is used."""
        sets: dict[str, dict[str, object]] = {}
        with self._lock:
            for family, name in sorted(self.sets.items()):
                fill = self._fill(family)
                entry: dict[str, object] = {"name": name, "present": fill is not None}
                if fill is not None:
                    entries, maxelem = fill
                    entry.update(
                        entries=entries,
                        maxelem=maxelem,
                        fill=round(entries / maxelem, 4) if maxelem else None,
                    )
                sets[f"ipv{family}"] = entry
        return {
            "sets": sets,
            "rules": self.rules.status(),
            "netns": self.netns,
            "pyroute2": PYROUTE2_API,
        }


def _bans_of(entries: Iterable[ipset_wire.DumpEntry]) -> Bans:
    """Dumped set entries as bans (network, remaining seconds; math.inf = permanent)."""
    bans: Bans = []
    for packed, prefix, timeout in entries:
        try:
            target = ip_network((packed, prefix))
        except ValueError:
            continue  # host bits set: not an entry blocker could have made
        bans.append((target, float(timeout) if timeout else math.inf))
    return bans
