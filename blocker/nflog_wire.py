"""nfnetlink_log over a NETLINK_NETFILTER socket: configuration requests and the packet
messages the kernel sends for `-j NFLOG` / nft `log group N`. Pure: bytes in, bytes out; the
socket lives in sources/nflog.py. pyroute2 (0.7 and 0.9) has no nfnetlink_log support, so this
is packed and parsed by hand, as firewall/ipset_wire.py does for ipset.

Layout (include/uapi/linux/netfilter/nfnetlink_log.h):

    config:  nlmsghdr | nfgenmsg(AF_UNSPEC, 0, htons(group)) | CFG_CMD | CFG_MODE | ...
    packet:  nlmsghdr | nfgenmsg(pf, 0, htons(group)) | PACKET_HDR | PREFIX | IFINDEX_* |
             TIMESTAMP | PAYLOAD (the packet from its network header) | ...

A batch (NFULA_CFG_QTHRESH > 1) arrives as several NLM_F_MULTI messages in one datagram,
closed by NLMSG_DONE.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
CONFIG_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

# NFULA_CFG_* attributes and their commands and modes.
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
CMD_BIND, CMD_UNBIND = 1, 2
COPY_PACKET = 2
# The kernel refuses a buffer outside NLMSG_GOODSIZE..131072 (nfulnl_set_nlbufsiz).
MAX_NLBUFSIZ = 131072

# NFULA_* attributes of a packet message.
A_PACKET_HDR, A_TIMESTAMP, A_INDEV, A_OUTDEV, A_PHYSINDEV = 1, 3, 4, 5, 6
A_PAYLOAD, A_PREFIX = 9, 10
_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian, read apart)
_NLA = struct.Struct("=HH")  # nlattr: len, type
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_STAMP = struct.Struct(">QQ")  # nfulnl_msg_packet_timestamp: sec, usec
_ERROR = struct.Struct("=i")


class NflogPacket(NamedTuple):
    """One logged packet as the kernel sent it; interfaces are ifindexes (0 = none)."""

    family: int  # AF_INET, AF_INET6 or AF_BRIDGE: the hook's protocol family
    group: int
    hook: int  # NF_INET_PRE_ROUTING 0, LOCAL_IN 1, FORWARD 2, LOCAL_OUT 3, POST_ROUTING 4
    prefix: bytes  # the rule's prefix, without its NUL
    indev: int
    outdev: int
    physindev: int
    time: float | None  # NFULA_TIMESTAMP (the kernel gives it on input hooks only)
    payload: bytes  # the packet from its network header, at most the copy range


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def config_request(
    group: int,
    *,
    seq: int,
    command: int | None = None,
    copy_range: int | None = None,
    nlbufsiz: int | None = None,
    timeout_cs: int | None = None,
    qthresh: int | None = None,
) -> bytes:
    """One NFULNL_MSG_CONFIG for `group`, asking for an ack. `timeout_cs` is in 1/100 s."""
    attrs = b""
    if command is not None:
        attrs += _attr(CFG_CMD, bytes((command,)))
    if copy_range is not None:
        # struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; }
        attrs += _attr(CFG_MODE, _BE32.pack(copy_range) + bytes((COPY_PACKET, 0)))
    if nlbufsiz is not None:
        attrs += _attr(CFG_NLBUFSIZ, _BE32.pack(nlbufsiz))
    if timeout_cs is not None:
        attrs += _attr(CFG_TIMEOUT, _BE32.pack(timeout_cs))
    if qthresh is not None:
        attrs += _attr(CFG_QTHRESH, _BE32.pack(qthresh))
    body = _NFGEN.pack(0, 0, 0)[:2] + _BE16.pack(group) + attrs  # AF_UNSPEC, version 0
    return (
        _HEADER.pack(_HEADER.size + len(body), CONFIG_TYPE, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        + body
    )


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(seq, error) for each NLMSG_ERROR in `data`; error 0 = success, else an errno."""
    for kind, body, end in _messages(data):
        if kind == NLMSG_ERROR and end - body >= _ERROR.size + _HEADER.size:
            (code,) = _ERROR.unpack_from(data, body)
            yield _HEADER.unpack_from(data, body + _ERROR.size)[3], -code


class Batch(NamedTuple):
    packets: list[NflogPacket]
    malformed: int  # packet messages without a payload, or cut short


def packets(data: bytes) -> Batch:  # noqa: PLR0915 - one flat loop is the hot path
    """The logged packets in one received datagram. Other messages (DONE, errors) are
    skipped; a message or attribute whose length is impossible ends the walk of its message
    (or of the datagram), never the process. The hot path of the NFLOG source: one flat loop,
    attributes dispatched on their type."""
    out: list[NflogPacket] = []
    append = out.append
    new = tuple.__new__
    malformed = 0
    unpack_header = _HEADER.unpack_from
    unpack_nla = _NLA.unpack_from
    be32 = _BE32.unpack_from
    total = len(data)
    offset = 0
    while offset + 16 <= total:
        size, kind, _flags, _seq, _pid = unpack_header(data, offset)
        end = offset + size
        if size < 16 or end > total:
            malformed += 1
            break
        body = offset + 16
        offset += (size + 3) & ~3
        if kind != PACKET_TYPE:
            continue
        if end - body < 4:
            malformed += 1
            continue
        family = data[body]
        group = (data[body + 2] << 8) | data[body + 3]
        hook = -1
        prefix = b""
        indev = outdev = physindev = 0
        stamp: float | None = None
        payload: bytes | None = None
        at = body + 4
        while at + 4 <= end:
            length, attr = unpack_nla(data, at)
            if length < 4 or at + length > end:
                payload = None  # a cut attribute: the whole message is suspect
                break
            attr &= _TYPE_MASK
            if attr == A_PAYLOAD:
                payload = data[at + 4 : at + length]
            elif attr == A_INDEV:
                if length == 8:
                    indev = be32(data, at + 4)[0]
            elif attr == A_PREFIX:
                prefix = data[at + 4 : at + length].split(b"\0", 1)[0]
            elif attr == A_TIMESTAMP:
                if length == 20:
                    sec, usec = _STAMP.unpack_from(data, at + 4)
                    stamp = sec + usec / 1e6
            elif attr == A_OUTDEV:
                if length == 8:
                    outdev = be32(data, at + 4)[0]
            elif attr == A_PHYSINDEV:
                if length == 8:
                    physindev = be32(data, at + 4)[0]
            elif attr == A_PACKET_HDR and length >= 7:
                hook = data[at + 6]
            at += (length + 3) & ~3
        if payload is None:
            malformed += 1
            continue
        # tuple.__new__ skips NamedTuple's Python-level __new__: half the cost per packet.
        append(
            new(
                NflogPacket, (family, group, hook, prefix, indev, outdev, physindev, stamp, payload)
            )
        )
    return Batch(out, malformed)


def _messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of the netlink messages in `data`; a last
    (-1, ...) when a header's length is impossible."""
    offset = 0
    size_of = len(data)
    while offset + _HEADER.size <= size_of:
        size, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > size_of:
            yield -1, offset, offset
            return
        yield kind, offset + _HEADER.size, offset + size
        offset += (size + 3) & ~3


def packet_message(packet: NflogPacket, seq: int = 0) -> bytes:
    """The message the kernel sends for `packet` (tests, and the bench's equivalence check)."""
    attrs = _attr(
        A_PACKET_HDR,
        _BE16.pack(0x86DD if packet.family == 10 else 0x0800) + bytes((max(packet.hook, 0), 0)),
    )
    if packet.prefix:
        attrs += _attr(A_PREFIX, packet.prefix + b"\0")
    for kind, index in (
        (A_INDEV, packet.indev),
        (A_OUTDEV, packet.outdev),
        (A_PHYSINDEV, packet.physindev),
    ):
        if index:
            attrs += _attr(kind, _BE32.pack(index))
    if packet.time is not None:
        sec = int(packet.time)
        attrs += _attr(A_TIMESTAMP, _STAMP.pack(sec, round((packet.time - sec) * 1e6)))
    attrs += _attr(A_PAYLOAD, packet.payload)
    body = bytes((packet.family, 0)) + _BE16.pack(packet.group) + attrs
    return _HEADER.pack(_HEADER.size + len(body), PACKET_TYPE, 0, seq, 0) + body
