"""ipset ADD/DEL batches and the LIST dump in netlink wire format, packed and parsed by hand.

pyroute2's attribute encoder manages ~3,000 entries/s one by one and ~9,000/s batched, below
what a burst needs; these messages carry up to ENTRIES_PER_MESSAGE entries in one
IPSET_ATTR_ADT attribute (what `ipset restore` sends) and pack at several hundred thousand per
second. Layout (include/uapi/linux/netfilter/ipset/ip_set.h):

    nlmsghdr | nfgenmsg | PROTOCOL | SETNAME | LINENO | ADT{ DATA{ IP{addr} CIDR [TIMEOUT] } ... }

LIST is dumped the same way (list_request(), list_replies()): pyroute2 decodes a dump at
~15,000 entries/s, so `blockerctl list` on a set filled by a flood took seconds.

Pure: bytes in, bytes out; the socket lives in ipset.py.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Sequence

from blocker.records import Network

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x300
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NFNL_SUBSYS_IPSET = 6
IPSET_CMD_LIST, IPSET_CMD_ADD, IPSET_CMD_DEL = 7, 9, 10

_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_DATA, _ATTR_ADT, _ATTR_LINENO = 1, 2, 7, 8, 9
_ATTR_IP, _ATTR_CIDR, _ATTR_TIMEOUT = 1, 3, 6
_ATTR_FLAGS, _ATTR_MAXELEM, _ATTR_ELEMENTS = 6, 19, 24
IPSET_FLAG_LIST_HEADER = 1 << 2
_IPADDR_IPV4, _IPADDR_IPV6 = 1, 2

# The ADT attribute's 16-bit length caps a message near 64 KiB; IPv6 entries take 44 bytes.
ENTRIES_PER_MESSAGE = 1000

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_NLA = struct.Struct("=HH")  # nlattr: len, type
_ERROR = struct.Struct("=i")
_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
# One dumped entry: (packed address, prefix length, remaining seconds; 0 = permanent).
DumpEntry = tuple[bytes, int, int]

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


def _entry_heads(kind: int, size: int) -> tuple[bytes, bytes]:
    """The fixed bytes before an entry's address: DATA{ IP{ IPADDR{, without and with TIMEOUT."""
    address = _attr(kind | NLA_F_NET_BYTEORDER, bytes(size))
    ip = _NLA.pack(_NLA.size + len(address), _ATTR_IP | NLA_F_NESTED)
    inner = _NLA.pack(_NLA.size + size, kind | NLA_F_NET_BYTEORDER)
    heads = []
    for extra in (0, _TIMEOUT_BYTES):
        body = _NLA.size + len(address) + _CIDR_BYTES + extra
        heads.append(_NLA.pack(_NLA.size + body, _ATTR_DATA | NLA_F_NESTED) + ip + inner)
    return heads[0], heads[1]


_CIDR_HEAD = _NLA.pack(_NLA.size + 1, _ATTR_CIDR | NLA_F_NET_BYTEORDER)
_CIDR_BYTES = _NLA.size + 4  # one byte, padded to 4
_TIMEOUT_HEAD = _NLA.pack(_NLA.size + 4, _ATTR_TIMEOUT | NLA_F_NET_BYTEORDER)
_TIMEOUT_BYTES = _NLA.size + 4
_HEADS = {4: _entry_heads(_IPADDR_IPV4, 4), 6: _entry_heads(_IPADDR_IPV6, 16)}
_CIDRS = [_CIDR_HEAD + bytes((prefix, 0, 0, 0)) for prefix in range(129)]


def entry(target: Network, timeout: int | None) -> bytes:
    """One DATA attribute: the network and, for ADD, its timeout (0 = permanent).

    Every entry of a family has the same layout, so its fixed parts are made once (a
    restart packs a million): DATA{ IP{ IPADDR{address} } CIDR{prefix} [TIMEOUT{seconds}] }."""
    bare, timed = _HEADS[target.version]
    if timeout is None:
        return bare + target.network_address.packed + _CIDRS[target.prefixlen]
    return b"".join(
        (
            timed,
            target.network_address.packed,
            _CIDRS[target.prefixlen],
            _TIMEOUT_HEAD,
            timeout.to_bytes(4, "big"),
        )
    )


def message(
    command: int, set_name: str, family: int, entries: Sequence[bytes], *, seq: int, protocol: int
) -> bytes:
    """An ADD or DEL request for `entries` (at most ENTRIES_PER_MESSAGE), ipset `protocol` 6 or 7.

    No NLM_F_EXCL, so the kernel applies IPSET_FLAG_EXIST: adding a present entry replaces its
    timeout, deleting an absent one succeeds.
    """
    attrs = (
        _attr(_ATTR_LINENO, struct.pack("=I", 0))  # required with ADT; 0 = plain error replies
        + _attr(_ATTR_ADT | NLA_F_NESTED, b"".join(entries))
    )
    return _request(
        command,
        NLM_F_REQUEST | NLM_F_ACK,
        set_name,
        family,
        seq=seq,
        protocol=protocol,
        attrs=attrs,
    )


def list_request(set_name: str, family: int, *, seq: int, protocol: int) -> bytes:
    """A LIST dump request for one set (what `ipset list NAME` sends)."""
    return _request(
        IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, set_name, family, seq=seq, protocol=protocol
    )


def header_request(set_name: str, family: int, *, seq: int, protocol: int) -> bytes:
    """A LIST of one set's header only (what `ipset list -t NAME` sends): its size and fill
    without a single entry, however full the set is."""
    flags = _attr(_ATTR_FLAGS | NLA_F_NET_BYTEORDER, struct.pack(">I", IPSET_FLAG_LIST_HEADER))
    return _request(
        IPSET_CMD_LIST,
        NLM_F_REQUEST | NLM_F_DUMP,
        set_name,
        family,
        seq=seq,
        protocol=protocol,
        attrs=flags,
    )


def header_replies(data: bytes, seq: int) -> tuple[dict[str, int], int | None]:
    """{"maxelem", "entries"} found in one received buffer of the header dump numbered `seq`,
    and how the dump ended in it (as list_replies)."""
    found: dict[str, int] = {}
    reply_kind = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST
    names = {_ATTR_MAXELEM: "maxelem", _ATTR_ELEMENTS: "entries"}
    for kind, msg_seq, body, end in _messages(data):
        if kind < 0:
            return found, errno.EPROTO
        if msg_seq != seq:
            continue
        if kind == NLMSG_DONE:
            return found, 0
        if kind == NLMSG_ERROR and end - body >= _ERROR.size:
            (code,) = _ERROR.unpack_from(data, body)
            return found, -code
        if kind == reply_kind:
            for attr_type, (lo, hi) in _attrs(data, body + _NFGEN.size, end):
                if attr_type != _ATTR_DATA:
                    continue
                for kind_, (a, b) in _attrs(data, lo, hi):
                    if kind_ in names and b - a == 4:
                        found[names[kind_]] = struct.unpack_from(">I", data, a)[0]
    return found, None


def _request(
    command: int,
    flags: int,
    set_name: str,
    family: int,
    *,
    seq: int,
    protocol: int,
    attrs: bytes = b"",
) -> bytes:
    """nlmsghdr | nfgenmsg | PROTOCOL | SETNAME | `attrs`."""
    attrs = (
        _attr(_ATTR_PROTOCOL, bytes((protocol,)))
        + _attr(_ATTR_SETNAME, set_name.encode("ascii") + b"\0")
        + attrs
    )
    size = _HEADER.size + _NFGEN.size + len(attrs)
    kind = (NFNL_SUBSYS_IPSET << 8) | command
    return _HEADER.pack(size, kind, flags, seq, 0) + _NFGEN.pack(family, 0, 0) + attrs


def list_replies(data: bytes, seq: int) -> tuple[list[DumpEntry], int | None]:
    """The entries in one received buffer of the LIST dump numbered `seq`, and how the dump
    ended in it: None (more follows), 0 (NLMSG_DONE) or the kernel's error code. Messages of
    other sequence numbers (a late ack) are skipped; malformed attributes end the walk of
    their message, never the process."""
    entries: list[DumpEntry] = []
    reply_kind = (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST
    for kind, msg_seq, body, end in _messages(data):
        if kind < 0:
            return entries, errno.EPROTO
        if msg_seq != seq:
            continue
        if kind == NLMSG_DONE:
            return entries, 0
        if kind == NLMSG_ERROR and end - body >= _ERROR.size:
            (code,) = _ERROR.unpack_from(data, body)
            return entries, -code
        if kind == reply_kind:
            for adt_type, adt in _attrs(data, body + _NFGEN.size, end):
                if adt_type == _ATTR_ADT:
                    entries += _dump_entries(data, *adt)
    return entries, None


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, payload start, payload end) of the netlink messages in `data`; a last
    (-1, ...) when a header's length is impossible."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > len(data):
            yield -1, seq, offset, offset
            return
        yield kind, seq, offset + _HEADER.size, offset + size
        offset += (size + 3) & ~3


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, tuple[int, int]]]:
    """(type, (payload start, payload end)) of the attributes in data[start:end]."""
    while start + _NLA.size <= end:
        size, kind = _NLA.unpack_from(data, start)
        if size < _NLA.size or start + size > end:
            return
        yield kind & _TYPE_MASK, (start + _NLA.size, start + size)
        start += (size + 3) & ~3


def _dump_entries(data: bytes, start: int, end: int) -> Iterator[DumpEntry]:
    for data_type, (entry_start, entry_end) in _attrs(data, start, end):
        if data_type != _ATTR_DATA:
            continue
        packed, prefix, timeout = b"", -1, 0
        for kind, (lo, hi) in _attrs(data, entry_start, entry_end):
            if kind == _ATTR_IP:
                for _, (a, b) in _attrs(data, lo, hi):
                    packed = data[a:b]
            elif kind == _ATTR_CIDR and hi - lo >= 1:
                prefix = data[lo]
            elif kind == _ATTR_TIMEOUT and hi - lo == 4:
                (timeout,) = struct.unpack_from(">I", data, lo)
        if len(packed) in (4, 16) and prefix >= 0:
            yield packed, prefix, timeout


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(seq, error) for each NLMSG_ERROR in a netlink reply; error 0 = success, else an errno."""
    for kind, _seq, body, end in _messages(data):
        if kind == NLMSG_ERROR and end - body >= _ERROR.size + _HEADER.size:
            (code,) = _ERROR.unpack_from(data, body)
            # The echoed request header carries the sequence number we sent.
            orig_seq = _HEADER.unpack_from(data, body + _ERROR.size)[3]
            yield orig_seq, -code


def describe(error: int) -> str:
    """Human text for a kernel ipset error code."""
    if error in IPSET_ERRORS:
        return IPSET_ERRORS[error]
    if error == errno.ENOENT:
        return "set does not exist"
    return f"{errno.errorcode.get(error, 'error')} ({os.strerror(error)})"
