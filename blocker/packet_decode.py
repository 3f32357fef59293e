"""A packet's IPv4/IPv6 and TCP/UDP/ICMP headers -> the fields a netfilter LOG line holds. Pure.

NFLOG hands blocker the packet itself; this module reads it the way the kernel's LOG target
prints it (net/netfilter/nf_log_syslog.c), field for field, so both sources produce the same
Record and every later stage (validation, filters, scoring) is shared:

- IPv4: LEN = total length, TTL, ID; a fragment other than the first carries no transport
  header, so it gets PROTO but no ports, type or flags (and is refused later, as its LOG
  line is).
- IPv6: LEN = payload length + 40, HOPLIMIT; the extension headers are walked (hop-by-hop,
  routing, destination options, fragment, AH); ESP, a cut extension header or options after a
  later fragment give no record at all, as LOG prints no PROTO= then.
- TCP: ports and flags; UDP/UDPLITE: ports; ICMP/ICMPv6: type and code. A transport header
  cut short is INCOMPLETE.
- Other protocols: PROTO is the number, as LOG prints it.

Addresses are given as text because that is what the parser's caches and validation take.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from socket import AF_INET, AF_INET6, inet_ntop

from blocker.netfilter import Fields, Record
from blocker.nflog_wire import NflogPacket

_IPV4 = struct.Struct(">BBHHHBB2x4s4s")
_IPV6 = struct.Struct(">4xHBB16s16s")
_PORTS = struct.Struct(">HH")

_TCP, _UDP, _UDPLITE, _ICMP, _ICMPV6 = 6, 17, 136, 1, 58
_ESP, _AH, _FRAGMENT = 50, 51, 44
# What LOG walks past: hop-by-hop, routing, fragment, ESP, AH, destination options.
_EXTENSIONS = frozenset((0, 43, _FRAGMENT, _ESP, _AH, 60))
_NAMES4 = {_TCP: "TCP", _UDP: "UDP", _UDPLITE: "UDPLITE", _ICMP: "ICMP", _AH: "AH", _ESP: "ESP"}
_NAMES6 = {_TCP: "TCP", _UDP: "UDP", _UDPLITE: "UDPLITE", _ICMPV6: "ICMPv6"}
# TCP flag byte -> the words LOG prints for it, in its order, each followed by a space.
_FLAG_NAMES = ("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN")
_FLAG_TEXT = tuple(
    "".join(f"{name} " for bit, name in enumerate(_FLAG_NAMES) if byte & (0x80 >> bit))
    for byte in range(256)
)
_INCOMPLETE = "INCOMPLETE"
_PREFIXES: dict[bytes, str] = {}  # a rule's prefix, decoded once
# (src, dst, LEN, TTL, ID, HOPLIMIT, PROTO, SPT, DPT, flags, TYPE, CODE, INCOMPLETE)
NetworkFields = tuple[str | None, ...]


def decode(payload: bytes) -> NetworkFields | None:
    """The LOG fields of a packet that starts at its IP header; None where LOG would print
    no PROTO= (not IP, an IP header or extension header cut short, an unknown extension)."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4:
        return _ipv4(payload)
    if version == 6:
        return _ipv6(payload)
    return None


def _ipv4(data: bytes) -> NetworkFields | None:
    if len(data) < 20:
        return None
    ver_ihl, _tos, length, ident, frag, ttl, proto, src, dst = _IPV4.unpack_from(data)
    ihl = (ver_ihl & 15) * 4
    if ihl < 20:
        return None
    if proto == _TCP and not frag & 0x1FFF and len(data) >= ihl + 20:
        # The flood case (SYN/ACKs, scans) in one tuple; _transport() says the same.
        spt, dpt = _PORTS.unpack_from(data, ihl)
        return (
            inet_ntop(AF_INET, src),
            inet_ntop(AF_INET, dst),
            str(length),
            str(ttl),
            str(ident),
            None,
            "TCP",
            str(spt),
            str(dpt),
            _FLAG_TEXT[data[ihl + 13]],
            None,
            None,
            None,
        )
    head = (
        inet_ntop(AF_INET, src),
        inet_ntop(AF_INET, dst),
        str(length),
        str(ttl),
        str(ident),
        None,
    )
    name = _NAMES4.get(proto)
    if name is None:
        return (*head, str(proto), None, None, None, None, None, None)
    return (*head, *_transport(data, ihl, proto, name, (frag & 0x1FFF) != 0))


def _ipv6(data: bytes) -> NetworkFields | None:
    if len(data) < 40:
        return None
    payload_length, nexthdr, hoplimit, src, dst = _IPV6.unpack_from(data)
    at = 40
    fragment = False
    size = len(data)
    while nexthdr in _EXTENSIONS:
        if at + 2 > size:
            return None  # LOG: "TRUNCATED", no PROTO=
        if nexthdr == _FRAGMENT:
            if at + 8 > size:
                return None
            fragment = fragment or (_PORTS.unpack_from(data, at)[1] & 0xFFF8) != 0
            length = 8
        elif nexthdr == _AH:
            length = (data[at + 1] + 2) * 4
        elif nexthdr == _ESP or fragment:
            return None  # LOG prints no PROTO= for ESP, nor for options after a fragment
        else:
            length = (data[at + 1] + 1) * 8
        nexthdr = data[at]
        at += length
    name = _NAMES6.get(nexthdr)
    head = (
        inet_ntop(AF_INET6, src),
        inet_ntop(AF_INET6, dst),
        str(payload_length + 40),
        None,
        None,
        str(hoplimit),
    )
    if name is None:
        return (*head, str(nexthdr), None, None, None, None, None, None)
    return (*head, *_transport(data, at, nexthdr, name, fragment))


def _transport(
    data: bytes, at: int, proto: int, name: str, fragment: bool
) -> tuple[str | None, ...]:
    """(PROTO, SPT, DPT, flags, TYPE, CODE, INCOMPLETE) of the header at `at`."""
    if fragment or proto in (_AH, _ESP):
        return (name, None, None, None, None, None, None)
    available = len(data) - at
    if proto == _TCP:
        if available < 20:
            return (name, None, None, None, None, None, _INCOMPLETE)
        spt, dpt = _PORTS.unpack_from(data, at)
        return (name, str(spt), str(dpt), _FLAG_TEXT[data[at + 13]], None, None, None)
    if proto in (_UDP, _UDPLITE):
        if available < 8:
            return (name, None, None, None, None, None, _INCOMPLETE)
        spt, dpt = _PORTS.unpack_from(data, at)
        return (name, str(spt), str(dpt), None, None, None, None)
    # ICMP / ICMPv6: LOG reads the whole 8-byte header before it prints TYPE and CODE.
    if available < 8:
        return (name, None, None, None, None, None, _INCOMPLETE)
    return (name, None, None, None, str(data[at]), str(data[at + 1]), None)


def record(packet: NflogPacket, interface: Callable[[int], str], now: float) -> Record | None:
    """The Record (time, prefix, fields) a LOG rule would have printed for `packet`;
    `interface` names an ifindex, `now` times packets the kernel sent without a timestamp."""
    network = decode(packet.payload)
    if network is None:
        return None
    fields: Fields = (
        interface(packet.indev) if packet.indev else "",
        interface(packet.outdev) if packet.outdev else "",
        interface(packet.physindev) if packet.physindev else None,
        *network,
    )
    prefix = _PREFIXES.get(packet.prefix)
    if prefix is None:
        if len(_PREFIXES) >= 1024:  # a handful of rules; bounded anyway
            _PREFIXES.clear()
        prefix = _PREFIXES[packet.prefix] = packet.prefix.decode("utf-8", errors="replace")
    return (now if packet.time is None else packet.time, prefix, fields)
