"""Subnet escalation: which banned hosts each subnet holds lately.  PURE: times passed in.

After a host ban, if at least ``min_offenders`` distinct hosts of its /``v4_prefix`` (or
/``v6_prefix``) were banned within ``window``, the engine bans the subnet too (unless it
is already banned or may not be banned: addresses.AddressRules).  Only "are there
enough?" matters, so per subnet the newest ``4 * min_offenders`` hosts are kept, and at
most ``cap`` subnets (least recently touched forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

from blocker.addresses import subnet_of
from blocker.records import Address, Network

__all__ = ["SubnetOffenders"]


class SubnetOffenders:
    __slots__ = (
        "_cap",
        "_networks",
        "_offenders",
        "_v4_shift",
        "_v6_shift",
        "min_offenders",
        "v4_prefix",
        "v6_prefix",
        "window",
    )

    def __init__(
        self, min_offenders: int, window: float, v4_prefix: int, v6_prefix: int, cap: int
    ) -> None:
        self.min_offenders = min_offenders
        self.window = window
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self._cap = cap
        self._v4_shift = 32 - v4_prefix
        self._v6_shift = 128 - v6_prefix
        # subnet key (see _key) -> {banned host address: ban time}.  Not Network objects:
        # one weighs ~400 bytes with its cached properties, and a storm touches 100,000s.
        self._offenders: OrderedDict[tuple[int, int], dict[Address, float]] = OrderedDict()
        self._networks: dict[tuple[int, int], Network] = {}  # subnet() per key with offenders

    def subnet(self, addr: Address) -> Network:
        """The subnet `addr` escalates to, e.g. 203.0.113.0/24 (one object per subnet
        while it has offenders: a storm asks for the same /24 hundreds of times)."""
        key = self._key(addr)
        network = self._networks.get(key)
        if network is None:
            network = subnet_of(addr, self.v4_prefix, self.v6_prefix)
            if key in self._offenders:
                self._networks[key] = network
        return network

    def _key(self, addr: Address) -> tuple[int, int]:
        if isinstance(addr, IPv4Address):
            return 4, int(addr) >> self._v4_shift
        return 6, int(addr) >> self._v6_shift

    def _subnet_key(self, subnet: Network) -> tuple[int, int] | None:
        prefix = self.v4_prefix if isinstance(subnet, IPv4Network) else self.v6_prefix
        if subnet.prefixlen != prefix:
            return None
        return self._key(subnet.network_address)

    def count(self, addr: Address, at: float, now: float) -> dict[Address, float]:
        """Record `addr` as banned at `at` in its subnet; return the subnet's live
        offenders."""
        key = self._key(addr)
        offenders = self._offenders.get(key)
        if offenders is None:
            offenders = self._offenders[key] = {}
            while len(self._offenders) > self._cap:
                self._networks.pop(self._offenders.popitem(last=False)[0], None)
        else:
            self._offenders.move_to_end(key)
        offenders[addr] = max(at, offenders.get(addr, at))
        horizon = now - self.window
        # The C-level min() first: a storm's bans rarely find anything to drop.
        if min(offenders.values()) <= horizon:
            for host in [host for host, when in offenders.items() if when <= horizon]:
                del offenders[host]
        keep = max(self.min_offenders, 1) * 4
        while len(offenders) > keep:  # ties broken by address: hit order must not matter
            first = min(offenders.values())
            del offenders[min(host for host, when in offenders.items() if when == first)]
        return offenders

    def count_many(self, hosts: Sequence[Address], ats: Sequence[float], now: float) -> None:
        """count() for many host bans at once (a restart's history, oldest first): the same
        result as counting them one by one, in order.  When their subnets are distinct and
        none has offenders yet (a storm of one host per /64), only the last `cap` can stay."""
        keys = [self._key(addr) for addr in hosts]
        table = self._offenders
        if len(set(keys)) == len(keys) and table.keys().isdisjoint(keys):
            horizon = now - self.window
            for index in range(max(0, len(keys) - self._cap), len(keys)):
                at = ats[index]
                table[keys[index]] = {hosts[index]: at} if at > horizon else {}
            while len(table) > self._cap:
                self._networks.pop(table.popitem(last=False)[0], None)
            return
        for addr, at in zip(hosts, ats, strict=True):
            self.count(addr, at, now)

    def live(self, subnet: Network, now: float) -> int:
        """Hosts of `subnet` banned within the window before `now` (for explain)."""
        key = self._subnet_key(subnet)
        offenders = {} if key is None else self._offenders.get(key, {})
        return sum(1 for when in offenders.values() if now - when < self.window)

    def forget_host(self, addr: Address) -> None:
        offenders = self._offenders.get(self._key(addr))
        if offenders is not None:
            offenders.pop(addr, None)

    def forget_subnet(self, subnet: Network) -> None:
        key = self._subnet_key(subnet)
        if key is not None:
            self._offenders.pop(key, None)
            self._networks.pop(key, None)
