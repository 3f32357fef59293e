"""The `cap` most recently set int keys, each with a float and a small int, in flat arrays.
PURE.

Ban history and subnet escalation each remember up to ``max_tracked`` targets of a flood of
millions of sources (issue 9 (d)).  As OrderedDicts of int keys they weighed 240 (history)
to 460 (escalation: a dict of hosts per subnet) bytes an entry, nearly all of it Python
objects.  Here an entry is its key's bytes, a flag byte, a float, 32 bits of its key's
hash and the payload's bytes, in arrays, plus 4-byte index slots: 64 to 74 bytes at the
cap (bench/bench_ban_cost.py --bytes).

- Entries are dense, in the order their keys were last set (least recently set first, as
  an OrderedDict with move_to_end()).  Setting a key again kills its entry and appends a
  new one; past ``cap`` live entries the oldest live one goes.
- The index is open addressing with linear probing over entry numbers.  A key's slot comes
  from the hash of its bytes, which CPython keys per process (SipHash), so spoofed sources
  cannot be chosen to pile into one slot (an int hashes to itself: in a dict they could).
- An evicted or deleted entry leaves its slot *stale* (it names an entry before the head,
  cut off, or dead): lookups skip it.  Once live and stale slots fill half the index, the
  live entries are indexed anew (packed first if dead ones lie among them) in an index
  four times their number, so a storm's put-and-evict costs no probing to unindex, and
  the one O(n) pass comes after at least n puts.  Dead entries before the oldest live one
  are cut off the arrays' front (in C) as the head moves on.
- An entry may be flagged *spilled*: its owner keeps more for that key elsewhere (all the
  ban times of a target banned twice) and learns the key when such an entry is evicted,
  or gives the flag a meaning of its own (subnet escalation: a subnet with no host left).
- A *stamped* table keeps an int per entry for its owner (8 bytes): subnet escalation
  keeps some subnets beside the table, in an order of its own, and stamps each entry
  with a clock to merge the two orders.  It gives the table what is left of the cap
  (set_cap()), and add() evicts the oldest entry only when its stamp is below a `limit`
  (the owner's oldest), else leaves it to the owner (oldest_stamp(), evict_oldest()).

Entry numbers in the index count from the first entry ever appended, modulo 2**31, so cutting
the front off the arrays changes no slot; a stale slot is dropped at the next re-index, a
few times `cap` (at most 10M) puts later, long before its number could come round again.

CPU: add() of a new key with an eviction, one hash of its bytes and one index walk, costs
~0.95 us where slot_of() then put() took ~1.35 and an OrderedDict takes ~0.43 (1M random
keys at cap 100k, this VM at load 2.4): the price of no object per entry.  About a quarter
of it is the walk past taken slots (live and stale: the index is up to half full).
"""

from __future__ import annotations

from array import array
from itertools import compress
from typing import Final

__all__ = ["LruTable"]

_M31: Final = 0x7FFFFFFF
_M32: Final = 0xFFFFFFFF
_DEAD, _LIVE, _SPILLED = 0, 1, 2
_MIN_SLOTS: Final = 8
_SLACK: Final = 1024  # dead entries tolerated before the arrays are cut or packed


class LruTable:
    """Up to `cap` keys (ints below 2 ** (8 * key_bytes)), each with a float value and a
    payload (an int below 2 ** (8 * payload_bytes)).  Lookups give an index slot:
    slot_of(key) >= 0 holds the key, else -1 - slot is where put() would place it (valid
    until the table next changes)."""

    __slots__ = (
        "_base",
        "_cap",
        "_flags",
        "_hashes",
        "_head",
        "_index",
        "_key_bytes",
        "_keys",
        "_last",
        "_live",
        "_mask",
        "_payload_bytes",
        "_payloads",
        "_room",
        "_stamped",
        "_stamps",
        "_used",
        "_values",
    )

    def __init__(
        self, cap: int, key_bytes: int, payload_bytes: int = 0, *, stamped: bool = False
    ) -> None:
        self._cap = cap
        self._key_bytes = key_bytes
        self._payload_bytes = payload_bytes
        self._stamped = stamped
        # The key slot_of() looked up last, its bytes and hash: put() right after it (the
        # usual pair) takes them from here.
        self._last: tuple[int, bytes, int] = (-1, b"", 0)
        self._reset(_MIN_SLOTS)

    def _reset(self, slots: int) -> None:
        self._keys = bytearray()  # key_bytes per entry, little-endian
        self._payloads = bytearray()  # payload_bytes per entry, little-endian
        self._values = array("d")
        self._stamps = array("Q")  # stamped: the owner's stamp of each entry (its clock)
        self._hashes = array("I")  # the low 32 bits of the hash of each entry's key bytes
        self._flags = bytearray()  # _DEAD, _LIVE or _SPILLED per entry
        self._index = array("i", [-1]) * slots  # entry number (mod 2**31), -1: empty
        self._mask = slots - 1
        self._room = slots // 2  # index slots used before a repack
        self._used = 0  # index slots not empty: live entries' and stale ones
        self._base = 0  # the entry number of position 0
        self._head = 0  # no live entry before this position
        self._live = 0

    def __len__(self) -> int:
        return self._live

    # -- lookups ---------------------------------------------------------------------------
    def slot_of(self, key: int) -> int:
        """The index slot holding `key`, or -1 - the free slot it would take."""
        size = self._key_bytes
        wanted = key.to_bytes(size, "little")
        hashed = hash(wanted) & _M32
        self._last = key, wanted, hashed
        index = self._index
        mask = self._mask
        slot = hashed & mask
        number = index[slot]
        if number < 0:  # most lookups of a key not held, at most a quarter of slots taken
            return -1 - slot
        return self._probe(slot, number, wanted, hashed)

    def _probe(self, slot: int, number: int, wanted: bytes, hashed: int) -> int:
        """slot_of() from `slot`, which holds entry `number` (not empty)."""
        index, mask, size = self._index, self._mask, self._key_bytes
        hashes = self._hashes
        base, head, end = self._base, self._head, len(hashes)
        while number >= 0:
            pos = (number - base) & _M31
            # A slot naming an entry before the head (evicted), past the end (cut off) or
            # dead (deleted) is stale: skipped, and dropped at the next repack.
            if (
                head <= pos < end
                and hashes[pos] == hashed
                and self._flags[pos]
                and self._keys[pos * size : pos * size + size] == wanted
            ):
                return slot
            slot = (slot + 1) & mask
            number = index[slot]
        return -1 - slot

    def value(self, slot: int) -> float:
        return self._values[(self._index[slot] - self._base) & _M31]

    def payload(self, slot: int) -> int:
        size = self._payload_bytes
        start = ((self._index[slot] - self._base) & _M31) * size
        return int.from_bytes(self._payloads[start : start + size], "little")

    def spilled(self, slot: int) -> bool:
        return self._flags[(self._index[slot] - self._base) & _M31] == _SPILLED

    def items(self) -> list[tuple[int, float, int, bool]]:
        """(key, value, payload, spilled) of every live entry, least recently set first."""
        found = []
        size, psize = self._key_bytes, self._payload_bytes
        keys, payloads, values = self._keys, self._payloads, self._values
        for pos in range(self._head, len(self._flags)):
            flag = self._flags[pos]
            if flag:
                found.append(
                    (
                        int.from_bytes(keys[pos * size : pos * size + size], "little"),
                        values[pos],
                        int.from_bytes(payloads[pos * psize : pos * psize + psize], "little"),
                        flag == _SPILLED,
                    )
                )
        return found

    # -- changes ---------------------------------------------------------------------------
    def add(self, key: int, value: float, payload: int = 0, stamp: int = 0, limit: int = -1) -> int:
        """Set `key` with `value`, `payload` and `stamp` (a stamped table) as the most
        recently set, unless it is held: slot_of() and put() in one for a key seen for the
        first time (a storm's ban).  Returns -1 when it added the key; the slot holding
        `key`, changing nothing, when it is held; -2, changing nothing, when adding it
        would evict a spilled entry (the owner must learn that key: slot_of() and put()
        then), when the cap is 0, or (a stamped table, `limit` >= 0) an entry whose stamp
        is not below `limit` (an owner that keeps other entries and merges the orders)."""
        wanted = key.to_bytes(self._key_bytes, "little")
        hashed = hash(wanted) & _M32
        index = self._index
        slot = hashed & self._mask
        number = index[slot]
        if number >= 0:
            slot = self._probe(slot, number, wanted, hashed)
            if slot >= 0:
                return slot
            slot = -1 - slot
        used = self._used
        if used >= self._room:
            self._repack()
            return self.add(key, value, payload, stamp, limit)
        flags = self._flags
        end = len(flags)
        if self._live < self._cap:
            self._live += 1
        else:  # evict the oldest live entry: its slot goes stale (slot_of skips it)
            if not self._live:
                return -2
            head = self._head
            while not flags[head]:
                head += 1
            if flags[head] == _SPILLED or (limit >= 0 and self._stamps[head] >= limit):
                self._head = head
                return -2
            self._head = head + 1  # no need to flag it dead: slot_of() starts at the head
        index[slot] = (self._base + end) & _M31
        self._used = used + 1
        self._keys += wanted
        if self._payload_bytes:
            self._payloads += payload.to_bytes(self._payload_bytes, "little")
        self._values.append(value)
        if self._stamped:
            self._stamps.append(stamp)
        self._hashes.append(hashed)
        flags.append(_LIVE)
        if self._head > _SLACK and self._head * 4 > end:
            self._cut_front()
        return -1

    def put(
        self,
        key: int,
        found: int,
        value: float,
        payload: int = 0,
        *,
        spilled: bool = False,
        stamp: int = 0,
    ) -> int | None:
        """Set `key` (`found`: what slot_of(key) returned since the last change) as the most
        recently set, with `value` and `payload`.  Returns the key of a spilled entry this
        evicted, if any (the owner drops what it kept for it)."""
        last_key, wanted, hashed = self._last
        if last_key != key:
            wanted = key.to_bytes(self._key_bytes, "little")
            hashed = hash(wanted) & _M32
        flags = self._flags
        base = self._base
        live = self._live
        if found >= 0:  # a move to the end: its old entry dies
            if len(flags) - self._head - live > live + _SLACK:  # mostly dead
                self._repack()
                return self.put(
                    key, self.slot_of(key), value, payload, spilled=spilled, stamp=stamp
                )
            index = self._index
            flags[(index[found] - base) & _M31] = _DEAD
            index[found] = (base + len(flags)) & _M31
        else:
            used = self._used + 1
            index = self._index
            if used > self._room:
                self._repack()
                return self.put(
                    key, self.slot_of(key), value, payload, spilled=spilled, stamp=stamp
                )
            index[-1 - found] = (base + len(flags)) & _M31
            self._used = used
            live += 1
        self._keys += wanted
        if self._payload_bytes:
            self._payloads += payload.to_bytes(self._payload_bytes, "little")
        self._values.append(value)
        if self._stamped:
            self._stamps.append(stamp)
        self._hashes.append(hashed)
        flags.append(_SPILLED if spilled else _LIVE)
        if live <= self._cap:
            self._live = live
            return None
        # Evict the oldest live entry: its slot goes stale (slot_of skips it).
        self._live = live - 1
        head = self._head
        while not flags[head]:
            head += 1
        gone = None
        if flags[head] == _SPILLED:
            size = self._key_bytes
            gone = int.from_bytes(self._keys[head * size : head * size + size], "little")
        flags[head] = _DEAD
        head += 1
        self._head = head
        if head > _SLACK and head * 4 > len(flags):
            self._cut_front()
        return gone

    def set_cap(self, cap: int) -> None:
        """Hold at most `cap` live entries from now on (at least as many as it holds)."""
        assert cap >= self._live
        self._cap = cap

    def stamps(self) -> list[int]:
        """The stamp of every live entry, as items() lists them."""
        head = self._head
        return list(compress(self._stamps[head:], self._flags[head:]))

    def oldest_stamp(self) -> int:
        """The stamp of the least recently set live entry (not empty, stamped)."""
        flags = self._flags
        head = self._head
        while not flags[head]:
            head += 1
        self._head = head
        return self._stamps[head]

    def evict_oldest(self) -> None:
        """Remove the least recently set live entry (not empty)."""
        flags = self._flags
        head = self._head
        while not flags[head]:
            head += 1
        flags[head] = _DEAD
        self._live -= 1
        head += 1
        self._head = head
        if head > _SLACK and head * 4 > len(flags):
            self._cut_front()

    def spill(self, slot: int) -> None:
        """Flag the entry at `slot` spilled, in place (its recency unchanged)."""
        self._flags[(self._index[slot] - self._base) & _M31] = _SPILLED

    def delete(self, slot: int) -> None:
        """Remove the entry at `slot` (found by slot_of): the slot goes stale."""
        self._flags[(self._index[slot] - self._base) & _M31] = _DEAD
        self._live -= 1

    def _cut_front(self) -> None:
        """Drop the entries before the head, all dead (slots name entries by number, so
        none changes; those naming a dropped entry were stale already)."""
        head = self._head
        del self._keys[: head * self._key_bytes]
        del self._payloads[: head * self._payload_bytes]
        del self._values[:head]
        del self._stamps[:head]
        del self._hashes[:head]
        del self._flags[:head]
        self._base = (self._base + head) & _M31
        self._head = 0

    def _repack(self) -> None:
        """Index the live entries anew with no stale slot, in an index at least four times
        as large as they are many (so at least as many puts pass before the next repack as
        it moves entries), packing them first when dead ones lie among them."""
        slots = _MIN_SLOTS
        while slots < 4 * (self._live + 1):
            slots *= 2
        if self._head:
            self._cut_front()
        if len(self._flags) != self._live:  # dead entries among the live: pack the live
            size, psize = self._key_bytes, self._payload_bytes
            keys, payloads, values, hashes, flags = (
                self._keys,
                self._payloads,
                self._values,
                self._hashes,
                self._flags,
            )
            live = list(compress(range(len(flags)), flags))  # in C: dead ones are many
            self._keys = bytearray().join([keys[pos * size : pos * size + size] for pos in live])
            self._payloads = bytearray().join(
                [payloads[pos * psize : pos * psize + psize] for pos in live]
            )
            self._values = array("d", compress(values, flags))
            if self._stamped:
                self._stamps = array("Q", compress(self._stamps, flags))
            self._hashes = array("I", compress(hashes, flags))
            self._flags = bytearray(compress(flags, flags))
        self._base = 0
        index = self._index = array("i", [-1]) * slots
        mask = self._mask = slots - 1
        self._room = slots // 2
        for number, hashed in enumerate(self._hashes):
            slot = hashed & mask
            while index[slot] >= 0:
                slot = (slot + 1) & mask
            index[slot] = number
        self._used = self._live
