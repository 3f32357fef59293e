"""NFLOG datagrams -> Records in one pass: what nflog_wire.packets() then packet_decode.record()
give, at a fraction of the cost per packet. Pure: bytes and an interface namer in, Records out.

The two readable steps stay the reference (tests check this against them on any datagram);
this is the source's hot path. Two observations make it cheap:

- Under a flood, the packets of one rule arrive with the same attributes up to the
  timestamp: nfgenmsg, PACKET_HDR, PREFIX, the interfaces, the hardware header. The kernel
  writes the timestamp and then the payload last (__build_packet_message). So the bytes before
  the timestamp are a cache key: the first message of a kind is walked attribute by
  attribute, and every later one whose bytes before the timestamp are the same (and whose
  timestamp and payload attributes sit where that walk found them, ending the message) is the
  same head with a new time and payload, with no attribute walk at all.
- An IPv4 TCP packet (the flood case) is read with one precompiled Struct; its addresses are
  named through a bounded cache instead of inet_ntop every time.

Anything else (another layout, a cut attribute, IPv6, UDP, ICMP) goes the reference way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from socket import AF_INET, inet_ntop

from blocker import nflog_wire
from blocker.netfilter import Record
from blocker.packet_decode import _FLAG_TEXT, decode, record

_HEADER = struct.Struct("=IH")  # nlmsghdr's length and type
_NLA = struct.Struct("=HH")
_STAMP = struct.Struct(">QQ")
# IPv4 without options + TCP's ports and flags: version/IHL, length, id, fragment, ttl,
# proto, src, dst, sport, dport, flags
_IPV4_TCP = struct.Struct(">B1xHHHBB2x4s4sHH9xB")
_TIMESTAMP_ATTR = _NLA.pack(20, nflog_wire.A_TIMESTAMP)
_MAX_HEADS = 4096  # kinds of head (rules x interfaces x MAC headers); bounded for spoofed MACs
_MAX_KEY_LENGTHS = 8
_MAX_ADDRESSES = 65536  # spoofed sources: bounded, cleared when full


class Decoded:
    """One datagram's outcome, for the source's counters."""

    __slots__ = ("malformed", "packets", "records", "undecodable")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.packets = 0
        self.malformed = 0
        self.undecodable = 0


# A head: (time or None when the layout has no timestamp, prefix, in, out, phys) per key.
_Head = tuple[bool, str, str, str, "str | None"]


class DatagramDecoder:
    """Keeps the heads and address names it learnt; forget_names() when interface names may
    have changed (the source does it every NAME_TTL)."""

    def __init__(self) -> None:
        self._heads: dict[bytes, _Head] = {}
        self._key_lengths: list[int] = []
        self._addresses: dict[bytes, str] = {}

    def forget_names(self) -> None:
        self._heads.clear()

    def decode(  # noqa: PLR0915 - one flat loop is the hot path
        self, data: bytes, interface: Callable[[int], str], now: float, into: Decoded
    ) -> None:
        """Adds the Records of one received datagram (and its counts) to `into`."""
        out = into.records
        append = out.append
        heads = self._heads
        addresses = self._addresses
        key_lengths = self._key_lengths
        unpack_header = _HEADER.unpack_from
        unpack_nla = _NLA.unpack_from
        unpack_stamp = _STAMP.unpack_from
        unpack_tcp = _IPV4_TCP.unpack_from
        flag_text = _FLAG_TEXT
        total = len(data)
        offset = 0
        while offset + 16 <= total:
            size, kind = unpack_header(data, offset)
            end = offset + size
            if size < 16 or end > total:
                into.malformed += 1
                break
            body = offset + 16
            start = offset
            offset += (size + 3) & ~3
            if kind != nflog_wire.PACKET_TYPE:
                continue
            head = None
            for length in key_lengths:
                head = heads.get(data[body : body + length])
                if head is not None:
                    break
            if head is None:
                self._walk(data[start:end], interface, now, into)
                continue
            at = body + length
            stamp = now
            if head[0]:
                if data[at : at + 4] != _TIMESTAMP_ATTR:
                    self._walk(data[start:end], interface, now, into)
                    continue
                sec, usec = unpack_stamp(data, at + 4)
                stamp = sec + usec / 1e6
                at += 20
            if at + 4 > end:
                self._walk(data[start:end], interface, now, into)
                continue
            attr_length, attr = unpack_nla(data, at)
            if (
                attr & 0x3FFF != nflog_wire.A_PAYLOAD
                or attr_length < 4
                or at + attr_length > end
                or at + ((attr_length + 3) & ~3) + 4 <= end  # more attributes: walk them
            ):
                self._walk(data[start:end], interface, now, into)
                continue
            into.packets += 1
            payload = data[at + 4 : at + attr_length]
            if (
                len(payload) >= 40
                and payload[0] == 0x45
                and payload[9] == 6
                and not payload[6] & 0x1F
                and not payload[7]
            ):
                # IPv4 without options, TCP, not a later fragment: the flood case.
                _v, total_length, ident, _frag, ttl, _p, src, dst, spt, dpt, flags = unpack_tcp(
                    payload
                )
                src_text = addresses.get(src) or self._name(src)
                dst_text = addresses.get(dst) or self._name(dst)
                append(
                    (
                        stamp,
                        head[1],
                        (
                            head[2],
                            head[3],
                            head[4],
                            src_text,
                            dst_text,
                            str(total_length),
                            str(ttl),
                            str(ident),
                            None,
                            "TCP",
                            str(spt),
                            str(dpt),
                            flag_text[flags],
                            None,
                            None,
                            None,
                        ),
                    )
                )
                continue
            network = decode(payload)
            if network is None:
                into.undecodable += 1
            else:
                append((stamp, head[1], (head[2], head[3], head[4], *network)))

    def _walk(
        self, message: bytes, interface: Callable[[int], str], now: float, into: Decoded
    ) -> None:
        """The reference way for one message, learning its head when its layout allows."""
        batch = nflog_wire.packets(message)
        if batch.malformed or not batch.packets:
            into.malformed += 1
            return
        packet = batch.packets[0]
        into.packets += 1
        found = record(packet, interface, now)
        if found is None:
            into.undecodable += 1
        else:
            into.records.append(found)
        self._learn(message, packet, interface)

    def _learn(
        self, data: bytes, packet: nflog_wire.NflogPacket, interface: Callable[[int], str]
    ) -> None:
        """Remember the head of one message (`data`) whose last attributes are
        [TIMESTAMP,] PAYLOAD: its bytes from nfgenmsg to there are the key."""
        body, end = 16, len(data)
        at = body + 4
        previous = last = -1
        while at + 4 <= end:
            length, _ = _NLA.unpack_from(data, at)
            previous, last = last, at
            at += (length + 3) & ~3
        if last < 0 or _NLA.unpack_from(data, last)[1] & 0x3FFF != nflog_wire.A_PAYLOAD:
            return
        timed = previous >= 0 and data[previous : previous + 4] == _TIMESTAMP_ATTR
        key_end = previous if timed else last
        if len(self._heads) >= _MAX_HEADS:
            self._heads.clear()
        prefix = packet.prefix.decode("utf-8", errors="replace")
        self._heads[data[body:key_end]] = (
            timed,
            prefix,
            interface(packet.indev) if packet.indev else "",
            interface(packet.outdev) if packet.outdev else "",
            interface(packet.physindev) if packet.physindev else None,
        )
        length = key_end - body
        if length not in self._key_lengths:
            self._key_lengths.insert(0, length)
            del self._key_lengths[_MAX_KEY_LENGTHS:]

    def _name(self, packed: bytes) -> str:
        if len(self._addresses) >= _MAX_ADDRESSES:
            self._addresses.clear()
        text = self._addresses[packed] = inet_ntop(AF_INET, packed)
        return text
