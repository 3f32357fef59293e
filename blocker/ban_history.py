"""Ban history: how often a target was banned lately, and so how long its next ban lasts.
PURE: times are passed in.

Ban time grows with history: ``ban_time * ban_factor ** n``, where ``n`` is the number of
earlier bans of the same target within ``history_window`` before now, capped at
``max_ban_time``; ``ban_time = inf`` gives permanent bans.  At most ``cap`` targets are
remembered (least recently banned forgotten first), each with its last 64 ban times.

Targets are keyed by one int (target_key(), host_key()): the engine's hot path, a storm's
million host bans, asks ban() once per ban, one table lookup for a target never banned
before.  The table (lru_table.py) holds a target banned once as its key's bytes and one
float in flat arrays, no Python object; only targets banned again have a list of times.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Final

from blocker.lru_table import LruTable
from blocker.lru_tail import tail_decides
from blocker.records import Address, Network

__all__ = ["MAX_BANS_REMEMBERED_PER_TARGET", "BanHistory", "host_key", "target_key"]

MAX_BANS_REMEMBERED_PER_TARGET: Final = 64  # so n in ban_factor ** n counts up to 64
_KEY_BYTES: Final = 18  # a key: up to 128 address bits, 8 of prefix length, 1 of version


class BanHistory:
    __slots__ = (
        "_ban_factor",
        "_ban_time",
        "_cap",
        "_first",
        "_history_window",
        "_max_ban_time",
        "_table",
        "_times",
    )

    def __init__(
        self,
        ban_time: float,
        ban_factor: float,
        max_ban_time: float,
        history_window: float,
        cap: int,
    ) -> None:
        self._ban_time = ban_time
        self._ban_factor = ban_factor
        self._max_ban_time = max_ban_time
        self._history_window = history_window
        self._cap = cap
        # duration() of a target with no earlier ban
        self._first = math.inf if math.isinf(ban_time) else min(ban_time, max_ban_time)
        # target key -> the time of its one ban, least recently banned target first, in
        # flat arrays (lru_table.py: ~40 bytes a target, where an OrderedDict of int keys
        # and float times took ~190, and a storm bans a million).  A target remembered
        # again is spilled: its times, oldest first, are in _times (a list, even when its
        # old bans have left the window since).
        self._table = LruTable(cap, _KEY_BYTES)
        self._times: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def items(self) -> list[tuple[int, float | list[float]]]:
        """(target key, its ban time, or its times once banned again) of every target
        remembered, least recently banned first."""
        return [
            (key, self._times[key] if spilled else value)
            for key, value, _, spilled in self._table.items()
        ]

    def earlier_bans(self, target: Network, now: float) -> int:
        return self._earlier_bans(target_key(target), now)

    def _earlier_bans(self, target: int, now: float) -> int:
        table = self._table
        slot = table.slot_of(target)
        if slot < 0:
            return 0
        horizon = now - self._history_window
        if not table.spilled(slot):
            return 1 if horizon < table.value(slot) <= now else 0
        return sum(1 for when in self._times[target] if horizon < when <= now)

    def duration(self, target: Network, now: float) -> float:
        """How long a ban of `target` made at `now` lasts."""
        return self._duration(target_key(target), now)

    def _duration(self, target: int, now: float) -> float:
        if math.isinf(self._ban_time):
            return math.inf
        duration = self._ban_time
        for _ in range(self._earlier_bans(target, now)):
            duration *= self._ban_factor
            if duration >= self._max_ban_time:
                break
        return min(duration, self._max_ban_time)

    def remember(self, target: Network, at: float, now: float) -> None:
        """Record a ban of `target` at `at` (`now`: the newest event time)."""
        self._remember(target_key(target), at, now)

    def ban(self, target: int, at: float, now: float) -> float:
        """duration() then remember() of the target with this key (target_key(), host_key()):
        how long its ban at `at` lasts, `now` being the newest event time."""
        table = self._table
        # A ban _remember() would store, of a target never banned (or forgotten): stored.
        latest = at if at > now else now  # max(now, at), without the call
        slot = table.add(target, at) if at > latest - self._history_window else -2
        if slot == -1:
            return self._first
        if slot < 0:  # not added: too old to keep, or room only by evicting a spilled entry
            slot = table.slot_of(target)
        if slot >= 0:
            duration = self._duration(target, now)
            self._remember(target, at, now)
            return duration
        # Never banned (or forgotten): the first ban's length, and the time stored
        if at > max(now, at) - self._history_window:
            gone = table.put(target, slot, at)
            if gone is not None:
                del self._times[gone]
        return self._first

    def remember_many(self, keys: Sequence[int], ats: Sequence[float], now: float) -> None:
        """remember() for many bans at once, targets by key (target_key()): the same result
        as remembering them one by one, in order.

        When the keys are distinct and none is remembered yet (a restart: every target of a
        flood banned once), only the newest `cap` that one-by-one would store can stay, so
        only those are stored."""
        table = self._table
        if len(set(keys)) == len(keys) and (
            not table or all(table.slot_of(key) < 0 for key in keys)
        ):
            window = self._history_window
            kept: list[int] = []
            for index in range(len(keys) - 1, -1, -1):
                if len(kept) == self._cap:
                    break
                at = ats[index]
                if at > max(now, at) - window:  # what _remember() stores of a new target
                    kept.append(index)
            for index in reversed(kept):
                key = keys[index]
                gone = table.put(key, table.slot_of(key), float(ats[index]))
                if gone is not None:
                    del self._times[gone]
            return
        for key, at in zip(keys, ats, strict=True):
            self._remember(key, at, now)

    def remember_tail(self, keys: Sequence[int], ats: Sequence[float], now: float) -> bool:
        """remember_many() of a whole history of which these are only the newest bans (at
        least 2 * cap of them), into an empty history: True, having stored only the newest
        `cap`, when that leaves the history exactly as remembering every ban one by one
        would (lru_tail.py); False, having changed nothing, when it may not."""
        cap = self._cap
        window = self._history_window
        if self._table or not all(at > max(now, at) - window for at in ats):
            return False  # remembered ones already, or a ban remember() would not store
        if not tail_decides(keys, cap):
            return False
        self.remember_many(keys[-cap:], ats[-cap:], now)
        return True

    def _remember(self, key: int, at: float, now: float) -> None:
        table = self._table
        slot = table.slot_of(key)
        horizon = max(now, at) - self._history_window
        if slot < 0:
            if at > horizon:
                gone = table.put(key, slot, float(at))
                if gone is not None:
                    del self._times[gone]
            return
        if table.spilled(slot):
            times = self._times[key]
        else:
            times = self._times[key] = [table.value(slot)]
        insort(times, at)
        drop = sum(1 for when in times if when <= horizon)
        drop = max(drop, len(times) - MAX_BANS_REMEMBERED_PER_TARGET)
        if drop > 0:
            del times[:drop]
        # to the end: most recently banned (a move, so it evicts nothing)
        table.put(key, slot, times[-1] if times else math.nan, spilled=True)

    def forget_ban(self, target: Network, at: float) -> None:
        """Drop the ban of `target` at `at` (one that did not happen after all)."""
        ban_key = target_key(target)
        table = self._table
        slot = table.slot_of(ban_key)
        if slot < 0:
            return
        if not table.spilled(slot):
            if table.value(slot) == at:
                table.delete(slot)
            return
        times = self._times[ban_key]
        if times and at in times:
            times.remove(at)
            if not times:
                table.delete(slot)
                del self._times[ban_key]


def target_key(target: Network) -> int:
    """(first address, prefix length, version) of `target` as one int."""
    return (int(target.network_address) << 8 | target.prefixlen) << 1 | (target.version == 6)


def host_key(addr: Address) -> int:
    """target_key() of the /32 or /128 of `addr`, without the network."""
    if isinstance(addr, IPv4Address):
        return (int(addr) << 8 | 32) << 1
    return (int(addr) << 8 | 128) << 1 | 1
