"""Raw IPv4/IPv6 packets built by hand, and a way to open sockets inside a namespace.

    with inside(client):                      # this thread enters the namespace
        sender = RawSender()                  # sockets keep the namespace they were made in
    sender.send(tcp4("198.51.100.7", "192.0.2.1", 443, 40000, "SA"))

Used by the NFLOG tests (real packets through `-j NFLOG` in a namespace, and the same bytes
wrapped as the kernel wraps them) and by bench/bench_nflog.py.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `netns` (an `ip netns` name);
    sockets opened there stay in it afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _LIBC.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            if _LIBC.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def tcp_header(
    sport: int, dport: int, flags: str | int, *, seq: int = 1, ack: int = 0, window: int = 1024
) -> bytes:
    bits = flags if isinstance(flags, int) else sum(FLAG_BITS[f] for f in flags)
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, bits, window, 0, 0)


def udp_header(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_header(kind: int, code: int) -> bytes:
    return struct.pack("!BBHI", kind, code, 0, 0)


def ipv4(
    src: str,
    dst: str,
    proto: int,
    body: bytes,
    *,
    ttl: int = 64,
    ident: int = 4242,
    length: int | None = None,
    frag_offset: int = 0,
    more_fragments: bool = False,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet; `length` overrides the total length field (a copy cut short)."""
    ihl = 5 + len(options) // 4
    flags = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    total = length if length is not None else ihl * 4 + len(body)
    head = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            total,
            ident,
            flags,
            ttl,
            proto,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
        + options
    )
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + body


def ipv6(
    src: str,
    dst: str,
    proto: int,
    body: bytes,
    *,
    hoplimit: int = 64,
    extensions: tuple[tuple[int, bytes], ...] = (),
    length: int | None = None,
) -> bytes:
    """An IPv6 packet; `extensions` are (header type, header bytes without the next-header
    byte) in order, e.g. hop_by_hop(). `length` overrides the payload length field."""
    chain = b""
    types = [kind for kind, _ in extensions] + [proto]
    for (_kind, data), next_type in zip(extensions, types[1:], strict=True):
        chain += bytes((next_type,)) + data
    payload = chain + body
    first = types[0]
    size = length if length is not None else len(payload)
    return (
        struct.pack("!IHBB", 0x60000000, size, first, hoplimit)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def options_header(kind: int = 0) -> tuple[int, bytes]:
    """A hop-by-hop (0) or destination options (60) header of 8 bytes holding PadN."""
    return kind, bytes((0, 1, 4, 0, 0, 0, 0))


def fragment_header(offset: int = 0, more: bool = False, ident: int = 7) -> tuple[int, bytes]:
    return 44, struct.pack("!BHI", 0, offset | int(more), ident)


def ah_header(words: int = 4) -> tuple[int, bytes]:
    """An AH header of (words + 2) * 4 bytes."""
    return 51, bytes((words,)) + bytes((words + 2) * 4 - 2)


def with_checksums(packet: bytes) -> bytes:
    """Fill in the TCP/UDP/ICMP/ICMPv6 checksum of a packet without extension headers, so a
    real kernel delivers it (netfilter sees it either way; conntrack may not)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        proto, src, dst, body = packet[9], packet[12:16], packet[16:20], packet[ihl:]
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(body))
        if proto == 1:
            pseudo = b""
    else:
        ihl, proto = 40, packet[6]
        src, dst, body = packet[8:24], packet[24:40], packet[40:]
        pseudo = src + dst + struct.pack("!IxxxB", len(body), proto)
    where = {6: 16, 17: 6, 1: 2, 58: 2}.get(proto)
    if where is None or len(body) < where + 2:
        return packet
    body = body[:where] + b"\0\0" + body[where + 2 :]
    total = _checksum(pseudo + body)
    body = body[:where] + struct.pack("!H", total) + body[where + 2 :]
    return packet[:ihl] + body


class RawSender:
    """Sends whole IP packets (our own headers, any source address) from the namespace it was
    opened in: IPPROTO_RAW implies IP_HDRINCL / IPV6_HDRINCL."""

    def __init__(self) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, packet: bytes) -> None:
        if packet[0] >> 4 == 4:
            self.v4.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
        else:
            self.v6.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))

    def close(self) -> None:
        self.v4.close()
        self.v6.close()


PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "UDPLITE": 136, "ICMP": 1, "ICMPv6": 58, "AH": 51, "ESP": 50}
_FLAG_WORDS = {
    "FIN": 0x01,
    "SYN": 0x02,
    "RST": 0x04,
    "PSH": 0x08,
    "ACK": 0x10,
    "URG": 0x20,
    "ECE": 0x40,
    "CWR": 0x80,
}


def from_fields(
    src: str,
    dst: str,
    proto: str,
    *,
    spt: int | None = None,
    dpt: int | None = None,
    flags: frozenset[str] = frozenset(),
    length: int | None = None,
    ttl: int | None = None,
    ip_id: int | None = None,
    icmp_type: int | None = None,
    icmp_code: int | None = None,
) -> bytes:
    """The packet a LOG line describes (its headers; LEN goes into the length field)."""
    number = PROTO_NUMBERS.get(proto) or int(proto)
    if (number in (6, 17, 136) and dpt is None) or (number in (1, 58) and icmp_type is None):
        body = b""  # the line says INCOMPLETE: the transport header is cut
    elif number == 6:
        body = tcp_header(spt or 0, dpt or 0, sum(_FLAG_WORDS[f] for f in flags))
    elif number in (17, 136):
        body = udp_header(spt or 0, dpt or 0)
    elif number in (1, 58):
        body = icmp_header(icmp_type or 0, icmp_code or 0)
    else:
        body = bytes(8)
    if ":" in src:
        payload_length = None if length is None else length - 40
        return ipv6(src, dst, number, body, hoplimit=ttl or 64, length=payload_length)
    return ipv4(src, dst, number, body, ttl=ttl or 64, ident=ip_id or 0, length=length)
