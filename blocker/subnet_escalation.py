"""Subnet escalation: which banned hosts each subnet holds lately.  PURE: times passed in.

After a host ban, if at least ``min_offenders`` distinct hosts of its /``v4_prefix`` (or
/``v6_prefix``) were banned within ``window``, the engine bans the subnet too (unless it
is already banned or may not be banned: addresses.AddressRules).  Only "are there
enough?" matters, so per subnet the newest ``4 * min_offenders`` hosts are kept (ties
broken by address, so the order of equal-time bans does not matter), and at most ``cap``
subnets (least recently touched forgotten first).

Everything is keyed by ints, not address or network objects: a storm makes a ban per
reflector, and each one counts here (issue 9 (b)).  A subnet's key is its prefix as an
int, shifted left once, with bit 0 set for IPv6; its hosts are the addresses as ints (one
version per subnet, so they sort as the addresses do).  Per ban that is one dict lookup
and, once a subnet holds its quota, three C-level passes over its dozen hosts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from operator import countOf

from blocker.addresses import subnet_of
from blocker.records import Address, Network

__all__ = ["SubnetOffenders"]


class SubnetOffenders:
    __slots__ = (
        "_cap",
        "_keep",
        "_networks",
        "_offenders",
        "_v4_shift",
        "_v6_shift",
        "last_key",
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
        self._keep = max(min_offenders, 1) * 4
        self._v4_shift = 32 - v4_prefix
        self._v6_shift = 128 - v6_prefix
        # subnet key (see key()) -> {banned host as an int: ban time}, least recently
        # touched subnet first.  Not Network objects: one weighs ~400 bytes with its cached
        # properties, and a storm touches 100,000s.
        self._offenders: OrderedDict[int, dict[int, float]] = OrderedDict()
        self._networks: dict[int, Network] = {}  # subnet() per key with offenders
        self.last_key = 0  # key() of the address count() counted last

    def key(self, addr: Address) -> int:
        """The key of the subnet `addr` escalates to."""
        if isinstance(addr, IPv4Address):
            return (int(addr) >> self._v4_shift) << 1
        return (int(addr) >> self._v6_shift) << 1 | 1

    def subnet(self, addr: Address) -> Network:
        """The subnet `addr` escalates to, e.g. 203.0.113.0/24 (one object per subnet
        while it has offenders: a storm asks for the same /24 hundreds of times)."""
        return self.subnet_of_key(self.key(addr), addr)

    def subnet_of_key(self, key: int, addr: Address) -> Network:
        """subnet() of `addr`, whose key() is `key` (e.g. last_key after count())."""
        network = self._networks.get(key)
        if network is None:
            network = subnet_of(addr, self.v4_prefix, self.v6_prefix)
            if key in self._offenders:
                self._networks[key] = network
        return network

    def _subnet_key(self, subnet: Network) -> int | None:
        prefix = self.v4_prefix if isinstance(subnet, IPv4Network) else self.v6_prefix
        if subnet.prefixlen != prefix:
            return None
        return self.key(subnet.network_address)

    def count(self, addr: Address, at: float, now: float) -> int:
        """Record `addr` as banned at `at` in its subnet; return how many live offenders
        the subnet holds (offenders() lists them)."""
        host = int(addr)
        if isinstance(addr, IPv4Address):
            key = (host >> self._v4_shift) << 1
        else:
            key = (host >> self._v6_shift) << 1 | 1
        self.last_key = key
        table = self._offenders
        offenders = table.get(key)
        if offenders is None:
            offenders = table[key] = {host: at}
            if len(table) > self._cap:
                while len(table) > self._cap:
                    self._networks.pop(table.popitem(last=False)[0], None)
        else:
            table.move_to_end(key)
            earlier = offenders.get(host)
            if earlier is None or at > earlier:
                offenders[host] = at
        # The C-level min() first: a storm's bans rarely find anything to drop.
        first = min(offenders.values())
        horizon = now - self.window
        if first <= horizon:
            for gone in [gone for gone, when in offenders.items() if when <= horizon]:
                del offenders[gone]
            if not offenders:
                return 0
            first = min(offenders.values())
        keep = self._keep
        while len(offenders) > keep:
            # The oldest goes; among equally old ones the lowest address (hit order must
            # not matter).  Bans come in time order, so it is nearly always the first one
            # in the dict, and the only one that old: both checked in C.
            oldest = next(iter(offenders))
            if offenders[oldest] != first or countOf(offenders.values(), first) != 1:
                oldest = min(h for h, when in offenders.items() if when == first)
            del offenders[oldest]
            if len(offenders) > keep:
                first = min(offenders.values())
        return len(offenders)

    def offenders(self, addr: Address) -> list[Address]:
        """The live offenders count() found in `addr`'s subnet, lowest address first."""
        make = IPv4Address if isinstance(addr, IPv4Address) else IPv6Address
        return [make(host) for host in sorted(self._offenders.get(self.key(addr), ()))]

    def count_many(self, hosts: Sequence[Address], ats: Sequence[float], now: float) -> None:
        """count() for many host bans at once (a restart's history, oldest first): the same
        result as counting them one by one, in order.  When their subnets are distinct and
        none has offenders yet (a storm of one host per /64), only the last `cap` can stay."""
        keys = [self.key(addr) for addr in hosts]
        table = self._offenders
        if len(set(keys)) == len(keys) and table.keys().isdisjoint(keys):
            horizon = now - self.window
            for index in range(max(0, len(keys) - self._cap), len(keys)):
                at = ats[index]
                table[keys[index]] = {int(hosts[index]): at} if at > horizon else {}
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
        offenders = self._offenders.get(self.key(addr))
        if offenders is not None:
            offenders.pop(int(addr), None)

    def forget_subnet(self, subnet: Network) -> None:
        key = self._subnet_key(subnet)
        if key is not None:
            self._offenders.pop(key, None)
            self._networks.pop(key, None)
