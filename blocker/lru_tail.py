"""When the newest keys of a long stream alone decide a least-recently-used table.  PURE.

A restart after a flood hands ban history and subnet escalation a million earlier bans,
oldest first, and each keeps only the ``cap`` most recently set targets (an LRU table,
lru_table.py).  Set one by one, nearly all of them are stored, then pushed out again.

Take a table that starts empty, where every key of the stream is a *touch* (stored if new,
moved to the end if held), and the stream's last ``2 * cap`` or more keys, split into the
newest ``cap`` (N) and the ones before them (E).  If E holds at least ``cap`` distinct keys,
then when N begins the table holds only keys of E: it holds at most ``cap`` keys, the most
recently touched ones, and E alone has that many.  If N's keys are distinct and none is in
E, each of them is new when it comes, so it is stored with nothing of what came before it,
and its ``cap`` stores push out everything held before N.  The table then ends exactly as
storing N alone into an empty table leaves it, whatever came before E: those keys need not
even be read.  tail_decides() says whether that holds; when it does not (a target banned
again within the last ``2 * cap`` bans), the caller sets the whole stream one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["tail_decides"]


def tail_decides(keys: Sequence[int], cap: int) -> bool:
    """True when storing only the newest `cap` of `keys` (the end of a longer stream of
    touches) into an empty table of `cap` leaves it as touching every key of the stream one
    by one, from the first, does (see the module docstring)."""
    if cap < 1 or len(keys) < 2 * cap:
        return False
    newest = set(keys[-cap:])
    if len(newest) < cap:
        return False
    earlier = set(keys[:-cap])
    return len(earlier) >= cap and newest.isdisjoint(earlier)
