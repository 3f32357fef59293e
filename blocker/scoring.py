"""Turn Hits into ban Decisions.  PURE: no clock reads, no I/O; time comes from Hit.time.

Score model (one Scorer per jail)
---------------------------------
``now`` is the newest event time the scorer has seen (``max`` of every Hit.time), so
slightly out-of-order log lines are fine.  A hit at time ``t`` is *in the window* while
``now - t < window``; a hit that is already outside the window when it arrives is counted
in the stats (``stale``) and otherwise dropped, as is a hit with a NaN or infinite time.

For each offender address, over the hits in its window:

* a hit with ``distinct_key is None`` counts its full weight;
* hits with a distinct key (scan filters, e.g. ``(dst, dport)``) count, per distinct key,
  the largest weight seen for that key in full, and every other such hit at
  ``repeat_factor`` of its weight::

      score = sum(w for unkeyed hits)
            + M + repeat_factor * (sum(w for keyed hits) - M)
      where M = sum over distinct keys of max(w for that key)

  Keys are shared by all filters of the jail: the same ``(dst, dport)`` reported by two
  filters is one probe seen twice.

Weights are summed as integers of 1e-6 points, so the score depends only on the multiset
of hits in the window: permuting hits that share a timestamp never changes a decision.
Weights below zero count as zero (the score never decreases when a hit arrives).

When ``score >= threshold`` the address is banned: one Decision for its /32 or /128,
its window is emptied, and until ``at + duration`` its further hits make no decisions
(they are counted as ``while_banned``; they are log lines written before the ban bit).

Ban time grows with history: ``ban_time * ban_factor ** n``, where ``n`` is the number of
earlier bans of the same target within ``history_window`` before now, capped at
``max_ban_time``; ``ban_time = inf`` gives permanent bans.

Subnet escalation: after a host ban, if at least ``subnet_min_offenders`` distinct hosts of
its /``subnet_v4_prefix`` (or /``subnet_v6_prefix``) were banned within ``subnet_window``,
the subnet is banned too (its duration grows with the subnet's own history), unless it
is already banned, contains one of the host's own addresses, overlaps the allowlist or
touches a special range (see addresses.py).  Hosts inside a banned subnet are still banned
individually: which hosts get a Decision must not depend on the order of equal-time hits.

Never banned: special addresses, allowlisted addresses, the host's own addresses.

Where a source's hits live (issue 9: floods of millions of sources)
-------------------------------------------------------------------
Each source is in at most one of three tiers, keyed by the address as an int (IPv6 with
bit 128 set, so ``::192.0.2.1`` never shares 192.0.2.1's state):

1. *Admission*: a source seen once, as that one hit; at most ``max_tracked`` of them, oldest
   pushed out first (FIFO), ~220 bytes each.  Most sources of a flood never leave it.
2. *Climbing*: a source with two or more live hits that are all plain (no distinct key) and
   of one filter and weight: its kind number and the exact times of its hits, packed in one
   ``bytes`` of 8 * (hits + 1) bytes, ~150 bytes a source with 4 hits (measured: a dict of
   1M such records grows RSS by 122 bytes each plus the 32-byte key).  Up to
   ``12 * max_tracked`` sources, so 1.2M at the default: every reflector of a 1M-source
   storm is climbing at once while it sends its 2nd..5th SYN/ACK.  Past 16 hits, or on a
   keyed or different hit, a source moves, all hits kept, to tier 3.
3. *Full windows*: per-hit entries, distinct keys for scans, running sums (_Window), at most
   ``max_tracked``, clock eviction among themselves (a window with no live score goes first,
   one hit again since it was last passed is spared once).

A source pushed out of tier 1 (or 2 or 3) while it still had live hits is written into the
*doorkeeper* (doorkeeper.py): a fixed 16 MB table of time stamps, allocated at the first such
eviction, that answers "seen within the window?" with no false negatives.  When such a
source comes back, its new hit starts it in tier 2 or 3 directly, so a wave of one-hit
sources can never push it out again: eviction takes from the admission FIFO, and only
climbing sources compete with climbing sources.

Exactness and error bounds.  Tiers 2 and 3 hold exact hit times and weights, so scores are
exact for every source they hold.  While no tier has pushed out a live source, the engine
decides exactly as the single-tier scorer before it (tests/reference_scorer.py, compared
in tests/test_scoring_reference.py): same bans, times, durations and reasons.  Under
pressure it can only under-count: a pushed-out source loses the hits it had (at most one
for a source pushed out of admission; the doorkeeper remembers *that* it was seen, never a
hit, and its answer is never added to a score), so it needs that many more hits within the
window to be banned.  A doorkeeper false positive (about 0.4% of lookups with 1M sources
a window) only lets a one-hit source skip admission: it costs a climbing slot, never a
point of score.  Hence no address is ever banned on hits it did not send, and a ban's
reason and ``explain`` list only hits the source sent.  What is lost, when: a source
pushed out of admission before its second hit (over ``max_tracked`` new sources in between,
and only once per window: after that it is climbing); a climbing source when more than
``12 * max_tracked`` sources climb at once (oldest first, to the doorkeeper); a full
window under the clock.  ``stats()`` reports tiers, evictions, readmissions, new sources
per minute and ``under_flood`` (a live source was pushed out within the last window).

At most 4096 hits per full window (oldest dropped); ban marks, ban history and subnet
counters are each capped at ``max_tracked`` entries.  The refusal gate (marks plus cached
refusals) is rebuilt from the marks only once cached refusals outnumber them, so a ban
costs the same with 1M marks as with 10.
"""

from __future__ import annotations

import math
import struct
from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from itertools import islice
from typing import Final

from blocker.addresses import AddressRules, host_network
from blocker.ban_book import BanBook
from blocker.ban_history import BanHistory
from blocker.doorkeeper import Doorkeeper
from blocker.records import Address, Decision, Hit, Network, network_text
from blocker.subnet_escalation import SubnetOffenders

__all__ = ["JailPolicy", "Scorer"]

UNITS: Final = 1_000_000  # weights are summed as integer micro-points: exact and order-free
MAX_HITS_PER_ADDRESS: Final = 4096
CLIMBING_PER_TRACKED: Final = 12  # the climbing tier holds up to 12 * max_tracked sources
MAX_CLIMBING_HITS: Final = 16  # more hits than this in the window: a full window
MAX_KINDS: Final = 4096  # (filter, weight) pairs the climbing tier can name
# Address keys of the packed tiers: the int of an IPv4 address, the int of an IPv6 address
# with this bit set (so ::192.0.2.1 and 192.0.2.1 never share a key).
_V6_TAG: Final = 1 << 128
# A climbing source's record: its kind number, then the times of its live hits, oldest
# first, all as doubles (exact: the times are the lines' own floats).
_PACK: Final = [struct.Struct(f"<{n}d").pack for n in range(MAX_CLIMBING_HITS + 2)]
_UNPACK: Final = [struct.Struct(f"<{n}d").unpack for n in range(MAX_CLIMBING_HITS + 2)]
_LAST_TIME: Final = struct.Struct("<d")

# (time, filter, distinct_key, weight in UNITS)
_Entry = tuple[float, str, tuple[object, ...] | None, int]
MAX_WEIGHT: Final = 1e9  # one hit never needs more; keeps int() away from inf
_FOREVER: Final = math.inf  # a module global: one lookup on the hot path, not two


@dataclass(frozen=True, slots=True)
class JailPolicy:
    """How one jail scores hits and sizes bans.  Times are seconds."""

    name: str
    threshold: float = 5.0  # ban when score >= threshold
    window: float = 60.0  # score = weighted hits within the last `window` seconds
    repeat_factor: float = 0.25  # a scan hit on an already-seen distinct key weighs this much
    ban_time: float = 600.0  # first ban; math.inf = permanent
    ban_factor: float = 2.0  # each earlier ban within history_window multiplies ban_time
    max_ban_time: float = 86400.0 * 7
    history_window: float = 86400.0 * 30
    subnet_min_offenders: int = 3  # 0 disables subnet escalation
    subnet_window: float = 3600.0
    subnet_v4_prefix: int = 24
    subnet_v6_prefix: int = 64
    allow: tuple[Network, ...] = ()
    own_addresses: tuple[Address, ...] = ()  # never banned, never inside an escalated subnet
    max_tracked: int = 100_000  # cap on addresses with live score state

    def problems(self) -> list[str]:
        """Human-readable reasons this policy is unusable; empty when it is fine."""
        out: list[str] = []

        def positive_finite(key: str, value: float) -> None:
            if not (math.isfinite(value) and value > 0):
                out.append(f"{key} must be a finite number > 0, got {value!r}")

        positive_finite("threshold", self.threshold)
        positive_finite("window", self.window)
        positive_finite("history_window", self.history_window)
        positive_finite("subnet_window", self.subnet_window)
        if not (math.isfinite(self.repeat_factor) and self.repeat_factor >= 0):
            out.append(f"repeat_factor must be a finite number >= 0, got {self.repeat_factor!r}")
        if not (self.ban_time > 0):  # inf is allowed: permanent bans
            out.append(f"ban_time must be > 0, got {self.ban_time!r}")
        if not (math.isfinite(self.ban_factor) and self.ban_factor >= 1):
            out.append(f"ban_factor must be a finite number >= 1, got {self.ban_factor!r}")
        if math.isfinite(self.ban_time):
            positive_finite("max_ban_time", self.max_ban_time)
        if self.subnet_min_offenders < 0:
            out.append(f"subnet_min_offenders must be >= 0, got {self.subnet_min_offenders!r}")
        if not 0 <= self.subnet_v4_prefix <= 32:
            out.append(f"subnet_v4_prefix must be in 0..32, got {self.subnet_v4_prefix!r}")
        if not 0 <= self.subnet_v6_prefix <= 128:
            out.append(f"subnet_v6_prefix must be in 0..128, got {self.subnet_v6_prefix!r}")
        if self.max_tracked < 1:
            out.append(f"max_tracked must be >= 1, got {self.max_tracked!r}")
        return out


class _Window:
    """The hits of one address inside the score window, with running integer sums."""

    __slots__ = ("hits", "key_weights", "keyed_total", "max_sum", "plain", "seen_again")

    def __init__(self) -> None:
        self.seen_again = False  # hit since it was created or last spared by eviction
        # A list, not a deque: most windows hold a hit or two, and a deque's first block
        # alone is ~600 bytes; 100,000 of them thrash the CPU caches.
        self.hits: list[_Entry] = []
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

    def _uncount(self, entry: _Entry) -> None:
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


def _entry_time(entry: _Entry) -> float:
    return entry[0]


def _score_of(entries: Iterable[_Entry], repeat_factor: float) -> float:
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


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return str(value)


class Scorer:
    """One jail's scoring engine: feed() Hits in, get Decisions out."""

    def __init__(self, policy: JailPolicy) -> None:
        problems = policy.problems()
        if problems:
            raise ValueError(f"jail {policy.name!r}: " + "; ".join(problems))
        self.policy = policy
        self.rules = AddressRules(policy.allow, policy.own_addresses, policy.name)
        self.refusal = self.rules.address_refusal  # why an address may never be banned
        self._window = policy.window
        self._repeat_factor = policy.repeat_factor
        # Rounded like the weights, so 3 hits of 0.1 do reach a threshold of 0.3.
        self._threshold_units = max(1, round(policy.threshold * UNITS))
        self._max_tracked = policy.max_tracked
        self._max_climbing = policy.max_tracked * CLIMBING_PER_TRACKED
        self._now = -math.inf
        # Tier 1, admission: address key (see _key) -> its one hit, oldest first (FIFO)
        self._once: OrderedDict[int, _Entry] = OrderedDict()
        # Addresses pushed out of _once (or _climbing) within the window; None until then
        self._doorkeeper: Doorkeeper | None = None
        # Tier 2, climbing: address key -> packed kind and hit times (see _pack)
        self._climbing: dict[int, bytes] = {}
        self._kinds: list[tuple[str, int]] = []  # kind number -> (filter, weight units)
        self._kind_numbers: dict[tuple[str, int], int] = {}
        # Tier 3, full windows: keyed (scan) or mixed hits, in clock eviction order
        self._tracked: OrderedDict[Address, _Window] = OrderedDict()
        self._units: dict[float, int] = {}  # hit weight -> integer micro-points
        self.book = BanBook(policy.max_tracked)  # who is banned until when, and the gate
        self.history = BanHistory(policy.ban_time, policy.ban_factor, policy.max_ban_time,
                                  policy.history_window, policy.max_tracked)
        self.escalation = SubnetOffenders(policy.subnet_min_offenders, policy.subnet_window,
                                          policy.subnet_v4_prefix, policy.subnet_v6_prefix,
                                          policy.max_tracked)
        self._hits = 0
        self._ignored = 0
        self._while_banned = 0
        self._stale = 0
        self._evicted = 0  # sources whose live hits were forgotten for room
        self._readmitted = 0  # new hits of sources the doorkeeper had seen
        self._last_eviction = -math.inf
        self._bans = 0
        self._subnet_bans = 0
        # new sources per minute of log time: (minute, count) now and the minute before
        self._minute = -math.inf
        self._new_this_minute = 0
        self._new_last_minute = 0

    # -- the hot path -------------------------------------------------------------------

    def feed(self, hit: Hit) -> list[Decision]:
        """Account one hit; return the bans it triggers (usually none)."""
        return self.add(hit.time, hit.filter, hit.offender, hit.weight, hit.distinct_key) or []

    def add(
        self, t: float, filter_name: str, addr: Address, weight_points: float,
        key: tuple[object, ...] | None = None,
    ) -> list[Decision] | None:
        """feed() without the Hit: `addr` earned `weight_points` at `t` through `filter_name`
        (`key`: its distinct key). Returns the bans it triggers, or None (the common case)."""
        self._hits += 1
        if t - t != 0:  # NaN or infinite time: one bad line must not stop the clock
            self._stale += 1
            return None
        if t > self._now:  # noqa: PLR1730 - cheaper than max() on the hot path
            self._now = t
        now = self._now
        until = self.book.gate.get(addr)
        if until is not None and now < until:
            if until == _FOREVER and addr not in self.book.hosts:
                self._ignored += 1
            else:
                self._while_banned += 1
            return None
        window = self._window
        if now - t >= window:
            self._stale += 1
            return None
        weight = self._units.get(weight_points)
        if weight is None:
            weight = self._to_units(weight_points)
        entry = (t, filter_name, key, weight)
        state = self._tracked.get(addr)
        if state is None:
            ip = int(addr) if isinstance(addr, IPv4Address) else int(addr) | _V6_TAG
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
        return self._add_to_window(addr, state, entry)

    def _add_to_window(self, addr: Address, state: _Window, entry: _Entry
                       ) -> list[Decision] | None:
        t, _, key, weight = entry
        hits = state.hits
        if not hits or t >= hits[-1][0]:
            hits.append(entry)
        else:  # a slightly late line: keep the hits in time order so expiry stays exact
            insort(hits, entry, key=_entry_time)
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
        del self._tracked[addr]
        return self._ban_host(addr, Counter(entry[1] for entry in hits), t, score / UNITS)

    def _climb(self, addr: Address, ip: int, packed: bytes, entry: _Entry
               ) -> list[Decision] | None:
        """One more hit of a source in the climbing tier."""
        t, name, key, weight = entry
        kind, *times = _UNPACK[len(packed) >> 3](packed)
        now, window = self._now, self._window
        if now - times[0] >= window:
            times = [when for when in times if now - when < window]
        number = int(kind)
        if key is not None or self._kinds[number] != (name, weight) or \
                len(times) >= MAX_CLIMBING_HITS:
            del self._climbing[ip]  # not one kind of plain hit any more: a full window
            return self._hold(addr, ip, self._entries(number, times), entry)
        if not times or t >= times[-1]:
            times.append(t)
        else:
            insort(times, t)
        score = len(times) * weight
        if score >= self._threshold_units:
            del self._climbing[ip]
            return self._ban_host(addr, {name: len(times)}, t, score / UNITS)
        self._climbing[ip] = _PACK[len(times) + 1](kind, *times)
        return None

    def _entries(self, number: int, times: Iterable[float]) -> list[_Entry]:
        name, weight = self._kinds[number]
        return [(when, name, None, weight) for when in times]

    def _hold(self, addr: Address, ip: int, earlier: list[_Entry], entry: _Entry
              ) -> list[Decision] | None:
        """Keep the live hits of a source that is past its first one (`earlier`, then
        `entry`, the newest line): as packed times when they are plain hits of one kind,
        else as a full window."""
        _, name, key, weight = entry
        count = len(earlier) + 1
        number = None
        if key is None and count <= MAX_CLIMBING_HITS and all(
                e[1] == name and e[2] is None and e[3] == weight for e in earlier):
            number = self._kind_number(name, weight)
        if number is not None:
            score = count * weight
            if score >= self._threshold_units:
                return self._ban_host(addr, {name: count}, entry[0], score / UNITS)
            climbing = self._climbing
            if len(climbing) >= self._max_climbing:
                self._evict_climbing()
            times = sorted([e[0] for e in earlier] + [entry[0]])
            climbing[ip] = _PACK[count + 1](number, *times)
            return None
        tracked = self._tracked
        if len(tracked) >= self._max_tracked:
            self._evict_window()
        state = tracked[addr] = _Window()
        state.seen_again = True
        for e in sorted(earlier, key=_entry_time):
            state.hits.append(e)
            if e[2] is None:
                state.plain += e[3]
            else:
                state.count_key(e[2], e[3])
        return self._add_to_window(addr, state, entry)

    def _kind_number(self, name: str, weight: int) -> int | None:
        kind = (name, weight)
        number = self._kind_numbers.get(kind)
        if number is None and len(self._kinds) < MAX_KINDS:
            number = self._kind_numbers[kind] = len(self._kinds)
            self._kinds.append(kind)
        return number

    def _open(self, addr: Address, ip: int, entry: _Entry) -> list[Decision] | None:
        """The first hit of an address not held in any tier."""
        # Whether an address may be banned is settled once, when it is first seen; only
        # refusals and bans enter the gate, so a flood of new sources never churns it.
        if self.refusal(addr) is not None:
            self.book.refuse(addr)
            self._ignored += 1
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
        if doorkeeper is not None and doorkeeper.seen(ip, self._now):
            # Seen within the window, its hits pushed out by a flood: this one starts it
            # climbing, so another wave of one-hit sources cannot push it out again.
            self._readmitted += 1
            return self._hold(addr, ip, [], entry)
        once = self._once
        if len(once) >= self._max_tracked:
            self._evict_once()
        once[ip] = entry
        return None

    def _evict_once(self) -> None:
        """Make room in the admission tier: its oldest hit goes, into the doorkeeper."""
        ip, (t, _, _, _) = self._once.popitem(last=False)
        now = self._now
        if now - t < self._window:
            self._forgotten(ip)

    def _forgotten(self, ip: int) -> None:
        """`ip` loses live hits for room: remember that it was seen, in fixed memory."""
        doorkeeper = self._doorkeeper
        if doorkeeper is None:
            doorkeeper = self._doorkeeper = Doorkeeper(self._window)
        doorkeeper.add(ip, self._now)
        self._evicted += 1
        self._last_eviction = self._now

    def _evict_climbing(self) -> None:
        """The climbing tier is full: drop what holds no live hit, and at least 1/16 of it,
        oldest first (they go to the doorkeeper, so their next hit climbs again)."""
        climbing = self._climbing
        now, window = self._now, self._window
        dead = [ip for ip, packed in climbing.items()
                if now - _LAST_TIME.unpack_from(packed, len(packed) - 8)[0] >= window]
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
        now, window = self._now, self._window
        while True:
            addr, state = tracked.popitem(last=False)
            hits = state.hits
            if not hits or now - hits[-1][0] >= window:
                return  # no score left
            if not state.seen_again:
                self._forgotten(int(addr) if isinstance(addr, IPv4Address) else int(addr) | _V6_TAG)
                return
            state.seen_again = False
            tracked[addr] = state

    def _to_units(self, weight: float) -> int:
        if 0 < weight <= MAX_WEIGHT:
            units = int(weight * UNITS + 0.5)
        else:  # negative or NaN count 0; huge or inf count MAX_WEIGHT
            units = int(MAX_WEIGHT * UNITS) if weight > 0 else 0
        if len(self._units) >= 1024:  # filters use a handful of weights; bound it anyway
            self._units.clear()
        self._units[weight] = units
        return units

    # -- bans ---------------------------------------------------------------------------

    def _ban_host(self, addr: Address, counts: Mapping[str, int], at: float, score: float
                  ) -> list[Decision]:
        """Ban `addr` (its live hits already dropped by the caller): `counts` per filter."""
        policy = self.policy
        target = host_network(addr)
        duration = self.history.duration(target, self._now)
        self.history.remember(target, at, self._now)
        self.book.ban_host(addr, at + duration, self._now)
        self._bans += 1
        filters = tuple(sorted(counts))
        detail = ", ".join(f"{name} x{counts[name]}" for name in filters)
        decisions = [
            Decision(
                target=target,
                jail=policy.name,
                at=at,
                duration=duration,
                score=score,
                filters=filters,
                reason=(
                    f"score {score:.1f} >= {policy.threshold:g} within {policy.window:g}s: {detail}"
                ),
            )
        ]
        if policy.subnet_min_offenders > 0:
            subnet_decision = self._escalate(addr, at, filters)
            if subnet_decision is not None:
                decisions.append(subnet_decision)
        return decisions

    def _escalate(self, addr: Address, at: float, filters: tuple[str, ...]) -> Decision | None:
        policy = self.policy
        escalation = self.escalation
        subnet = escalation.subnet(addr)
        offenders = escalation.count(subnet, addr, at, self._now)
        if len(offenders) < policy.subnet_min_offenders:
            return None
        until = self.book.subnet_until(subnet)
        if until is not None and self._now < until:
            return None
        if not self.subnet_may_be_banned(subnet):
            return None
        duration = self.history.duration(subnet, self._now)
        self.history.remember(subnet, at, self._now)
        self.book.ban_subnet(subnet, at + duration, self._now)
        self._subnet_bans += 1
        hosts = ", ".join(str(host) for host in sorted(offenders))
        return Decision(
            target=subnet,
            jail=policy.name,
            at=at,
            duration=duration,
            score=float(len(offenders)),
            filters=filters,
            reason=(
                f"{len(offenders)} hosts >= {policy.subnet_min_offenders} banned "
                f"within {policy.subnet_window:g}s in {network_text(subnet)}: {hosts}"
            ),
        )

    def subnet_may_be_banned(self, subnet: Network) -> bool:
        """False for subnets holding an own address, allowlisted or special addresses."""
        return self.rules.network_refusal(subnet) is None

    # -- state from outside: restore, manual bans, unbans -------------------------------

    def restore_history(self, entries: Iterable[tuple[Network, float]]) -> None:
        """Load earlier bans (target, at), e.g. from the state database at startup."""
        for target, at in entries:
            self.history.remember(target, at, self._now)
            if target.prefixlen == target.max_prefixlen and self.policy.subnet_min_offenders:
                addr = target.network_address
                self.escalation.count(self.escalation.subnet(addr), addr, at, self._now)

    def mark_banned(self, target: Network, until: float) -> None:
        """Note a ban made elsewhere (restored at startup, or manual) lasting until `until`."""
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self._drop_hits(addr)
            self.book.ban_host(addr, until, self._now)
        else:
            self.book.ban_subnet(target, until, self._now)

    def forget(self, target: Network) -> None:
        """Admin unban: clear the target's score window, ban mark and escalation count.

        Ban history is kept, so a later ban of the same target still lasts longer.
        """
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self._drop_hits(addr)
            self.book.forget_host(addr)
            self.escalation.forget_host(addr)
        else:
            self.book.forget_subnet(target)
            self.escalation.forget_subnet(target)

    def _drop_hits(self, addr: Address) -> None:
        ip = _key(addr)
        self._tracked.pop(addr, None)
        self._climbing.pop(ip, None)
        self._once.pop(ip, None)

    # -- introspection ------------------------------------------------------------------

    def _held(self, addr: Address) -> tuple[str | None, list[_Entry]]:
        """The tier holding `addr` and its hits there, oldest first."""
        ip = _key(addr)
        state = self._tracked.get(addr)
        if state is not None:
            return "window", list(state.hits)
        packed = self._climbing.get(ip)
        if packed is not None:
            kind, *times = _UNPACK[len(packed) >> 3](packed)
            return "climbing", self._entries(int(kind), times)
        first = self._once.get(ip)
        if first is not None:
            return "admission", [first]
        if self._doorkeeper is not None and self._doorkeeper.seen(ip, self._now):
            return "doorkeeper", []  # seen lately, its hits pushed out by a flood
        return None, []

    def explain(self, addr: Address, now: float) -> dict[str, object]:
        """Why `addr` is (not) banned, as of `now`.  JSON-able; changes no scoring state."""
        policy = self.policy
        refusal = self.refusal(addr)
        tier, held = self._held(addr)
        entries = [e for e in held if now - e[0] < policy.window]
        until = self.book.host_until(addr)
        banned_until: object = None
        if until is not None and now < until:
            banned_until = until if math.isfinite(until) else "permanent"
        subnet = self.escalation.subnet(addr)
        subnet_until = self.book.subnet_until(subnet)
        return {
            "address": str(addr),
            "jail": policy.name,
            "now": now,
            "tier": tier,
            "score": _score_of(entries, policy.repeat_factor) / UNITS,
            "threshold": policy.threshold,
            "window": policy.window,
            "hits": [
                {"time": t, "filter": name, "key": _jsonable(key), "weight": weight / UNITS}
                for t, name, key, weight in entries
            ],
            "banned_until": banned_until,
            "earlier_bans": self.history.earlier_bans(host_network(addr), now),
            "never_banned_because": refusal,
            "subnet": network_text(subnet),
            "subnet_offenders": self.escalation.live(subnet, now),
            "subnet_banned_until": (
                _jsonable(subnet_until) if subnet_until is not None and now < subnet_until else None
            ),
        }

    def stats(self) -> dict[str, int | bool]:
        """Counters since start (hits fed, ignored never-ban addresses, bans, ...), the
        sources held in each tier now, and whether the jail works under flood."""
        return {
            "hits": self._hits,
            "ignored": self._ignored,
            "while_banned": self._while_banned,
            "stale": self._stale,
            "tracked": self.tracked_count(),
            "tracked_admission": len(self._once),
            "tracked_climbing": len(self._climbing),
            "tracked_windows": len(self._tracked),
            "evicted": self._evicted,
            "readmitted": self._readmitted,
            "sources_per_minute": max(self._new_this_minute, self._new_last_minute),
            "under_flood": self._now - self._last_eviction < self.policy.window,
            "gate_copies": self.book.gate_copies,
            "bans": self._bans,
            "subnet_bans": self._subnet_bans,
        }

    def tracked_count(self) -> int:
        """Addresses with live score state, in all tiers: at most max_tracked one-hit
        sources, 12 * max_tracked climbing ones and max_tracked full windows."""
        return len(self._once) + len(self._climbing) + len(self._tracked)

    @property
    def now(self) -> float:
        """The newest event time seen so far (-inf before the first hit)."""
        return self._now


def _key(addr: Address) -> int:
    """`addr` as the key of the packed tiers (see _V6_TAG)."""
    return int(addr) if isinstance(addr, IPv4Address) else int(addr) | _V6_TAG
