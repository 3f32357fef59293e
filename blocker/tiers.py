"""Where a source's hits live until it is banned or they leave the window.  PURE.

Three tiers, each source in at most one, keyed by the address as an int (key_of(): IPv6
with bit 128 set, so ``::192.0.2.1`` never shares 192.0.2.1's state).  The design and its
error bounds are in scoring.py's docstring; in short: one-hit sources wait in a FIFO
(admission), sources past their first hit climb as packed exact hit times (climbing) or
as a full Window (keyed or mixed hits), and whatever is pushed out while live is noted in
the doorkeeper, so its next hit starts it climbing.

Tiers.add() returns (hits per filter, score in UNITS) when a source reaches the threshold,
its hits dropped; the engine makes the ban.
"""

from __future__ import annotations

import math
import struct
from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address
from itertools import islice
from typing import Final

from blocker.doorkeeper import Doorkeeper
from blocker.records import Address
from blocker.score_window import MAX_HITS_PER_ADDRESS, Entry, Window, entry_time

__all__ = ["CLIMBING_PER_TRACKED", "MAX_CLIMBING_HITS", "Reached", "Tiers", "key_of"]

CLIMBING_PER_TRACKED: Final = 12  # the climbing tier holds up to 12 * max_tracked sources
MAX_CLIMBING_HITS: Final = 16  # more hits than this in the window: a full window
MAX_KINDS: Final = 4096  # (filter, weight) pairs the climbing tier can name
_V6_TAG: Final = 1 << 128
# A climbing source's record: hits * MAX_KINDS + its kind number, then the times of its
# live hits, oldest first, all as doubles (exact: the times are the lines' own floats).
# Records of up to SMALL_RECORD hits all take SMALL_RECORD slots: one size of block, so
# the allocator reuses the block a record frees when it grows by a hit (with one size per
# hit count, a storm left a million freed blocks of each smaller size behind).
SMALL_RECORD: Final = 4
_PACK: Final = [struct.Struct(f"<{n}d").pack for n in range(MAX_CLIMBING_HITS + 2)]
_UNPACK: Final = [struct.Struct(f"<{n}d").unpack for n in range(MAX_CLIMBING_HITS + 2)]
_PAD: Final = [(0.0,) * (SMALL_RECORD - n) for n in range(SMALL_RECORD + 1)]


def _pack(kind: int, times: list[float]) -> bytes:
    hits = len(times)
    if hits <= SMALL_RECORD:
        return _PACK[SMALL_RECORD + 1](hits * MAX_KINDS + kind, *times, *_PAD[hits])
    return _PACK[hits + 1](hits * MAX_KINDS + kind, *times)


def _unpack(packed: bytes) -> tuple[int, list[float]]:
    """(kind number, hit times) of a climbing record."""
    header, *times = _UNPACK[len(packed) >> 3](packed)
    hits, kind = divmod(int(header), MAX_KINDS)
    del times[hits:]
    return kind, times


# (hits per filter, score in UNITS) of a source that reached the threshold
Reached = tuple[Mapping[str, int], float]


def key_of(addr: Address) -> int:
    """`addr` as the key of the packed tiers."""
    return int(addr) if isinstance(addr, IPv4Address) else int(addr) | _V6_TAG


class Tiers:
    """The three tiers of one jail.  `refuse(addr)` is asked once per new source: True
    when it may never be banned (its hit is then dropped)."""

    def __init__(
        self,
        window: float,
        threshold_units: int,
        repeat_factor: float,
        max_tracked: int,
        refuse: Callable[[Address], bool],
    ) -> None:
        self._window = window
        self._threshold_units = threshold_units
        self._repeat_factor = repeat_factor
        self._max_tracked = max_tracked
        self._max_climbing = max_tracked * CLIMBING_PER_TRACKED
        self._refuse = refuse
        self.now = -math.inf  # the newest event time, set by the engine
        # Tier 1, admission: address key -> its one hit, oldest first (FIFO)
        self._once: OrderedDict[int, Entry] = OrderedDict()
        # Addresses pushed out while live within the window; None until the first
        self._doorkeeper: Doorkeeper | None = None
        # Tier 2, climbing: address key -> packed kind and hit times (_PACK)
        self._climbing: dict[int, bytes] = {}
        self._kinds: list[tuple[str, int]] = []  # kind number -> (filter, weight units)
        self._kind_numbers: dict[tuple[str, int], int] = {}
        # Tier 3, full windows: keyed (scan) or mixed hits, in clock eviction order
        self._tracked: OrderedDict[int, Window] = OrderedDict()
        self.evicted = 0  # sources whose live hits were forgotten for room
        self.readmitted = 0  # new hits of sources the doorkeeper had seen
        self.last_eviction = -math.inf
        # new sources per minute of log time: now and the minute before
        self._minute = -math.inf
        self._new_this_minute = 0
        self._new_last_minute = 0

    def add(self, addr: Address, entry: Entry) -> Reached | None:
        """One hit, live at self.now, of a source neither banned nor refused yet."""
        now, window = self.now, self._window
        ip = int(addr) if isinstance(addr, IPv4Address) else int(addr) | _V6_TAG
        state = self._tracked.get(ip)
        if state is None:
            packed = self._climbing.get(ip)
            if packed is not None:
                return self._climb(addr, ip, packed, entry)
            first = self._once.pop(ip, None)
            if first is None:
                return self._open(addr, ip, entry)
            return self._hold(addr, ip, [first] if now - first[0] < window else [], entry)
        state.seen_again = True
        if now - state.hits[0][0] >= window:
            state.expire(now, window)
        return self._add_to_window(ip, state, entry)

    def _add_to_window(self, ip: int, state: Window, entry: Entry) -> Reached | None:
        t, _, key, weight = entry
        hits = state.hits
        if not hits or t >= hits[-1][0]:
            hits.append(entry)
        else:  # a slightly late line: keep the hits in time order so expiry stays exact
            insort(hits, entry, key=entry_time)
        if key is None:
            state.plain += weight
        else:
            state.count_key(key, weight)
        if len(hits) > MAX_HITS_PER_ADDRESS:
            state.drop_oldest()
        max_sum = state.max_sum
        score = state.plain + max_sum + self._repeat_factor * (state.keyed_total - max_sum)
        if score < self._threshold_units:
            return None
        del self._tracked[ip]
        return Counter(entry[1] for entry in hits), score

    def _climb(self, addr: Address, ip: int, packed: bytes, entry: Entry) -> Reached | None:
        """One more hit of a source in the climbing tier."""
        t, name, key, weight = entry
        number, times = _unpack(packed)
        now, window = self.now, self._window
        if now - times[0] >= window:
            times = [when for when in times if now - when < window]
        if (
            key is not None
            or self._kinds[number] != (name, weight)
            or len(times) >= MAX_CLIMBING_HITS
        ):
            del self._climbing[ip]  # not one kind of plain hit any more: a full window
            return self._hold(addr, ip, self._entries(number, times), entry)
        if not times or t >= times[-1]:
            times.append(t)
        else:
            insort(times, t)
        score = len(times) * weight
        if score >= self._threshold_units:
            del self._climbing[ip]
            return {name: len(times)}, score
        self._climbing[ip] = _pack(number, times)
        return None

    def _entries(self, number: int, times: Iterable[float]) -> list[Entry]:
        name, weight = self._kinds[number]
        return [(when, name, None, weight) for when in times]

    def _hold(self, addr: Address, ip: int, earlier: list[Entry], entry: Entry) -> Reached | None:
        """Keep the live hits of a source that is past its first one (`earlier`, oldest
        first, then `entry`, the newest line): as packed times when they are plain hits of
        one kind, else as a full window."""
        t, name, key, weight = entry
        count = len(earlier) + 1
        number = None
        if key is None and count <= MAX_CLIMBING_HITS:
            for e in earlier:
                if e[1] != name or e[2] is not None or e[3] != weight:
                    break
            else:
                number = self._kind_numbers.get((name, weight))
                if number is None:
                    number = self._kind_number(name, weight)
        if number is not None:
            score = count * weight
            if score >= self._threshold_units:
                return {name: count}, score
            climbing = self._climbing
            if len(climbing) >= self._max_climbing:
                self._evict_climbing()
            times = [e[0] for e in earlier]
            if times and t < times[-1]:
                insort(times, t)
            else:
                times.append(t)
            climbing[ip] = _pack(number, times)
            return None
        tracked = self._tracked
        if len(tracked) >= self._max_tracked:
            self._evict_window()
        state = tracked[ip] = Window()
        state.seen_again = True
        for e in earlier:
            state.hits.append(e)
            if e[2] is None:
                state.plain += e[3]
            else:
                state.count_key(e[2], e[3])
        return self._add_to_window(ip, state, entry)

    def _kind_number(self, name: str, weight: int) -> int | None:
        kind = (name, weight)
        number = self._kind_numbers.get(kind)
        if number is None and len(self._kinds) < MAX_KINDS:
            number = self._kind_numbers[kind] = len(self._kinds)
            self._kinds.append(kind)
        return number

    def _open(self, addr: Address, ip: int, entry: Entry) -> Reached | None:
        """The first hit of an address not held in any tier."""
        # Whether an address may be banned is settled once, when it is first seen; only
        # refusals and bans enter the gate, so a flood of new sources never churns it.
        if self._refuse(addr):
            return None
        t = entry[0]
        if t >= self._minute + 60.0:
            self._new_last_minute = self._new_this_minute if t < self._minute + 120.0 else 0
            self._minute = t - t % 60.0
            self._new_this_minute = 0
        self._new_this_minute += 1
        if entry[3] >= self._threshold_units:
            return self._hold(addr, ip, [], entry)
        doorkeeper = self._doorkeeper
        if doorkeeper is not None and doorkeeper.seen(ip, self.now):
            # Seen within the window, its hits pushed out by a flood: this one starts it
            # climbing, so another wave of one-hit sources cannot push it out again.
            self.readmitted += 1
            return self._hold(addr, ip, [], entry)
        once = self._once
        if len(once) >= self._max_tracked:
            self._evict_once()
        once[ip] = entry
        return None

    def _evict_once(self) -> None:
        """Make room in the admission tier: its oldest hit goes, into the doorkeeper."""
        ip, (t, _, _, _) = self._once.popitem(last=False)
        now = self.now
        if now - t < self._window:
            self._forgotten(ip)

    def _forgotten(self, ip: int) -> None:
        """`ip` loses live hits for room: remember that it was seen, in fixed memory."""
        doorkeeper = self._doorkeeper
        if doorkeeper is None:
            doorkeeper = self._doorkeeper = Doorkeeper(self._window)
        doorkeeper.add(ip, self.now)
        self.evicted += 1
        self.last_eviction = self.now

    def _evict_climbing(self) -> None:
        """The climbing tier is full: drop what holds no live hit, and at least 1/16 of it,
        oldest first (they go to the doorkeeper, so their next hit climbs again)."""
        climbing = self._climbing
        now, window = self.now, self._window
        dead = [
            ip
            for ip, packed in climbing.items()
            if now - max(_unpack(packed)[1], default=-math.inf) >= window
        ]
        for ip in dead:
            del climbing[ip]
        need = self._max_climbing // 16 - len(dead)
        if need > 0:
            for ip in list(islice(climbing, need)):
                del climbing[ip]
                self._forgotten(ip)
        if len(climbing) * 2 < self._max_climbing:  # shed the dict's dead slots too
            self._climbing = dict(climbing)

    def _evict_window(self) -> None:
        """Make room for one full window: drop the oldest that holds no score any more or was
        not hit again since it was created or last spared; spare the others (to the back)."""
        tracked = self._tracked
        now, window = self.now, self._window
        while True:
            ip, state = tracked.popitem(last=False)
            hits = state.hits
            if not hits or now - hits[-1][0] >= window:
                return  # no score left
            if not state.seen_again:
                self._forgotten(ip)
                return
            state.seen_again = False
            tracked[ip] = state

    def drop(self, addr: Address) -> None:
        """Forget every hit of `addr` (banned or unbanned from outside)."""
        ip = key_of(addr)
        self._tracked.pop(ip, None)
        self._climbing.pop(ip, None)
        self._once.pop(ip, None)

    # -- introspection ------------------------------------------------------------------

    def held(self, addr: Address) -> tuple[str | None, list[Entry]]:
        """The tier holding `addr` and its hits there, oldest first."""
        ip = key_of(addr)
        state = self._tracked.get(ip)
        if state is not None:
            return "window", list(state.hits)
        packed = self._climbing.get(ip)
        if packed is not None:
            number, times = _unpack(packed)
            return "climbing", self._entries(number, times)
        first = self._once.get(ip)
        if first is not None:
            return "admission", [first]
        if self._doorkeeper is not None and self._doorkeeper.seen(ip, self.now):
            return "doorkeeper", []  # seen lately, its hits pushed out by a flood
        return None, []

    def counts(self) -> dict[str, int]:
        """Sources held now in each tier."""
        return {
            "tracked_admission": len(self._once),
            "tracked_climbing": len(self._climbing),
            "tracked_windows": len(self._tracked),
        }

    def __len__(self) -> int:
        return len(self._once) + len(self._climbing) + len(self._tracked)

    def sources_per_minute(self) -> int:
        """New sources (not held in any tier) in the current or last minute of log time."""
        return max(self._new_this_minute, self._new_last_minute)
