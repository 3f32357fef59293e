"""The readable reference for blocker.scoring: today's (issue 9's starting point) Scorer, kept
as the test oracle that the two-tier engine must agree with whenever it is under no memory
pressure.  Not part of the package; tests only.

Original docstring:

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

Memory is bounded: at most ``max_tracked`` addresses with live window state; at the cap,
a window that holds no score any more goes first, else the oldest address not hit again
since it was created or last spared (the clock, or second chance, algorithm), so a flood of
one-off sources evicts its own kind first.  At most 4096 hits per address (oldest dropped);
ban marks, ban history and subnet counters each capped at ``max_tracked`` entries.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable
from typing import Final, TypeVar

from blocker.addresses import AllowList, host_network, is_special, is_special_network, subnet_of
from blocker.netfilter import address_of
from blocker.records import Address, Decision, Hit, Network, network_text
from blocker.scoring import JailPolicy

__all__ = ["ReferenceScorer"]

UNITS: Final = 1_000_000  # weights are summed as integer micro-points: exact and order-free
MAX_HITS_PER_ADDRESS: Final = 4096
MAX_BANS_REMEMBERED_PER_TARGET: Final = 64  # so n in ban_factor ** n counts up to 64
GATE_CACHE_SIZE: Final = 65536

# (time, filter, distinct_key, weight in UNITS)
_Entry = tuple[float, str, tuple[object, ...] | None, int]
_K = TypeVar("_K", bound=Hashable)
MAX_WEIGHT: Final = 1e9  # one hit never needs more; keeps int() away from inf
_FOREVER: Final = math.inf  # a module global: one lookup on the hot path, not two


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


def count_offender(
    subnets: OrderedDict[Network, dict[Address, float]],
    subnet: Network,
    addr: Address,
    at: float,
    *,
    horizon: float,
    keep: int,
    cap: int,
) -> dict[Address, float]:
    """Record `addr` as banned at `at` in `subnet` among `subnets` (least recently touched
    first, at most `cap`); drop its offenders banned at or before `horizon` and, past `keep`,
    the oldest; return its offenders."""
    offenders = subnets.get(subnet)
    if offenders is None:
        offenders = subnets[subnet] = {}
        while len(subnets) > cap:
            subnets.popitem(last=False)
    else:
        subnets.move_to_end(subnet)
    offenders[addr] = max(at, offenders.get(addr, at))
    for host in [host for host, when in offenders.items() if when <= horizon]:
        del offenders[host]
    # Only "are there enough?" matters, so the newest few are all worth keeping.
    while len(offenders) > keep:  # ties broken by address: hit order must not matter
        oldest = min(offenders.items(), key=lambda item: (item[1], item[0]))
        del offenders[oldest[0]]
    return offenders


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


class ReferenceScorer:
    """One jail's scoring engine: feed() Hits in, get Decisions out."""

    def __init__(self, policy: JailPolicy) -> None:
        problems = policy.problems()
        if problems:
            raise ValueError(f"jail {policy.name!r}: " + "; ".join(problems))
        self.policy = policy
        self._allow = AllowList(policy.allow)
        self._own = frozenset(policy.own_addresses)
        self._window = policy.window
        self._repeat_factor = policy.repeat_factor
        # Rounded like the weights, so 3 hits of 0.1 do reach a threshold of 0.3.
        self._threshold_units = max(1, round(policy.threshold * UNITS))
        self._max_tracked = policy.max_tracked
        self._now = -math.inf
        # address -> live score window, in eviction order (see _evict_one); an address seen
        # once has only that hit's entry
        self._tracked: OrderedDict[Address, _Window | _Entry] = OrderedDict()
        # address -> drop its hits while now < this: a ban mark (copied from _banned), or inf
        # for an address that may never be banned.  Addresses not in it are open.
        self._gate: dict[Address, float] = {}
        self._units: dict[float, int] = {}  # hit weight -> integer micro-points
        # host address -> banned until (hits make no decisions before then)
        self._banned: OrderedDict[Address, float] = OrderedDict()
        self._banned_subnets: OrderedDict[Network, float] = OrderedDict()
        # target -> times of its bans, oldest first (for ban time growth)
        self._history: OrderedDict[Network, list[float]] = OrderedDict()
        # subnet -> {banned host address: ban time} (for escalation)
        self._offenders: OrderedDict[Network, dict[Address, float]] = OrderedDict()
        self._hits = 0
        self._ignored = 0
        self._while_banned = 0
        self._stale = 0
        self._evicted = 0
        self._bans = 0
        self._subnet_bans = 0

    # -- the hot path -------------------------------------------------------------------

    def feed(self, hit: Hit) -> list[Decision]:
        """Account one hit; return the bans it triggers (usually none)."""
        return self.add(hit.time, hit.filter, hit.offender, hit.weight, hit.distinct_key) or []

    def add_key(
        self,
        t: float,
        filter_name: str,
        ip: int,
        weight_points: float,
        key: tuple[object, ...] | None = None,
        *,
        addr: Address | None = None,
    ) -> list[Decision] | None:
        """The pipeline's entry (Scorer.add_key's): the source as its key, turned back into
        the address it names and scored by add(), as before issue 9."""
        if addr is None:
            addr = address_of(ip)
        return self.add(t, filter_name, addr, weight_points, key)

    def add(
        self,
        t: float,
        filter_name: str,
        addr: Address,
        weight_points: float,
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
        until = self._gate.get(addr)
        if until is not None and now < until:
            if until == _FOREVER and addr not in self._banned:
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
        tracked = self._tracked
        found = tracked.get(addr)
        if found is None:
            opened = self._open(addr, entry)
            if opened is None:
                return None
            state = opened
        elif type(found) is tuple:
            state = self._second_hit(addr, found)
        else:
            state = found  # type: ignore[assignment]  # narrowed by the type() test above
            state.seen_again = True
            if now - state.hits[0][0] >= window:
                state.expire(now, window)
        hits = state.hits
        # The window update is inlined: this is the hottest code of the daemon.
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
        return self._ban_host(addr, state, t, score / UNITS)

    def _open(self, addr: Address, entry: _Entry) -> _Window | None:
        """A window for an address seen for the first time; None when nothing more is to
        be done with its first hit."""
        # Whether an address may be banned is settled once, when its window opens; only
        # refusals and bans enter the gate, so a flood of new sources never churns it.
        if self.refusal(addr) is not None:
            self._set_gate(addr, math.inf)
            self._ignored += 1
            return None
        tracked = self._tracked
        if len(tracked) >= self._max_tracked:
            self._evict_one()
        if entry[3] < self._threshold_units:
            # One hit scores its weight. Most sources are seen once: their window is kept
            # as that hit alone, and becomes a _Window if they come back.
            tracked[addr] = entry
            return None
        state = tracked[addr] = _Window()
        return state

    def _second_hit(self, addr: Address, first: _Entry) -> _Window:
        """The _Window of an address kept as its one hit so far, which comes back."""
        state = self._tracked[addr] = _Window()  # in place: the eviction order is kept
        state.seen_again = True
        if self._now - first[0] < self._window:
            state.hits.append(first)
            if first[2] is None:
                state.plain += first[3]
            else:
                state.count_key(first[2], first[3])
        return state

    def _to_units(self, weight: float) -> int:
        if 0 < weight <= MAX_WEIGHT:
            units = int(weight * UNITS + 0.5)
        else:  # negative or NaN count 0; huge or inf count MAX_WEIGHT
            units = int(MAX_WEIGHT * UNITS) if weight > 0 else 0
        if len(self._units) >= 1024:  # filters use a handful of weights; bound it anyway
            self._units.clear()
        self._units[weight] = units
        return units

    def _evict_one(self) -> None:
        """Make room for one window: drop the oldest that holds no score any more or was not
        hit again since it was created or last spared; spare the others (to the back)."""
        tracked = self._tracked
        now, window = self._now, self._window
        while True:
            addr, state = tracked.popitem(last=False)
            if type(state) is tuple:  # one hit, never seen again
                if now - state[0] < window:
                    self._evicted += 1
                return
            hits = state.hits  # type: ignore[union-attr]  # narrowed by the type() test
            if not hits or now - hits[-1][0] >= window:
                return  # no score left
            if not state.seen_again:  # type: ignore[union-attr]
                self._evicted += 1
                return
            state.seen_again = False  # type: ignore[union-attr]
            tracked[addr] = state

    def _set_gate(self, addr: Address, until: float) -> None:
        if len(self._gate) >= GATE_CACHE_SIZE:
            # Forget cached refusals (they are recomputed on demand); keep every ban mark.
            self._gate = dict(self._banned)
        self._gate[addr] = until

    def refusal(self, addr: Address) -> str | None:
        """Why `addr` may never be banned ("special", "own address", "allowlisted"), or None."""
        if is_special(addr):
            return "special"
        if self._own and addr in self._own:  # empty in a replay: skip hashing for nothing
            return "own address"
        if self._allow.contains_address(addr):
            return "allowlisted"
        return None

    # -- bans ---------------------------------------------------------------------------

    def _ban_host(self, addr: Address, state: _Window, at: float, score: float) -> list[Decision]:
        policy = self.policy
        counts = Counter(entry[1] for entry in state.hits)
        del self._tracked[addr]
        target = host_network(addr)
        duration = self._duration(target)
        self._remember_ban(target, at)
        self._mark(self._banned, addr, at + duration)
        self._set_gate(addr, at + duration)
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
        subnet = subnet_of(addr, policy.subnet_v4_prefix, policy.subnet_v6_prefix)
        offenders = self._count_offender(subnet, addr, at)
        if len(offenders) < policy.subnet_min_offenders:
            return None
        until = self._banned_subnets.get(subnet)
        if until is not None and self._now < until:
            return None
        if not self.subnet_may_be_banned(subnet):
            return None
        duration = self._duration(subnet)
        self._remember_ban(subnet, at)
        self._mark(self._banned_subnets, subnet, at + duration)
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
        if any(own in subnet for own in self._own):
            return False
        return not (self._allow.overlaps(subnet) or is_special_network(subnet))

    def _count_offender(self, subnet: Network, addr: Address, at: float) -> dict[Address, float]:
        """Record `addr` as banned at `at` in `subnet`; return its live offenders."""
        policy = self.policy
        keep = max(policy.subnet_min_offenders, 1) * 4
        horizon = self._now - policy.subnet_window
        return count_offender(
            self._offenders, subnet, addr, at, horizon=horizon, keep=keep, cap=self._max_tracked
        )

    def _earlier_bans(self, target: Network, now: float) -> int:
        times = self._history.get(target)
        if not times:
            return 0
        horizon = now - self.policy.history_window
        return sum(1 for when in times if horizon < when <= now)

    def _duration(self, target: Network) -> float:
        policy = self.policy
        if math.isinf(policy.ban_time):
            return math.inf
        duration = policy.ban_time
        for _ in range(self._earlier_bans(target, self._now)):
            duration *= policy.ban_factor
            if duration >= policy.max_ban_time:
                break
        return min(duration, policy.max_ban_time)

    def _remember_ban(self, target: Network, at: float) -> None:
        history = self._history
        times = history.get(target)
        if times is None:
            times = history[target] = []
            while len(history) > self._max_tracked:
                history.popitem(last=False)
        else:
            history.move_to_end(target)
        insort(times, at)
        horizon = max(self._now, at) - self.policy.history_window
        drop = sum(1 for when in times if when <= horizon)
        drop = max(drop, len(times) - MAX_BANS_REMEMBERED_PER_TARGET)
        if drop > 0:
            del times[:drop]

    def _mark(self, marks: OrderedDict[_K, float], key: _K, until: float) -> None:
        marks[key] = until
        marks.move_to_end(key)
        if len(marks) <= self._max_tracked:
            return
        # Sweep expired marks first; drop to 90% so the sweep is amortized over many bans.
        now = self._now
        for stale in [k for k, u in marks.items() if u <= now]:
            del marks[stale]
        while len(marks) > self._max_tracked * 9 // 10:
            marks.popitem(last=False)

    # -- state from outside: restore, manual bans, unbans -------------------------------

    def restore_history(self, entries: Iterable[tuple[Network, float]]) -> None:
        """Load earlier bans (target, at), e.g. from the state database at startup."""
        for target, at in entries:
            self._remember_ban(target, at)
            if target.prefixlen == target.max_prefixlen and self.policy.subnet_min_offenders:
                addr = target.network_address
                subnet = subnet_of(addr, self.policy.subnet_v4_prefix, self.policy.subnet_v6_prefix)
                self._count_offender(subnet, addr, at)

    def mark_banned(self, target: Network, until: float) -> None:
        """Note a ban made elsewhere (restored at startup, or manual) lasting until `until`."""
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self._tracked.pop(addr, None)
            self._mark(self._banned, addr, until)
            self._set_gate(addr, until)
        else:
            self._mark(self._banned_subnets, target, until)

    def forget(self, target: Network) -> None:
        """Admin unban: clear the target's score window, ban mark and escalation count.

        Ban history is kept, so a later ban of the same target still lasts longer.
        """
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self._tracked.pop(addr, None)
            self._banned.pop(addr, None)
            self._gate.pop(addr, None)
            policy = self.policy
            offenders = self._offenders.get(
                subnet_of(addr, policy.subnet_v4_prefix, policy.subnet_v6_prefix)
            )
            if offenders is not None:
                offenders.pop(addr, None)
        else:
            self._banned_subnets.pop(target, None)
            self._offenders.pop(target, None)

    # -- introspection ------------------------------------------------------------------

    def explain(self, addr: Address, now: float) -> dict[str, object]:
        """Why `addr` is (not) banned, as of `now`.  JSON-able; changes no scoring state."""
        policy = self.policy
        refusal = self.refusal(addr)
        state = self._tracked.get(addr)
        held = [] if state is None else [state] if type(state) is tuple else state.hits  # type: ignore[union-attr]
        entries = [e for e in held if now - e[0] < policy.window]
        until = self._banned.get(addr)
        banned_until: object = None
        if until is not None and now < until:
            banned_until = until if math.isfinite(until) else "permanent"
        subnet = subnet_of(addr, policy.subnet_v4_prefix, policy.subnet_v6_prefix)
        subnet_until = self._banned_subnets.get(subnet)
        offenders = self._offenders.get(subnet, {})
        return {
            "address": str(addr),
            "jail": policy.name,
            "now": now,
            "score": _score_of(entries, policy.repeat_factor) / UNITS,
            "threshold": policy.threshold,
            "window": policy.window,
            "hits": [
                {"time": t, "filter": name, "key": _jsonable(key), "weight": weight / UNITS}
                for t, name, key, weight in entries
            ],
            "banned_until": banned_until,
            "earlier_bans": self._earlier_bans(host_network(addr), now),
            "never_banned_because": refusal,
            "subnet": network_text(subnet),
            "subnet_offenders": sum(
                1 for when in offenders.values() if now - when < policy.subnet_window
            ),
            "subnet_banned_until": (
                _jsonable(subnet_until) if subnet_until is not None and now < subnet_until else None
            ),
        }

    def stats(self) -> dict[str, int]:
        """Counters since start: hits fed, ignored (never-ban addresses), bans, ..."""
        return {
            "hits": self._hits,
            "ignored": self._ignored,
            "while_banned": self._while_banned,
            "stale": self._stale,
            "tracked": len(self._tracked),
            "evicted": self._evicted,
            "bans": self._bans,
            "subnet_bans": self._subnet_bans,
        }

    def tracked_count(self) -> int:
        """Addresses with live score state (always <= policy.max_tracked)."""
        return len(self._tracked)

    @property
    def now(self) -> float:
        """The newest event time seen so far (-inf before the first hit)."""
        return self._now
