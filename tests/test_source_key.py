"""source_key.py: IPv6 source keys are salted per process, so no one can choose sources
whose keys share a dict hash; every path makes the same key and gets the address back."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocker import source_key
from blocker.addresses import AllowList
from blocker.doorkeeper import Doorkeeper
from blocker.netfilter import KeyTable, address_of
from blocker.records import Hit
from blocker.scoring import JailPolicy, Scorer
from blocker.source_key import V6_TAG, source_key_v6, v6_address
from blocker.tiers import key_of

M61 = (1 << 61) - 1  # CPython hashes an int as its value modulo this
T0 = 1_700_000_000.0


def colliding_v6(count: int) -> list[int]:
    """`count` addresses of 2001:db8::/32 whose ints all share one hash."""
    base = int(IPv6Address("2001:db8::"))
    found = [base + k * M61 for k in range(count)]
    assert len({hash(ip) for ip in found}) == 1
    assert all(str(IPv6Address(ip)).startswith("2001:db8:") for ip in found)
    return found


def test_sources_chosen_to_share_a_hash_get_keys_that_do_not() -> None:
    chosen = colliding_v6(5000)
    assert len({hash(ip | V6_TAG) for ip in chosen}) == 1  # the unsalted key: one hash
    assert len({hash(source_key_v6(ip)) for ip in chosen}) > 4990


@given(st.integers(0, (1 << 128) - 1))
def test_every_path_makes_the_same_key_and_gives_the_address_back(ip: int) -> None:
    addr = IPv6Address(ip)
    key = source_key_v6(ip)
    assert key >> 128 == 1 and v6_address(key) == ip
    assert key_of(addr) == key == KeyTable()[addr.exploded]
    assert address_of(key) == addr


def test_ipv4_keys_are_the_address_itself() -> None:
    addr = ip_address("198.51.100.7")
    assert key_of(addr) == int(addr) == KeyTable()["198.51.100.7"]
    assert address_of(int(addr)) == addr


def test_the_secret_is_drawn_anew_by_each_process() -> None:
    code = "from blocker.source_key import source_key_v6; print(source_key_v6(1))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 2


def scan_hit(ip: int, t: float) -> Hit:
    return Hit(
        time=T0 + t,
        jail="t",
        filter="port_scan",
        offender=IPv6Address(ip),
        weight=1.0,
        distinct_key=(ip_address("2001:db8::1"), 22),
    )


def test_refused_and_banned_sources_chosen_to_share_a_hash_spread_in_the_engine() -> None:
    """What the engine keys by these sources (the ban book's gate and marks, the tiers'
    dicts) hashes apart: with address objects as keys, 8,000 refused ones cost 9.5 s of
    CPU and 8,000 banned ones 15 s (each insert compares every colliding key)."""
    reserved = int(IPv6Address("4000::"))  # never banned: refused, and cached in the gate
    refused = [reserved + k * M61 for k in range(2000)]
    bannable = colliding_v6(2000)
    s = Scorer(JailPolicy(name="t"))
    for i, ip in enumerate(refused):
        s.feed(scan_hit(ip, i * 1e-3))
    for i, ip in enumerate(bannable):  # keyed first hits: the tiers' admission FIFO
        s.feed(scan_hit(ip, 3 + i * 1e-3))
    assert len({hash(key) for key in s.tiers._once}) > 1990
    for i, ip in enumerate(bannable):  # then banned
        for j in range(1, 6):
            s.feed(Hit(T0 + 5 + j + i * 1e-4, "t", "synack", IPv6Address(ip), 1.0))
    assert s.stats()["bans"] >= 2000
    assert len(s.book.gate) >= 4000
    assert len({hash(key) for key in s.book.gate}) > 0.99 * len(s.book.gate)
    assert len({hash(key) for key in s.book.hosts}) > 0.99 * len(s.book.hosts)


def test_the_allowlist_cache_keys_chosen_sources_apart() -> None:
    allow = AllowList([ip_network("2001:db8:ffff::/48")])
    chosen = colliding_v6(2000)
    assert not any(allow.contains_address(IPv6Address(ip)) for ip in chosen)
    assert len({hash(key) for key in allow._cache}) > 1990


def test_the_doorkeeper_probes_by_the_address_not_the_salted_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which sources a flood makes look seen must not change from one process (one secret)
    to the next, as replay and live decide alike: the cells come from the address."""
    keeper = Doorkeeper(60.0, cells=1 << 10)
    ips = [1, 2, int(IPv6Address("2001:db8::1")), (1 << 128) - 1]
    before = [keeper._probes(source_key_v6(ip)) for ip in ips]
    other = 0xD6E8FEB86659FD93_9E3779B97F4A7C15
    monkeypatch.setattr(source_key, "_SECRET", other)
    monkeypatch.setattr(source_key, "_INVERSE", pow(other, -1, 1 << 128))
    assert [source_key.v6_address(source_key_v6(ip)) for ip in ips] == ips
    assert [keeper._probes(source_key_v6(ip)) for ip in ips] == before
