"""Ban book: who is banned until when, so their further hits stay quiet.  PURE.

Host marks and subnet marks, each capped at ``cap`` (past it, expired marks are swept and
the oldest dropped down to 90%, so the sweep is amortized over many bans), and the gate
with them.  Each mark table keeps a lower bound of its marks' ends, so a sweep skips the
walk over every mark when none can have ended (a storm's bans, all of them still running).
A forgotten mark only means a later hit of that host is scored again and may ban it again.

``gate`` is the one lookup the engine's hot path makes per hit: host -> drop its hits
while now < this, holding every host mark and a cache of refusals (``inf`` for addresses
that may never be banned).  Cached refusals are forgotten only once they outnumber the
marks: a rebuild copies the marks, paid for by as many refusals, so a ban costs the same
with 1M marks as with 10 (``gate_copies`` counts the copying, for tests).

Hosts are keyed by the engine's source key (source_key.py: an IPv4 address as its int, an
IPv6 one multiplied by a secret per process), never by address objects: an IPv6Address
hashes as hash((its int, None)), and an int as its value modulo 2**61 - 1, both unsalted,
so spoofed sources could be chosen to share one hash, and every mark or refusal of them
would compare them all (8,000 such refused sources cost 9.5 s of CPU when the gate held
address objects; the cost grows with their square).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from itertools import islice
from typing import Final, TypeVar

from blocker.records import Network

__all__ = ["GATE_CACHE_SIZE", "BanBook"]

GATE_CACHE_SIZE: Final = 65536
_K = TypeVar("_K", bound=Hashable)


class _Marks(dict[_K, float]):
    """Marks (key -> banned until, least recently marked first) and `earliest`, a lower
    bound of their ends: no mark has ended while now < earliest."""

    __slots__ = ("earliest",)

    def __init__(self) -> None:
        super().__init__()
        self.earliest = math.inf


class BanBook:
    __slots__ = ("_cap", "_refusals", "gate", "gate_copies", "hosts", "marks_walked", "subnets")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        # host -> banned until, least recently marked first.  Plain dicts (insertion order,
        # re-marking re-inserts): an OrderedDict's links cost ~80 B more a mark, and a
        # storm makes a million.
        self.hosts: _Marks[int] = _Marks()
        self.subnets: _Marks[Network] = _Marks()
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
        if self._refusals > max(GATE_CACHE_SIZE, len(self.hosts)):
            self.gate = dict(self.hosts)
            self.gate_copies += len(self.gate)
            self._refusals = 1
        self.gate[addr] = math.inf

    def ban_host(self, addr: int, until: float, now: float) -> None:
        self.gate[addr] = until
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
        for key in gone:
            if gate.pop(key, None) == math.inf:  # a refusal stays cached
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
        the cap drops, which the gate keeps as ban_host() does: no object for the others."""
        if self.hosts or self.gate or earliest <= now:
            for value, until in hosts:
                self.ban_host(address(value), until, now)
            return
        kept = _survivors(count, self._cap)
        rest = iter(hosts)
        gate = self.gate
        for value, until in islice(rest, count - kept):
            if until == math.inf:  # dropped from the marks, kept by the gate
                gate[address(value)] = math.inf
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
        self._mark(self.subnets, subnet, until, now)

    def host_until(self, addr: int) -> float | None:
        return self.hosts.get(addr)

    def subnet_until(self, subnet: Network) -> float | None:
        return self.subnets.get(subnet)

    def forget_host(self, addr: int) -> None:
        self.hosts.pop(addr, None)
        self.gate.pop(addr, None)

    def forget_subnet(self, subnet: Network) -> None:
        self.subnets.pop(subnet, None)

    def _mark(self, marks: _Marks[_K], key: _K, until: float, now: float) -> list[_K]:
        """Set a mark; past the cap, sweep expired marks, then drop the oldest to 90% (the
        sweep is amortized over many bans).  Returns the keys dropped."""
        marks.pop(key, None)  # to the end: most recently marked
        marks[key] = until
        if until < marks.earliest:  # noqa: PLR1730 - cheaper than min() per ban
            marks.earliest = until
        return self._trim(marks, now)

    def _trim(self, marks: _Marks[_K], now: float) -> list[_K]:
        """Past the cap, sweep expired marks, then drop the oldest to 90%.  Returns the keys
        dropped."""
        if len(marks) <= self._cap:
            return []
        gone: list[_K] = []
        if marks.earliest <= now:  # some mark may have ended: find them
            self.marks_walked += len(marks)
            gone = [k for k, u in marks.items() if u <= now]
        for stale in gone:
            del marks[stale]
        oldest = list(islice(marks, max(0, len(marks) - self._cap * 9 // 10)))
        for old in oldest:
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
