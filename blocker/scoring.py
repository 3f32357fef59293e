"""Turn Hits into ban Decisions.  PURE: no clock reads, no I/O; time comes from Hit.time.

The per-jail engine, Scorer, composes small parts, each with one job (all pure):
tiers.py (where a source's hits live: admission, climbing, full windows, doorkeeper.py),
score_window.py (one source's Window), ban_book.py (marks while banned and the gate),
ban_history.py (repeat-offender growth), subnet_escalation.py (banned hosts per subnet)
and addresses.py (whether an address or a subnet may be banned at all).

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
Each source is in at most one of three tiers, keyed by its whole address (as an int; IPv6
with bit 128 set, so ``::192.0.2.1`` never shares 192.0.2.1's state).  A source of plain
hits (no distinct key) of one filter and weight is, from its first hit, one record of an
open-addressing table keyed by the whole address, with no Python object per source
(packed_table.py: IPv4 in 24-byte slots, IPv6 in 40-byte ones; at most 3/4 full): its
count, kind number and the exact times of its hits (the first as microseconds since an
epoch, later ones as offsets from it: 1 + 80 // width hits fit, width = the bits of a
window in microseconds, 4 at 60 s).  One lookup per line finds it, whichever tier it is in.

1. *Admission*: a one-hit record (flagged as such, with its admission number), at most
   ``12 * max_tracked`` of them (1.2M at the default, so each of a 1M-reflector storm's
   reflectors keeps its first hit until its second: storm (b)), pushed out first in first
   out: each family's AdmissionRing (admission_ring.py) holds the keys in arrival order,
   8 bytes an IPv4 entry, 24 an IPv6 one, and entries of records that left (climbed,
   banned, dropped) are skipped when they reach the head or compacted away once they are
   more than half.  An IPv4 source takes 32-64 bytes of table (3/4 to 3/8 full) and,
   while one-hit, 8 of ring; an IPv6 one 53-107 and 24 (bench_tier_bytes.py).  A first
   hit that is keyed (a scan) or whose time is not whole microseconds waits as an Entry
   in a separate FIFO of at most ``max_tracked`` (~220 bytes each).  Most sources of a
   flood never leave admission.
2. *Climbing*: the same records past their first hit (the second hit clears the flag and
   appends its time in place: a source's record never moves between tiers).  Up to
   ``12 * max_tracked`` climbing sources, so 1.2M at the default: every reflector of a
   1M-source storm climbs at once while it sends its 2nd..5th SYN/ACK.  A source with more
   hits than a slot holds climbs as one packed int in a dict (~120 bytes).  Past 16 hits,
   or on a keyed or different hit, a source moves, all hits kept, to tier 3.  When full,
   it drops what holds no live hit and at least 1/16: table records least recently hit
   first (equal times: the lowest address first), ints oldest first; never an admission
   record.  Which records go never depends on the slots they sit in, as replay and live
   must decide alike: the tables place keys by the hash of their bytes, which CPython keys
   per process (so spoofed sources cannot be computed to pile into one probe run).
3. *Full windows*: per-hit entries, distinct keys for scans, running sums (Window), at most
   ``max_tracked``, clock eviction among themselves (a window with no live score goes first,
   one hit again since it was last passed is spared once).

A source pushed out of tier 1 (or 2 or 3) while it still had live hits is written into the
*doorkeeper* (doorkeeper.py): a fixed 16 MB table of time stamps, allocated at the first such
eviction, that answers "seen within the window?" with no false negatives.  When such a
source comes back, its new hit starts it climbing directly, so a wave of one-hit sources
can never push it out again: admission pushes out only admission records, and only
climbing sources compete with climbing sources.

Exactness and error bounds.  Every tier holds exact hit times and weights, so scores are
exact for every source it holds: a record or int takes a time only when it decodes to the
very same float (whole microseconds, as log lines carry; others make a full window or an
Entry), and a record is found only by its whole address (both words of an IPv6 one), never
by a hash alone.  While no tier has pushed out a live source, the engine decides exactly as
the single-tier scorer before it (tests/reference_scorer.py, compared in
tests/test_scoring_reference.py): same bans, times, durations and reasons.  Under pressure
it can only under-count: a pushed-out source loses the hits it had (at most one for a
source pushed out of admission; the doorkeeper remembers *that* it was seen, never a hit,
and its answer is never added to a score), so it needs that many more hits within the
window to be banned.  A doorkeeper false positive (about 0.4% of lookups with 1M sources a
window) only lets a one-hit source skip admission: it costs a climbing slot, never a point
of score.  Admission numbers count modulo 2**32: after 2**32 admissions a dead ring entry
could name a live record of the same address and push it out early, and the order between
the two families' oldest entries could invert; both only choose which first hit is
pushed out, never add to a score.  Hence no address is ever banned on hits it did not send,
and a ban's reason and ``explain`` list only hits the source sent.  What is lost, when: a
source pushed out of admission before its second hit (over ``12 * max_tracked`` new plain
sources in between, or ``max_tracked`` keyed ones, and only once per window: after that it
is climbing); a climbing source when more than ``12 * max_tracked`` sources climb at once
(least recently hit first, to the doorkeeper); a full window under the clock.  ``stats()``
reports tiers, evictions, readmissions, new sources per minute and ``under_flood`` (a live
source was pushed out within the last window).

At most 4096 hits per full window (oldest dropped); ban marks, ban history and subnet
counters are each capped at ``max_tracked`` entries (a permanent ban the cap drops stays
in the ban book: ban_book.py).  The refusal gate (marks, permanent bans, cached
refusals) is rebuilt from the bans only once cached refusals outnumber them, so a ban
costs the same with 1M marks as with 10.  A hit is scored by its source's key
(source_key.py: as the tiers and the ban book hold it); the engine asks the gate only for a
source no tier holds (a ban or a refusal drops every tier's hold first), and makes the
address object only then or for a ban, so a storm's climbing lines make none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from blocker.addresses import AddressRules, host_network
from blocker.ban_book import BanBook
from blocker.ban_history import BanHistory
from blocker.lru_tail import tail_decides
from blocker.netfilter import address_of
from blocker.records import Address, Decision, Hit, Network, network_text
from blocker.schema import JAIL, jail_default
from blocker.score_window import UNITS, score_of
from blocker.source_key import source_key_v6
from blocker.subnet_escalation import SubnetOffenders
from blocker.tiers import NOT_HELD, Tiers, key_of

__all__ = ["JailPolicy", "Scorer"]

MAX_WEIGHT: Final = 1e9  # one hit never needs more; keeps int() away from inf
_FOREVER: Final = math.inf  # a module global: one lookup on the hot path, not two


@dataclass(frozen=True, slots=True)
class JailPolicy:
    """How one jail scores hits and sizes bans.  Times are seconds."""

    name: str
    threshold: float = jail_default("threshold")  # ban when score >= threshold
    window: float = jail_default("window")  # score = weighted hits within the last `window` s
    repeat_factor: float = jail_default("repeat_factor")  # a repeated distinct key's weight
    ban_time: float = jail_default("ban_time")  # first ban; math.inf = permanent
    ban_factor: float = jail_default("ban_factor")  # per earlier ban within history_window
    max_ban_time: float = jail_default("max_ban_time")
    history_window: float = jail_default("history_window")
    subnet_min_offenders: int = jail_default("subnet_min_offenders")  # 0: no escalation
    subnet_window: float = jail_default("subnet_window")
    subnet_v4_prefix: int = jail_default("subnet_v4_prefix")
    subnet_v6_prefix: int = jail_default("subnet_v6_prefix")
    allow: tuple[Network, ...] = jail_default("allow")
    own_addresses: tuple[Address, ...] = jail_default("own_addresses")  # never banned
    max_tracked: int = jail_default("max_tracked")  # cap on addresses with live score state

    def problems(self) -> list[str]:
        """Human-readable reasons this policy is unusable (the schema's rules for each key);
        empty when it is fine."""
        return JAIL.problems(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        )


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
        self._now = -math.inf
        self.tiers = Tiers(
            policy.window,
            self._threshold_units,
            policy.repeat_factor,
            policy.max_tracked,
            self._refuse,
        )
        self._units: dict[float, int] = {}  # hit weight -> integer micro-points
        self.book = BanBook(policy.max_tracked)  # who is banned until when, and the gate
        self.history = BanHistory(
            policy.ban_time,
            policy.ban_factor,
            policy.max_ban_time,
            policy.history_window,
            policy.max_tracked,
        )
        self.escalation = SubnetOffenders(
            policy.subnet_min_offenders,
            policy.subnet_window,
            policy.subnet_v4_prefix,
            policy.subnet_v6_prefix,
            policy.max_tracked,
        )
        self._name = policy.name
        self._subnet_min_offenders = policy.subnet_min_offenders
        # (filter, hits, score) of a one-filter host ban -> its filters and reason
        self._reasons: dict[tuple[str, int, float], tuple[tuple[str, ...], str]] = {}
        self._hits = 0
        self._ignored = 0
        self._while_banned = 0
        self._stale = 0
        self._bans = 0
        self._subnet_bans = 0

    # -- the hot path -------------------------------------------------------------------

    def feed(self, hit: Hit) -> list[Decision]:
        """Account one hit; return the bans it triggers (usually none)."""
        return self.add(hit.time, hit.filter, hit.offender, hit.weight, hit.distinct_key) or []

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
        return self.add_key(t, filter_name, key_of(addr), weight_points, key, addr=addr)

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
        """add() for the source of key `ip` (tiers.key_of(); `addr`: its address, when the
        caller has it): the bulk path's, which makes the address object only when it is
        needed: for a ban, or for the refusal of a new IPv6 source.

        The gate is asked only for a source no tier holds: one that is held was neither
        banned nor refused since it was last let in (a ban or a refusal drops every tier's
        hold first, and only the engine adds to the gate), so the gate would let its hit
        through, and the decisions are those of asking it first."""
        self._hits += 1
        if t - t != 0:  # NaN or infinite time: one bad line must not stop the clock
            self._stale += 1
            return None
        if t > self._now:  # noqa: PLR1730 - cheaper than max() on the hot path
            self._now = t
        now = self._now
        if now - t >= self._window:
            if not self._gated(ip, now):
                self._stale += 1
            return None
        weight = self._units.get(weight_points)
        if weight is None:
            weight = self._to_units(weight_points)
        tiers = self.tiers
        before, tiers.now = tiers.now, now
        entry = (t, filter_name, key, weight)
        reached = tiers.add(ip, entry)
        if reached is None:
            return None
        if reached is NOT_HELD:
            if self._gated(ip, now):
                tiers.now = before  # a dropped hit leaves the tiers as they were
                return None
            reached = tiers.open(ip, entry)
            if reached is None:
                return None
        counts, score = reached
        return self._ban_host(address_of(ip) if addr is None else addr, counts, t, score / UNITS)

    def _gated(self, ip: int, now: float) -> bool:
        """True (and counted) when the gate drops the hits of the source of key `ip` at
        `now`: banned, or refused."""
        until = self.book.gate.get(ip)
        if until is None or now >= until:
            return False
        if until == _FOREVER and self.book.is_refusal(ip):
            self._ignored += 1
        else:
            self._while_banned += 1
        return True

    def _refuse(self, ip: int) -> bool:
        """For a new source, of key `ip`: True (and its hits dropped at the gate from now
        on) when it may never be banned."""
        # Settled once, when it is first seen; only refusals and bans enter the gate, so
        # a flood of new sources never churns it.  An IPv4 source is asked as its int: a
        # storm's million new sources make no address object here.
        if not ip >> 128:  # IPv4: the key is the address's int (source_key.py)
            if self.rules.v4_refusal(ip) is None:
                return False
        elif self.refusal(address_of(ip)) is None:
            return False
        self.book.refuse(ip)
        self._ignored += 1
        return True

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

    def _ban_host(
        self, addr: Address, counts: Mapping[str, int], at: float, score: float
    ) -> list[Decision]:
        """Ban `addr` (its live hits already dropped by the caller): `counts` per filter.

        A storm makes one per reflector, so this is a hot path too: ints for the history
        and escalation keys, one Network (the Decision's target), and the reason text and
        filters shared by every ban with the same counts and score."""
        now = self._now
        ip = int(addr)
        if isinstance(addr, IPv4Address):
            v6 = False
            target: Network = host_network_v4(addr)
            history_key = (ip << 8 | 32) << 1  # ban_history.host_key()
        else:
            v6 = True
            target = IPv6Network(ip)
            history_key = (ip << 8 | 128) << 1 | 1
        duration = self.history.ban(history_key, at, now)
        self.book.ban_host(ip if not v6 else source_key_v6(ip), at + duration, now)
        self._bans += 1
        if len(counts) == 1:
            [(name, hits)] = counts.items()
            shared = self._reasons.get((name, hits, score))
            if shared is None:
                shared = self._reason((name, hits, score), counts, score)
        else:
            shared = self._reason(None, counts, score)
        filters, reason = shared
        decision = _decision(Decision, (target, self._name, at, duration, score, filters, reason))
        if self._subnet_min_offenders:
            offenders = self.escalation.count_int(ip, v6, at, now)
            if offenders >= self._subnet_min_offenders:
                subnet_decision = self._escalate(addr, at, filters, offenders)
                if subnet_decision is not None:
                    return [decision, subnet_decision]
        return [decision]

    def _reason(
        self, key: tuple[str, int, float] | None, counts: Mapping[str, int], score: float
    ) -> tuple[tuple[str, ...], str]:
        """A host ban's filters and reason (cached under `key` unless it is None)."""
        policy = self.policy
        filters = tuple(sorted(counts))
        detail = ", ".join(f"{name} x{counts[name]}" for name in filters)
        reason = f"score {score:.1f} >= {policy.threshold:g} within {policy.window:g}s: {detail}"
        if key is not None:
            if len(self._reasons) >= 1024:  # a handful of kinds of ban; bound it anyway
                self._reasons.clear()
            self._reasons[key] = filters, reason
        return filters, reason

    def _escalate(
        self, addr: Address, at: float, filters: tuple[str, ...], offenders: int
    ) -> Decision | None:
        """The subnet ban after `addr`'s ban at `at`, which left `offenders` (enough) banned
        hosts in its subnet, unless the subnet is banned already or may not be."""
        policy = self.policy
        escalation = self.escalation
        key = escalation.last_key
        # A storm's bans in a subnet banned already stop here: no Network made or hashed.
        until = self.book.subnet_until_key(escalation.network_key_of(key))
        if until is not None and self._now < until:
            return None
        subnet = escalation.subnet_of_key(key, addr)
        if not self.subnet_may_be_banned(subnet):
            return None
        duration = self.history.duration(subnet, self._now)
        self.history.remember(subnet, at, self._now)
        self.book.ban_subnet(subnet, at + duration, self._now)
        self._subnet_bans += 1
        hosts = ", ".join(str(host) for host in escalation.offenders(addr))
        return Decision(
            target=subnet,
            jail=policy.name,
            at=at,
            duration=duration,
            score=float(offenders),
            filters=filters,
            reason=(
                f"{offenders} hosts >= {policy.subnet_min_offenders} banned "
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
                self.escalation.count(addr, at, self._now)

    def restore_history_keys(
        self,
        keys: Sequence[int],
        ats: Sequence[float],
        *,
        history: bool = True,
        escalation: bool = True,
    ) -> None:
        """restore_history() for targets given as ban keys (blocker.active.key_of: network
        int << 9 | 256 for IPv6 | prefix length), oldest first, with no Network per ban:
        the engine then decides exactly as after restore_history() of the same bans.
        `history`, `escalation`: which of the two to restore (they are independent: the
        rest was restored from the newest bans, restore_history_tail())."""
        if history:
            self.history.remember_many([_history_key(key) for key in keys], ats, self._now)
        if escalation and self.policy.subnet_min_offenders:
            hosts = [index for index, key in enumerate(keys) if _is_host(key)]
            self.escalation.count_many(
                [_address(keys[index]) for index in hosts],
                [ats[index] for index in hosts],
                self._now,
            )

    def restore_history_tail(self, keys: Sequence[int], ats: Sequence[float]) -> tuple[bool, bool]:
        """restore_history_keys() of a whole history of which these are only the newest bans
        (a restart after a flood: the newest 2 * max_tracked of a million), into an engine
        with none restored yet.  Ban history and subnet escalation each take them when they
        leave it exactly as restoring every ban one by one would (lru_tail.py), storing
        only what its cap keeps, and are left untouched when they may not (a target banned
        again lately; for escalation, two hosts of one subnet).  Returns (history,
        escalation): which the caller must still restore from every ban."""
        cap = self.policy.max_tracked
        escalation = False  # nothing to restore when it is off
        if self.policy.subnet_min_offenders:  # every host ban touches its subnet's entry
            hosts = [index for index, key in enumerate(keys) if _is_host(key)]
            subnet_key = self.escalation.key_int
            subnets = [  # the subnet key of each host, from its ban key
                subnet_key(key >> 9, bool(key & 256)) for key in (keys[index] for index in hosts)
            ]
            if len(self.escalation) or not tail_decides(subnets, cap):
                escalation = True
            else:
                newest = hosts[-cap:]
                self.escalation.count_many(
                    [_address(keys[index]) for index in newest],
                    [ats[index] for index in newest],
                    self._now,
                )
        history_keys = [_history_key(key) for key in keys]
        history = not self.history.remember_tail(history_keys, ats, self._now)
        return history, escalation

    def restore_bans(self, bans: Mapping[int, float]) -> None:
        """mark_banned() for every ban at once (a restart: a million), as ban key -> until:
        the engine then decides exactly as after marking them one by one in this order.
        The host bans are counted first, so the ban book builds only the marks its cap keeps
        (no address object, no list, for the others); the rare subnet marks one by one.
        `bans` is read twice (ActiveBans.keyed(): a view of its arrays, not a copy)."""
        count = 0
        earliest = math.inf
        for key, until in bans.items():
            if (key & 0x1FF) in _HOST_TAILS:  # _is_host(), inline: a million of them
                count += 1
                if until < earliest:  # noqa: PLR1730 - cheaper than min() a million times
                    earliest = until
            else:
                self.mark_banned(_network(key), until)
        hosts: Iterable[tuple[int, float]] = (
            (key, until) for key, until in bans.items() if (key & 0x1FF) in _HOST_TAILS
        )
        if len(self.tiers):  # a reload or a restore after hits: their windows go
            hosts = self._dropped_from_tiers(hosts)
        self.book.ban_hosts(hosts, count, earliest, _source_key, self._now)

    def _dropped_from_tiers(
        self, hosts: Iterable[tuple[int, float]]
    ) -> Iterator[tuple[int, float]]:
        for key, until in hosts:
            self.tiers.drop(_address(key))
            yield key, until

    def mark_banned(self, target: Network, until: float) -> None:
        """Note a ban made elsewhere (restored at startup, or manual) lasting until `until`."""
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self.tiers.drop(addr)
            self.book.ban_host(key_of(addr), until, self._now)
        else:
            self.book.ban_subnet(target, until, self._now)

    def forget(self, target: Network) -> None:
        """Admin unban: clear the target's score window, ban mark and escalation count.

        Ban history is kept, so a later ban of the same target still lasts longer.
        """
        if target.prefixlen == target.max_prefixlen:
            addr = target.network_address
            self.tiers.drop(addr)
            self.book.forget_host(key_of(addr))
            self.escalation.forget_host(addr)
        else:
            self.book.forget_subnet(target)
            self.escalation.forget_subnet(target)

    def retract(self, target: Network, at: float) -> None:
        """A ban this scorer decided at `at` did not happen (the daemon refused it): forget it
        as an unban does, and drop it from the history so it never lengthens a later ban."""
        self.forget(target)
        self.history.forget_ban(target, at)

    # -- introspection ------------------------------------------------------------------

    def explain(self, addr: Address, now: float) -> dict[str, object]:
        """Why `addr` is (not) banned, as of `now`.  JSON-able; changes no scoring state."""
        policy = self.policy
        refusal = self.refusal(addr)
        tier, held = self.tiers.held(addr)
        entries = [e for e in held if now - e[0] < policy.window]
        until = self.book.host_until(key_of(addr))
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
            "score": score_of(entries, policy.repeat_factor) / UNITS,
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
            **self.tiers.counts(),
            "evicted": self.tiers.evicted,
            "readmitted": self.tiers.readmitted,
            "sources_per_minute": self.tiers.sources_per_minute(),
            "under_flood": self._now - self.tiers.last_eviction < self.policy.window,
            "gate_copies": self.book.gate_copies,
            "bans": self._bans,
            "subnet_bans": self._subnet_bans,
        }

    def tracked_count(self) -> int:
        """Addresses with live score state, in all tiers: at most 12 * max_tracked packed
        one-hit sources and max_tracked keyed ones, 12 * max_tracked climbing ones and
        max_tracked full windows."""
        return len(self.tiers)

    @property
    def now(self) -> float:
        """The newest event time seen so far (-inf before the first hit)."""
        return self._now


_new = object.__new__
_decision = tuple.__new__  # Decision's own __new__ without its Python frame: one per ban
_HOST_MASK_V4: Final = IPv4Address(0xFFFFFFFF)


def host_network_v4(address: IPv4Address) -> IPv4Network:
    """IPv4Network((address, 32)), the target of a host ban, built as its __init__ builds it
    but without parsing its argument: a storm makes one per reflector.  Its network address
    is `address` itself (immutable, so as good as the equal copy __init__ makes).
    tests/test_scoring.py holds it to the stdlib's, attribute for attribute."""
    net = _new(IPv4Network)
    net.__dict__ = {
        "network_address": address,
        "netmask": _HOST_MASK_V4,
        "_prefixlen": 32,
        "hosts": lambda: [address],
    }
    return net


# Ban keys (blocker.active.key_of: network int << 9 | 256 for IPv6 | prefix length), decoded
# here so the engine needs no Network object per restored ban.


_HOST_TAILS: Final = frozenset((32, 256 | 128))  # a host's key & 0x1FF: /32, or IPv6 and /128


def _is_host(key: int) -> bool:
    return (key & 0x1FF) in _HOST_TAILS


def _address(key: int) -> Address:
    return IPv6Address(key >> 9) if key & 256 else IPv4Address(key >> 9)


def _source_key(key: int) -> int:
    """The source key (tiers.key_of()) of the host of a ban key."""
    return source_key_v6(key >> 9) if key & 256 else key >> 9


def _network(key: int) -> Network:
    if key & 256:
        return IPv6Network((key >> 9, key & 0xFF))
    return IPv4Network((key >> 9, key & 0xFF))


def _history_key(key: int) -> int:
    """BanHistory's key of the target (ban_history.target_key())."""
    return ((key >> 9) << 8 | key & 0xFF) << 1 | (key >> 8) & 1
