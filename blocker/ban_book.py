"""Ban book: who is banned until when, so their further hits stay quiet.  PURE.

Host marks and subnet marks, each capped at ``cap`` (past it, expired marks are swept and
the oldest dropped down to 90%, so the sweep is amortized over many bans), and the gate
with them.  Each mark table keeps a lower bound of its marks' ends, so a sweep skips the
walk over every mark when none can have ended (a storm's bans, all of them still running).
A forgotten mark only means a later hit of that host is scored again and may ban it again.
A permanent ban's mark is not forgotten that way: it ends only by an unban, and dropping
it would let the engine ban again, for good again, what the kernel holds for good.  The
book keeps the keys of those the cap drops (``dropped_permanent_hosts``, ``_subnets``),
with no cap of their own: in the daemon each is a permanent ban the kernel holds (a ban
the kernel refuses, and an unban, are forgotten here), so the kernel sets' ``maxelem``
bounds them; in a replay, the bans the log earned do.  They stay empty unless a jail bans
for good (``ban_time = "permanent"``, or a manual permanent ban): the shipped jails' bans
grow to at most 7 days.

``gate`` is the one lookup the engine's hot path makes per hit: host -> drop its hits
while now < this, holding every host mark, every permanent host ban the cap dropped, and
a cache of refusals (``inf`` for addresses that may never be banned).  In the gate a
refusal and a permanent ban look alike (both ``inf``): ``is_refusal()`` tells them apart.
Cached refusals are forgotten only once they outnumber the host marks and dropped
permanent bans: a rebuild copies both, paid for by as many refusals, so a ban costs the
same with 1M marks as with 10 (``gate_copies`` counts the copying, for tests).

Hosts are keyed by the engine's source key (source_key.py: an IPv4 address as its int, an
IPv6 one multiplied by a secret per process), never by address objects: an IPv6Address
hashes as hash((its int, None)), and an int as its value modulo 2**61 - 1, both unsalted,
so spoofed sources could be chosen to share one hash, and every mark or refusal of them
would compare them all (8,000 such refused sources cost 9.5 s of CPU when the gate held
address objects; the cost grows with their square).  Subnets likewise, by subnet_key():
source_key.network_key() of the network, never the Network object (it hashes unsalted,
and escalation bans subnets of spoofable sources).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Final

from blocker.records import Network
from blocker.source_key import network_key

__all__ = ["GATE_CACHE_SIZE", "BanBook", "subnet_key"]

GATE_CACHE_SIZE: Final = 65536


class _Marks(dict[int, float]):
    """Marks (key -> banned until, least recently marked first) and `earliest`, a lower
    bound of their ends: no mark has ended while now < earliest."""

    __slots__ = ("earliest",)

    def __init__(self) -> None:
        super().__init__()
        self.earliest = math.inf


class BanBook:
    __slots__ = (
        "_cap",
        "_refusals",
        "dropped_permanent_hosts",
        "dropped_permanent_subnets",
        "gate",
        "gate_copies",
        "hosts",
        "marks_walked",
        "subnets",
    )

    def __init__(self, cap: int) -> None:
        self._cap = cap
        # host -> banned until, least recently marked first.  Plain dicts (insertion order,
        # re-marking re-inserts): an OrderedDict's links cost ~80 B more a mark, and a
        # storm makes a million.
        self.hosts: _Marks = _Marks()
        self.subnets: _Marks = _Marks()  # by subnet_key()
        # Hosts and subnets banned for good whose marks the cap dropped (never in `hosts`,
        # `subnets` at the same time): the gate and its rebuilds keep the hosts.
        self.dropped_permanent_hosts: set[int] = set()
        self.dropped_permanent_subnets: set[int] = set()
        # Read by the engine's hot path; written only here.
        self.gate: dict[int, float] = {}
        self._refusals = 0  # refusals added to the gate since it was last rebuilt
        self.gate_copies = 0
        self.marks_walked = 0  # marks a sweep looked at for having ended (tests)

    def refuse(self, addr: int) -> None:
        """Cache that `addr` may never be banned: its hits are dropped at the gate."""
        if addr in self.hosts:
            self.gate[addr] = math.inf
            return
        self._refusals += 1
        kept = self.dropped_permanent_hosts
        if self._refusals > max(GATE_CACHE_SIZE, len(self.hosts) + len(kept)):
            gate = dict.fromkeys(kept, math.inf)
            gate.update(self.hosts)
            self.gate = gate
            self.gate_copies += len(gate)
            self._refusals = 1
        self.gate[addr] = math.inf

    def is_refusal(self, addr: int) -> bool:
        """Whether the gate's ``inf`` for `addr` is a cached refusal, not a permanent ban
        (a mark, or one the cap dropped from the marks)."""
        return addr not in self.hosts and addr not in self.dropped_permanent_hosts

    def ban_host(self, addr: int, until: float, now: float) -> None:
        self.gate[addr] = until
        if self.dropped_permanent_hosts:  # banned for good before: the new mark decides now
            self.dropped_permanent_hosts.discard(addr)
        hosts = self.hosts
        held = len(hosts)
        # A new mark (a storm's) costs one hash of the key here: not an `in` before the
        # store, nor a pop.
        hosts[addr] = until
        if len(hosts) > held:  # new: its place is the end
            if until < hosts.earliest:  # noqa: PLR1730 - cheaper than min() per ban
                hosts.earliest = until
            if held < self._cap:  # with room: no sweep
                return
            gone = self._trim(hosts, now)
        else:
            gone = self._mark(hosts, addr, until, now)  # to the end, most recently marked
        gate = self.gate
        for key, ended in gone:
            if ended == math.inf:  # banned for good: the gate keeps it, and so do rebuilds
                self.dropped_permanent_hosts.add(key)
            elif gate.pop(key, None) == math.inf:  # a refusal stays cached
                gate[key] = math.inf

    def ban_hosts(
        self,
        hosts: Iterable[tuple[int, float]],
        count: int,
        earliest: float,
        address: Callable[[int], int],
        now: float,
    ) -> None:
        """ban_host() for many distinct hosts at once (a restart: a million), given as
        (int, until) that `address` turns into host keys: `count` of them, none ending
        before `earliest`.  The same marks and gate as banning them one by one, in order.
        Into an empty book with no mark already ended, the count says which marks the cap
        keeps (the newest: _survivors()), and only those are built, with permanent ones
        the cap drops, which the book and the gate keep as ban_host() does: no object for
        the others."""
        if self.hosts or self.gate or earliest <= now:
            for value, until in hosts:
                self.ban_host(address(value), until, now)
            return
        kept = _survivors(count, self._cap)
        rest = iter(hosts)
        gate = self.gate
        permanent = self.dropped_permanent_hosts
        for value, until in islice(rest, count - kept):
            if until == math.inf:  # dropped from the marks, kept by the book and the gate
                addr = address(value)
                permanent.add(addr)
                gate[addr] = math.inf
        marks = self.hosts
        for value, until in rest:
            addr = address(value)
            marks[addr] = gate[addr] = until
        if len(marks) != kept:
            raise ValueError(
                f"ban_hosts: told of {count} hosts, {len(marks)} of the {kept} kept came"
            )
        marks.earliest = earliest  # a lower bound of every mark's end, as _mark() keeps

    def ban_subnet(self, subnet: Network, until: float, now: float) -> None:
        key = subnet_key(subnet)
        kept = self.dropped_permanent_subnets
        kept.discard(key)  # banned for good before: the new mark decides now
        for gone, ended in self._mark(self.subnets, key, until, now):
            if ended == math.inf:
                kept.add(gone)

    def host_until(self, addr: int) -> float | None:
        """When the ban of host `addr` ends (``inf``: never), or None when none is held."""
        until = self.hosts.get(addr)
        if until is None and addr in self.dropped_permanent_hosts:
            return math.inf
        return until

    def subnet_until(self, subnet: Network) -> float | None:
        """When the ban of `subnet` ends (``inf``: never), or None when none is held."""
        return self.subnet_until_key(subnet_key(subnet))

    def subnet_until_key(self, key: int) -> float | None:
        """subnet_until() of the subnet of subnet_key() `key`."""
        until = self.subnets.get(key)
        if until is None and key in self.dropped_permanent_subnets:
            return math.inf
        return until

    def forget_host(self, addr: int) -> None:
        self.hosts.pop(addr, None)
        self.dropped_permanent_hosts.discard(addr)
        self.gate.pop(addr, None)

    def forget_subnet(self, subnet: Network) -> None:
        key = subnet_key(subnet)
        self.subnets.pop(key, None)
        self.dropped_permanent_subnets.discard(key)

    def _mark(self, marks: _Marks, key: int, until: float, now: float) -> list[tuple[int, float]]:
        """Set a mark; past the cap, sweep expired marks, then drop the oldest to 90% (the
        sweep is amortized over many bans).  Returns the marks dropped, with their ends."""
        marks.pop(key, None)  # to the end: most recently marked
        marks[key] = until
        if until < marks.earliest:  # noqa: PLR1730 - cheaper than min() per ban
            marks.earliest = until
        return self._trim(marks, now)

    def _trim(self, marks: _Marks, now: float) -> list[tuple[int, float]]:
        """Past the cap, sweep expired marks, then drop the oldest to 90%.  Returns the marks
        dropped, with their ends."""
        if len(marks) <= self._cap:
            return []
        gone: list[tuple[int, float]] = []
        if marks.earliest <= now:  # some mark may have ended: find them
            self.marks_walked += len(marks)
            gone = [(k, u) for k, u in marks.items() if u <= now]
        for stale, _ in gone:
            del marks[stale]
        oldest = list(islice(marks.items(), max(0, len(marks) - self._cap * 9 // 10)))
        for old, _ in oldest:
            del marks[old]
        gone.extend(oldest)
        if gone and marks.earliest <= now:  # every mark left ends after now
            marks.earliest = min(marks.values(), default=math.inf)
        return gone


def _survivors(added: int, cap: int) -> int:
    """How many of `added` distinct new marks an empty book holds once _mark() added them
    one by one with none expired: up to cap + 1, then down to 90% of cap, again and again."""
    if added <= cap:
        return added
    low = cap * 9 // 10
    return low + (added - cap - 1) % (cap + 1 - low)


def subnet_key(subnet: Network) -> int:
    """The book's key of `subnet` (source_key.network_key())."""
    return network_key(int(subnet.network_address), subnet.prefixlen, subnet.version == 6)
