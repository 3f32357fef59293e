"""Where a source's hits live until it is banned or they leave the window.  PURE.

Three tiers, each source in at most one, keyed by the address as an int (key_of(): IPv6
salted and with bit 128 set, so ``::192.0.2.1`` never shares 192.0.2.1's state: see
source_key.py).  The design and its
error bounds are in scoring.py's docstring; in short: a source of plain hits of one kind
lives, from its first hit, as a record of a packed table keyed by its whole address
(PackedTable for IPv4, 24-byte slots; PackedTable6 for IPv6, 40-byte slots): a one-hit
record is the admission tier (pushed out first in first out, by an AdmissionRing per
family), a record with more hits is climbing (pushed out least recently hit first, and
only by other climbing ones); sources with more hits than a slot holds climb as one int
each; keyed or mixed hits make a full Window; a first hit that is keyed or whose time does
not pack exactly waits as an Entry in a FIFO.  Whatever is pushed out while live is noted
in the doorkeeper, so its next hit starts it climbing.

Tiers.add() returns (hits per filter, score in UNITS) when a source reaches the threshold,
its hits dropped; the engine makes the ban.
"""

from __future__ import annotations

import heapq
import math
from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address
from itertools import islice
from typing import Final

from blocker.admission_ring import AdmissionRing
from blocker.doorkeeper import Doorkeeper
from blocker.packed_table import (
    KEY_MASK,
    SLOT6_WORDS,
    SLOT_WORDS,
    PackedTable,
    PackedTable6,
)
from blocker.records import Address
from blocker.score_window import MAX_HITS_PER_ADDRESS, Entry, Window, entry_time
from blocker.source_key import V6_TAG, source_key_v6, v6_address

__all__ = [
    "ADMISSION_PER_TRACKED",
    "CLIMBING_PER_TRACKED",
    "MAX_CLIMBING_HITS",
    "NOT_HELD",
    "Reached",
    "Tiers",
    "key_of",
]

CLIMBING_PER_TRACKED: Final = 12  # the climbing tier holds up to 12 * max_tracked sources
# Packed first hits (admission) held at most: 12 * max_tracked, 1.2M at the default, so a
# storm of 1M reflectors keeps every reflector's first hit until its second comes.
ADMISSION_PER_TRACKED: Final = 12
MAX_CLIMBING_HITS: Final = 16  # more hits than this in the window: a full window
MAX_KINDS: Final = 4096  # (filter, weight) pairs the climbing tier can name
_V6_TAG: Final = V6_TAG
# A climbing source's record is one int (see Tiers._encode): from the low bits up, its kind
# number (12 bits), its hit count (5 bits), each live hit's time as whole microseconds
# since the record's base second (oldest first, `width` bits each: wide enough for one
# window), and on top the base second, counted from the tiers' epoch.  Times go in only
# when they come back out as the very same float (log lines carry whole microseconds;
# anything else is held as a full window), so scores and expiry stay exact.  A 4-hit
# record is a 48-byte int where packed doubles took an 80-byte bytes object.
_KIND_MASK: Final = MAX_KINDS - 1
_COUNT_SHIFT: Final = 12
_TIMES_SHIFT: Final = 17
_MICRO: Final = 1_000_000
# In the packed tables (the key is the whole address), a record's meta holds its hit count
# (4 bits), kind number (12 bits) and admission flag (bit 16), and its payload, 128 bits,
# the first hit's time as whole microseconds since the epoch (48 bits: 8.9 years) and,
# above it, each later hit's offset from the first in microseconds, `width` bits each (a
# one-hit record: its admission number there instead).
_T0_BITS: Final = 48
_T0_MASK: Final = (1 << _T0_BITS) - 1
_PAYLOAD_BITS: Final = 128
_M64: Final = (1 << 64) - 1
_M128: Final = (1 << 128) - 1
_M32: Final = (1 << 32) - 1
# A one-hit record of the admission tier (IPv4 in the table, IPv6 in table6): count 1, meta
# bit 16 set, and above its first hit's time in the payload (48 bits) its admission number
# (32 bits), which its entry in the admission ring carries too.
_ADMITTED: Final = 1 << 16  # in meta (and a value's low bits)
_ADMITTED_WORD: Final = _ADMITTED << 32  # in the word that holds meta above bit 32
_SEQ_SHIFT: Final = _T0_BITS


# (hits per filter, score in UNITS) of a source that reached the threshold
Reached = tuple[Mapping[str, int], float]
# Tiers.add()'s answer for a source no tier holds (compared by identity)
NOT_HELD: Final[Reached] = ({}, -1.0)


def key_of(addr: Address) -> int:
    """`addr` as the key of the packed tiers (source_key.py)."""
    return int(addr) if isinstance(addr, IPv4Address) else source_key_v6(int(addr))


class Tiers:
    """The three tiers of one jail.  `refuse(ip)` is asked once per new source (by its
    key): True when it may never be banned (its hit is then dropped)."""

    def __init__(
        self,
        window: float,
        threshold_units: int,
        repeat_factor: float,
        max_tracked: int,
        refuse: Callable[[int], bool],
    ) -> None:
        self._window = window
        self._threshold_units = threshold_units
        self._repeat_factor = repeat_factor
        self._max_tracked = max_tracked
        self._max_climbing = max_tracked * CLIMBING_PER_TRACKED
        self._refuse = refuse
        self.now = -math.inf  # the newest event time, set by the engine
        # Tier 1, admission, for first hits that are keyed or whose time does not pack:
        # address key -> its one hit, oldest first (FIFO); plain ones are table records
        self._once: OrderedDict[int, Entry] = OrderedDict()
        self._once_wide = False  # has been full since it was last built
        # Addresses pushed out while live within the window; None until the first
        self._doorkeeper: Doorkeeper | None = None
        # Tier 2, climbing: sources whose hits fit a slot of a packed table (_pack: up to
        # _table_hits), with no Python object per source; those with more hits as one
        # packed int each in a dict (_encode).
        self._width = (int((window + 2) * _MICRO)).bit_length() if window < 1e7 else 0
        self._table_hits = (
            min(15, MAX_CLIMBING_HITS, 1 + (_PAYLOAD_BITS - _T0_BITS) // self._width)
            if self._width
            else 0
        )
        # Both tables also hold the admission tier's packed first hits (one-hit records,
        # _ADMITTED), up to _max_admitted of them, FIFO by the admission rings.
        self._max_admitted = max_tracked * ADMISSION_PER_TRACKED
        slots = max(2, (self._max_climbing + self._max_admitted) * 4 // 3 + 1)
        self._table = PackedTable(slots)
        self._table6 = PackedTable6(slots)
        self._ring4 = AdmissionRing(wide=False)
        self._ring6 = AdmissionRing(wide=True)
        self._admitted = 0  # one-hit records in the two tables
        self._ring_entries = 0  # at least the rings' entries, live or dead
        self._seq = 0  # the next admission number (modulo 2**32)
        self._free = -1  # add()'s empty slot for the source it answered NOT_HELD for
        self._climbing: dict[int, int] = {}
        # The second climbing times count from (set at the first record: one window
        # before it, so every later live hit is after it).
        self._epoch: int | None = None
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

    def add(self, ip: int, entry: Entry) -> Reached | None:  # noqa: PLR0915 - the hot path
        """One hit, live at self.now, of the source of key `ip` (key_of()), neither banned
        nor refused while a tier holds it.  NOT_HELD when no tier holds it: the engine then
        asks its gate and, unless that drops the hit, calls open() next, with no other call
        in between."""
        tracked = self._tracked  # empty under a storm of plain hits: no lookup then
        state = tracked.get(ip) if tracked else None
        if state is not None:
            now, window = self.now, self._window
            state.seen_again = True
            if now - state.hits[0][0] >= window:
                state.expire(now, window)
            return self._add_to_window(ip, state, entry)
        table: PackedTable | PackedTable6
        if ip <= KEY_MASK:
            # self._table.find(ip), spelled out: the storm's one lookup for every line
            table = self._table
            words = table.words
            j = ((hash(ip.to_bytes(4, "little")) & _M64) * table.slots >> 64) * SLOT_WORDS
            while w0 := words[j]:
                if w0 & KEY_MASK == ip:
                    m = j  # meta above bit 32 of word m, the payload in the two after
                    break
                j += SLOT_WORDS
                if j == len(words):
                    j = 0
            else:
                m = -1
        else:
            # self._table6.find(key), spelled out likewise
            table = self._table6
            words = table.words
            lo, hi = ip & _M64, (ip >> 64) & _M64
            wanted = (ip & _M128).to_bytes(16, "little")  # PackedTable6's home(), inlined
            j = ((hash(wanted) & _M64) * table.slots >> 64) * SLOT6_WORDS
            while words[j + 2]:
                if words[j] == lo and words[j + 1] == hi:
                    m = j + 2
                    break
                j += SLOT6_WORDS
                if j == len(words):
                    j = 0
            else:
                m = -1
        if m < 0:
            # Not in its family's table: j is the empty slot that ended the probe run.
            packed = self._climbing.get(ip) if self._climbing else None
            if packed is not None:
                return self._climb(ip, packed, entry)
            first = self._once.pop(ip, None) if self._once else None
            if first is None:
                self._free = j
                return NOT_HELD
            if self._once_wide and len(self._once) * 16 < self._max_tracked:
                self._shrink_once()
            live = [first] if self.now - first[0] < self._window else []
            return self._hold(ip, live, entry)
        # One more hit of a source held in `table`, in the slot at word index j (inlined
        # here: a call per line less).
        t, name, key, weight = entry
        w = words[m]
        count = (w >> 32) & 15
        number = (w >> 36) & _KIND_MASK
        epoch = self._epoch or 0  # set: the table holds a record
        if key is None and self._kinds[number] == (name, weight):
            # The common case, without unpacking: the oldest hit is surely still live (its
            # whole second is), so every held hit is: this one either reaches the threshold
            # (a ban, whatever its time) or, the newest and packing exactly, is appended.
            payload = words[m + 1] | words[m + 2] << 64
            first_at = payload & _T0_MASK
            base = epoch + first_at // _MICRO
            if self.now - base < self._window:
                score = (count + 1) * weight
                if score >= self._threshold_units:
                    if w & _ADMITTED_WORD:
                        self._left_admission()
                    table.remove_at(j)
                    table.shrink_if_sparse()
                    return {name: count + 1}, score
                if count < self._table_hits and (
                    not w & _ADMITTED_WORD or self._climbers() < self._max_climbing
                ):
                    width = self._width
                    shift = _T0_BITS + width * (count - 1)  # where this hit's offset goes
                    second = int(t)
                    micros = round((t - second) * _MICRO)
                    offset = (second - epoch) * _MICRO + micros - first_at
                    if (
                        second + micros * 1e-6 == t
                        and not offset >> width
                        and (
                            count == 1
                            or offset >= (payload >> (shift - width)) & ((1 << width) - 1)
                        )
                    ):
                        if w & _ADMITTED_WORD:  # its second hit: from admission to climbing
                            payload = first_at  # (its admission number goes)
                            w ^= _ADMITTED_WORD
                            self._left_admission()
                        payload |= offset << shift
                        words[m] = w + (1 << 32)
                        words[m + 1] = payload & _M64
                        words[m + 2] = payload >> 64
                        return None
        times = self._unpack(w >> 32 | words[m + 1] << 32 | words[m + 2] << 96)
        if w & _ADMITTED_WORD:
            self._left_admission()
        table.remove_at(j)
        table.shrink_if_sparse()
        return self._climb_times(ip, number, times, entry)

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

    def _climbers(self) -> int:
        """Sources climbing now (table records that are not first hits, and packed ints)."""
        return len(self._table) + len(self._table6) + len(self._climbing) - self._admitted

    def _left_admission(self) -> None:
        """A one-hit record leaves the admission tier (its ring entry is skipped later)."""
        self._admitted -= 1
        if not self._admitted:  # every entry is dead: let the rings' arrays go
            self._ring4.clear()
            self._ring6.clear()
            self._ring_entries = 0

    def _climb_times(
        self, ip: int, number: int, times: list[float], entry: Entry
    ) -> Reached | None:
        """One more hit of a climbing source of kind `number` and hit `times`, taken out
        of its store: it goes back climbing, or to a full window, or is banned."""
        t, name, key, weight = entry
        now, window = self.now, self._window
        if now - times[0] >= window:
            times = [when for when in times if now - when < window]
            if not times and weight < self._threshold_units:
                return self._admit(ip, entry)  # a first hit again
        if (
            key is not None
            or self._kinds[number] != (name, weight)
            or len(times) >= MAX_CLIMBING_HITS
        ):
            return self._hold(ip, self._entries(number, times), entry)
        if not times or t >= times[-1]:
            times.append(t)
        else:
            insort(times, t)
        score = len(times) * weight
        if score >= self._threshold_units:
            return {name: len(times)}, score
        if self._store(ip, number, times):
            return None
        times.remove(t)  # a time that does not pack exactly: a full window
        return self._hold(ip, self._entries(number, times), entry)

    def _store(self, ip: int, number: int, times: list[float]) -> bool:
        """Hold a source not held anywhere as climbing: in a packed table when it fits,
        else as a packed int.  False when a time would not come back out exactly."""
        value = None
        table: PackedTable | PackedTable6 | None = None
        if len(times) <= self._table_hits:
            if 0 < ip <= KEY_MASK:
                table = self._table
            elif ip >> 128:
                table = self._table6
            if table is not None:
                value = self._pack(number, times)
        record = None if value is not None else self._encode(number, times)
        if value is None and record is None:
            return False
        if self._climbers() >= self._max_climbing:
            self._evict_climbing()
        if table is not None and value is not None:
            table.put_new(ip & ~_V6_TAG, value)  # held nowhere, as the caller knows
        elif record is not None:
            self._climbing[ip] = record
        return True

    def _pack(self, number: int, times: list[float]) -> int | None:
        """The packed table's value for kind `number` and hit `times` (oldest first), or
        None when a time would not come back out exactly as the same float."""
        width = self._width
        first_time = times[0]
        if not width or not 0 <= first_time < 2.0**52:
            return None
        epoch = self._epoch
        if epoch is None:
            epoch = self._epoch = int(first_time - self._window) - 1
        payload = first = 0
        shift = 0
        for t in times:
            second = int(t)
            micros = round((t - second) * _MICRO)
            at = (second - epoch) * _MICRO + micros
            if second + micros * 1e-6 != t:
                return None
            if not shift:
                if not 0 <= at <= _T0_MASK:
                    return None
                payload = first = at
                shift = _T0_BITS
                continue
            offset = at - first
            if offset < 0 or offset >> width:
                return None
            payload |= offset << shift
            shift += width
        return (len(times) | number << 4) | payload << 32

    def _unpack(self, value: int) -> list[float]:
        """The hit times, oldest first, of a packed table value."""
        count = value & 15
        payload = value >> 32
        first = payload & _T0_MASK
        width = self._width
        mask = (1 << width) - 1
        epoch = self._epoch or 0
        times = []
        for k in range(count):
            at = first + ((payload >> (_T0_BITS + width * (k - 1))) & mask if k else 0)
            seconds, micros = divmod(at, _MICRO)
            times.append((epoch + seconds) + micros * 1e-6)
        return times

    def _climb(self, ip: int, packed: int, entry: Entry) -> Reached | None:
        """One more hit of a source in the climbing tier."""
        t, name, key, weight = entry
        number = packed & _KIND_MASK
        count = (packed >> _COUNT_SHIFT) & 31
        epoch = self._epoch
        if (
            key is None
            and count < MAX_CLIMBING_HITS
            and epoch is not None
            and self._kinds[number] == (name, weight)
        ):
            # The common case, without unpacking: the oldest hit is surely still live (its
            # base second is), and this one is the newest and packs exactly: append it.
            width = self._width
            shift = _TIMES_SHIFT + width * count
            base = (packed >> shift) + epoch
            if self.now - base < self._window and t >= base:
                second = int(t)
                micros = round((t - second) * _MICRO)
                offset = (second - base) * _MICRO + micros
                if (
                    second + micros * 1e-6 == t
                    and not offset >> width
                    and offset >= (packed >> (shift - width)) & ((1 << width) - 1)
                ):
                    count += 1
                    score = count * weight
                    if score >= self._threshold_units:
                        del self._climbing[ip]
                        return {name: count}, score
                    self._climbing[ip] = (
                        ((packed >> shift) << (shift + width))
                        | (offset << shift)
                        | ((packed & ((1 << shift) - 1)) + (1 << _COUNT_SHIFT))
                    )
                    return None
        number, times = self._decode(packed)
        del self._climbing[ip]  # taken out: _climb_times() puts it back where it fits now
        return self._climb_times(ip, number, times, entry)

    def _encode(self, number: int, times: list[float]) -> int | None:
        """The climbing record of kind `number` and hit `times` (oldest first), or None
        when a time would not come back out exactly as the same float."""
        width = self._width
        first = times[0]
        if not width or not 0 <= first < 2.0**52:
            return None
        epoch = self._epoch
        if epoch is None:
            epoch = self._epoch = int(first - self._window) - 1
        base = int(first)
        record = base - epoch
        if record < 0:
            return None
        for t in reversed(times):
            second = int(t)
            micros = round((t - second) * _MICRO)
            offset = (second - base) * _MICRO + micros
            if second + micros * 1e-6 != t or offset < 0 or offset >> width:
                return None
            record = record << width | offset
        return ((record << 5 | len(times)) << _COUNT_SHIFT) | number

    def _decode(self, packed: int) -> tuple[int, list[float]]:
        """(kind number, hit times oldest first) of a climbing record."""
        number = packed & _KIND_MASK
        count = (packed >> _COUNT_SHIFT) & 31
        width = self._width
        mask = (1 << width) - 1
        packed >>= _TIMES_SHIFT
        base = (packed >> (width * count)) + (self._epoch or 0)
        times = []
        for _ in range(count):
            seconds, micros = divmod(packed & mask, _MICRO)
            times.append((base + seconds) + micros * 1e-6)
            packed >>= width
        return number, times

    def _entries(self, number: int, times: Iterable[float]) -> list[Entry]:
        name, weight = self._kinds[number]
        return [(when, name, None, weight) for when in times]

    def _hold(self, ip: int, earlier: list[Entry], entry: Entry) -> Reached | None:
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
            times = [e[0] for e in earlier]
            if times and t < times[-1]:
                insort(times, t)
            else:
                times.append(t)
            if self._store(ip, number, times):
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

    def open(self, ip: int, entry: Entry) -> Reached | None:
        """The first hit of an address not held in any tier: the hit add() just answered
        NOT_HELD for, of the source of key `ip`, past the gate."""
        # Whether an address may be banned is settled once, when it is first seen; only
        # refusals and bans enter the gate, so a flood of new sources never churns it.
        if self._refuse(ip):
            return None
        t = entry[0]
        if t >= self._minute + 60.0:
            self._new_last_minute = self._new_this_minute if t < self._minute + 120.0 else 0
            self._minute = t - t % 60.0
            self._new_this_minute = 0
        self._new_this_minute += 1
        if entry[3] >= self._threshold_units:
            return self._hold(ip, [], entry)
        doorkeeper = self._doorkeeper
        if doorkeeper is not None and doorkeeper.seen(ip, self.now):
            # Seen within the window, its hits pushed out by a flood: this one starts it
            # climbing, so another wave of one-hit sources cannot push it out again.
            self.readmitted += 1
            return self._hold(ip, [], entry)
        return self._admit(ip, entry, self._free)

    def _admit(self, ip: int, entry: Entry, free: int = -1) -> Reached | None:
        """Keep the first live hit of a source held nowhere: a plain hit whose time packs
        exactly as a one-hit record of a packed table (pushed out first in first out, by
        the rings), else as an Entry in the admission FIFO.  `free`: the empty slot where
        add()'s probe of its family's table for it ended (no change since), or -1."""
        t, name, key, weight = entry
        if key is None and self._width and 0 <= t < 2.0**52 and ip:
            number = self._kind_numbers.get((name, weight))
            if number is None:
                number = self._kind_number(name, weight)
            epoch = self._epoch
            if epoch is None:
                epoch = self._epoch = int(t - self._window) - 1
            second = int(t)
            micros = round((t - second) * _MICRO)
            at = (second - epoch) * _MICRO + micros
            if number is not None and second + micros * 1e-6 == t and 0 <= at <= _T0_MASK:
                if self._admitted >= self._max_admitted:
                    self._evict_admitted()
                    free = -1  # entries moved: probe again
                seq = self._seq
                self._seq = (seq + 1) & _M32
                value = 1 | number << 4 | _ADMITTED | (at | seq << _SEQ_SHIFT) << 32
                if ip <= KEY_MASK:
                    self._table.put_at(free, ip, value)
                    self._ring4.push(ip, seq)
                else:
                    self._table6.put_at(free, ip ^ _V6_TAG, value)
                    self._ring6.push(ip ^ _V6_TAG, seq)
                self._admitted += 1
                self._ring_entries += 1
                if self._ring_entries > 2 * self._admitted + 4096:
                    self._ring_entries = self._admitted
                    self._ring4.compact(
                        lambda k, seq: self._admitted_at(self._table, 0, k, seq) >= 0
                    )
                    self._ring6.compact(
                        lambda k, seq: self._admitted_at(self._table6, 2, k, seq) >= 0
                    )
                return None
        once = self._once
        if len(once) >= self._max_tracked:
            self._evict_once()
        once[ip] = entry
        return None

    @staticmethod
    def _admitted_at(table: PackedTable | PackedTable6, meta_at: int, key: int, seq: int) -> int:
        """The word index of `key`'s slot in `table` when it holds the key as the one-hit
        record of admission number `seq`, else -1 (the ring entry is dead)."""
        j = table.find(key)
        if j >= 0:
            words, m = table.words, j + meta_at
            if (
                words[m] & _ADMITTED_WORD
                and ((words[m + 1] | words[m + 2] << 64) >> _SEQ_SHIFT) & _M32 == seq
            ):
                return j
        return -1

    def _evict_admitted(self) -> None:
        """Make room in the admission tier: the oldest packed first hit goes (of the two
        rings' live heads, the lower admission number), into the doorkeeper if live."""
        heads = []
        for ring, table, meta_at, tag in (
            (self._ring4, self._table, 0, 0),
            (self._ring6, self._table6, 2, _V6_TAG),
        ):
            while (head := ring.head()) is not None:
                j = self._admitted_at(table, meta_at, *head)
                if j >= 0:
                    heads.append((head[1], ring, table, meta_at, j, head[0] | tag))
                    break
                ring.pop()
        if len(heads) == 2 and (heads[1][0] - heads[0][0]) & _M32 >= 1 << 31:
            heads.reverse()  # IPv6's head was admitted first (numbers modulo 2**32)
        _, ring, table, meta_at, j, ip = heads[0]
        words, m = table.words, j + meta_at
        [first] = self._unpack(words[m] >> 32 | words[m + 1] << 32 | words[m + 2] << 96)
        ring.pop()
        table.remove_at(j)
        self._left_admission()
        if self.now - first < self._window:
            self._forgotten(ip)

    def _shrink_once(self) -> None:
        """A dict keeps the table of its largest size: once a flood's one-hit sources have
        moved on (climbing), build the admission tier anew at its present size."""
        self._once = OrderedDict(self._once)
        self._once_wide = False

    def _evict_once(self) -> None:
        """Make room in the admission tier: its oldest hit goes, into the doorkeeper."""
        self._once_wide = True
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
        """The climbing tier is full: drop what holds no live hit, and at least 1/16 of it:
        in the packed tables the least recently hit first, as packed ints the oldest first
        (they go to the doorkeeper, so their next hit climbs again).  Admission's one-hit
        records are never taken for room here."""
        climbing = self._climbing
        now, window = self.now, self._window
        dead = [
            ip
            for ip, packed in climbing.items()
            if now - max(self._decode(packed)[1], default=-math.inf) >= window
        ]
        for ip in dead:
            del climbing[ip]
        newest = self._newest
        gone = len(dead)
        for table in (self._table, self._table6):
            gone += table.remove_if(
                lambda _, value: not value & _ADMITTED and now - newest(value) >= window
            )
        need = max(1, self._max_climbing // 16) - gone
        held = self._climbers()
        if need > 0 and held:
            from_dict = -(-need * len(climbing) // held)
            for ip in list(islice(climbing, from_dict)):
                del climbing[ip]
                self._forgotten(ip)
            if need > from_dict:
                self._evict_least_recent(need - from_dict)
        self._table.shrink_if_sparse()
        self._table6.shrink_if_sparse()
        if len(climbing) * 2 < self._max_climbing:  # shed the dict's dead slots too
            self._climbing = dict(climbing)

    def _evict_least_recent(self, need: int) -> None:
        """Drop at least `need` climbing table records (or all), least recently hit first.

        By age buckets (64 a window) first; within the bucket where `need` is reached, the
        records whose newest hit is oldest, equal times by key.  Which records go depends
        only on the records, never on where they sit in the tables (the order of a hash),
        as replay and live must decide alike."""
        now, window, newest = self.now, self._window, self._newest
        buckets = [0] * 65
        scale = 64 / window

        def age(value: int) -> int:
            return min(64, int((now - newest(value)) * scale))

        tables = ((self._table, 0), (self._table6, _V6_TAG))
        for table, _ in tables:
            for _, value in table.items():
                if not value & _ADMITTED:
                    buckets[age(value)] += 1
        cutoff = 64
        total = buckets[64]
        while total < need and cutoff > 0:
            cutoff -= 1
            total += buckets[cutoff]
        # All older than the cutoff's bucket go, and of that bucket only what is missing.
        missing = need - (total - buckets[cutoff])
        chosen: set[int] | None = None  # None: the whole cutoff bucket goes
        if missing < buckets[cutoff]:
            # Ordered by address, not key (an IPv6 key is salted per process): IPv4 first.
            chosen = {
                ip
                for *_, ip in heapq.nsmallest(
                    max(0, missing),
                    (
                        (newest(value), tag, v6_address(key | tag) if tag else key, key | tag)
                        for table, tag in tables
                        for key, value in table.items()
                        if not value & _ADMITTED and age(value) == cutoff
                    ),
                )
            }

        def dropper(tag: int) -> Callable[[int, int], bool]:
            def drop(key: int, value: int) -> bool:
                if value & _ADMITTED:
                    return False
                bucket = age(value)
                if bucket < cutoff or (
                    bucket == cutoff and chosen is not None and key | tag not in chosen
                ):
                    return False
                self._forgotten(key | tag)
                return True

            return drop

        for table, tag in tables:
            table.remove_if(dropper(tag))

    def _newest(self, value: int) -> float:
        """The time of the newest hit of a packed table value."""
        count = value & 15
        payload = value >> 32
        at = payload & _T0_MASK
        if count > 1:
            width = self._width
            at += (payload >> (_T0_BITS + width * (count - 2))) & ((1 << width) - 1)
        seconds, micros = divmod(at, _MICRO)
        return ((self._epoch or 0) + seconds) + micros * 1e-6

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
        table = self._table if ip <= KEY_MASK else self._table6
        value = table.pop(ip & ~_V6_TAG) if ip else None
        if value is not None:
            if value & _ADMITTED:
                self._left_admission()
            table.shrink_if_sparse()
        self._climbing.pop(ip, None)
        self._once.pop(ip, None)

    # -- introspection ------------------------------------------------------------------

    def held(self, addr: Address) -> tuple[str | None, list[Entry]]:
        """The tier holding `addr` and its hits there, oldest first."""
        ip = key_of(addr)
        state = self._tracked.get(ip)
        if state is not None:
            return "window", list(state.hits)
        table = self._table if ip <= KEY_MASK else self._table6
        value = table.get(ip & ~_V6_TAG) if ip else None
        if value is not None:
            return (
                "admission" if value & _ADMITTED else "climbing",
                self._entries((value >> 4) & _KIND_MASK, self._unpack(value)),
            )
        packed = self._climbing.get(ip)
        if packed is not None:
            number, times = self._decode(packed)
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
            "tracked_admission": len(self._once) + self._admitted,
            "tracked_climbing": self._climbers(),
            "tracked_windows": len(self._tracked),
        }

    def __len__(self) -> int:
        return (
            len(self._once)
            + len(self._table)
            + len(self._table6)
            + len(self._climbing)
            + len(self._tracked)
        )

    def sources_per_minute(self) -> int:
        """New sources (not held in any tier) in the current or last minute of log time."""
        return max(self._new_this_minute, self._new_last_minute)
