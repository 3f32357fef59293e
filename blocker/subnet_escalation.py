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
(one version per subnet, so they sort as the addresses do).

Two stores, one LRU order.  A subnet holding one host (a random storm's: one reflector per
/24 or /64) is an entry of flat arrays (lru_table.py), no Python object.  A subnet with
several (a clustered storm's: hundreds of reflectors per /24, each ban counted again while
the /24 is banned) is a dict entry, where a touch is a dict move instead of re-appending
the subnet to the arrays.  Every touch takes the next value of a clock, kept with the
subnet in either store; each store is in clock order, so the least recently touched
subnet of all is the older of the two first ones (_evict()), exactly as one OrderedDict
would evict.  Per ban that is a dict lookup and a table add (a new subnet), or a dict
lookup, a move, an append to the subnet's hosts and, once it holds its quota, the oldest
dropped from their front: a subnet's hosts are kept sorted by (ban time, address), and bans
come in time order, so a ban that does not (rare) re-sorts them (_merge()).
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from operator import itemgetter
from typing import Final

from blocker.addresses import subnet_of
from blocker.lru_table import LruTable
from blocker.records import Address, Network
from blocker.source_key import network_key, source_key_v6, v6_address

__all__ = ["SubnetOffenders"]

_KEY_BYTES: Final = 17  # a subnet key: up to 127 prefix bits and the version bit
_NO_CLOCK: Final = 1 << 64  # _first_clock while _many is empty: past every clock


class SubnetOffenders:
    __slots__ = (
        "_cap",
        "_clock",
        "_first_clock",
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
        # Every subnet held is in one of two places, and its place in the LRU order is its
        # clock: the count of touches (count()) up to its last one.
        # - A subnet with one host (nearly all of a random storm's: one reflector per /24 or
        #   /64) is an entry of flat arrays (lru_table.py): its key, its host's ban time,
        #   its host's bits below the prefix as payload and its clock as stamp; no Python
        #   object (84 bytes at the cap, bench_ban_cost.py --bytes; an OrderedDict of dicts
        #   took ~400).  An entry flagged spilled there is a subnet with no host left
        #   (forget_host()).
        # - A subnet that has held several hosts at once, or none, is in _many: _salted(key) ->
        #   (clock, {host as an int: ban time}), least recently touched first, until it is
        #   evicted or forgotten.  A clustered storm touches the same few thousand subnets a
        #   million times: a dict move each, where a move in the table re-appends the entry
        #   (~1 us against ~0.1).
        # The two keep their own order by clock.  The table holds at most what _many leaves
        # of the cap, and evicts its oldest itself when that is older than _many's first
        # (_first_clock); else _evict() merges the two.
        below_bytes = (max(self._v4_shift, self._v6_shift) + 7) // 8
        self._table = LruTable(cap, _KEY_BYTES, below_bytes, stamped=True)
        self._many: dict[int, tuple[int, dict[int, float]]] = {}
        self._networks: dict[int, Network] = {}  # subnet() per key in _many
        self._clock = 0
        self._first_clock = _NO_CLOCK  # the clock of _many's first entry
        self.last_key = 0  # key() of the address count() counted last

    def __len__(self) -> int:
        return len(self._table) + len(self._many)

    def items(self) -> list[tuple[int, dict[int, float]]]:
        """(subnet key, its hosts as {int: ban time}) of every subnet, least recently
        touched first."""
        table = self._table
        rows = [
            (stamp, key, self._hosts(key))
            for (key, _, _, _), stamp in zip(table.items(), table.stamps(), strict=True)
        ]
        rows += [
            (clock, self._key_of(salted), offenders)
            for salted, (clock, offenders) in self._many.items()
        ]
        rows.sort(key=itemgetter(0))
        return [(key, offenders) for _, key, offenders in rows]

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
        salted = self._salted(key)
        network = self._networks.get(salted)
        if network is None:
            network = subnet_of(addr, self.v4_prefix, self.v6_prefix)
            if salted in self._many:
                self._networks[salted] = network
        return network

    @staticmethod
    def _salted(key: int) -> int:
        """How _many and _networks know the subnet `key`.  An IPv4 one by its key, which
        hashes to itself.  An IPv6 one by its prefix as source_key_v6() salts a source:
        raw IPv6 prefixes can be chosen to share one hash (source_key.py), at prefix
        lengths past ~61 bits (subnet_v6_prefix goes up to 127)."""
        return source_key_v6(key >> 1) if key & 1 else key

    @staticmethod
    def _key_of(salted: int) -> int:
        """The subnet key of a key of _many (the inverse of _salted())."""
        return v6_address(salted) << 1 | 1 if salted >> 128 else salted

    def _subnet_key(self, subnet: Network) -> int | None:
        prefix = self.v4_prefix if isinstance(subnet, IPv4Network) else self.v6_prefix
        if subnet.prefixlen != prefix:
            return None
        return self.key(subnet.network_address)

    def _hosts(self, key: int) -> dict[int, float]:
        """The offenders held for the subnet `key` (a new dict unless it is in _many)."""
        held = self._many.get(self._salted(key))
        if held is not None:
            return held[1]
        table = self._table
        slot = table.slot_of(key)
        if slot < 0 or table.spilled(slot):
            return {}
        return {self._host_at(key, slot): table.value(slot)}

    def _host_at(self, key: int, slot: int) -> int:
        """The one host of the subnet `key`, held in the table at `slot`."""
        shift = self._v6_shift if key & 1 else self._v4_shift
        below = self._table.payload(slot)
        return (key >> 1) << shift | below

    def _evict(self) -> None:
        """Forget the least recently touched subnet, of the table's and _many's."""
        many = self._many
        table = self._table
        if many:
            first = next(iter(many))
            if not table or many[first][0] < table.oldest_stamp():
                del many[first]
                self._networks.pop(first, None)
                self._many_changed()
                return
        table.evict_oldest()

    def _many_changed(self) -> None:
        """After _many gained or lost a subnet: the table gets what is left of the cap,
        and _first_clock follows _many's first."""
        many = self._many
        self._table.set_cap(self._cap - len(many))
        self._first_clock = many[next(iter(many))][0] if many else _NO_CLOCK

    def count(self, addr: Address, at: float, now: float) -> int:
        """Record `addr` as banned at `at` in its subnet; return how many live offenders
        the subnet holds (offenders() lists them)."""
        return self.count_int(int(addr), not isinstance(addr, IPv4Address), at, now)

    def count_int(self, host: int, v6: bool, at: float, now: float) -> int:  # noqa: PLR0915 - the hot path
        """count() of the address `host` as an int (`v6`: an IPv6 one)."""
        if not v6:  # key_int() and _salted(), inlined: every ban of a storm counts here
            key = salted = (host >> self._v4_shift) << 1
            below = host & self._v4_mask
        else:
            key = (host >> self._v6_shift) << 1 | 1
            salted = source_key_v6(key >> 1)
            below = host & self._v6_mask
        self.last_key = key
        clock = self._clock = self._clock + 1
        many = self._many
        held = many.pop(salted, None)
        if held is not None:  # a clustered storm's case: a subnet with several offenders
            offenders = held[1]
            many[salted] = clock, offenders
            # It was the first: the next one is now.  (Left behind, _first_clock would only
            # be too old, and send add() to _evict() more often; never evict wrongly.)
            if held[0] == self._first_clock:
                self._first_clock = many[next(iter(many))][0]
            if offenders:
                last = next(reversed(offenders))
                when = offenders[last]
                if at < when or (at == when and host < last):  # out of order: rare
                    return self._merge(offenders, host, at, now)
                offenders.pop(host, None)  # banned again: it moves to the end
            offenders[host] = at  # the newest: offenders stay sorted
            first = next(iter(offenders))
            if offenders[first] <= now - self.window:
                return self._merge(offenders, host, at, now)
            if len(offenders) > self._keep:  # one over the quota: the oldest goes
                del offenders[first]
            return len(offenders)
        table = self._table
        if at > now - self.window:
            slot = table.add(key, at, below, clock, self._first_clock)
            if slot < 0:  # a random storm's case: a subnet with no offender yet, now its first
                if slot == -2:  # full, and the oldest subnet is in _many (or is empty)
                    self._evict()
                    table.add(key, at, below, clock)
                return 1
        else:
            slot = table.slot_of(key)
            if slot < 0:  # out of the window already: the subnet, empty
                many[salted] = clock, {}
                if len(table) + len(many) > self._cap:
                    self._evict()
                self._many_changed()
                return 0
        # In the table: one offender, or none (spilled: forget_host() took it).
        offenders = {} if table.spilled(slot) else {self._host_at(key, slot): table.value(slot)}
        live = self._merge(offenders, host, at, now)
        if live == 1:
            [(one, when)] = offenders.items()
            mask = self._v6_mask if v6 else self._v4_mask
            table.put(key, slot, when, one & mask, stamp=clock)
        else:
            table.delete(slot)
            many[salted] = clock, offenders
            self._many_changed()
        return live

    def _merge(self, offenders: dict[int, float], host: int, at: float, now: float) -> int:
        """Record `host` as banned at `at` among `offenders`; drop those out of the window
        and, past the quota, the oldest ones (among equally old ones the lowest address:
        hit order must not matter).  Leaves them sorted by (ban time, address), as
        count_int() keeps them; returns how many are left."""
        earlier = offenders.get(host)
        if earlier is None or at > earlier:
            offenders[host] = at
        horizon = now - self.window
        newest = sorted((when, addr) for addr, when in offenders.items() if when > horizon)
        offenders.clear()
        offenders.update((addr, when) for when, addr in newest[-self._keep :])
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
            not self._many and (not table or all(table.slot_of(key) < 0 for key in keys))
        ):
            for index in range(max(0, len(keys) - self._cap), len(keys)):
                self.count(hosts[index], ats[index], now)
            return
        for addr, at in zip(hosts, ats, strict=True):
            self.count(addr, at, now)

    def live(self, subnet: Network, now: float) -> int:
        """Hosts of `subnet` banned within the window before `now` (for explain)."""
        key = self._subnet_key(subnet)
        offenders = {} if key is None else self._hosts(key)
        return sum(1 for when in offenders.values() if now - when < self.window)

    def forget_host(self, addr: Address) -> None:
        """Drop `addr` from its subnet's offenders; the subnet keeps its place."""
        key = self.key(addr)
        held = self._many.get(self._salted(key))
        if held is not None:
            held[1].pop(int(addr), None)
            return
        table = self._table
        slot = table.slot_of(key)
        if slot >= 0 and not table.spilled(slot) and self._host_at(key, slot) == int(addr):
            table.spill(slot)  # its one host gone: the subnet stays in place, empty

    def forget_subnet(self, subnet: Network) -> None:
        key = self._subnet_key(subnet)
        if key is None:
            return
        slot = self._table.slot_of(key)
        if slot >= 0:
            self._table.delete(slot)
        if self._many.pop(self._salted(key), None) is not None:
            self._many_changed()
        self._networks.pop(self._salted(key), None)
