"""nflog_records.DatagramDecoder against the readable reference, nflog_wire.packets() then
packet_decode.record(): the same Records and counts for any datagram, on first sight of a kind
of message (walked) and on every later one (read through the learnt head)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from packets import icmp_header, ipv4, ipv6, tcp_header, udp_header

from blocker import nflog_wire
from blocker.netfilter import Record
from blocker.nflog_records import DatagramDecoder, Decoded
from blocker.nflog_wire import NflogPacket
from blocker.packet_decode import record

NOW = 1_795_000_100.5
NAMES = {2: "eth0", 3: "eth1", 7: "br0"}


def name_of(index: int) -> str:
    return NAMES.get(index, f"if{index}")


def reference(data: bytes) -> tuple[list[Record], int, int, int]:
    batch = nflog_wire.packets(data)
    found = [record(packet, name_of, NOW) for packet in batch.packets]
    records = [r for r in found if r is not None]
    return records, len(batch.packets), batch.malformed, len(found) - len(records)


def fast(decoder: DatagramDecoder, data: bytes) -> tuple[list[Record], int, int, int]:
    out = Decoded()
    decoder.decode(data, name_of, NOW, out)
    return out.records, out.packets, out.malformed, out.undecodable


def attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + bytes(-len(value) & 3)


def message(packet: NflogPacket, extra: bytes = b"", after: bytes = b"") -> bytes:
    """packet_message() with `extra` attributes (a MAC header, a mark) before the timestamp
    and `after` ones after the payload, as a kernel could add them."""
    plain = nflog_wire.packet_message(packet)
    body = plain[16:]
    split = 4 + len(attr(nflog_wire.A_PACKET_HDR, b"\0\0\0\0"))
    body = body[:split] + extra + body[split:] + after
    return struct.pack("=IHHII", 16 + len(body), nflog_wire.PACKET_TYPE, 0, 0, 0) + body


PAYLOADS = st.one_of(
    st.builds(
        lambda sport, flags, ident, ttl, src: ipv4(
            f"198.51.100.{src}", "192.0.2.1", 6, tcp_header(sport, 443, flags), ident=ident, ttl=ttl
        ),
        st.integers(0, 65535),
        st.integers(0, 255),
        st.integers(0, 65535),
        st.integers(0, 255),
        st.integers(1, 254),
    ),
    st.builds(
        lambda frag: ipv4("203.0.113.9", "192.0.2.1", 6, tcp_header(1, 2, 2), frag_offset=frag),
        st.sampled_from([0, 8, 1480, 4096]),
    ),
    st.builds(
        lambda cut: ipv4("203.0.113.9", "192.0.2.1", 6, tcp_header(1, 2, 2))[:cut],
        st.integers(0, 40),
    ),
    st.just(ipv4("203.0.113.9", "192.0.2.1", 6, tcp_header(1, 2, 2), options=b"\x01" * 4)),
    st.just(ipv4("203.0.113.9", "192.0.2.1", 17, udp_header(53, 5353))),
    st.just(ipv4("203.0.113.9", "192.0.2.1", 1, icmp_header(8, 0))),
    st.just(ipv6("2001:db8::9", "2001:db8::1", 6, tcp_header(1, 22, 2))),
    st.binary(max_size=60),
)
PACKETS = st.builds(
    NflogPacket,
    st.sampled_from([2, 10, 7]),
    st.integers(0, 65535),
    st.integers(0, 4),
    st.sampled_from([b"", b"DROP ", b"INVALID ", b"A\xffB"]),
    st.sampled_from([0, 2, 3, 99]),
    st.sampled_from([0, 3]),
    st.sampled_from([0, 7]),
    st.one_of(st.none(), st.integers(1_700_000_000, 1_800_000_000).map(float)),
    PAYLOADS,
)
EXTRAS = st.sampled_from(
    [
        b"",
        attr(8, b"\0\x06\0\0\x02\0\0\0\0\x01\0\0"),  # NFULA_HWADDR
        attr(2, b"\0\0\0\x01") + attr(13, b"\0\x01"),  # NFULA_MARK, NFULA_HWTYPE
    ]
)
AFTER = st.sampled_from([b"", attr(2, b"\0\0\0\x01"), b"\0\0", struct.pack("=HH", 40, 2)])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(PACKETS, EXTRAS, AFTER), min_size=1, max_size=6), st.data())
def test_the_decoder_gives_what_the_reference_gives(
    messages: list[tuple[NflogPacket, bytes, bytes]], data: st.DataObject
) -> None:
    decoder = DatagramDecoder()
    datagram = b"".join(message(*m) for m in messages)
    assert fast(decoder, datagram) == reference(datagram)
    # Again, now that the heads are learnt, and with new payloads and times under them.
    assert fast(decoder, datagram) == reference(datagram)
    changed = [
        (m._replace(payload=data.draw(PAYLOADS), time=data.draw(st.none() | st.just(5.5))), e, a)
        for m, e, a in messages
    ]
    datagram = b"".join(message(*m) for m in changed)
    assert fast(decoder, datagram) == reference(datagram)
    # Cut anywhere: a message cut short, or garbage after the last one.
    cut = data.draw(st.integers(0, len(datagram)))
    assert fast(decoder, datagram[:cut]) == reference(datagram[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_datagram_gives_what_the_reference_gives(data: bytes) -> None:
    decoder = DatagramDecoder()
    assert fast(decoder, data) == reference(data)
    assert fast(decoder, data) == reference(data)


def test_a_flood_of_one_kind_is_read_through_its_head() -> None:
    packets = [
        NflogPacket(
            2,
            5,
            1,
            b"INVALID ",
            2,
            0,
            0,
            1_795_000_000.0 + i,
            ipv4("198.51.100.7", "192.0.2.1", 6, tcp_header(1024 + i, 443, "SA"), ident=i),
        )
        for i in range(64)
    ]
    datagram = b"".join(nflog_wire.packet_message(p) for p in packets)
    decoder = DatagramDecoder()
    records, count, malformed, undecodable = fast(decoder, datagram)
    assert (records, count, malformed, undecodable) == reference(datagram)
    assert [r[0] for r in records] == [p.time for p in packets]
    assert {r[2][10] for r in records} == {str(1024 + i) for i in range(64)}


def test_forgotten_names_are_asked_again() -> None:
    packet = NflogPacket(
        2,
        5,
        1,
        b"DROP ",
        3,
        0,
        0,
        None,
        ipv4("198.51.100.7", "192.0.2.1", 6, tcp_header(1, 443, "S")),
    )
    datagram = nflog_wire.packet_message(packet)
    decoder = DatagramDecoder()
    assert fast(decoder, datagram)[0][0][2][0] == "eth1"
    NAMES[3] = "wan0"  # the interface was renamed
    try:
        assert fast(decoder, datagram)[0][0][2][0] == "eth1"  # known until the names go
        decoder.forget_names()
        assert fast(decoder, datagram)[0][0][2][0] == "wan0"
    finally:
        NAMES[3] = "eth1"
