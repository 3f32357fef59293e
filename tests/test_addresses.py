"""addresses.py: which addresses and subnets may ever be banned."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from itertools import combinations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocker.addresses import (
    BANNABLE_V6,
    SPECIAL_V4,
    SPECIAL_V6,
    AddressRules,
    AllowList,
    host_network,
    is_special,
    is_special_network,
    subnet_of,
)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.255.255.254",
        "169.254.10.20",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "0.1.2.3",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "febf:ffff::1",
        "fec0::1",
        "ff02::1",
        "ff05::1:3",
        "100::1",  # discard-only
        "4000::1",  # IETF reserved
        "::ffff:127.0.0.1",
        "::ffff:169.254.1.1",
        "::ffff:255.255.255.255",
        "::ffff:0.0.0.0",
        "64:ff9b::127.0.0.1",
        "::198.51.100.7",  # deprecated IPv4-compatible form
    ],
)
def test_special_addresses(text: str) -> None:
    assert is_special(ip_address(text))


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.255",
        "10.1.2.3",
        "192.168.1.1",
        "223.255.255.255",
        "1.0.0.0",
        "126.255.255.255",
        "128.0.0.1",
        "169.253.255.255",
        "169.255.0.0",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "fd00::1",  # unique-local: a LAN neighbour can misbehave too
        "::ffff:198.51.100.7",
        "64:ff9b::203.0.113.5",
    ],
)
def test_ordinary_addresses(text: str) -> None:
    assert not is_special(ip_address(text))


def _special_by_the_tables(addr: IPv4Address | IPv6Address) -> bool:
    """The docstring's rule read straight off the tables: slow, obviously right."""
    if isinstance(addr, IPv4Address):
        return any(addr in net for net in SPECIAL_V4)
    if addr in ip_network("::ffff:0:0/96") or addr in ip_network("64:ff9b::/96"):
        return _special_by_the_tables(IPv4Address(int(addr) & 0xFFFFFFFF))
    return not any(addr in net for net in BANNABLE_V6)


# Addresses near every table boundary, and anywhere at all.
_V4 = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([int(net.network_address) for net in SPECIAL_V4]).flatmap(
        lambda base: st.integers(max(0, base - 2**16), min(2**32 - 1, base + 2**24))
    ),
).map(IPv4Address)
_V6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 255).flatmap(lambda top: st.integers(top << 120, ((top + 1) << 120) - 1)),
    st.sampled_from([0xFFFF << 32, 0x64FF9B << 96]).flatmap(
        lambda base: st.integers(base - 2, base + 2**32 + 2)
    ),
).map(IPv6Address)


@given(st.one_of(_V4, _V6))
def test_is_special_agrees_with_the_tables(addr: IPv4Address | IPv6Address) -> None:
    assert is_special(addr) is _special_by_the_tables(addr)


def test_ipv6_tables_partition_the_address_space() -> None:
    tables = SPECIAL_V6 + BANNABLE_V6
    for a, b in combinations(tables, 2):
        assert not a.overlaps(b), (a, b)
    assert sum(net.num_addresses for net in tables) == 2**128


@pytest.mark.parametrize(
    ("text", "special"),
    [
        ("203.0.113.0/24", False),
        ("10.0.0.0/8", False),
        ("127.0.0.0/24", True),
        ("126.0.0.0/7", True),  # reaches into 127/8
        ("169.254.3.0/24", True),
        ("224.1.2.0/24", True),
        ("255.255.255.0/24", True),
        ("0.0.0.0/24", True),
        ("2001:db8:1:2::/64", False),
        ("fd12:3456::/64", False),
        ("fe80::/64", True),
        ("::/64", True),  # would cover ::1, :: and the IPv4-mapped range
        ("::ffff:0:0/96", True),
        ("ff02::/64", True),
        ("::/1", True),  # larger than the bannable 2000::/3
    ],
)
def test_special_networks(text: str, special: bool) -> None:
    assert is_special_network(ip_network(text)) is special


def test_subnet_of_and_host_network() -> None:
    assert subnet_of(ip_address("203.0.113.77"), 24, 64) == IPv4Network("203.0.113.0/24")
    assert subnet_of(ip_address("2001:db8:1:2:3::4"), 24, 64) == IPv6Network("2001:db8:1:2::/64")
    assert subnet_of(ip_address("198.51.100.7"), 16, 48) == IPv4Network("198.51.0.0/16")
    assert host_network(ip_address("198.51.100.7")) == IPv4Network("198.51.100.7/32")
    assert host_network(ip_address("2001:db8::1")) == IPv6Network("2001:db8::1/128")


def test_allowlist_addresses_and_overlaps() -> None:
    allow = AllowList([ip_network("192.0.2.0/28"), ip_network("2001:db8:aa::/48")])
    assert allow.contains_address(ip_address("192.0.2.5"))
    assert not allow.contains_address(ip_address("192.0.2.16"))
    assert allow.contains_address(ip_address("2001:db8:aa:1::9"))
    assert not allow.contains_address(ip_address("2001:db8:ab::1"))
    assert allow.contains_address(ip_address("::ffff:192.0.2.1"))
    assert allow.overlaps(ip_network("192.0.2.0/24"))
    assert allow.overlaps(ip_network("192.0.2.8/30"))
    assert not allow.overlaps(ip_network("198.51.100.0/24"))
    assert allow.overlaps(ip_network("2001:db8::/32"))
    assert not allow.overlaps(ip_network("2001:db8:ab::/48"))
    assert len(allow) == 2
    assert not AllowList()


def test_allowlist_cache_stays_bounded_and_correct() -> None:
    allow = AllowList([ip_network("198.51.100.0/25")], cache_size=8)
    for round_ in range(3):
        for last in range(256):
            addr = ip_address(f"198.51.100.{last}")
            assert allow.contains_address(addr) is (last < 128), (round_, last)
            assert len(allow._cache) <= 8


def test_allowlist_rejects_non_networks() -> None:
    with pytest.raises(TypeError, match="not a network"):
        AllowList([ip_address("192.0.2.1")])  # type: ignore[list-item]


_V4_INT = st.integers(0, 2**32 - 1)


@given(
    st.lists(_V4_INT, max_size=6),
    st.lists(
        st.tuples(_V4_INT, st.integers(0, 32)).map(lambda net: IPv4Network(net, strict=False)),
        max_size=4,
    ),
    st.lists(_V4_INT, min_size=1, max_size=20),
    st.sampled_from(["", "mapped"]),
)
def test_v4_refusal_is_address_refusal_of_the_int(
    own: list[int], allow: list[IPv4Network], values: list[int], v6_too: str
) -> None:
    """The scorer asks a new IPv4 source as its int; the answer (and its order: special,
    own, allowlisted) is address_refusal()'s of the address, asked twice (the cache)."""
    owned: list[IPv4Address | IPv6Address] = [IPv4Address(v) for v in own]
    networks: list[IPv4Network | IPv6Network] = list(allow)
    if v6_too:  # an IPv6 own address and network never answer for an IPv4 one
        owned += [IPv6Address(0xFFFF_0000_0000 | v) for v in own]
        networks.append(IPv6Network("::ffff:0:0/96"))
    # Own and allowed values among those asked, so each answer comes up.
    asked = values + own + [int(net.network_address) for net in allow]
    rules = AddressRules(networks, owned)
    for _ in range(2):
        for value in asked:
            assert rules.v4_refusal(value) == rules.address_refusal(IPv4Address(value))
