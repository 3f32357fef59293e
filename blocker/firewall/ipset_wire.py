"""ipset ADD/DEL batches in netlink wire format, packed by hand.

pyroute2's attribute encoder manages ~3,000 entries/s one by one and ~9,000/s batched, below
what a burst needs; these messages carry up to ENTRIES_PER_MESSAGE entries in one
IPSET_ATTR_ADT attribute (what `ipset restore` sends) and pack at several hundred thousand per
second. Layout (include/uapi/linux/netfilter/ipset/ip_set.h):

    nlmsghdr | nfgenmsg | PROTOCOL | SETNAME | LINENO | ADT{ DATA{ IP{addr} CIDR [TIMEOUT] } ... }

Pure: bytes in, bytes out; the socket lives in ipset.py.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Network

from blocker.records import Network

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL = 0x1, 0x4, 0x200
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD, IPSET_CMD_DEL = 9, 10

_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_DATA, _ATTR_ADT, _ATTR_LINENO = 1, 2, 7, 8, 9
_ATTR_IP, _ATTR_CIDR, _ATTR_TIMEOUT = 1, 3, 6
_IPADDR_IPV4, _IPADDR_IPV6 = 1, 2

# The ADT attribute's 16-bit length caps a message near 64 KiB; IPv6 entries take 44 bytes.
ENTRIES_PER_MESSAGE = 1000

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_NLA = struct.Struct("=HH")  # nlattr: len, type
_ERROR = struct.Struct("=i")

# Kernel error codes above the errno range (ip_set.h, ip_set_hash.h).
IPSET_ERRORS = {
    4097: "ipset protocol error",
    4102: "set type mismatch",
    4104: "invalid CIDR prefix for this set",
    4106: "address family not supported by the set",
    4107: "set was created without timeout support",
    4109: "an IPv4 address was expected",
    4110: "an IPv6 address was expected",
    4352: "set is full (maxelem reached)",
}


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def entry(target: Network, timeout: int | None) -> bytes:
    """One DATA attribute: the network and, for ADD, its timeout (0 = permanent)."""
    kind = _IPADDR_IPV4 if isinstance(target, IPv4Network) else _IPADDR_IPV6
    body = _attr(
        _ATTR_IP | NLA_F_NESTED,
        _attr(kind | NLA_F_NET_BYTEORDER, target.network_address.packed),
    ) + _attr(_ATTR_CIDR | NLA_F_NET_BYTEORDER, bytes((target.prefixlen,)))
    if timeout is not None:
        body += _attr(_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack(">I", timeout))
    return _attr(_ATTR_DATA | NLA_F_NESTED, body)


def message(
    command: int, set_name: str, family: int, entries: Sequence[bytes], *, seq: int, protocol: int
) -> bytes:
    """An ADD or DEL request for `entries` (at most ENTRIES_PER_MESSAGE), ipset `protocol` 6 or 7.

    No NLM_F_EXCL, so the kernel applies IPSET_FLAG_EXIST: adding a present entry replaces its
    timeout, deleting an absent one succeeds.
    """
    attrs = (
        _attr(_ATTR_PROTOCOL, bytes((protocol,)))
        + _attr(_ATTR_SETNAME, set_name.encode("ascii") + b"\0")
        + _attr(_ATTR_LINENO, struct.pack("=I", 0))  # required with ADT; 0 = plain error replies
        + _attr(_ATTR_ADT | NLA_F_NESTED, b"".join(entries))
    )
    size = _HEADER.size + _NFGEN.size + len(attrs)
    kind = (NFNL_SUBSYS_IPSET << 8) | command
    return (
        _HEADER.pack(size, kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        + _NFGEN.pack(family, 0, 0)
        + attrs
    )


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(seq, error) for each NLMSG_ERROR in a netlink reply; error 0 = success, else an errno."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size:
            break
        if kind == NLMSG_ERROR and size >= _HEADER.size + _ERROR.size + _HEADER.size:
            (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
            # The echoed request header carries the sequence number we sent.
            orig_seq = _HEADER.unpack_from(data, offset + _HEADER.size + _ERROR.size)[3]
            yield orig_seq, -code
        offset += (size + 3) & ~3


def describe(error: int) -> str:
    """Human text for a kernel ipset error code."""
    if error in IPSET_ERRORS:
        return IPSET_ERRORS[error]
    if error == errno.ENOENT:
        return "set does not exist"
    return f"{errno.errorcode.get(error, 'error')} ({os.strerror(error)})"
