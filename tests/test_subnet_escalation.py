"""SubnetOffenders (flat arrays for one-host subnets, a dict for the others, one LRU order
merged by clock) against a readable model: one OrderedDict of {address: ban time} per
subnet, counted by the reference scorer's own count_offender()."""

from __future__ import annotations

import random
from collections import OrderedDict
from ipaddress import IPv4Address, IPv6Address, ip_address

from hypothesis import given
from hypothesis import strategies as st
from reference_scorer import count_offender

from blocker.addresses import subnet_of
from blocker.records import Address, Network
from blocker.subnet_escalation import SubnetOffenders

T0 = 1_700_000_000.0

# Few subnets with a few hosts each, at both prefix lengths the tests use.
POOL: list[Address] = [
    *(IPv4Address(f"192.0.2.{i}") for i in (1, 2, 3, 5, 6, 9, 17, 33)),
    *(IPv4Address(f"198.51.100.{i}") for i in (1, 2, 130)),
    *(IPv6Address(f"2001:db8::{i:x}") for i in (1, 2, 3, 0x11)),
    *(IPv6Address(f"2001:db8:0:1::{i:x}") for i in (1, 5)),
    IPv6Address("2001:db8:0:1:8000::1"),
]


class Model:
    """The readable version: what SubnetOffenders must answer."""

    def __init__(self, min_offenders: int, window: float, v4: int, v6: int, cap: int) -> None:
        self.window, self.v4, self.v6, self.cap = window, v4, v6, cap
        self.keep = max(min_offenders, 1) * 4
        self.subnets: OrderedDict[Network, dict[Address, float]] = OrderedDict()

    def subnet(self, addr: Address) -> Network:
        return subnet_of(addr, self.v4, self.v6)

    def count(self, addr: Address, at: float, now: float) -> int:
        horizon = now - self.window
        subnets, subnet = self.subnets, self.subnet(addr)
        held = count_offender(
            subnets, subnet, addr, at, horizon=horizon, keep=self.keep, cap=self.cap
        )
        return len(held)

    def forget_host(self, addr: Address) -> None:
        self.subnets.get(self.subnet(addr), {}).pop(addr, None)

    def forget_subnet(self, subnet: Network) -> None:
        self.subnets.pop(subnet, None)

    def items(self, escalation: SubnetOffenders) -> list[tuple[int, dict[int, float]]]:
        return [
            (escalation.key(subnet.network_address), {int(h): t for h, t in hosts.items()})
            for subnet, hosts in self.subnets.items()
        ]


def check_same(escalation: SubnetOffenders, model: Model, now: float) -> None:
    assert escalation.items() == model.items(escalation)
    assert len(escalation) == len(model.subnets)
    for addr in POOL:
        subnet = model.subnet(addr)
        assert escalation.offenders(addr) == sorted(model.subnets.get(subnet, {}))
        held = model.subnets.get(subnet, {})
        assert escalation.live(subnet, now) == sum(1 for t in held.values() if now - t < 15)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["count", "count", "count", "count", "late", "host", "subnet"]),
        st.sampled_from(POOL),
        st.integers(0, 6),
    ),
    max_size=60,
)


@given(
    ops=OPS,
    cap=st.integers(1, 6),
    min_offenders=st.integers(0, 3),
    prefixes=st.sampled_from([(24, 64), (30, 126), (29, 112)]),
)
def test_counts_order_and_eviction_match_the_model(
    ops: list[tuple[str, Address, int]],
    cap: int,
    min_offenders: int,
    prefixes: tuple[int, int],
) -> None:
    escalation = SubnetOffenders(min_offenders, 15.0, *prefixes, cap)
    model = Model(min_offenders, 15.0, *prefixes, cap)
    now = T0
    for kind, addr, step in ops:
        now += step
        if kind in ("count", "late"):
            at = now if kind == "count" else now - 3 * step  # "late": may be out of window
            assert escalation.count(addr, at, now) == model.count(addr, at, now)
            assert escalation.last_key == escalation.key(addr)
        elif kind == "host":
            escalation.forget_host(addr)
            model.forget_host(addr)
        else:
            escalation.forget_subnet(model.subnet(addr))
            model.forget_subnet(model.subnet(addr))
        check_same(escalation, model, now)


def test_a_long_run_through_repacks_and_cut_fronts_matches_the_model() -> None:
    """Thousands of counts over more subnets than the cap: the table cuts its front and
    repacks many times while subnets move between it and the dict."""
    rng = random.Random(7)
    hosts = [ip_address(f"2001:db8:{s:x}::{h:x}") for s in range(300) for h in range(1, 5)]
    hosts += [ip_address(f"203.0.113.{h}") for h in range(1, 40)]
    escalation = SubnetOffenders(2, 50.0, 28, 64, 120)
    model = Model(2, 50.0, 28, 64, 120)
    now = T0
    for step in range(20_000):
        now += rng.random() * 0.05
        addr = rng.choice(hosts[:40] if step % 3 == 0 else hosts)
        if rng.random() < 0.01:
            escalation.forget_host(addr)
            model.forget_host(addr)
        else:
            at = now - rng.random() * 60 if rng.random() < 0.05 else now
            assert escalation.count(addr, at, now) == model.count(addr, at, now)
        if step % 997 == 0:
            assert escalation.items() == model.items(escalation)
    assert escalation.items() == model.items(escalation)


def test_a_subnet_emptied_by_forget_host_keeps_its_place() -> None:
    escalation = SubnetOffenders(3, 60.0, 24, 64, 2)
    first, second, third = (ip_address(a) for a in ("192.0.2.1", "198.51.100.1", "203.0.113.1"))
    escalation.count(first, T0, T0)
    escalation.count(second, T0 + 1, T0 + 1)
    escalation.forget_host(first)  # 192.0.2.0/24 is still the oldest, now empty
    assert escalation.items()[0] == (escalation.key(first), {})
    escalation.count(third, T0 + 2, T0 + 2)  # evicts the empty /24, not 198.51.100.0/24
    assert [key for key, _ in escalation.items()] == [
        escalation.key(second),
        escalation.key(third),
    ]


def test_count_many_equals_counting_one_by_one() -> None:
    rng = random.Random(3)
    hosts: list[Address] = [ip_address(f"2001:db8:{i:x}::1") for i in range(50)]
    ats = sorted(T0 + rng.random() * 100 for _ in hosts)
    for cap in (10, 50, 80):
        bulk = SubnetOffenders(2, 60.0, 24, 64, cap)
        bulk.count(ip_address("192.0.2.1"), T0, T0)  # held already: the one-by-one path
        single = SubnetOffenders(2, 60.0, 24, 64, cap)
        single.count(ip_address("192.0.2.1"), T0, T0)
        bulk.count_many(hosts, ats, T0 + 100)
        for addr, at in zip(hosts, ats, strict=True):
            single.count(addr, at, T0 + 100)
        assert bulk.items() == single.items()
        fresh = SubnetOffenders(2, 60.0, 24, 64, cap)  # the fast path: nothing held yet
        fresh.count_many(hosts, ats, T0 + 100)
        one_by_one = SubnetOffenders(2, 60.0, 24, 64, cap)
        for addr, at in zip(hosts, ats, strict=True):
            one_by_one.count(addr, at, T0 + 100)
        assert fresh.items() == one_by_one.items()


def test_ipv6_subnets_chosen_to_share_a_hash_are_held_apart() -> None:
    """At /112, raw subnet keys can be chosen to share one hash (source_key.py): 2,000 such
    subnets with two banned hosts each would make every lookup compare all of them."""
    m61 = (1 << 61) - 1
    base = int(IPv6Address("2001:db8::")) >> 16
    prefixes = [base + k * m61 for k in range(2000)]
    escalation = SubnetOffenders(3, 60.0, 24, 112, 10_000)
    assert len({hash(escalation.key_int(p << 16, True)) for p in prefixes}) == 1
    for i, prefix in enumerate(prefixes):
        for host in (1, 2):
            escalation.count_int(prefix << 16 | host, True, T0 + i * 1e-3, T0 + i * 1e-3)
    assert len({hash(key) for key in escalation._many}) > 0.99 * len(prefixes)
    assert [key for key, _ in escalation.items()] == [
        escalation.key_int(p << 16, True) for p in prefixes
    ]
    assert escalation.offenders(IPv6Address(prefixes[7] << 16 | 9)) == [
        IPv6Address(prefixes[7] << 16 | 1),
        IPv6Address(prefixes[7] << 16 | 2),
    ]


def test_equal_ban_times_keep_the_highest_addresses_whatever_the_order() -> None:
    """Past the quota (4 at min_offenders 1) the oldest go, and among bans at the same
    time the lowest addresses: the order the bans came in must not matter."""
    hosts = [IPv4Address(f"192.0.2.{i}") for i in range(1, 11)]
    for seed in range(20):
        order = hosts[:]
        random.Random(seed).shuffle(order)
        escalation = SubnetOffenders(1, 60.0, 24, 64, 10)
        model = Model(1, 60.0, 24, 64, 10)
        for addr in order:
            assert escalation.count(addr, T0, T0) == model.count(addr, T0, T0)
        assert escalation.offenders(hosts[0]) == hosts[-4:]
        escalation.count(hosts[0], T0 + 1, T0 + 1)  # newer: it stays, the lowest old one goes
        assert escalation.offenders(hosts[0]) == [hosts[0], *hosts[-3:]]


def test_a_ban_exactly_one_window_old_no_longer_counts() -> None:
    escalation = SubnetOffenders(3, 60.0, 24, 64, 10)
    first, second, third = (IPv4Address(f"192.0.2.{i}") for i in (1, 2, 3))
    assert escalation.count(first, T0, T0) == 1
    assert escalation.count(second, T0 + 30, T0 + 30) == 2
    assert escalation.count(third, T0 + 60, T0 + 60) == 2  # first's ban is 60 s old: gone
    assert escalation.offenders(first) == [second, third]
