"""The bans the kernel holds, as blockerd knows them: target -> (jail, expiry), in compact form.

A jail under a flood holds a million active bans, so every cost here is per ban or flat, and
no ban is a Python object (issue 9 (d): blockerd under a storm of a million bans):
- a target is one int key (network int, family bit, prefix length), never a Network object
  (an IPv4Network with its addresses and closures is ~700 bytes);
- the table stores it in flat arrays, as CPython's compact dict does: dense entries (network
  high and low 64 bits, family and prefix, jail number, expiry: 27 bytes) in the order they
  were first banned, and an open-addressing index of 4-byte positions into them (linear
  probing, at most 2/3 full). About 43 bytes a ban with its expiry filing, where a dict of
  int keys and float expiries with lists of keys per bucket cost ~120;
- slots come from a per-process keyed hash of the key's bytes, so spoofed sources cannot be
  chosen to pile into one slot (they can in a dict of int keys: an int hashes to itself);
- an unban or an expiry only marks its entry dead; a growth or a table of mostly dead entries
  rebuilds index and entries in one pass (amortized: every rebuild follows as many changes);
- a jail's count and the per-family counts are kept as the table changes, so they are O(1),
  and the metrics thread reads them without walking anything;
- expiries are filed in BUCKET-second buckets of entry positions (4 bytes each), so expire()
  touches only what is due;
- covering() asks for the 33 (IPv4) or 129 (IPv6) supernets of an address, never scans.
Reasons stay in the state database (read on demand by `list` and `explain`).
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import Counter
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from itertools import compress
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
_M64 = (1 << 64) - 1
_MIN_BITS = 3  # the smallest index: 8 slots
_MAX_JAILS = 1 << 16  # jail numbers are array('H') items


class _Keyed(Mapping[int, float]):
    """Every ban as key (key_of) -> expiry, read from the table (no copy of a million)."""

    def __init__(self, bans: ActiveBans) -> None:
        self._bans = bans

    def __getitem__(self, key: int) -> float:
        expires = self._bans.key_expiry(key)
        if expires is None:
            raise KeyError(key)
        return expires

    def __iter__(self) -> Iterator[int]:
        for key, _expires in self._bans.keyed_items():
            yield key

    def __len__(self) -> int:
        return len(self._bans)

    def items(self) -> ItemsView[int, float]:
        return _KeyedItems(self, self._bans.keyed_items)


class _KeyedItems(ItemsView[int, float]):
    """items() straight from the table's arrays, not a lookup per key."""

    def __init__(self, keyed: _Keyed, walk: Callable[[], Iterator[tuple[int, float]]]) -> None:
        super().__init__(keyed)
        self._walk = walk

    def __iter__(self) -> Iterator[tuple[int, float]]:
        return self._walk()


class ActiveBans(Mapping[Network, ActiveBan]):
    """Active bans, each in one jail; a target is in at most one jail (the ban that lasts
    longest or was set last by an admin). Not thread-safe, except len(), count() and
    family_counts(), which only read ints the table keeps up to date."""

    def __init__(self) -> None:
        self._names: list[str] = []  # jail number -> name
        self._numbers: dict[str, int] = {}
        self._counts: list[int] = []  # jail number -> its active bans
        self.expiry_checks = 0  # entries expire() looked at (tests: only the due ones)
        self._reset(_MIN_BITS)

    def _reset(self, bits: int) -> None:
        # Dense entries, in the order targets were first banned; a dead entry has tag 0.
        self._hi = array("Q")  # network >> 64 (0 for IPv4)
        self._lo = array("Q")  # network & (2**64 - 1)
        self._tag = array("H")  # 1 + (family bit | prefix length): the key's low 9 bits, + 1
        self._jail = array("H")  # jail number
        self._exp = array("d")  # expiry, wall-clock epoch; math.inf = permanent
        self._index = array("i", [-1]) * (1 << bits)  # hash slot -> entry position, -1 empty
        self._live = 0
        self._v6 = 0
        self._counts = [0] * len(self._names)
        self._due: dict[int, array[int]] = {}  # bucket -> positions whose expiry falls in it
        self._buckets: list[int] = []  # heap of the buckets in _due

    # -- the table -------------------------------------------------------------------------
    def _probe(self, key: int) -> int:
        """The entry position of a live ban of `key`, or -1 - the free slot it would take."""
        net = key >> 9
        lo = net & _M64
        hi = net >> 64
        tag = (key & 0x1FF) + 1
        index, los, his, tags = self._index, self._lo, self._hi, self._tag
        mask = len(index) - 1
        # Slots from the hash of the key's bytes: SipHash keyed per process, so no one can pick
        # sources that pile into one slot (an int hashes to itself mod 2**61 - 1: that they could).
        slot = hash(key.to_bytes(18, "little")) & mask
        while True:
            pos = index[slot]
            if pos < 0:
                return -1 - slot
            if los[pos] == lo and tags[pos] == tag and his[pos] == hi:
                return pos
            slot = (slot + 1) & mask

    def _position(self, key: int) -> int:
        """The entry position of a live ban of `key`, or -1."""
        pos = self._probe(key)
        return pos if pos >= 0 else -1

    def keyed_items(self) -> Iterator[tuple[int, float]]:
        """(key, expiry) of every ban, in the order targets were first banned."""
        for hi, lo, tag, expires in zip(self._hi, self._lo, self._tag, self._exp, strict=True):
            if tag:
                yield (((hi << 64) | lo) << 9) | (tag - 1), expires

    def _number(self, jail: str) -> int:
        number = self._numbers.get(jail)
        if number is None:
            if len(self._names) < _MAX_JAILS:
                number = len(self._names)
                self._names.append(jail)
                self._counts.append(0)
            else:  # names come from other hosts too (fleet events): reuse one holding no ban
                number = next((n for n, count in enumerate(self._counts) if not count), None)
                if number is None:
                    raise ValueError(f"{_MAX_JAILS} jail names hold bans already")
                del self._numbers[self._names[number]]
                self._names[number] = jail
            self._numbers[jail] = number
        return number

    def _store(self, key: int, found: int, jail: str, expires: float) -> None:
        """Set the ban of `key`, where `found` is what _probe(key) returned, and file its
        expiry."""
        number = self._number(jail)
        if found >= 0:
            pos = found
            old = self._jail[pos]
            if old != number:
                self._counts[old] -= 1
                self._counts[number] += 1
                self._jail[pos] = number
            self._exp[pos] = expires
        else:
            if (len(self._tag) + 1) * 3 > len(self._index) * 2:
                self._rebuild()
                found = self._probe(key)
            pos = len(self._tag)
            net = key >> 9
            self._hi.append(net >> 64)
            self._lo.append(net & _M64)
            self._tag.append((key & 0x1FF) + 1)
            self._jail.append(number)
            self._exp.append(expires)
            self._index[-1 - found] = pos
            self._live += 1
            self._counts[number] += 1
            if key & _FAMILY_BIT:
                self._v6 += 1
        if expires < math.inf:
            bucket = int(expires // BUCKET)
            due = self._due.get(bucket)
            if due is None:
                due = self._due[bucket] = array("I")
                heapq.heappush(self._buckets, bucket)
            due.append(pos)

    def _kill(self, pos: int) -> None:
        tag = self._tag[pos]
        self._tag[pos] = 0  # its index slot stays taken (a tombstone) until the next rebuild
        self._live -= 1
        self._counts[self._jail[pos]] -= 1
        if (tag - 1) & _FAMILY_BIT:
            self._v6 -= 1

    def _rebuild(self) -> None:
        """A new index at most half full for the live entries (a growth, or a table full of
        tombstones): the table's one O(n) step, after at least n/3 insertions since the last
        one. Entries stay where they are (no copy of the table at its biggest) unless a
        quarter of them are dead: then the live ones are packed first."""
        if (len(self._tag) - self._live) * 4 > len(self._tag):
            self._compact()
        self._index_all()

    def _compact(self) -> None:
        """Drop dead entries (positions change: expiries are filed anew)."""
        live = array("B", map(bool, self._tag))
        self._hi = array("Q", compress(self._hi, live))
        self._lo = array("Q", compress(self._lo, live))
        self._tag = array("H", compress(self._tag, live))
        self._jail = array("H", compress(self._jail, live))
        self._exp = array("d", compress(self._exp, live))
        del live
        self._refresh()

    def _refresh(self) -> None:
        """Count the entries (all live) and file their expiries anew."""
        self._live = len(self._tag)
        self._v6 = sum(map((_FAMILY_BIT).__lt__, self._tag))  # IPv6 tags are 257..385
        self._counts = [0] * len(self._names)
        for number, count in Counter(self._jail).items():
            self._counts[number] = count
        due: dict[int, array[int]] = {}
        for pos, expires in enumerate(self._exp):
            if expires < math.inf:
                bucket = int(expires // BUCKET)
                filed = due.get(bucket)
                if filed is None:
                    filed = due[bucket] = array("I")
                filed.append(pos)
        self._due = due
        self._buckets = sorted(due)  # a sorted list is a heap

    def _index_all(self) -> int:
        """Index every live entry in a new index -> how many duplicate entries it killed:
        two live entries of one key (a bulk restore's rows) keep the one that ends later
        (the later row on a tie). Counts and filing are the caller's."""
        bits = max(_MIN_BITS, (2 * self._live + 2).bit_length())
        his, los, tags, exps = self._hi, self._lo, self._tag, self._exp
        index = array("i", [-1]) * (1 << bits)
        self._index = index
        mask = (1 << bits) - 1
        killed = 0
        for pos in range(len(tags)):
            tag = tags[pos]
            if not tag:
                continue
            hi = his[pos]
            lo = los[pos]
            key = (((hi << 64) | lo) << 9) | (tag - 1)
            slot = hash(key.to_bytes(18, "little")) & mask  # as in _probe()
            while True:
                other = index[slot]
                if other < 0:
                    index[slot] = pos
                    break
                if los[other] == lo and tags[other] == tag and his[other] == hi:
                    killed += 1
                    if exps[pos] >= exps[other]:
                        tags[other] = 0
                        index[slot] = pos
                    else:
                        tags[pos] = 0
                    break
                slot = (slot + 1) & mask
        return killed

    # -- lookups ---------------------------------------------------------------------------
    def key_expiry(self, key: int) -> float | None:
        """The expiry of the ban of `key` (key_of), None when there is none."""
        pos = self._position(key)
        return None if pos < 0 else self._exp[pos]

    def _find(self, key: int) -> tuple[str, float] | None:
        pos = self._position(key)
        if pos < 0:
            return None
        return self._names[self._jail[pos]], self._exp[pos]

    def __getitem__(self, target: Network) -> ActiveBan:
        found = self._find(key_of(target))
        if found is None:
            raise KeyError(target)
        return ActiveBan(target, found[0], found[1])

    def __iter__(self) -> Iterator[Network]:
        for key, _expires in self.keyed_items():
            yield target_of(key)

    def __len__(self) -> int:
        return self._live

    def expires(self, target: Network) -> float | None:
        pos = self._position(key_of(target))
        return None if pos < 0 else self._exp[pos]

    def count(self, jail: str) -> int:
        number = self._numbers.get(jail)
        return 0 if number is None else self._counts[number]

    def family_counts(self) -> dict[int, int]:
        """{4: IPv4 bans, 6: IPv6 bans}: two counters, safe to read from the metrics thread."""
        v6 = self._v6
        return {4: self._live - v6, 6: v6}

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
        for key, expires in self.keyed_items():
            if family is None or (6 if key & _FAMILY_BIT else 4) == family:
                yield target_of(key), expires

    def keyed(self) -> Mapping[int, float]:
        """Every ban as key (key_of) -> expiry, in the order targets were first banned: a
        view of the table, not a copy of a million."""
        return _Keyed(self)

    # -- changes ---------------------------------------------------------------------------
    def set(self, target: Network, jail: str, expires: float) -> None:
        """Record a ban, replacing any earlier one of the same target."""
        key = key_of(target)
        self._store(key, self._probe(key), jail, expires)

    def longer(self, target: Network, expires: float) -> bool:
        """Would a ban until `expires` outlast the target's current one (or is there none)?"""
        current = self.expires(target)
        return current is None or expires > current

    def restore(self, rows: Iterable[tuple[str, str, float]]) -> int:
        """Rows of the state (target text, jail, expiry), in any order: each target keeps its
        longest ban -> how many rows held text that is no target (skipped). Into an empty
        table (a start) the rows are appended as they come and indexed once at the end."""
        unreadable = 0
        parse = key_of_text
        if self._tag:
            for text, jail, expires in rows:
                key = parse(text)
                if key is None:
                    unreadable += 1
                    continue
                found = self._probe(key)
                if found >= 0 and expires < self._exp[found]:
                    continue
                self._store(key, found, jail, expires)
            return unreadable
        his, los, tags, jails, exps = self._hi, self._lo, self._tag, self._jail, self._exp
        last_name, number = None, 0
        for text, jail, expires in rows:
            key = parse(text)
            if key is None:
                unreadable += 1
                continue
            if jail != last_name:
                last_name, number = jail, self._number(jail)
            net = key >> 9
            his.append(net >> 64)
            los.append(net & _M64)
            tags.append((key & 0x1FF) + 1)
            jails.append(number)
            exps.append(expires)
        self._live = len(tags)
        if self._index_all():  # duplicates were killed: pack and index again
            self._compact()
            self._index_all()
        else:
            self._refresh()
        return unreadable

    def remove(self, target: Network) -> bool:
        pos = self._position(key_of(target))
        if pos < 0:
            return False
        self._kill(pos)
        return True

    def expire(self, now: float) -> int:
        """Drop the bans that ended by `now` -> how many; touches only the buckets due."""
        gone = 0
        current = int(now // BUCKET)
        while self._buckets and self._buckets[0] <= current:
            bucket = heapq.heappop(self._buckets)
            positions = self._due.pop(bucket)
            self.expiry_checks += len(positions)
            tags, exps = self._tag, self._exp
            later = array("I")
            for pos in positions:
                expires = exps[pos]
                if not tags[pos] or expires == math.inf or int(expires // BUCKET) != bucket:
                    continue  # unbanned, or extended into a later bucket (filed there too)
                if expires <= now:
                    self._kill(pos)
                    gone += 1
                else:
                    later.append(pos)
            if later:  # the bucket of `now` itself: the rest end within BUCKET seconds
                self._due[bucket] = later
                heapq.heappush(self._buckets, bucket)
                break
        return gone

    def clear(self) -> None:
        self._reset(_MIN_BITS)
