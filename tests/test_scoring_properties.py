"""scoring.py: properties that must hold for any stream of hits."""

from __future__ import annotations

import math
from dataclasses import replace
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from blocker import tiers
from blocker.addresses import is_special, is_special_network
from blocker.records import Address, Decision, Hit
from blocker.scoring import JailPolicy, Scorer

T0 = 1_700_000_000.0
ALLOW = (ip_network("192.0.2.192/26"), ip_network("2001:db8:aa::/48"))
OWN = (ip_address("198.51.100.77"), ip_address("2001:db8:1::77"))

ORDINARY = [
    ip_address(text)
    for text in (
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",  # 192.0.2.0/24 overlaps the allowlist
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",  # 198.51.100.0/24 holds OWN[0]
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.4",  # may escalate
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8::3",  # may escalate (/64)
        "2001:db8:1::1",
        "2001:db8:1::2",
        "2001:db8:1::3",  # /64 holds OWN[1]
        "::ffff:203.0.113.9",
        "::ffff:198.51.100.9",  # IPv4-mapped: their /64 is ::/64
    )
]
NEVER = [
    ip_address(text)
    for text in (
        "127.0.0.1",
        "::1",
        "169.254.7.7",
        "fe80::1",
        "224.0.0.251",
        "ff02::1",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "240.0.0.9",
        "::ffff:127.0.0.1",
        "192.0.2.200",
        "2001:db8:aa::5",  # allowlisted
    )
] + list(OWN)

WEIGHTS = [0.0, 0.5, 1.0, 1.0, 2.5]
KEYS: list[tuple[object, ...] | None] = [None, None, ("192.0.2.10", 22), ("192.0.2.10", 80), (3,)]
GAPS = [0.0, 0.5, 2.0, 9.0, 40.0, 200.0, 1000.0]

# A group: hits sharing one timestamp, some gap after the previous group, from one to
# three offenders (so that bans are common).  Ordinary offenders are drawn three times as
# often as protected ones.  One hit: (offender index, filter, key index, weight index).
one_hit = st.tuples(
    st.integers(0, 2),
    st.sampled_from(["synack", "scan"]),
    st.integers(0, len(KEYS) - 1),
    st.integers(0, len(WEIGHTS) - 1),
)
group = st.tuples(
    st.sampled_from(GAPS),
    st.lists(st.sampled_from(ORDINARY * 3 + NEVER), min_size=3, max_size=3),
    st.lists(one_hit, min_size=1, max_size=10),
)
HitSpecs = list[tuple[float, list[Address], list[tuple[int, str, int, int]]]]
hit_specs = st.lists(group, max_size=25)

policies = st.builds(
    JailPolicy,
    name=st.just("prop"),
    threshold=st.sampled_from([1.0, 2.0, 3.0, 5.0]),
    window=st.sampled_from([10.0, 60.0]),
    repeat_factor=st.sampled_from([0.0, 0.25, 1.0]),
    ban_time=st.sampled_from([30.0, 600.0, math.inf]),
    ban_factor=st.sampled_from([1.0, 2.0, 10.0]),
    max_ban_time=st.sampled_from([100.0, 3600.0]),
    history_window=st.sampled_from([500.0, 86400.0]),
    subnet_min_offenders=st.sampled_from([0, 2, 2, 3]),
    subnet_window=st.sampled_from([100.0, 3600.0]),
    allow=st.just(ALLOW),
    own_addresses=st.just(OWN),
    max_tracked=st.just(1000),
)


def build_hits(specs: HitSpecs) -> list[Hit]:
    hits = []
    t = T0
    for gap, offenders, group_hits in specs:
        t += gap
        for who, name, key, weight in group_hits:
            hits.append(Hit(t, "prop", name, offenders[who], WEIGHTS[weight], KEYS[key]))
    return hits


def run(policy: JailPolicy, hits: list[Hit]) -> list[Decision]:
    scorer = Scorer(policy)
    out: list[Decision] = []
    for h in hits:
        out.extend(scorer.feed(h))
    return out


def summary(decisions: list[Decision]) -> list[tuple[str, float, float]]:
    # Within one timestamp the emission order follows the input order; compare as a multiset.
    return sorted((d.target_text, d.at, d.duration) for d in decisions)


@settings(max_examples=200, deadline=None)
@given(policy=policies, specs=hit_specs, data=st.data())
def test_order_of_equal_time_hits_does_not_matter(
    policy: JailPolicy, specs: HitSpecs, data: st.DataObject
) -> None:
    hits = build_hits(specs)
    groups: dict[float, list[Hit]] = {}
    for h in hits:
        groups.setdefault(h.time, []).append(h)
    shuffled = [h for t in sorted(groups) for h in data.draw(st.permutations(groups[t]))]
    assert summary(run(policy, shuffled)) == summary(run(policy, hits))


@settings(max_examples=200, deadline=None)
@given(policy=policies, specs=hit_specs)
def test_protected_addresses_are_never_targets(policy: JailPolicy, specs: HitSpecs) -> None:
    for d in run(policy, build_hits(specs)):
        if d.target.prefixlen == d.target.max_prefixlen:
            addr: Address = d.target.network_address
            assert addr in ORDINARY, d
            assert not is_special(addr)
            assert addr not in OWN
            assert not any(addr in net for net in ALLOW)
        else:
            assert not any(own in d.target for own in OWN), d
            assert not any(
                d.target.overlaps(net) for net in ALLOW if net.version == d.target.version
            )
            assert not is_special_network(d.target), d
            assert d.target.prefixlen in {policy.subnet_v4_prefix, policy.subnet_v6_prefix}


@settings(max_examples=150, deadline=None)
@given(policy=policies, cap=st.integers(1, 5), specs=hit_specs)
def test_tracked_addresses_never_exceed_the_cap(
    policy: JailPolicy, cap: int, specs: HitSpecs
) -> None:
    scorer = Scorer(replace(policy, max_tracked=cap))
    for h in build_hits(specs):
        scorer.feed(h)
        stats = scorer.stats()
        # packed first hits, and keyed (or odd-time) ones as Entries
        assert stats["tracked_admission"] <= cap * (tiers.ADMISSION_PER_TRACKED + 1)
        assert stats["tracked_climbing"] <= cap * tiers.CLIMBING_PER_TRACKED
        assert stats["tracked_windows"] <= cap
        assert stats["tracked"] == scorer.tracked_count()


@settings(max_examples=200, deadline=None)
@given(policy=policies, specs=hit_specs)
def test_durations_are_positive_and_capped(policy: JailPolicy, specs: HitSpecs) -> None:
    for d in run(policy, build_hits(specs)):
        if math.isinf(policy.ban_time):
            assert d.duration == math.inf
        else:
            assert 0 < d.duration < math.inf
            assert d.duration <= policy.max_ban_time
            assert d.duration >= min(policy.ban_time, policy.max_ban_time)
