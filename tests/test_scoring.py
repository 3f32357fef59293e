"""scoring.py: concrete ban scenarios, replayed on the events' own timestamps."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import cast

import pytest

from blocker import tiers
from blocker.ban_book import GATE_CACHE_SIZE
from blocker.netfilter import address_of
from blocker.records import Address, Decision, Hit, Network
from blocker.scoring import JailPolicy, Scorer, host_network_v4

SYNACK = "unsolicited_synack"
T0 = 1_700_000_000.0


def a(text: str) -> Address:
    return ip_address(text)


def n(text: str) -> Network:
    return ip_network(text)


def hit(
    addr: str,
    t: float,
    *,
    filter_: str = SYNACK,
    weight: float = 1.0,
    key: tuple[object, ...] | None = None,
) -> Hit:
    return Hit(
        time=T0 + t, jail="test", filter=filter_, offender=a(addr), weight=weight, distinct_key=key
    )


def feed_all(scorer: Scorer, hits: Iterable[Hit]) -> list[Decision]:
    out: list[Decision] = []
    for h in hits:
        out.extend(scorer.feed(h))
    return out


def burst(addr: str, start: float, count: int = 5, step: float = 1.0) -> list[Hit]:
    return [hit(addr, start + i * step) for i in range(count)]


ADMIT = tiers.ADMISSION_PER_TRACKED  # packed first hits held per max_tracked


def noise(count: int, t: float) -> list[Hit]:
    """One hit at `t` from each of `count` IPv6 sources never seen elsewhere in a test."""
    return [hit(f"2001:db8:ffff::{i:x}", t) for i in range(1, count + 1)]


def neighbours(prefix: str, count: int) -> list[Hit]:
    """Bursts from prefix+"1" .. prefix+str(count), 10 s apart."""
    return [h for i in range(1, count + 1) for h in burst(f"{prefix}{i}", i * 10)]


def targets(decisions: Sequence[Decision]) -> list[str]:
    return [d.target_text for d in decisions]


def scorer(**kw: object) -> Scorer:
    return Scorer(JailPolicy(name="test", **kw))  # type: ignore[arg-type]


# -- the score window ----------------------------------------------------------------------


def test_five_synacks_within_a_minute_ban_exactly_once_at_the_fifth() -> None:
    s = scorer()
    results = [s.feed(h) for h in burst("198.51.100.7", 0, count=5, step=10)]
    assert results[:4] == [[], [], [], []]
    [decision] = results[4]
    assert decision.target == n("198.51.100.7/32")
    assert decision.target_text == "198.51.100.7"
    assert decision.jail == "test"
    assert decision.at == T0 + 40
    assert decision.duration == 600.0
    assert decision.score == 5.0
    assert decision.filters == (SYNACK,)
    assert decision.reason == "score 5.0 >= 5 within 60s: unsolicited_synack x5"
    assert s.stats()["bans"] == 1


def test_four_synacks_do_not_ban() -> None:
    assert feed_all(scorer(), burst("198.51.100.7", 0, count=4)) == []


def test_five_synacks_over_five_minutes_do_not_ban() -> None:
    assert feed_all(scorer(), burst("198.51.100.7", 0, count=5, step=75)) == []


def test_a_hit_expires_exactly_one_window_later() -> None:
    # now - t >= window expires: the first hit is gone when the fifth arrives at +60 s.
    assert feed_all(scorer(), burst("198.51.100.7", 0, count=5, step=15)) == []
    assert len(feed_all(scorer(), burst("198.51.100.7", 0, count=5, step=14.99))) == 1


def test_hits_while_banned_make_no_decision_but_are_counted() -> None:
    s = scorer()
    assert len(feed_all(s, burst("198.51.100.7", 0))) == 1
    assert feed_all(s, burst("198.51.100.7", 10, count=20)) == []
    assert s.stats()["while_banned"] == 20
    assert s.stats()["hits"] == 25


def test_scan_of_five_distinct_ports_bans() -> None:
    s = scorer()
    hits = [
        hit("203.0.113.9", i, filter_="port_scan", key=("192.0.2.1", port))
        for i, port in enumerate([22, 23, 80, 443, 3389])
    ]
    [decision] = feed_all(s, hits)
    assert decision.filters == ("port_scan",)
    assert decision.at == T0 + 4


def test_one_client_retrying_the_same_closed_port_does_not_ban() -> None:
    s = scorer()
    hits = [
        hit("203.0.113.9", i * 6, filter_="closed_port", key=("192.0.2.1", 8080)) for i in range(10)
    ]
    assert feed_all(s, hits) == []
    # 1 in full + 9 repeats at 0.25
    assert s.explain(a("203.0.113.9"), T0 + 54)["score"] == 3.25


def test_repeats_count_at_repeat_factor_and_mix_with_unkeyed_hits() -> None:
    s = scorer(threshold=3.0)
    key = ("192.0.2.1", 25)
    # 1 (full) + 0.25 + 0.25 + 1 (unkeyed) = 2.5, then a new key: 3.5 -> ban
    hits = [
        hit("203.0.113.9", 0, filter_="scan", key=key),
        hit("203.0.113.9", 1, filter_="scan", key=key),
        hit("203.0.113.9", 2, filter_="scan", key=key),
        hit("203.0.113.9", 3),
    ]
    assert feed_all(s, hits) == []
    [decision] = s.feed(hit("203.0.113.9", 4, filter_="scan", key=("192.0.2.1", 26)))
    assert decision.score == 3.5
    assert decision.filters == ("scan", SYNACK)
    assert decision.reason.endswith(": scan x4, unsolicited_synack x1")


def test_a_key_counts_its_heaviest_hit_in_full() -> None:
    s = scorer(threshold=100.0)
    key = ("192.0.2.1", 22)
    feed_all(
        s, [hit("203.0.113.9", 0, key=key, weight=3.0), hit("203.0.113.9", 1, key=key, weight=1.0)]
    )
    # max 3 + 0.25 * 1
    assert s.explain(a("203.0.113.9"), T0 + 1)["score"] == 3.25
    # once the heavy hit expires, a light one is the key's maximum again
    feed_all(
        s,
        [
            hit("203.0.113.9", 40, key=key, weight=1.0),
            hit("203.0.113.9", 60.5, key=("x",), weight=0.0),
        ],
    )
    assert s.explain(a("203.0.113.9"), T0 + 60.5)["score"] == 1.25


def test_fractional_weights_reach_the_threshold_exactly() -> None:
    s = scorer(threshold=0.3)
    assert len(feed_all(s, [hit("198.51.100.7", i, weight=0.1) for i in range(3)])) == 1
    s = scorer()
    decisions = feed_all(s, [hit("198.51.100.8", i, weight=0.5) for i in range(10)])
    assert [d.at for d in decisions] == [T0 + 9]


def test_slightly_late_lines_still_count_and_expire_in_time_order() -> None:
    s = scorer()
    hits = [hit("198.51.100.7", t) for t in (10, 12, 11, 9, 30)]
    [decision] = feed_all(s, hits)
    assert decision.at == T0 + 30
    late = scorer()
    # the hit at t=0 arrives last: it is already 60 s old and must not count
    assert feed_all(late, [*burst("198.51.100.7", 60, count=4), hit("198.51.100.7", 0)]) == []
    assert late.stats()["stale"] == 1


def test_bad_times_and_weights_do_not_crash() -> None:
    s = scorer()
    assert s.feed(hit("198.51.100.7", math.nan)) == []
    assert s.feed(hit("198.51.100.7", math.inf)) == []
    assert s.now == -math.inf
    assert (
        feed_all(s, [hit("198.51.100.7", 0, weight=math.nan), hit("198.51.100.7", 1, weight=-5.0)])
        == []
    )
    [decision] = s.feed(hit("198.51.100.7", 2, weight=math.inf))
    assert decision.duration == 600.0


def test_per_address_hit_list_is_capped() -> None:
    s = scorer()
    feed_all(s, (hit("198.51.100.7", i * 0.001, weight=0.0) for i in range(5000)))
    hits = s.explain(a("198.51.100.7"), T0 + 5)["hits"]
    assert isinstance(hits, list)
    assert len(hits) == 4096


# -- ban time ------------------------------------------------------------------------------


def test_ban_time_grows_and_caps() -> None:
    s = scorer(ban_time=600.0, ban_factor=2.0, max_ban_time=3000.0)
    durations = []
    t = 0.0
    for _ in range(5):
        [decision] = feed_all(s, burst("198.51.100.7", t))
        durations.append(decision.duration)
        t = decision.at - T0 + decision.duration  # the next burst starts when the ban ends
    assert durations == [600.0, 1200.0, 2400.0, 3000.0, 3000.0]


def test_bans_older_than_history_window_do_not_grow_the_ban() -> None:
    s = scorer(history_window=3600.0)
    assert [d.duration for d in feed_all(s, burst("198.51.100.7", 0))] == [600.0]
    assert [d.duration for d in feed_all(s, burst("198.51.100.7", 3000))] == [1200.0]
    # the ban at +4 s is now more than an hour old; the one at +3004 s still counts
    assert [d.duration for d in feed_all(s, burst("198.51.100.7", 5000))] == [1200.0]


def test_permanent_bans() -> None:
    s = scorer(ban_time=math.inf)
    [decision] = feed_all(s, burst("198.51.100.7", 0))
    assert decision.duration == math.inf
    assert feed_all(s, burst("198.51.100.7", 10**7)) == []
    assert s.explain(a("198.51.100.7"), T0 + 10**7)["banned_until"] == "permanent"


def test_huge_ban_factor_stays_finite() -> None:
    s = scorer(ban_factor=1e300, max_ban_time=1e6)
    s.restore_history([(n("198.51.100.7/32"), T0 - i) for i in range(1, 100)])
    [decision] = feed_all(s, burst("198.51.100.7", 0))
    assert decision.duration == 1e6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 0.0),
        ("window", -1.0),
        ("window", math.nan),
        ("ban_time", 0.0),
        ("ban_factor", 0.5),
        ("max_ban_time", math.inf),
        ("repeat_factor", -0.1),
        ("subnet_min_offenders", -1),
        ("subnet_v4_prefix", 33),
        ("subnet_v6_prefix", -1),
        ("max_tracked", 0),
    ],
)
def test_bad_policies_are_rejected_with_the_field_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"jail 'test': {field} must be"):
        scorer(**{field: value})


# -- subnet escalation ---------------------------------------------------------------------


def test_three_offenders_in_a_slash24_escalate_to_the_subnet() -> None:
    s = scorer()
    first = feed_all(s, burst("203.0.113.1", 0))
    second = feed_all(s, burst("203.0.113.2", 100))
    third = feed_all(s, burst("203.0.113.3", 200))
    assert targets(first) == ["203.0.113.1"]
    assert targets(second) == ["203.0.113.2"]
    assert targets(third) == ["203.0.113.3", "203.0.113.0/24"]
    subnet = third[1]
    assert subnet.target == n("203.0.113.0/24")
    assert subnet.duration == 600.0
    assert subnet.at == T0 + 204
    assert subnet.reason.startswith("3 hosts >= 3 banned within 3600s in 203.0.113.0/24")
    assert s.stats()["subnet_bans"] == 1
    # a fourth offender while the subnet is banned: a host ban, no second subnet ban
    assert targets(feed_all(s, burst("203.0.113.4", 300))) == ["203.0.113.4"]


def test_two_offenders_and_an_innocent_neighbour_do_not_escalate() -> None:
    s = scorer()
    decisions = feed_all(
        s,
        [*burst("203.0.113.1", 0), *burst("203.0.113.2", 100), *burst("203.0.113.3", 200, 4)],
    )
    assert targets(decisions) == ["203.0.113.1", "203.0.113.2"]


def test_offenders_spread_beyond_subnet_window_do_not_escalate() -> None:
    s = scorer(subnet_window=3600.0)
    decisions = feed_all(
        s, [*burst("203.0.113.1", 0), *burst("203.0.113.2", 1800), *burst("203.0.113.3", 3700)]
    )
    assert targets(decisions) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


def test_the_same_offender_banned_three_times_does_not_escalate() -> None:
    s = scorer(ban_time=10.0)
    decisions = feed_all(
        s, [*burst("203.0.113.1", 0), *burst("203.0.113.1", 100), *burst("203.0.113.1", 200)]
    )
    assert targets(decisions) == ["203.0.113.1"] * 3


def test_subnet_escalation_can_be_disabled() -> None:
    s = scorer(subnet_min_offenders=0)
    decisions = feed_all(s, neighbours("203.0.113.", 5))
    assert targets(decisions) == [f"203.0.113.{i}" for i in range(1, 6)]


def test_subnet_holding_an_own_address_is_never_banned() -> None:
    s = scorer(own_addresses=(a("203.0.113.200"),))
    decisions = feed_all(s, neighbours("203.0.113.", 5))
    assert targets(decisions) == [f"203.0.113.{i}" for i in range(1, 6)]


def test_subnet_overlapping_the_allowlist_is_never_banned() -> None:
    s = scorer(allow=(n("203.0.113.128/25"),))
    decisions = feed_all(s, neighbours("203.0.113.", 5))
    assert targets(decisions) == [f"203.0.113.{i}" for i in range(1, 6)]


def test_ipv6_offenders_escalate_to_their_slash64() -> None:
    s = scorer()
    decisions = feed_all(s, neighbours("2001:db8:1:2::", 3))
    assert targets(decisions) == [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2::3",
        "2001:db8:1:2::/64",
    ]
    assert decisions[0].target.prefixlen == 128


def test_ipv6_offenders_in_different_slash64s_do_not_escalate() -> None:
    s = scorer()
    decisions = feed_all(s, [h for i in range(1, 4) for h in burst(f"2001:db8:1:{i}::1", i * 10)])
    assert len(decisions) == 3


def test_ipv4_mapped_offenders_are_banned_but_never_escalate_into_special_space() -> None:
    s = scorer()
    decisions = feed_all(s, neighbours("::ffff:203.0.113.", 3))
    assert [d.target for d in decisions] == [n(f"::ffff:203.0.113.{i}/128") for i in range(1, 4)]


def test_subnet_ban_time_grows_with_its_own_history() -> None:
    s = scorer(ban_time=100.0, subnet_window=10_000.0)
    decisions = feed_all(s, neighbours("203.0.113.", 3))
    assert decisions[-1].duration == 100.0
    # after the subnet ban ends, a new offender there re-escalates with a doubled ban
    later = feed_all(s, burst("203.0.113.50", 1000))
    assert targets(later) == ["203.0.113.50", "203.0.113.0/24"]
    assert later[1].duration == 200.0


# -- never banned --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "::1",
        "169.254.1.1",
        "fe80::1",
        "224.0.0.1",
        "ff02::1",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "192.0.2.10",  # allowlisted address
        "198.51.100.77",  # inside an allowlisted CIDR
        "2001:db8:aa::5",  # inside an allowlisted IPv6 CIDR
        "203.0.113.250",  # the host's own address
        "2001:db8:ff::1",  # the host's own IPv6 address
    ],
)
def test_never_banned(addr: str) -> None:
    s = scorer(
        allow=(n("192.0.2.10/32"), n("198.51.100.0/24"), n("2001:db8:aa::/48")),
        own_addresses=(a("203.0.113.250"), a("2001:db8:ff::1")),
    )
    assert feed_all(s, burst(addr, 0, count=50)) == []
    assert s.stats()["ignored"] == 50
    assert s.tracked_count() == 0
    assert s.explain(a(addr), T0 + 50)["never_banned_because"] in {
        "special",
        "allowlisted",
        "own address",
    }


# -- state from outside --------------------------------------------------------------------


def test_forget_lets_the_address_start_from_zero_but_keeps_history() -> None:
    s = scorer()
    feed_all(s, burst("198.51.100.7", 0, count=4))
    s.forget(n("198.51.100.7/32"))
    assert feed_all(s, burst("198.51.100.7", 10, count=4)) == []
    [decision] = s.feed(hit("198.51.100.7", 20))
    s.forget(decision.target)
    assert feed_all(s, burst("198.51.100.7", 30, count=4)) == []
    [again] = s.feed(hit("198.51.100.7", 40))
    assert again.duration == 1200.0  # history survives an unban


def test_forgotten_host_does_not_count_towards_its_subnet() -> None:
    s = scorer()
    feed_all(s, [*burst("203.0.113.1", 0), *burst("203.0.113.2", 100)])
    s.forget(n("203.0.113.2/32"))
    assert targets(feed_all(s, burst("203.0.113.3", 200))) == ["203.0.113.3"]


def test_forgotten_subnet_is_not_re_escalated_by_old_offenders() -> None:
    s = scorer()
    decisions = feed_all(s, neighbours("203.0.113.", 3))
    assert targets(decisions)[-1] == "203.0.113.0/24"
    s.forget(n("203.0.113.0/24"))
    assert targets(feed_all(s, burst("203.0.113.4", 100))) == ["203.0.113.4"]


def test_restored_history_grows_the_first_ban_and_counts_for_subnets() -> None:
    s = scorer()
    s.restore_history(
        [
            (n("198.51.100.7/32"), T0 - 3600),
            (n("203.0.113.1/32"), T0 - 600),
            (n("203.0.113.2/32"), T0 - 300),
            (n("192.0.2.1/32"), T0 - 86400 * 31),  # beyond history_window
        ]
    )
    assert [d.duration for d in feed_all(s, burst("198.51.100.7", 0))] == [1200.0]
    assert [d.duration for d in feed_all(s, burst("192.0.2.1", 0))] == [600.0]
    assert targets(feed_all(s, burst("203.0.113.3", 0))) == ["203.0.113.3", "203.0.113.0/24"]


def test_mark_banned_silences_until_the_ban_ends() -> None:
    s = scorer()
    s.feed(hit("198.51.100.7", 0))
    s.mark_banned(n("198.51.100.7/32"), T0 + 1000)
    assert s.tracked_count() == 0
    assert feed_all(s, burst("198.51.100.7", 10, count=10)) == []
    assert len(feed_all(s, burst("198.51.100.7", 1000))) == 1


def test_mark_banned_subnet_is_not_escalated_again() -> None:
    s = scorer()
    s.mark_banned(n("203.0.113.0/24"), T0 + 10_000)
    decisions = feed_all(s, neighbours("203.0.113.", 3))
    assert targets(decisions) == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


# -- bounded memory ------------------------------------------------------------------------


def test_tracked_addresses_are_capped() -> None:
    s = scorer(max_tracked=3)
    cap = 3 * ADMIT
    for i in range(1, cap + 11):  # IPv4 and IPv6 first hits share the cap
        s.feed(hit(f"198.51.100.{i}" if i % 2 else f"2001:db8::{i:x}", i / 10))
        assert s.tracked_count() <= cap
    assert s.stats()["evicted"] == 10
    assert s.stats()["tracked_admission"] == cap


def test_admission_pushes_out_the_oldest_first_hit_whatever_its_family() -> None:
    s = scorer(max_tracked=1)
    firsts = [f"198.51.100.{i}" if i % 3 else f"2001:db8::{i:x}" for i in range(1, ADMIT + 1)]
    feed_all(s, [hit(src, i / 10) for i, src in enumerate(firsts)])
    s.feed(hit(firsts[1], 2))  # climbs: it leaves admission, its place in the FIFO is skipped
    for k, newcomer in enumerate(["203.0.113.1", "2001:db8:1::1", "203.0.113.2", "203.0.113.3"]):
        s.feed(hit(newcomer, 3 + k))
    # room for 12, one of them left by the 2nd: the 1st, 3rd and 4th are pushed out
    tiers_now = [s.explain(a(src), T0 + 6)["tier"] for src in firsts]
    assert tiers_now == ["doorkeeper", "climbing", "doorkeeper", "doorkeeper", *["admission"] * 8]
    assert s.stats()["tracked_admission"] == ADMIT


def test_a_storm_larger_than_max_tracked_keeps_every_first_hit() -> None:
    # 10 x ADMIT reflectors, 5 rounds of one hit each: every first hit is still held when the
    # second comes, so each is banned at its 5th (a first hit lost would take a 6th).
    s = scorer(max_tracked=10, subnet_min_offenders=1000)
    sources = [f"198.51.{i >> 8}.{i & 255}" for i in range(10 * ADMIT // 2)]
    sources += [str(a(f"2001:db8:{i:x}::1")) for i in range(10 * ADMIT // 2)]
    decisions = []
    for r in range(5):
        decisions += feed_all(s, [hit(src, r * 10 + i / 1000) for i, src in enumerate(sources)])
    assert sorted(targets(decisions)) == sorted(sources)
    assert s.stats()["evicted"] == 0


def test_a_source_that_came_back_climbs_out_of_reach_of_one_hit_noise() -> None:
    s = scorer(max_tracked=3)
    feed_all(s, [hit("198.51.100.1", 0), hit("198.51.100.1", 1)])
    assert s.explain(a("198.51.100.1"), T0 + 1)["tier"] == "climbing"
    feed_all(s, noise(1000, 2))  # 1000 one-hit sources through an admission tier of 36
    assert s.explain(a("198.51.100.1"), T0 + 2)["score"] == 2.0
    assert s.stats()["evicted"] == 1000 - 3 * ADMIT
    assert s.stats()["tracked_admission"] == 3 * ADMIT


def test_an_evicted_source_climbs_again_without_its_forgotten_hit() -> None:
    s = scorer(max_tracked=2)
    feed_all(s, [hit("198.51.100.1", 0), *noise(2 * ADMIT, 1)])
    assert s.explain(a("198.51.100.1"), T0 + 2)["tier"] == "doorkeeper"
    assert s.explain(a("198.51.100.1"), T0 + 2)["score"] == 0.0
    s.feed(hit("198.51.100.1", 3))  # readmitted: its first hit is not counted again
    info = s.explain(a("198.51.100.1"), T0 + 3)
    assert (info["tier"], info["score"]) == ("climbing", 1.0)
    assert s.stats()["readmitted"] == 1
    # Four more: 5 real hits in the window ban it; the reason counts only those.
    [decision] = feed_all(s, burst("198.51.100.1", 4, count=4))
    assert decision.reason.endswith("unsolicited_synack x5")


def test_the_doorkeeper_forgets_after_the_window() -> None:
    s = scorer(max_tracked=1)
    feed_all(s, [hit("198.51.100.1", 0), *noise(ADMIT, 1)])
    assert s.explain(a("198.51.100.1"), T0 + 1)["tier"] == "doorkeeper"
    s.feed(hit("198.51.100.3", 100))
    assert s.explain(a("198.51.100.1"), T0 + 100)["tier"] is None
    s.feed(hit("198.51.100.1", 101))  # a new source again: admission, not climbing
    assert s.explain(a("198.51.100.1"), T0 + 101)["tier"] == "admission"
    assert s.stats()["readmitted"] == 0


def test_under_flood_shows_in_stats_for_one_window() -> None:
    s = scorer(max_tracked=1)
    feed_all(s, [hit("198.51.100.1", 0), *noise(ADMIT, 1)])
    assert s.stats()["under_flood"] is True
    s.feed(hit("198.51.100.1", 62))
    assert s.stats()["under_flood"] is False


def test_sources_per_minute_counts_new_sources_by_log_time() -> None:
    s = scorer()
    for i in range(30):
        s.feed(hit(f"198.51.100.{i + 1}", i))
    assert s.stats()["sources_per_minute"] == 30
    s.feed(hit("203.0.113.1", 200))  # two minutes on: the old count is no estimate now
    assert s.stats()["sources_per_minute"] == 1


def test_plain_hits_of_two_filters_make_a_full_window() -> None:
    s = scorer()
    s.feed(hit("198.51.100.1", 0))
    s.feed(hit("198.51.100.1", 1, filter_="outgoing_rst", weight=0.5))
    info = s.explain(a("198.51.100.1"), T0 + 1)
    assert (info["tier"], info["score"]) == ("window", 1.5)


def test_a_climbing_source_past_16_hits_moves_to_a_full_window() -> None:
    s = scorer(threshold=100)
    feed_all(s, burst("198.51.100.1", 0, count=16, step=0.5))
    assert s.explain(a("198.51.100.1"), T0 + 8)["tier"] == "climbing"
    s.feed(hit("198.51.100.1", 8))
    info = s.explain(a("198.51.100.1"), T0 + 8)
    assert (info["tier"], info["score"]) == ("window", 17.0)


def test_an_ipv6_address_never_shares_state_with_the_ipv4_address_it_spells() -> None:
    s = scorer(max_tracked=1)
    feed_all(s, [hit("203.0.113.9", 0), hit("203.0.113.9", 1)])
    # Special: refused and gated; after the gate forgets it, refused again, never counted.
    s.feed(hit("::203.0.113.9", 2))
    assert s.explain(a("203.0.113.9"), T0 + 2)["score"] == 2.0
    s.feed(hit("2001:db8::1", 3))
    assert s.explain(a("2001:db8::1"), T0 + 3)["tier"] == "admission"


def test_one_million_ban_marks_cost_flat_gate_work() -> None:
    # Each ban and each refusal enters the gate; rebuilding it copies the marks. The work
    # must stay linear in the number of gate entries whatever the marks (the reference
    # copied every mark on every ban past 65,536 of them).
    s = scorer(max_tracked=1_000_000)
    bans = 200_000
    for i in range(bans):
        s.mark_banned(ip_network((0x0A000000 + i, 32)), T0 + 10_000)
        if i % 2:
            s.feed(hit(f"127.0.{i >> 8 & 255}.{i & 255}", 1))  # a refusal
    copied = s.stats()["gate_copies"]
    assert isinstance(copied, int)
    assert copied <= 2 * (bans + bans // 2)
    assert bans > GATE_CACHE_SIZE


def test_a_flood_of_one_off_sources_does_not_evict_a_returning_attacker() -> None:
    # Cap 100; the attacker comes back after every 80 new sources: the flood's one-off
    # windows go first, and each return earns the attacker another pass.
    s = scorer(max_tracked=100)
    decisions = []
    for i in range(400 * ADMIT):
        if i % (80 * ADMIT) == 0:
            decisions += s.feed(hit("203.0.113.7", i // ADMIT / 100))
        s.feed(hit(f"2001:db8::{i:x}", i // ADMIT / 100))
        assert s.stats()["tracked_admission"] <= 100 * ADMIT
    decisions += s.feed(hit("203.0.113.7", 4))
    assert targets(decisions) == ["203.0.113.7"]
    assert s.stats()["evicted"] >= 300 * ADMIT


def test_a_source_seen_once_scores_like_any_window() -> None:
    # A first hit is kept as that hit alone until the source comes back.
    s = scorer()
    assert s.feed(hit("198.51.100.7", 0, weight=2.0)) == []
    assert s.explain(a("198.51.100.7"), T0 + 1)["score"] == 2.0
    assert targets(feed_all(s, [hit("198.51.100.7", 1, weight=3.0)])) == ["198.51.100.7"]
    assert targets(s.feed(hit("198.51.100.8", 2, weight=5.0))) == ["198.51.100.8"]
    s.feed(hit("198.51.100.9", 3, weight=4.0))
    assert s.feed(hit("198.51.100.9", 70)) == []  # the first hit left the window
    assert s.explain(a("198.51.100.9"), T0 + 70)["score"] == 1.0


def test_windows_without_score_go_before_any_live_one() -> None:
    s = scorer(max_tracked=2)
    scan = {"filter_": "port_scan"}
    feed_all(
        s,
        [
            hit("198.51.100.1", 0, key=(a("192.0.2.1"), 1), **scan),  # type: ignore[arg-type]
            hit("198.51.100.1", 0, key=(a("192.0.2.1"), 2), **scan),  # type: ignore[arg-type]
            hit("198.51.100.2", 100, key=(a("192.0.2.1"), 1), **scan),  # type: ignore[arg-type]
            hit("198.51.100.2", 101, key=(a("192.0.2.1"), 2), **scan),  # type: ignore[arg-type]
            hit("198.51.100.3", 102, key=(a("192.0.2.1"), 1), **scan),  # type: ignore[arg-type]
            hit("198.51.100.3", 102, key=(a("192.0.2.1"), 2), **scan),  # type: ignore[arg-type]
        ],
    )
    # .1's window expired: dropped for .3, not counted as evicted
    assert s.stats()["evicted"] == 0
    assert s.explain(a("198.51.100.2"), T0 + 102)["score"] == 2.0
    assert s.explain(a("198.51.100.3"), T0 + 102)["tier"] == "window"


# -- introspection -------------------------------------------------------------------------


def test_explain_is_json_and_tells_the_story() -> None:
    s = scorer()
    feed_all(s, [*burst("203.0.113.1", 0), *burst("203.0.113.2", 100)])
    s.feed(hit("203.0.113.2", 200))  # banned until +704: not scored
    s.feed(hit("203.0.113.2", 800, filter_="port_scan", key=(a("192.0.2.1"), 22)))
    info = s.explain(a("203.0.113.2"), T0 + 801)
    json.dumps(info, allow_nan=False)
    assert info["score"] == 1.0
    assert info["hits"] == [
        {"time": T0 + 800, "filter": "port_scan", "key": ["192.0.2.1", 22], "weight": 1.0}
    ]
    assert info["banned_until"] is None
    assert info["earlier_bans"] == 1
    assert info["never_banned_because"] is None
    assert info["subnet"] == "203.0.113.0/24"
    assert info["subnet_offenders"] == 2
    banned = s.explain(a("203.0.113.1"), T0 + 10)
    assert banned["banned_until"] == T0 + 604
    assert json.loads(json.dumps(banned, allow_nan=False)) == banned


def test_stats_count_everything() -> None:
    s = scorer()
    feed_all(s, [*burst("198.51.100.7", 0, count=6), hit("127.0.0.1", 7), hit("::1", 8)])
    assert s.stats() == {
        "hits": 8,
        "ignored": 2,
        "while_banned": 1,
        "stale": 0,
        "tracked": 0,
        "tracked_admission": 0,
        "tracked_climbing": 0,
        "tracked_windows": 0,
        "evicted": 0,
        "readmitted": 0,
        "sources_per_minute": 1,
        "under_flood": False,
        "gate_copies": 0,
        "bans": 1,
        "subnet_bans": 0,
    }


def test_a_climbing_hit_exactly_one_window_old_has_left_it() -> None:
    s = scorer()
    feed_all(s, burst("198.51.100.1", 0, count=4))
    assert s.explain(a("198.51.100.1"), T0 + 3)["tier"] == "climbing"
    assert s.feed(hit("198.51.100.1", 60)) == []  # the hit at 0 is out: 4, not 5
    assert targets(s.feed(hit("198.51.100.1", 60.5))) == ["198.51.100.1"]


def test_a_retracted_ban_leaves_no_mark_and_no_history() -> None:
    s = scorer()
    [decision] = feed_all(s, burst("198.51.100.7", 0))
    s.retract(decision.target, decision.at)
    info = s.explain(a("198.51.100.7"), T0 + 5)
    assert (info["banned_until"], info["earlier_bans"]) == (None, 0)
    [again] = feed_all(s, burst("198.51.100.7", 10))
    assert again.duration == 600.0  # not doubled by the ban that never happened


@pytest.mark.parametrize(
    "times",
    [
        [0.000001, 7.250003, 7.250003, 50.999999],  # whole microseconds: packed in one int
        [0.1234567, 1.0, 2.5, 3.0000004],  # finer than log lines: held as a full window
        [5.0, 1.000002, 3.5, 2.25],  # late lines, out of order
    ],
)
def test_climbing_hit_times_come_back_exactly_and_ban_at_the_fifth(times: list[float]) -> None:
    s = scorer()
    fed = [T0 + t for t in times]
    for t in fed:
        assert s.feed(Hit(t, "test", SYNACK, a("198.51.100.7"), 1.0)) == []
    report = s.explain(a("198.51.100.7"), max(fed))
    assert report["tier"] in {"climbing", "window"}
    hits = cast(list[dict[str, float]], report["hits"])
    assert [h["time"] for h in hits] == sorted(fed)
    [decision] = s.feed(Hit(max(fed) + 0.5, "test", SYNACK, a("198.51.100.7"), 1.0))
    assert decision.at == max(fed) + 0.5
    assert decision.reason == "score 5.0 >= 5 within 60s: unsolicited_synack x5"


def test_an_ipv4_climbing_source_takes_one_table_slot_and_no_python_object() -> None:
    s = scorer()
    for t in (0.000001, 7.250003, 30.5):
        s.feed(hit("198.51.100.7", t))
    assert s.explain(a("198.51.100.7"), T0 + 31)["tier"] == "climbing"
    s.feed(hit("198.51.100.7", 39.123457))  # the 4th: still one table slot, not a window
    assert s.tiers.counts()["tracked_climbing"] == 1
    assert (len(s.tiers._table), s.tiers._climbing) == (1, {})
    hits = cast(list[dict[str, float]], s.explain(a("198.51.100.7"), T0 + 40)["hits"])
    assert [h["time"] for h in hits] == [T0 + t for t in (0.000001, 7.250003, 30.5, 39.123457)]


def test_an_ipv6_source_takes_one_slot_of_the_ipv6_table_from_its_first_hit() -> None:
    s = scorer()
    s.feed(hit("2001:db8::7", 0.000001))
    assert s.explain(a("2001:db8::7"), T0 + 1)["tier"] == "admission"
    assert (len(s.tiers._table6), s.tiers._once) == (1, {})
    for t in (7.250003, 30.5, 39.123457):
        s.feed(hit("2001:db8::7", t))
    assert s.explain(a("2001:db8::7"), T0 + 40)["tier"] == "climbing"
    assert (len(s.tiers._table), len(s.tiers._table6), s.tiers._climbing) == (0, 1, {})
    hits = cast(list[dict[str, float]], s.explain(a("2001:db8::7"), T0 + 40)["hits"])
    assert [h["time"] for h in hits] == [T0 + t for t in (0.000001, 7.250003, 30.5, 39.123457)]
    assert s.explain(a("2001:db8::7:0:0:0"), T0 + 40)["tier"] is None  # other words, no match


@pytest.mark.parametrize("value", [0, 1, 0x7F000001, 0xC6336407, 0xFFFFFFFE, 0xFFFFFFFF])
def test_host_network_v4_is_the_stdlibs(value: int) -> None:
    # Built around IPv4Network.__init__ for speed: it must hold what __init__ would (a Python
    # upgrade that changes ipaddress internals fails here) and behave the same everywhere.
    made = host_network_v4(IPv4Address(value))
    plain = IPv4Network((value, 32))
    assert type(made) is IPv4Network
    assert made.__dict__.keys() == plain.__dict__.keys()
    assert type(made.network_address) is IPv4Address
    assert made == plain
    assert hash(made) == hash(plain)
    assert {plain: 1}[made] == 1
    assert str(made) == str(plain)
    assert repr(made) == repr(plain)
    assert list(made.hosts()) == list(plain.hosts()) == [IPv4Address(value)]
    assert list(made) == list(plain)
    assert made.num_addresses == 1
    assert made.prefixlen == made.max_prefixlen == 32
    # The engine bans the address objects the parser makes (address_of): the same network.
    kernel = host_network_v4(cast(IPv4Address, address_of(value)))
    assert kernel == plain and hash(kernel) == hash(plain) and {plain: 1}[kernel] == 1
    assert (str(kernel), repr(kernel)) == (str(plain), repr(plain))
    assert list(kernel.hosts()) == [IPv4Address(value)]
    assert made.broadcast_address == plain.broadcast_address
    assert made.hostmask == plain.hostmask
    assert made.with_prefixlen == plain.with_prefixlen
    assert made.subnet_of(IPv4Network((value & 0xFFFFFF00, 24)))
    assert made.overlaps(plain)
    assert made.is_private == plain.is_private
    assert made.supernet() == plain.supernet()
    assert pickle.loads(pickle.dumps(made)) == plain


def test_a_climbing_source_past_what_a_slot_holds_keeps_climbing_as_an_int() -> None:
    s = scorer(threshold=10)
    feed_all(s, burst("198.51.100.1", 0, count=4))
    assert len(s.tiers._table) == 1
    feed_all(s, burst("198.51.100.1", 4, count=4))  # 8 hits: more than a slot's 4
    assert (len(s.tiers._table), len(s.tiers._climbing)) == (0, 1)
    info = s.explain(a("198.51.100.1"), T0 + 8)
    assert (info["tier"], info["score"]) == ("climbing", 8.0)
    [decision] = feed_all(s, burst("198.51.100.1", 8, count=2))
    assert decision.reason.endswith("unsolicited_synack x10")


def test_a_full_climbing_tier_drops_the_least_recently_hit_first() -> None:
    s = scorer(max_tracked=16)  # 192 climbing at most: 1/16 of it is 12
    cap = 16 * tiers.CLIMBING_PER_TRACKED
    for i in range(1, cap + 1):  # each climbs with 2 hits; the first 20 are hit again later
        feed_all(s, [hit(f"198.51.100.{i}", 0), hit(f"198.51.100.{i}", 1)])
    for i in range(1, 21):
        s.feed(hit(f"198.51.100.{i}", 2))
    assert s.stats()["tracked_climbing"] == cap
    feed_all(s, [hit("203.0.113.1", 3), hit("203.0.113.1", 4)])  # one more: room is made
    assert s.stats()["tracked_climbing"] == cap - 12 + 1
    assert s.explain(a("203.0.113.1"), T0 + 4)["tier"] == "climbing"
    for i in range(1, 21):  # hit at 2: kept, those last hit at 1 went first
        assert s.explain(a(f"198.51.100.{i}"), T0 + 4)["score"] == 3.0
    assert s.stats()["evicted"] == 12  # 1/16, though 172 were last hit at the same time


def full_climbing_tier_survivors() -> list[int]:
    """Of 192 sources climbing in a full tier (max_tracked=16), all last hit at the same
    time, the ones left once room is made for one more (12 go)."""
    s = scorer(max_tracked=16)
    cap = 16 * tiers.CLIMBING_PER_TRACKED
    for i in range(1, cap + 1):
        feed_all(s, [hit(f"198.51.100.{i}", 0), hit(f"198.51.100.{i}", 1)])
    feed_all(s, [hit("203.0.113.1", 3), hit("203.0.113.1", 4)])
    return [i for i in range(1, cap + 1) if s.explain(a(f"198.51.100.{i}"), T0 + 4)["score"]]


def test_which_climbing_sources_a_full_tier_drops_does_not_depend_on_the_hash() -> None:
    """Replay and live must decide alike: of sources last hit at the same time, the same go
    whatever slots they sit in, whatever the hash that placed them (the oldest newest hit
    first, then the lowest address)."""
    survivors = full_climbing_tier_survivors()
    assert survivors == list(range(13, 16 * tiers.CLIMBING_PER_TRACKED + 1))
    code = "from tests.test_scoring import full_climbing_tier_survivors as f; print(f())"
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        assert json.loads(out) == survivors


def test_the_admission_fifo_of_keyed_first_hits_lets_go_of_its_flood_sized_table() -> None:
    s = scorer(max_tracked=1000)
    sources = [f"198.51.{i >> 8}.{i & 255}" for i in range(1, 2001)]  # fills it, pushes out
    scan = (a("192.0.2.1"), 22)
    for src in sources:
        s.feed(hit(src, 0, filter_="port_scan", key=scan))
    flooded = sys.getsizeof(s.tiers._once)
    for src in sources[1000:]:  # those still admitted go on: the tier empties
        s.feed(hit(src, 1))
    assert s.stats()["tracked_admission"] == 0
    assert sys.getsizeof(s.tiers._once) * 10 < flooded


def test_the_admission_rings_let_go_once_every_first_hit_has_moved_on() -> None:
    s = scorer(max_tracked=1000)
    v4 = [f"198.51.{i >> 8}.{i & 255}" for i in range(1, 5001)]
    v6 = [f"2001:db8:{i:x}::1" for i in range(1, 5001)]
    feed_all(s, [hit(src, 0) for src in v4 + v6])
    assert len(s.tiers._ring4.words) >= 5000
    feed_all(s, [hit(src, 1) for src in v4 + v6])  # all climb
    assert s.stats()["tracked_admission"] == 0
    assert (len(s.tiers._ring4.words), len(s.tiers._ring6.words)) == (0, 0)


def test_the_admission_ring_is_compacted_when_most_of_it_is_dead() -> None:
    s = scorer(max_tracked=1000)
    live = "203.0.113.9"
    s.feed(hit(live, 0))
    for i in range(1, 20_001):  # each admitted, then climbing: one dead ring entry each
        src = f"198.51.{i >> 8}.{i & 255}"
        feed_all(s, [hit(src, 1 + i // 1000), hit(src, 1 + i // 1000)])
    assert s.stats()["tracked_admission"] == 1
    assert 1 <= len(s.tiers._ring4) <= 2 + 4096
    assert s.explain(a(live), T0 + 30)["tier"] == "admission"
    feed_all(s, noise(ADMIT * 1000, 31))  # the live one is still the oldest: it goes first
    assert s.explain(a(live), T0 + 31)["tier"] == "doorkeeper"
