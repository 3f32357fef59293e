"""The bans the kernel holds, as blockerd knows them: target -> (jail, expiry), in compact form.

A jail under a flood holds a million active bans, so every cost here is per ban or flat:
- a target is one int key (network int, family bit, prefix length), never a Network object
  (an IPv4Network with its addresses and closures is ~700 bytes; a key and its expiry ~110);
- one dict per jail, so a jail's count is len() and no ban carries its jail's name;
- expiries are filed in BUCKET-second buckets, so expire() touches only what is due;
- covering() asks for the 33 (IPv4) or 129 (IPv6) supernets of an address, never scans.
Reasons stay in the state database (read on demand by `list` and `explain`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from socket import AF_INET, AF_INET6, inet_pton

from blocker.records import Address, Network

BUCKET = 10.0  # seconds of expiry filed together


@dataclass(frozen=True, slots=True)
class ActiveBan:
    target: Network
    jail: str
    expires: float  # wall-clock epoch; math.inf = permanent


def key_of(target: Network) -> int:
    """(network int, family bit, prefix length) in one int: IPv4 hosts stay below 2**41."""
    return (
        (int(target.network_address) << 9) | (256 if target.version == 6 else 0) | target.prefixlen
    )


def target_of(key: int) -> Network:
    prefix = key & 0xFF
    if key & 256:
        return IPv6Network((key >> 9, prefix))
    return IPv4Network((key >> 9, prefix))


def key_of_text(text: str) -> int | None:
    """The key of a target as the state stores it ('198.51.100.7', '203.0.113.0/24',
    '2001:db8::/64'), None when it is not one; host bits are cleared (ip_network(strict=False))."""
    address, _, prefix_text = text.partition("/")
    six = ":" in address
    bits = 128 if six else 32
    try:
        packed = inet_pton(AF_INET6 if six else AF_INET, address)
        prefix = int(prefix_text) if prefix_text else bits
    except (OSError, ValueError):
        return None
    if not 0 <= prefix <= bits or (prefix_text and not prefix_text.isdigit()):
        return None
    net = int.from_bytes(packed, "big") >> (bits - prefix) << (bits - prefix)
    return (net << 9) | (256 if six else 0) | prefix


def _supernet_keys(address: Address) -> Iterator[int]:
    """Keys of every network holding `address`, the host itself first."""
    value = int(address)
    bits = address.max_prefixlen
    family = 256 if address.version == 6 else 0
    for prefix in range(bits, -1, -1):
        net = value >> (bits - prefix) << (bits - prefix)
        yield (net << 9) | family | prefix


_FAMILY_BIT = 256  # set in the key of an IPv6 target (key_of)
COUNT_SLICE = 10_000


class ActiveBans(Mapping[Network, ActiveBan]):
    """Active bans per jail; a target is in at most one jail (the ban that lasts longest or
    was set last by an admin)."""

    def __init__(self) -> None:
        self._jails: dict[str, dict[int, float]] = {}
        self._due: dict[int, list[int]] = {}  # bucket -> keys whose expiry falls in it
        self._buckets: list[int] = []  # heap of the buckets in _due

    # -- lookups ---------------------------------------------------------------------------
    def _find(self, key: int) -> tuple[str, float] | None:
        for jail, bans in self._jails.items():
            expires = bans.get(key)
            if expires is not None:
                return jail, expires
        return None

    def __getitem__(self, target: Network) -> ActiveBan:
        found = self._find(key_of(target))
        if found is None:
            raise KeyError(target)
        return ActiveBan(target, found[0], found[1])

    def __iter__(self) -> Iterator[Network]:
        for bans in self._jails.values():
            for key in bans:
                yield target_of(key)

    def __len__(self) -> int:
        return sum(len(bans) for bans in self._jails.values())

    def expires(self, target: Network) -> float | None:
        found = self._find(key_of(target))
        return None if found is None else found[1]

    def count(self, jail: str) -> int:
        return len(self._jails.get(jail, ()))

    def family_counts(self) -> dict[int, int]:
        """{4: IPv4 bans, 6: IPv6 bans}, counted in C in slices of COUNT_SLICE keys: safe to
        call from the metrics thread (each dict is copied in one call) and never holding the
        GIL long enough to delay a ban."""
        v6 = 0
        total = 0
        for bans in list(self._jails.values()):
            keys = list(bans)
            total += len(keys)
            for start in range(0, len(keys), COUNT_SLICE):
                v6 += sum(map(_FAMILY_BIT.__and__, keys[start : start + COUNT_SLICE]))
        v6 //= _FAMILY_BIT
        return {4: total - v6, 6: v6}

    def covering(self, address: Address) -> list[ActiveBan]:
        """The bans whose target holds `address` (the host's own ban, then wider ones)."""
        found: list[ActiveBan] = []
        for key in _supernet_keys(address):
            hit = self._find(key)
            if hit is not None:
                found.append(ActiveBan(target_of(key), hit[0], hit[1]))
        return found

    def entries(self, family: int | None = None) -> Iterator[tuple[Network, float]]:
        """(target, expiry) of every ban, or of one IP version's."""
        for bans in self._jails.values():
            for key, expires in bans.items():
                if family is None or (6 if key & 256 else 4) == family:
                    yield target_of(key), expires

    def keyed(self) -> Mapping[int, float]:
        """Every ban as key (key_of) -> expiry, jail by jail: the one jail's own table when
        a single jail holds bans (no copy of a million), else a merged copy."""
        holding = [bans for bans in self._jails.values() if bans]
        if len(holding) == 1:
            return holding[0]
        merged: dict[int, float] = {}
        for bans in holding:
            merged.update(bans)
        return merged

    # -- changes ---------------------------------------------------------------------------
    def set(self, target: Network, jail: str, expires: float) -> None:
        """Record a ban, replacing any earlier one of the same target."""
        self._put(key_of(target), jail, expires)

    def longer(self, target: Network, expires: float) -> bool:
        """Would a ban until `expires` outlast the target's current one (or is there none)?"""
        current = self.expires(target)
        return current is None or expires > current

    def restore(self, rows: Iterable[tuple[str, str, float]]) -> int:
        """Rows of the state (target text, jail, expiry), in any order: each target keeps its
        longest ban -> how many rows held text that is no target (skipped)."""
        unreadable = 0
        jails = self._jails
        parse = key_of_text
        for text, jail, expires in rows:
            key = parse(text)
            if key is None:
                unreadable += 1
                continue
            bans = jails.get(jail)
            if bans is not None and len(jails) == 1:  # the common case: one jail so far
                current = bans.get(key)
                if current is not None and expires < current:
                    continue
            else:
                found = self._find(key)
                if found is not None and expires < found[1]:
                    continue
            self._put(key, jail, expires)
        return unreadable

    def _put(self, key: int, jail: str, expires: float) -> None:
        for name, bans in self._jails.items():
            if name != jail:
                bans.pop(key, None)
        self._jails.setdefault(jail, {})[key] = expires
        if expires < math.inf:
            bucket = int(expires // BUCKET)
            due = self._due.get(bucket)
            if due is None:
                due = self._due[bucket] = []
                heapq.heappush(self._buckets, bucket)
            due.append(key)

    def remove(self, target: Network) -> bool:
        key = key_of(target)
        removed = False
        for bans in self._jails.values():
            removed = bans.pop(key, None) is not None or removed
        return removed

    def expire(self, now: float) -> int:
        """Drop the bans that ended by `now` -> how many; touches only the buckets due."""
        gone = 0
        current = int(now // BUCKET)
        while self._buckets and self._buckets[0] <= current:
            bucket = heapq.heappop(self._buckets)
            keys = self._due.pop(bucket)
            later: list[int] = []
            for key in keys:
                found = self._find(key)
                if found is None or int(found[1] // BUCKET) != bucket:
                    continue  # unbanned, or extended into a later bucket (filed there too)
                if found[1] <= now:
                    del self._jails[found[0]][key]
                    gone += 1
                else:
                    later.append(key)
            if later:  # the bucket of `now` itself: the rest end within BUCKET seconds
                self._due[bucket] = later
                heapq.heappush(self._buckets, bucket)
                break
        return gone

    def clear(self) -> None:
        self._jails.clear()
        self._due.clear()
        self._buckets.clear()
