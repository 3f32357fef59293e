"""Doorkeeper: "was this source seen within the last window?" in fixed memory.  PURE.

A Bloom filter of time stamps (the decaying doorkeeper of TinyLFU): ``CELLS`` one-byte
cells; an address sets ``PROBES`` of them, chosen by a 64-bit double hash, to the number
of the time quantum (window / ``QUANTA``) it was seen in, modulo 255.  It is "seen" while
all its cells hold a stamp of the last ``QUANTA + 1`` quanta: nothing ever has to be reset
or rotated, old stamps simply stop counting.

Errors, one way only: an address that was added within the window is always seen (no
false negative: its own cells can only be overwritten by fresher stamps).  An address
never added, or added longer ago, is seen when other addresses refreshed all its cells
(false positive): with ``f`` the share of fresh cells, about ``f ** PROBES``, e.g. 1M
sources in one window over 16M cells: f = 1 - exp(-4 * 1M * 9/8 / 16M) ~ 0.25, about 0.4%;
stamps also wrap every 255 quanta (an address seen exactly 255k quanta ago looks fresh).
The scorer only uses an answer to choose where a source's hits are kept, never to count
a hit, so a false positive costs memory, not a wrong ban.
"""

from __future__ import annotations

from typing import Final

from blocker.source_key import V6_TAG, v6_address

__all__ = ["CELLS", "Doorkeeper"]

CELLS: Final = 1 << 24  # 16 MB, allocated only once a scorer is under flood
PROBES: Final = 4  # _probes() spells out four
QUANTA: Final = 8  # stamps per window: a stamp is fresh for window * (1 + 1/QUANTA) at most
_M64: Final = (1 << 64) - 1


class Doorkeeper:
    __slots__ = ("_cells", "_mask", "_quantum")

    def __init__(self, window: float, cells: int = CELLS) -> None:
        if cells & (cells - 1) or cells < 2:
            raise ValueError(f"cells must be a power of two >= 2, got {cells}")
        self._cells = bytearray(cells)
        self._mask = cells - 1
        self._quantum = window / QUANTA

    def _probes(self, key: int) -> tuple[int, int, int, int]:
        """PROBES cell indexes for `key`: double hashing (h1 + i * h2) over 64-bit mixes."""
        if key >> 128:  # a salted IPv6 source key: probe by the address, as every process
            key = v6_address(key) | V6_TAG
        x = (key ^ (key >> 64) ^ (key >> 128)) & _M64
        h1 = ((x * 0x9E3779B97F4A7C15) & _M64) >> 7
        h2 = ((x ^ 0x5BD1E9955BD1E995) * 0xC2B2AE3D27D4EB4F) & _M64 | 1
        mask = self._mask
        return h1 & mask, (h1 + h2) & mask, (h1 + 2 * h2) & mask, (h1 + 3 * h2) & mask

    def add(self, key: int, now: float) -> None:
        """Note `key` (a source key: tiers.key_of()) as seen at `now`.  Its cells come from
        the address, not the key (an IPv6 key is salted per process): which sources a flood
        makes look seen must be the same in every process, as replay and live decide alike."""
        stamp = int(now // self._quantum) % 255 + 1  # 1..255; 0 is "never written"
        cells = self._cells
        a, b, c, d = self._probes(key)
        cells[a] = cells[b] = cells[c] = cells[d] = stamp

    def seen(self, key: int, now: float) -> bool:
        """True when `key` was added within the last window (and rarely when it was not)."""
        newest = int(now // self._quantum) % 255 + 1
        cells = self._cells
        # _probes(), spelled out: asked for every new source under a flood
        if key >> 128:
            key = v6_address(key) | V6_TAG
        x = (key ^ (key >> 64) ^ (key >> 128)) & _M64
        h1 = ((x * 0x9E3779B97F4A7C15) & _M64) >> 7
        h2 = ((x ^ 0x5BD1E9955BD1E995) * 0xC2B2AE3D27D4EB4F) & _M64 | 1
        mask = self._mask
        for i in range(PROBES):
            stamp = cells[(h1 + i * h2) & mask]
            # Fresh: written in this quantum or one of the QUANTA before it (mod 255).
            if stamp == 0 or (newest - stamp) % 255 > QUANTA:
                return False
        return True

    @property
    def size(self) -> int:
        return len(self._cells)
