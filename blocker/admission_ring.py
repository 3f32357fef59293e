"""Arrival order of the one-hit records of a packed table: a FIFO of keys.  PURE.

The admission tier (tiers.py) keeps a source's first hit as a record of a packed table and
pushes its key here, with the record's admission number (``seq``, counted modulo 2**32 by
the caller, also written into the record).  A record leaves admission in many ways (it
climbs, is banned, dropped); its entry here is not looked for then, but skipped lazily: the
caller asks whether the head is still live (the table holds that key as a one-hit record
with that very number) and pops it otherwise, and compacts the ring when it holds many
more entries than live records.  A key that left and came back has a new number, so only
its newest entry is live.

One ``array('Q')``: a 32-bit key and its number in one word (``key | seq << 32``) or a
128-bit key as three words (low, high, seq); no Python object per entry.  The head
advances by an index; the consumed front is cut off once it is half the array.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Final

__all__ = ["AdmissionRing"]

_M32: Final = (1 << 32) - 1
_M64: Final = (1 << 64) - 1
_CUT: Final = 4096  # words consumed at the front before the array is cut


class AdmissionRing:
    __slots__ = ("_head", "_step", "words")

    def __init__(self, wide: bool) -> None:
        """`wide`: keys below 2**128 (three words an entry), else below 2**32 (one)."""
        self._step = 3 if wide else 1
        self._head = 0
        self.words = array("Q")

    def __len__(self) -> int:
        """Entries held, live or not."""
        return (len(self.words) - self._head) // self._step

    def push(self, key: int, seq: int) -> None:
        """Append `key` admitted as number `seq` (0 <= seq < 2**32, unchecked)."""
        if self._step == 1:
            self.words.append(key | seq << 32)
        else:
            self.words.extend((key & _M64, key >> 64, seq))

    def head(self) -> tuple[int, int] | None:
        """(key, seq) of the oldest entry, or None when empty."""
        words, j = self.words, self._head
        if j == len(words):
            return None
        if self._step == 1:
            w = words[j]
            return w & _M32, w >> 32
        return words[j] | words[j + 1] << 64, words[j + 2]

    def pop(self) -> None:
        """Drop the oldest entry (there is one)."""
        self._head += self._step
        words, head = self.words, self._head
        if head == len(words):
            self.clear()
        elif head >= _CUT and head * 2 >= len(words):
            del words[:head]
            self._head = 0

    def compact(self, live: Callable[[int, int], bool]) -> None:
        """Keep only the entries (key, seq) for which live(key, seq), in their order."""
        kept = AdmissionRing(self._step == 3)
        while (entry := self.head()) is not None:
            if live(*entry):
                kept.push(*entry)
            self._head += self._step
        self.words, self._head = kept.words, 0

    def clear(self) -> None:
        self.words = array("Q")
        self._head = 0
