"""A hash table of 32-bit keys to fixed-width values with no Python object per entry.  PURE.

One ``array('Q')`` holds every slot as three 64-bit words (24 bytes a slot, nothing else
per entry; a dict of int -> int costs ~120 bytes an entry):

* word 0: the key in its low 32 bits (0: an empty slot, so key 0 cannot be stored) and
  the value's low 32 bits (``meta``) above it;
* words 1 and 2: the value's next 128 bits (``payload``), low word first.

A value is therefore an int below 2**160, ``meta | payload << 32``; the dict-like API
(get, put, pop, items) takes and gives it that way, and the hot path of a caller may read
and write the words of a slot found by find() directly (``words``; fields as above).

Linear probing from the hash of the key's bytes, mapped onto any capacity (so it need not
be a power of two: the table never grows past ``max_slots`` while it holds at most 3/4 of
that).  CPython keys that hash per process (SipHash, as ActiveBans and LruTable use it),
so which keys share a home slot cannot be known outside: with a fixed multiplier (the
Fibonacci hash these tables had), anyone could compute spoofed sources that pile into one
probe run, and every lookup that lands there would walk it (tests/test_packed_table.py
builds such keys).  ``PYTHONHASHSEED=0`` would give that protection up;
deletion shifts the following entries of the probe run back (no tombstones, so lookups
never slow down after many deletions and no rehash is ever needed to clear them).  It
grows by four (by half again past 1M slots: _grown()), up to ``max_slots``, when more than 3/4
full, and shrinks on request when less than 1/8 full (a flood's table is given back once
it has passed).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Final

__all__ = ["KEY_MASK", "SLOT6_WORDS", "SLOT_WORDS", "PackedTable", "PackedTable6"]

SLOT_WORDS: Final = 3
KEY_MASK: Final = (1 << 32) - 1
_M64: Final = (1 << 64) - 1
_MIN_SLOTS: Final = 1024


def _grown(slots: int) -> int:
    """The slot count after `slots`: four times it up to 1M slots, and past 1M half again.

    Growing is the table's dearest step (every entry is hashed and placed again), and a
    flood grows it from 1K slots to 1.5M within seconds: by four, its entries are placed
    again 1.05M times on the way to 1M entries instead of 1.57M by doubling (1M put_new():
    1.08 s of CPU instead of 1.31).  The price: between growth steps a table may be up to
    5.3x its entries instead of 2.7x (at most 25 MB of IPv4 slots, below 1M slots).  Past
    1M, half again (a table of a 1M-source storm: 1.5M slots at 64% load instead of 2M at
    48%, 12 MB less)."""
    return min(slots * 4, 1 << 20) if slots < 1 << 20 else slots * 3 // 2


def _zeros(count: int) -> array[int]:
    """`count` zero words, made in place (array("Q", bytes(n)) builds the bytes first:
    twice a large table's size at once, for each growth step)."""
    return array("Q", [0]) * count


class _SlotArray:
    """What both tables share: `_slot_words` words a slot in one array, the count, and the
    growth bounds; each subclass lays out its slots and probes them its own way."""

    __slots__ = ("_count", "_max_slots", "slots", "words")
    _slot_words: int

    def __init__(self, max_slots: int, slots: int = _MIN_SLOTS) -> None:
        if max_slots < 2 or slots < 2:
            raise ValueError(f"a table needs at least 2 slots, got {slots}, max {max_slots}")
        self._max_slots = max_slots
        # Both read (never written) by a caller's inlined find(): the slot count, the words
        self.slots = min(slots, max_slots)
        self._count = 0
        self.words = _zeros(self._slot_words * self.slots)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self.words.itemsize * len(self.words)

    def shrink_if_sparse(self) -> None:
        """Give back the room of a table that held many more than it holds now (under 1/8
        full: to half full).  Never called from within remove_if()."""
        if self._count * 8 < self.slots and self.slots > _MIN_SLOTS:
            self._resize(max(min(_MIN_SLOTS, self._max_slots), self._count * 2))

    def clear(self) -> None:
        self._count = 0
        self.slots = min(_MIN_SLOTS, self._max_slots)
        self.words = _zeros(self._slot_words * self.slots)

    def remove_if(self, drop: Callable[[int, int], bool]) -> int:
        """Remove every entry for which drop(key, value) is true; returns how many."""
        removed = 0
        j = 0
        while j < len(self.words):
            entry = self._entry(j)
            if entry is not None and drop(*entry):
                # An entry from further on may move into j: look at j again.  Entries that
                # wrap around from the front may be asked twice; the answer is the same.
                self.remove_at(j)
                removed += 1
                continue
            j += self._slot_words
        return removed

    def _entry(self, j: int) -> tuple[int, int] | None:
        """(key, value) of the slot at word index `j`, or None when it is empty."""
        raise NotImplementedError

    def remove_at(self, j: int) -> None:
        raise NotImplementedError

    def _resize(self, slots: int) -> None:
        raise NotImplementedError


class PackedTable(_SlotArray):
    __slots__ = ()
    _slot_words = SLOT_WORDS

    def home(self, key: int) -> int:
        """The word index of the first slot probed for `key`."""
        return ((hash(key.to_bytes(4, "little")) & _M64) * self.slots >> 64) * SLOT_WORDS

    def find(self, key: int) -> int:
        """The word index of `key`'s slot, or -1 when it is not held."""
        words = self.words
        end = len(words)
        j = ((hash(key.to_bytes(4, "little")) & _M64) * self.slots >> 64) * SLOT_WORDS
        while True:
            w0 = words[j]
            if not w0:
                return -1
            if w0 & KEY_MASK == key:
                return j
            j += SLOT_WORDS
            if j == end:
                j = 0

    def get(self, key: int) -> int | None:
        j = self.find(key) if key else -1
        if j < 0:
            return None
        words = self.words
        return words[j] >> 32 | words[j + 1] << 32 | words[j + 2] << 96

    def put(self, key: int, value: int) -> None:
        """Hold `value` (0 <= value < 2**160) for `key` (0 < key < 2**32)."""
        if not 0 < key <= KEY_MASK or not 0 <= value < 1 << 160:
            raise ValueError(f"key {key} or value out of range")
        j = self.find(key)
        if j < 0:
            if (self._count + 1) * 4 > self.slots * 3 and self.slots < self._max_slots:
                self._resize(min(_grown(self.slots), self._max_slots))
            elif self._count + 1 >= self.slots:  # past max_slots only when full: never lose one
                self._resize(self.slots * 2)
            j = self._free_slot(key)
            self._count += 1
        words = self.words
        words[j] = key | (value & KEY_MASK) << 32
        words[j + 1] = (value >> 32) & _M64
        words[j + 2] = value >> 96

    def put_new(self, key: int, value: int) -> None:
        """put() for a key the caller knows is not held (0 < key < 2**32 and 0 <= value <
        2**160, unchecked): one probe run, to the first free slot."""
        count = self._count + 1
        slots = self.slots
        if count * 4 > slots * 3 and slots < self._max_slots:
            self._resize(min(_grown(slots), self._max_slots))
        elif count >= slots:
            self._resize(slots * 2)
        words = self.words
        end = len(words)
        j = ((hash(key.to_bytes(4, "little")) & _M64) * self.slots >> 64) * SLOT_WORDS
        while words[j]:
            j += SLOT_WORDS
            if j == end:
                j = 0
        self._count = count
        words[j] = key | (value & KEY_MASK) << 32
        words[j + 1] = (value >> 32) & _M64
        words[j + 2] = value >> 96

    def put_at(self, j: int, key: int, value: int) -> None:
        """put_new() into the slot at word index `j`, the empty slot that ended a probe
        run for `key` that found no entry, with no change to the table since; j < 0, or
        a table that has to grow first: put_new()."""
        count = self._count + 1
        slots = self.slots
        if j < 0 or count * 4 > slots * 3 or count >= slots:
            self.put_new(key, value)
            return
        self._count = count
        words = self.words
        words[j] = key | (value & KEY_MASK) << 32
        words[j + 1] = (value >> 32) & _M64
        words[j + 2] = value >> 96

    def _free_slot(self, key: int) -> int:
        words = self.words
        end = len(words)
        j = self.home(key)
        while words[j]:
            j += SLOT_WORDS
            if j == end:
                j = 0
        return j

    def pop(self, key: int) -> int | None:
        j = self.find(key) if key else -1
        if j < 0:
            return None
        words = self.words
        value = words[j] >> 32 | words[j + 1] << 32 | words[j + 2] << 96
        self.remove_at(j)
        return value

    def remove_at(self, j: int) -> None:
        """Empty the slot at word index `j` (from find()): the entries after it in its probe
        run move back, so that every key stays reachable from its home slot."""
        words = self.words
        end = len(words)
        slots = self.slots
        hole = j
        while True:
            j += SLOT_WORDS
            if j == end:
                j = 0
            w0 = words[j]
            if not w0:
                break
            home = (hash((w0 & KEY_MASK).to_bytes(4, "little")) & _M64) * slots >> 64
            home *= SLOT_WORDS
            # The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            if (hole < j and hole < home <= j) or (j < hole and (home <= j or home > hole)):
                continue
            words[hole] = w0
            words[hole + 1] = words[j + 1]
            words[hole + 2] = words[j + 2]
            hole = j
        words[hole] = words[hole + 1] = words[hole + 2] = 0
        self._count -= 1

    def _entry(self, j: int) -> tuple[int, int] | None:
        words = self.words
        w0 = words[j]
        if not w0:
            return None
        return w0 & KEY_MASK, w0 >> 32 | words[j + 1] << 32 | words[j + 2] << 96

    def items(self) -> Iterator[tuple[int, int]]:
        """(key, value) of every entry, in slot order (do not change the table meanwhile)."""
        words = self.words
        for j in range(0, len(words), SLOT_WORDS):
            w0 = words[j]
            if w0:
                yield w0 & KEY_MASK, w0 >> 32 | words[j + 1] << 32 | words[j + 2] << 96

    def _resize(self, slots: int) -> None:
        old = self.words
        self.slots = slots
        words = self.words = _zeros(SLOT_WORDS * slots)
        end = len(words)
        # Word by word in C (islice copies nothing): the old array's words, slot by slot.
        for w0, w1, w2 in zip(
            islice(old, 0, None, 3), islice(old, 1, None, 3), islice(old, 2, None, 3), strict=True
        ):
            if w0:
                j = (hash((w0 & KEY_MASK).to_bytes(4, "little")) & _M64) * slots >> 64
                j *= SLOT_WORDS
                while words[j]:
                    j += SLOT_WORDS
                    if j == end:
                        j = 0
                words[j] = w0
                words[j + 1] = w1
                words[j + 2] = w2


SLOT6_WORDS: Final = 5
_USED: Final = 1  # the low bit of word 2: the slot holds an entry (any key may be stored)


class PackedTable6(_SlotArray):
    """PackedTable for 128-bit keys (IPv6 addresses): five words a slot (40 bytes).

    * words 0 and 1: the key, low word first;
    * word 2: ``_USED`` (1) in its low bit, the value's low 32 bits (``meta``) above bit 32,
      so a caller reads and writes meta exactly as in a PackedTable's word 0;
    * words 3 and 4: the value's next 128 bits (``payload``), low word first.

    Same probing, deletion, growth and shrinking as PackedTable; the home slot comes from
    both key words (IPv6 sources differ in the high word as often as in the low one).
    """

    __slots__ = ()
    _slot_words = SLOT6_WORDS

    def home(self, lo: int, hi: int) -> int:
        """The word index of the first slot probed for the key of words `lo`, `hi`."""
        key = (lo | hi << 64).to_bytes(16, "little")
        return ((hash(key) & _M64) * self.slots >> 64) * SLOT6_WORDS

    def find(self, key: int) -> int:
        """The word index of `key`'s slot, or -1 when it is not held."""
        words = self.words
        end = len(words)
        lo, hi = key & _M64, key >> 64
        j = ((hash(key.to_bytes(16, "little")) & _M64) * self.slots >> 64) * SLOT6_WORDS
        while words[j + 2]:
            if words[j] == lo and words[j + 1] == hi:
                return j
            j += SLOT6_WORDS
            if j == end:
                j = 0
        return -1

    def get(self, key: int) -> int | None:
        j = self.find(key)
        if j < 0:
            return None
        words = self.words
        return words[j + 2] >> 32 | words[j + 3] << 32 | words[j + 4] << 96

    def put(self, key: int, value: int) -> None:
        """Hold `value` (0 <= value < 2**160) for `key` (0 <= key < 2**128)."""
        if not 0 <= key < 1 << 128 or not 0 <= value < 1 << 160:
            raise ValueError(f"key {key} or value out of range")
        j = self.find(key)
        if j < 0:
            self.put_new(key, value)
            return
        self._write(j, key, value)

    def put_new(self, key: int, value: int) -> None:
        """put() for a key the caller knows is not held (ranges unchecked)."""
        count = self._count + 1
        slots = self.slots
        if count * 4 > slots * 3 and slots < self._max_slots:
            self._resize(min(_grown(slots), self._max_slots))
        elif count >= slots:  # past max_slots only when full: never lose one
            self._resize(slots * 2)
        words = self.words
        end = len(words)
        j = self.home(key & _M64, key >> 64)
        while words[j + 2]:
            j += SLOT6_WORDS
            if j == end:
                j = 0
        self._count = count
        self._write(j, key, value)

    def put_at(self, j: int, key: int, value: int) -> None:
        """As PackedTable.put_at()."""
        count = self._count + 1
        slots = self.slots
        if j < 0 or count * 4 > slots * 3 or count >= slots:
            self.put_new(key, value)
            return
        self._count = count
        self._write(j, key, value)

    def _write(self, j: int, key: int, value: int) -> None:
        words = self.words
        words[j] = key & _M64
        words[j + 1] = key >> 64
        words[j + 2] = _USED | (value & KEY_MASK) << 32
        words[j + 3] = (value >> 32) & _M64
        words[j + 4] = value >> 96

    def pop(self, key: int) -> int | None:
        j = self.find(key)
        if j < 0:
            return None
        words = self.words
        value = words[j + 2] >> 32 | words[j + 3] << 32 | words[j + 4] << 96
        self.remove_at(j)
        return value

    def remove_at(self, j: int) -> None:
        """Empty the slot at word index `j` (from find()), shifting its probe run back."""
        words = self.words
        end = len(words)
        slots = self.slots
        hole = j
        while True:
            j += SLOT6_WORDS
            if j == end:
                j = 0
            if not words[j + 2]:
                break
            key = (words[j] | words[j + 1] << 64).to_bytes(16, "little")
            home = ((hash(key) & _M64) * slots >> 64) * SLOT6_WORDS
            if (hole < j and hole < home <= j) or (j < hole and (home <= j or home > hole)):
                continue
            words[hole : hole + SLOT6_WORDS] = words[j : j + SLOT6_WORDS]
            hole = j
        words[hole : hole + SLOT6_WORDS] = _EMPTY6
        self._count -= 1

    def _entry(self, j: int) -> tuple[int, int] | None:
        words = self.words
        w2 = words[j + 2]
        if not w2:
            return None
        return words[j] | words[j + 1] << 64, w2 >> 32 | words[j + 3] << 32 | words[j + 4] << 96

    def items(self) -> Iterator[tuple[int, int]]:
        """(key, value) of every entry, in slot order (do not change the table meanwhile)."""
        words = self.words
        for j in range(0, len(words), SLOT6_WORDS):
            w2 = words[j + 2]
            if w2:
                yield (
                    words[j] | words[j + 1] << 64,
                    w2 >> 32 | words[j + 3] << 32 | words[j + 4] << 96,
                )

    def _resize(self, slots: int) -> None:
        old = self.words
        self.slots = slots
        words = self.words = _zeros(SLOT6_WORDS * slots)
        end = len(words)
        for i in range(0, len(old), SLOT6_WORDS):
            if old[i + 2]:
                j = self.home(old[i], old[i + 1])
                while words[j + 2]:
                    j += SLOT6_WORDS
                    if j == end:
                        j = 0
                words[j : j + SLOT6_WORDS] = old[i : i + SLOT6_WORDS]


_EMPTY6: Final = array("Q", bytes(8 * SLOT6_WORDS))
