"""Subnet escalation: which banned hosts each subnet holds lately.  PURE: times passed in.

After a host ban, if at least ``min_offenders`` distinct hosts of its /``v4_prefix`` (or
/``v6_prefix``) were banned within ``window``, the engine bans the subnet too (unless it
is already banned or may not be banned: addresses.AddressRules).  Only "are there
enough?" matters, so per subnet the newest ``4 * min_offenders`` hosts are kept (ties
broken by address, so the order of equal-time bans does not matter), and at most ``cap``
subnets (least recently touched forgotten first).

Everything is keyed by ints, not address or network objects: a storm makes a ban per
reflector, and each one counts here (issue 9 (b) and (d)).  A subnet's key is its prefix
as an int, shifted left once, with bit 0 set for IPv6; its hosts are the addresses as ints
(one version per subnet, so they sort as the addresses do).  A subnet holding one host is
an entry of flat arrays (lru_table.py), no Python object; only subnets with several have a
dict of them.  Per ban that is one table lookup and, once a subnet holds its quota, three
C-level passes over its dozen hosts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from operator import countOf
from typing import Final

from blocker.addresses import subnet_of
from blocker.lru_table import LruTable
from blocker.records import Address, Network
from blocker.source_key import network_key

__all__ = ["SubnetOffenders"]

_KEY_BYTES: Final = 17  # a subnet key: up to 127 prefix bits and the version bit


class SubnetOffenders:
    __slots__ = (
        "_cap",
        "_keep",
        "_many",
        "_networks",
        "_table",
        "_v4_mask",
        "_v4_shift",
        "_v6_mask",
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
        self._v4_mask = (1 << self._v4_shift) - 1
        self._v6_mask = (1 << self._v6_shift) - 1
        # subnet key (see key()) -> its banned hosts, least recently touched subnet first.
        # A subnet with one host (nearly all of a storm's: one reflector per /24 or /64)
        # is one entry of flat arrays (lru_table.py): its key, the host's bits below the
        # prefix and its ban time, no Python object (~55 bytes, where an OrderedDict of
        # dicts took ~400).  A subnet with another number of hosts is spilled: its
        # {host as an int: ban time} is in _many.
        self._table = LruTable(cap, _KEY_BYTES, (max(self._v4_shift, self._v6_shift) + 7) // 8)
        self._many: dict[int, dict[int, float]] = {}
        self._networks: dict[int, Network] = {}  # subnet() per spilled key
        self.last_key = 0  # key() of the address count() counted last

    def __len__(self) -> int:
        return len(self._table)

    def items(self) -> list[tuple[int, dict[int, float]]]:
        """(subnet key, its hosts as {int: ban time}) of every subnet, least recently
        touched first."""
        return [(key, self._hosts(key)) for key, _, _, _ in self._table.items()]

    def key(self, addr: Address) -> int:
        """The key of the subnet `addr` escalates to."""
        return self.key_int(int(addr), not isinstance(addr, IPv4Address))

    def key_int(self, host: int, v6: bool) -> int:
        """key() of the address `host` as an int (`v6`: an IPv6 one)."""
        if v6:
            return (host >> self._v6_shift) << 1 | 1
        return (host >> self._v4_shift) << 1

    def subnet(self, addr: Address) -> Network:
        """The subnet `addr` escalates to, e.g. 203.0.113.0/24 (one object per subnet
        while it has several offenders: a storm asks for the same /24 hundreds of times)."""
        return self.subnet_of_key(self.key(addr), addr)

    def network_key_of(self, key: int) -> int:
        """source_key.network_key() of the subnet of key `key` (e.g. last_key after
        count()): how the ban book knows that subnet, with no Network object made."""
        if key & 1:
            return network_key((key >> 1) << self._v6_shift, self.v6_prefix, True)
        return network_key((key >> 1) << self._v4_shift, self.v4_prefix, False)

    def subnet_of_key(self, key: int, addr: Address) -> Network:
        """subnet() of `addr`, whose key() is `key` (e.g. last_key after count())."""
        network = self._networks.get(key)
        if network is None:
            network = subnet_of(addr, self.v4_prefix, self.v6_prefix)
            if key in self._many:
                self._networks[key] = network
        return network

    def _subnet_key(self, subnet: Network) -> int | None:
        prefix = self.v4_prefix if isinstance(subnet, IPv4Network) else self.v6_prefix
        if subnet.prefixlen != prefix:
            return None
        return self.key(subnet.network_address)

    def _hosts(self, key: int) -> dict[int, float]:
        """The offenders held for the subnet `key` (a new dict unless it is spilled)."""
        table = self._table
        slot = table.slot_of(key)
        if slot < 0:
            return {}
        if table.spilled(slot):
            return self._many[key]
        shift = self._v6_shift if key & 1 else self._v4_shift
        return {(key >> 1) << shift | table.payload(slot): table.value(slot)}

    def _store(self, key: int, slot: int, offenders: dict[int, float]) -> None:
        """Hold `offenders` for the subnet `key` (at `slot`, from slot_of) as its most
        recently touched: inline when it is one host, else spilled."""
        table = self._table
        if len(offenders) == 1:
            [(host, at)] = offenders.items()
            gone = table.put(key, slot, at, host & (self._v6_mask if key & 1 else self._v4_mask))
            if key in self._many:
                del self._many[key]
                self._networks.pop(key, None)
        else:
            gone = table.put(key, slot, math.nan, 0, spilled=True)
            self._many[key] = offenders
        if gone is not None:
            del self._many[gone]
            self._networks.pop(gone, None)

    def count(self, addr: Address, at: float, now: float) -> int:
        """Record `addr` as banned at `at` in its subnet; return how many live offenders
        the subnet holds (offenders() lists them)."""
        return self.count_int(int(addr), not isinstance(addr, IPv4Address), at, now)

    def count_int(self, host: int, v6: bool, at: float, now: float) -> int:
        """count() of the address `host` as an int (`v6`: an IPv6 one)."""
        if not v6:  # key_int(), inlined: every ban of a storm counts here
            key = (host >> self._v4_shift) << 1
            below = host & self._v4_mask
        else:
            key = (host >> self._v6_shift) << 1 | 1
            below = host & self._v6_mask
        self.last_key = key
        table = self._table
        slot = -2
        if at > now - self.window:
            slot = table.add(key, at, below)
            if slot == -1:  # the storm's case: a subnet with no offender yet, now its first
                return 1
        if slot < 0:
            slot = table.slot_of(key)
        if slot < 0:
            if at > now - self.window:
                gone = table.put(key, slot, at, below)
                if gone is not None:
                    del self._many[gone]
                    self._networks.pop(gone, None)
                return 1
            self._store(key, slot, {})  # out of the window already: the subnet, empty
            return 0
        if table.spilled(slot):
            offenders = self._many[key]
        else:
            shift = self._v6_shift if key & 1 else self._v4_shift
            offenders = {(key >> 1) << shift | table.payload(slot): table.value(slot)}
        earlier = offenders.get(host)
        if earlier is None or at > earlier:
            offenders[host] = at
        live = self._live_after(offenders, now)
        self._store(key, slot, offenders)
        return live

    def _live_after(self, offenders: dict[int, float], now: float) -> int:
        """Drop the offenders out of the window and, past the quota, the oldest ones;
        return how many are left."""
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
        return [make(host) for host in sorted(self._hosts(self.key(addr)))]

    def count_many(self, hosts: Sequence[Address], ats: Sequence[float], now: float) -> None:
        """count() for many host bans at once (a restart's history, oldest first): the same
        result as counting them one by one, in order.  When their subnets are distinct and
        none has offenders yet (a storm of one host per /64), only the last `cap` can stay."""
        keys = [self.key(addr) for addr in hosts]
        table = self._table
        if len(set(keys)) == len(keys) and (
            not table or all(table.slot_of(key) < 0 for key in keys)
        ):
            horizon = now - self.window
            for index in range(max(0, len(keys) - self._cap), len(keys)):
                at = ats[index]
                key = keys[index]
                self._store(
                    key, table.slot_of(key), {int(hosts[index]): at} if at > horizon else {}
                )
            return
        for addr, at in zip(hosts, ats, strict=True):
            self.count(addr, at, now)

    def live(self, subnet: Network, now: float) -> int:
        """Hosts of `subnet` banned within the window before `now` (for explain)."""
        key = self._subnet_key(subnet)
        offenders = {} if key is None else self._hosts(key)
        return sum(1 for when in offenders.values() if now - when < self.window)

    def forget_host(self, addr: Address) -> None:
        key = self.key(addr)
        table = self._table
        slot = table.slot_of(key)
        if slot < 0:
            return
        if table.spilled(slot):
            self._many[key].pop(int(addr), None)
        elif int(addr) in self._hosts(key):  # its one host: an empty subnet stays in place
            table.spill(slot)
            self._many[key] = {}

    def forget_subnet(self, subnet: Network) -> None:
        key = self._subnet_key(subnet)
        if key is None:
            return
        slot = self._table.slot_of(key)
        if slot >= 0:
            self._table.delete(slot)
        self._many.pop(key, None)
        self._networks.pop(key, None)
