"""ctnetlink (conntrack over netlink): a dump request for the assured entries, and the entries
of the answer. Pure: bytes in, bytes out; the socket lives in live_peers.py. Hand-packed, as
firewall/ipset_wire.py is (pyroute2's decoder is slow and differs between 0.7 and 0.9).

Layout (include/uapi/linux/netfilter/nfnetlink_conntrack.h):

    request: nlmsghdr(CT_GET, DUMP) | nfgenmsg(family) | CTA_STATUS + CTA_STATUS_MASK (assured)
    entry:   nlmsghdr(CT_NEW) | nfgenmsg | CTA_TUPLE_ORIG{ IP{SRC, DST}, PROTO{NUM, SPORT, DPORT} }
             | CTA_STATUS | CTA_TIMEOUT (seconds left) | CTA_PROTOINFO{ TCP{ STATE } } | ...

Kernels before 6.0 ignore the status filter and send every entry: callers check each entry
themselves (live_peers.idle_seconds()).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLA_F_NESTED = 0x8000
_TYPE_MASK = 0x3FFF
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
ENTRY_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW

CTA_TUPLE_ORIG, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 3, 4, 7
CTA_STATUS_MASK = 26
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
IPS_ASSURED, IPS_DYING = 1 << 2, 1 << 9
TCP_CONNTRACK_ESTABLISHED = 3

_HEADER = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_BE16 = struct.Struct(">H")
_ERROR = struct.Struct("=i")


class Entry(NamedTuple):
    """One conntrack entry, as much of it as the spare check needs."""

    src: bytes  # original direction: who opened the connection
    dst: bytes
    proto: int
    sport: int
    dport: int
    status: int
    timeout: int  # seconds left before the entry expires without traffic
    tcp_state: int | None


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def dump_request(family: int, seq: int, *, assured_only: bool = True) -> bytes:
    """Dump the entries of `family` (AF_INET/AF_INET6), only the assured ones by default
    (filtered in the kernel since 6.0; older kernels send every entry)."""
    attrs = b""
    if assured_only:
        attrs += _attr(CTA_STATUS, _BE32.pack(IPS_ASSURED))
        attrs += _attr(CTA_STATUS_MASK, _BE32.pack(IPS_ASSURED))
    body = bytes((family, 0)) + b"\0\0" + attrs  # nfgenmsg: family, version 0, res_id 0
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def dump_replies(data: bytes, seq: int) -> tuple[list[Entry], int | None]:
    """The entries in one received buffer of dump `seq`, and how the dump ended in it: None
    (more follows), 0 (NLMSG_DONE) or an errno. Malformed parts are skipped, never raised."""
    entries: list[Entry] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, _flags, msg_seq, _pid = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > len(data):
            return entries, 71  # EPROTO: a cut message
        body, end = offset + _HEADER.size, offset + size
        offset += (size + 3) & ~3
        if msg_seq != seq:
            continue
        if kind == NLMSG_DONE:
            return entries, 0
        if kind == NLMSG_ERROR:
            code = _ERROR.unpack_from(data, body)[0] if end - body >= 4 else -71
            return entries, -code
        if kind == ENTRY_TYPE:
            entry = _entry(data, body + 4, end)
            if entry is not None:
                entries.append(entry)
    return entries, None


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of the attributes in data[start:end]."""
    while start + _NLA.size <= end:
        size, kind = _NLA.unpack_from(data, start)
        if size < _NLA.size or start + size > end:
            return
        yield kind & _TYPE_MASK, start + _NLA.size, start + size
        start += (size + 3) & ~3


def _entry(data: bytes, start: int, end: int) -> Entry | None:
    src = dst = b""
    proto = sport = dport = status = timeout = 0
    tcp_state: int | None = None
    for kind, lo, hi in _attrs(data, start, end):
        if kind == CTA_TUPLE_ORIG:
            for part, plo, phi in _attrs(data, lo, hi):
                if part == CTA_TUPLE_IP:
                    for ip, alo, ahi in _attrs(data, plo, phi):
                        if ip in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                            src = data[alo:ahi]
                        elif ip in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                            dst = data[alo:ahi]
                elif part == CTA_TUPLE_PROTO:
                    for field, flo, fhi in _attrs(data, plo, phi):
                        if field == CTA_PROTO_NUM and fhi > flo:
                            proto = data[flo]
                        elif field == CTA_PROTO_SRC_PORT and fhi - flo == 2:
                            sport = _BE16.unpack_from(data, flo)[0]
                        elif field == CTA_PROTO_DST_PORT and fhi - flo == 2:
                            dport = _BE16.unpack_from(data, flo)[0]
        elif kind == CTA_STATUS and hi - lo == 4:
            status = _BE32.unpack_from(data, lo)[0]
        elif kind == CTA_TIMEOUT and hi - lo == 4:
            timeout = _BE32.unpack_from(data, lo)[0]
        elif kind == CTA_PROTOINFO:
            for info, ilo, ihi in _attrs(data, lo, hi):
                if info == CTA_PROTOINFO_TCP:
                    for field, flo, fhi in _attrs(data, ilo, ihi):
                        if field == CTA_PROTOINFO_TCP_STATE and fhi > flo:
                            tcp_state = data[flo]
    if len(src) not in (4, 16) or len(dst) != len(src):
        return None
    return Entry(src, dst, proto, sport, dport, status, timeout, tcp_state)


def entry_message(entry: Entry, seq: int) -> bytes:
    """The message the kernel sends for `entry` (tests)."""
    v6 = len(entry.src) == 16
    ip = _attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, entry.src) + _attr(
        CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, entry.dst
    )
    proto = (
        _attr(CTA_PROTO_NUM, bytes((entry.proto,)))
        + _attr(CTA_PROTO_SRC_PORT, _BE16.pack(entry.sport))
        + _attr(CTA_PROTO_DST_PORT, _BE16.pack(entry.dport))
    )
    attrs = _attr(
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto),
    )
    attrs += _attr(CTA_STATUS, _BE32.pack(entry.status))
    attrs += _attr(CTA_TIMEOUT, _BE32.pack(entry.timeout))
    if entry.tcp_state is not None:
        attrs += _attr(
            CTA_PROTOINFO | NLA_F_NESTED,
            _attr(
                CTA_PROTOINFO_TCP | NLA_F_NESTED,
                _attr(CTA_PROTOINFO_TCP_STATE, bytes((entry.tcp_state,))),
            ),
        )
    body = bytes((10 if v6 else 2, 0)) + b"\0\0" + attrs
    return _HEADER.pack(_HEADER.size + len(body), ENTRY_TYPE, 0x2, seq, 0) + body
