"""Score window: one source's hits inside the window, with running integer sums.  PURE.

For each offender address, over the hits in its window:

* a hit with ``distinct_key is None`` counts its full weight;
* hits with a distinct key (scan filters, e.g. ``(dst, dport)``) count, per distinct key,
  the largest weight seen for that key in full, and every other such hit at
  ``repeat_factor`` of its weight (see scoring.py's docstring for the formula).

Weights are integers of 1e-6 points (UNITS), so the score depends only on the multiset of
hits in the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["MAX_HITS_PER_ADDRESS", "UNITS", "Entry", "Window", "entry_time", "score_of"]

UNITS: Final = 1_000_000  # weights are summed as integer micro-points: exact and order-free
MAX_HITS_PER_ADDRESS: Final = 4096
# (time, filter, distinct_key, weight in UNITS)
Entry = tuple[float, str, tuple[object, ...] | None, int]


class Window:
    """The hits of one address inside the score window, with running integer sums."""

    __slots__ = ("hits", "key_weights", "keyed_total", "max_sum", "plain", "seen_again")

    def __init__(self) -> None:
        self.seen_again = False  # hit since it was created or last spared by eviction
        # A list, not a deque: most windows hold a hit or two, and a deque's first block
        # alone is ~600 bytes; 100,000 of them thrash the CPU caches.
        self.hits: list[Entry] = []
        self.plain = 0  # sum of unkeyed weights
        self.keyed_total = 0  # sum of keyed weights
        self.max_sum = 0  # sum over keys of the largest weight seen for that key
        self.key_weights: dict[object, dict[int, int]] = {}  # key -> {weight: count}

    def count_key(self, key: object, weight: int) -> None:
        self.keyed_total += weight
        weights = self.key_weights.get(key)
        if weights is None:
            self.key_weights[key] = {weight: 1}
            self.max_sum += weight
        elif weight in weights:
            weights[weight] += 1
        else:
            old = max(weights)
            weights[weight] = 1
            if weight > old:
                self.max_sum += weight - old

    def drop_oldest(self) -> None:
        self._uncount(self.hits.pop(0))

    def _uncount(self, entry: Entry) -> None:
        _, _, key, weight = entry
        if key is None:
            self.plain -= weight
            return
        self.keyed_total -= weight
        weights = self.key_weights[key]
        left = weights[weight] - 1
        if left:
            weights[weight] = left
            return
        del weights[weight]
        if not weights:
            del self.key_weights[key]
            self.max_sum -= weight
            return
        new = max(weights)
        if weight > new:  # the dropped weight was this key's maximum
            self.max_sum += new - weight

    def expire(self, now: float, window: float) -> None:
        hits = self.hits
        gone = 0
        for entry in hits:
            if now - entry[0] < window:
                break
            self._uncount(entry)
            gone += 1
        del hits[:gone]  # at once: popping from the front one by one is quadratic


def entry_time(entry: Entry) -> float:
    return entry[0]


def score_of(entries: Iterable[Entry], repeat_factor: float) -> float:
    """Score units of `entries`, computed from scratch (for explain())."""
    plain = keyed = 0
    key_max: dict[object, int] = {}
    for _, _, key, weight in entries:
        if key is None:
            plain += weight
        else:
            keyed += weight
            key_max[key] = max(weight, key_max.get(key, 0))
    max_sum = sum(key_max.values())
    return plain + max_sum + repeat_factor * (keyed - max_sum)
