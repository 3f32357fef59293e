"""The hand-packed ipset batch messages are byte-identical to pyroute2's encoding, and the
LIST dump parser takes what the kernel sends and survives what it does not (no root)."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_IPSET
from pyroute2.netlink.nfnetlink.ipset import ipset_msg

from blocker.firewall import ipset_wire
from blocker.records import Network


def pyroute2_encoding(
    command: int, name: str, family: int, entries: list[tuple[Network, int | None]]
) -> bytes:
    # pyroute2 0.7 types IPSET_ATTR_LINENO as 'hex' (raw bytes), 0.9 as 'be32'.
    raw_lineno = dict(ipset_msg.nla_map)["IPSET_ATTR_LINENO"] == "hex"
    address = "IPSET_ATTR_IPADDR_IPV4" if family == socket.AF_INET else "IPSET_ATTR_IPADDR_IPV6"
    data = []
    for target, timeout in entries:
        attrs: list[list[object]] = [
            ["IPSET_ATTR_IP_FROM", {"attrs": [[address, str(target.network_address)]]}],
            ["IPSET_ATTR_CIDR", target.prefixlen],
        ]
        if timeout is not None:
            attrs.append(["IPSET_ATTR_TIMEOUT", timeout])
        data.append(["IPSET_ATTR_DATA", {"attrs": attrs}])
    msg = ipset_msg()
    msg["header"]["type"] = (NFNL_SUBSYS_IPSET << 8) | command
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = 41
    msg["nfgen_family"] = family
    msg["attrs"] = [
        ["IPSET_ATTR_PROTOCOL", 7],
        ["IPSET_ATTR_SETNAME", name],
        ["IPSET_ATTR_LINENO", b"\0\0\0\0" if raw_lineno else 0],
        ["IPSET_ATTR_ADT", {"attrs": data}],
    ]
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize(
    ("command", "family", "entries"),
    [
        (
            ipset_wire.IPSET_CMD_ADD,
            socket.AF_INET,
            [(ip_network("198.51.100.7/32"), 600), (ip_network("203.0.113.0/24"), 0)],
        ),
        (
            ipset_wire.IPSET_CMD_ADD,
            socket.AF_INET6,
            [(ip_network("2001:db8::1/128"), 2_147_483), (ip_network("2001:db8:1:2::/64"), 5)],
        ),
        (
            ipset_wire.IPSET_CMD_DEL,
            socket.AF_INET6,
            [(ip_network("2001:db8::1/128"), None), (ip_network("2001:db8::/32"), None)],
        ),
    ],
)
def test_batch_matches_pyroute2(
    command: int, family: int, entries: list[tuple[Network, int | None]]
) -> None:
    blobs = [ipset_wire.entry(target, timeout) for target, timeout in entries]
    ours = ipset_wire.message(command, "blk4-test", family, blobs, seq=41, protocol=7)
    assert ours == pyroute2_encoding(command, "blk4-test", family, entries)


@given(
    st.one_of(
        st.builds(
            lambda a, p: ip_network((a, p), strict=False),
            st.integers(0, 2**32 - 1),
            st.integers(0, 32),
        ),
        st.builds(
            lambda a, p: ip_network((a, p), strict=False),
            st.integers(0, 2**128 - 1),
            st.integers(0, 128),
        ),
    ),
    st.one_of(st.none(), st.integers(0, 2_147_483)),
)
def test_every_entry_layout_matches_pyroute2(target: Network, timeout: int | None) -> None:
    """entry()'s made-once heads, for each family, prefix and with or without a timeout."""
    command = ipset_wire.IPSET_CMD_DEL if timeout is None else ipset_wire.IPSET_CMD_ADD
    family = socket.AF_INET if target.version == 4 else socket.AF_INET6
    ours = ipset_wire.message(
        command, "blk-test", family, [ipset_wire.entry(target, timeout)], seq=41, protocol=7
    )
    assert ours == pyroute2_encoding(command, "blk-test", family, [(target, timeout)])


def test_a_full_batch_fits_the_16_bit_attribute_length() -> None:
    widest = ipset_wire.entry(ip_network("2001:db8::/128"), 2_147_483)
    assert len(widest) * ipset_wire.ENTRIES_PER_MESSAGE + 4 < 2**16


def ack(seq: int, error: int) -> bytes:
    echoed = struct.pack("=IHHII", 20, 0x609, 5, seq, 0)
    return struct.pack("=IHHII", 16 + 4 + 16, 2, 0x100, seq, 0) + struct.pack("=i", error) + echoed


def test_acks_yield_sequence_and_positive_error() -> None:
    data = ack(7, 0) + ack(8, -errno.ENOENT) + ack(9, -4352)
    assert list(ipset_wire.acks(data)) == [(7, 0), (8, errno.ENOENT), (9, 4352)]
    assert list(ipset_wire.acks(b"\x01\x00")) == []
    assert ipset_wire.describe(4352) == "set is full (maxelem reached)"
    assert ipset_wire.describe(errno.ENOENT) == "set does not exist"
    assert "EPERM" in ipset_wire.describe(errno.EPERM)


def done(seq: int) -> bytes:
    return struct.pack("=IHHII", 20, ipset_wire.NLMSG_DONE, 2, seq, 0) + struct.pack("=i", 0)


def dump_message(seq: int, entries: list[tuple[Network, int]]) -> bytes:
    """A LIST reply as the kernel sends one: the set's attributes and an ADT of entries."""
    blobs = [ipset_wire.entry(target, timeout) for target, timeout in entries]
    return ipset_wire.message(
        ipset_wire.IPSET_CMD_LIST, "blk6-test", socket.AF_INET6, blobs, seq=seq, protocol=7
    )


def test_list_replies_give_the_entries_and_the_end() -> None:
    first = [(ip_network("2001:db8::1/128"), 600), (ip_network("2001:db8:1:2::/64"), 0)]
    second = [(ip_network("2001:db8::2/128"), 5)]
    data = dump_message(5, first) + ack(4, 0) + dump_message(5, second)
    assert ipset_wire.list_replies(data, 5) == (
        [
            (ip_network("2001:db8::1/128").network_address.packed, 128, 600),
            (ip_network("2001:db8:1:2::/64").network_address.packed, 64, 0),
            (ip_network("2001:db8::2/128").network_address.packed, 128, 5),
        ],
        None,
    )  # the late ack of seq 4 is skipped; no NLMSG_DONE yet: more follows
    assert ipset_wire.list_replies(done(5), 5) == ([], 0)
    assert ipset_wire.list_replies(ack(5, -errno.ENOENT), 5) == ([], errno.ENOENT)


def test_list_request_names_the_set_and_asks_for_a_dump() -> None:
    request = ipset_wire.list_request("blk4-test", socket.AF_INET, seq=9, protocol=7)
    size, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (size, kind, flags, seq) == (len(request), 0x607, 0x301, 9)
    assert b"blk4-test\0" in request


@given(st.binary(max_size=600), st.integers(0, 600))
def test_list_replies_never_raise_on_garbage_or_cut_buffers(noise: bytes, cut: int) -> None:
    real = dump_message(3, [(ip_network("2001:db8::1/128"), 600)]) + done(3)
    for data in (noise, real[:cut], real[:cut] + noise):
        entries, end = ipset_wire.list_replies(data, 3)
        assert end is None or isinstance(end, int)
        assert all(len(packed) in (4, 16) for packed, _, _ in entries)
