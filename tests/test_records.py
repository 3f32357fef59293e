"""network_text: the canonical text every output (logs, JSON, state) uses for a target."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st

from blocker.records import network_text


@settings(max_examples=2000)
@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_text_is_what_ipaddress_prints(value: int, prefix: int) -> None:
    net = IPv6Network((value, prefix), strict=False)
    expected = str(net.network_address) if prefix == 128 else str(net)
    assert network_text(net) == expected


@settings(max_examples=2000)
@given(
    st.integers(0, 2**16 - 1),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF]), min_size=7, max_size=7),
)
def test_global_unicast_with_zero_runs(first: int, rest: list[int]) -> None:
    # Runs of zero groups are where compression rules differ between implementations.
    groups = [0x2000 | (first & 0x1FFF), *rest]
    address = IPv6Address(":".join(f"{g:x}" for g in groups))
    assert network_text(IPv6Network(address)) == str(address)


def test_ipv4_and_networks() -> None:
    assert network_text(IPv4Network("198.51.100.7/32")) == "198.51.100.7"
    assert network_text(IPv4Network("203.0.113.0/24")) == "203.0.113.0/24"
    assert network_text(IPv6Network("2001:db8:1::/64")) == "2001:db8:1::/64"
    assert network_text(IPv6Network("::ffff:c000:207/128")) == "::ffff:c000:207"


@settings(max_examples=2000)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_text_is_what_ipaddress_prints(value: int, prefix: int) -> None:
    net = IPv4Network((value, prefix), strict=False)
    expected = str(net.network_address) if prefix == 32 else str(net)
    assert network_text(net) == expected
