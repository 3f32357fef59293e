"""NFLOG decoding without a kernel: hand-built packets and messages, read as LOG prints them.

The oracle is the text path: for a packet, the LOG line the kernel would print for it goes
through KernelLogParser, the packet's bytes through nflog_wire + packet_decode, and both must
give the same Packet. Over the shipped samples, every (filter, line) verdict must be the same
whichever way the packet came in.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packets import (
    ah_header,
    fragment_header,
    from_fields,
    icmp_header,
    ipv4,
    ipv6,
    options_header,
    tcp_header,
    udp_header,
)
from test_filter_samples import NOW, SAMPLES, Sample, shipped_filters

from blocker import nflog_wire
from blocker.config import load_config
from blocker.filters import Filter, Matcher
from blocker.netfilter import KernelLogParser
from blocker.nflog_wire import NflogPacket
from blocker.packet_decode import decode, record
from blocker.pipeline import Pipeline
from blocker.records import Packet

NAMES = {2: "eth0", 3: "eth1", 7: "br0"}
INDEX = {name: index for index, name in NAMES.items()}
STAMP = 1_795_000_000.25


def name_of(index: int) -> str:
    return NAMES.get(index, f"if{index}")


def through_nflog(
    payload: bytes,
    *,
    prefix: bytes = b"DROP ",
    indev: int = 2,
    outdev: int = 0,
    physindev: int = 0,
    stamp: float | None = STAMP,
    now: float = NOW,
) -> Packet | None:
    """`payload` wrapped as the kernel sends it, received, decoded and validated."""
    family = socket.AF_INET6 if payload[:1] and payload[0] >> 4 == 6 else socket.AF_INET
    message = nflog_wire.packet_message(
        NflogPacket(family, 5, 1, prefix, indev, outdev, physindev, stamp, payload)
    )
    batch = nflog_wire.packets(message + message)
    assert batch.malformed == 0 and len(batch.packets) == 2
    found = record(batch.packets[0], name_of, now)
    return None if found is None else KernelLogParser().packet(found)


def through_text(line: str) -> Packet | None:
    return KernelLogParser().parse(line, NOW, STAMP)


V4 = "SRC=203.0.113.66 DST=192.0.2.10 LEN={len} TOS=0x00 PREC=0x00 TTL=52 ID=4242 "
V6 = (
    "SRC=2001:0db8:0000:0000:0000:0000:0000:0066 DST=2001:0db8:0000:0000:0000:0000:0000:0001 "
    "LEN={len} TC=0 HOPLIMIT=52 FLOWLBL=0 "
)


def tcp4(flags: str, **kw: object) -> bytes:
    return ipv4("203.0.113.66", "192.0.2.10", 6, tcp_header(443, 40000, flags), ttl=52, **kw)  # type: ignore[arg-type]


def tcp6(flags: str, **kw: object) -> bytes:
    return ipv6("2001:db8::66", "2001:db8::1", 6, tcp_header(443, 40000, flags), hoplimit=52, **kw)  # type: ignore[arg-type]


# (packet bytes, the LOG line the kernel prints for it)
CASES = {
    "synack4": (
        tcp4("SA"),
        "DROP IN=eth0 OUT= "
        + V4.format(len=40)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 ACK SYN URGP=0 ",
    ),
    "xmas4": (
        tcp4("FPU"),
        "DROP IN=eth0 OUT= "
        + V4.format(len=40)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 URG PSH FIN URGP=0 ",
    ),
    "null4": (
        tcp4(""),
        "DROP IN=eth0 OUT= "
        + V4.format(len=40)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 URGP=0 ",
    ),
    "ecn4": (
        tcp4("SEC"),
        "DROP IN=eth0 OUT= "
        + V4.format(len=40)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 CWR ECE SYN URGP=0 ",
    ),
    "options4": (
        ipv4(
            "203.0.113.66",
            "192.0.2.10",
            6,
            tcp_header(443, 40000, "S"),
            ttl=52,
            options=b"\x01\x01\x01\x00",
        ),
        "DROP IN=eth0 OUT= "
        + V4.format(len=44)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 SYN URGP=0 ",
    ),
    "udp4": (
        ipv4("203.0.113.66", "192.0.2.10", 17, udp_header(5353, 9999), ttl=52),
        "DROP IN=eth0 OUT= " + V4.format(len=28) + "PROTO=UDP SPT=5353 DPT=9999 LEN=8 ",
    ),
    "icmp4": (
        ipv4("203.0.113.66", "192.0.2.10", 1, icmp_header(3, 3), ttl=52),
        "DROP IN=eth0 OUT= " + V4.format(len=28) + "PROTO=ICMP TYPE=3 CODE=3 ",
    ),
    "gre4": (
        ipv4("203.0.113.66", "192.0.2.10", 47, bytes(4), ttl=52),
        "DROP IN=eth0 OUT= " + V4.format(len=24) + "PROTO=47 ",
    ),
    "cut_udp4": (
        ipv4("203.0.113.66", "192.0.2.10", 17, bytes(4), ttl=52),
        "DROP IN=eth0 OUT= " + V4.format(len=24) + "PROTO=UDP INCOMPLETE [4 bytes] ",
    ),
    "synack6": (
        tcp6("SA"),
        "DROP IN=eth0 OUT= "
        + V6.format(len=60)
        + "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 ACK SYN URGP=0 ",
    ),
    "extensions6": (
        tcp6(
            "F", extensions=(options_header(0), options_header(60), fragment_header(), ah_header())
        ),
        "DROP IN=eth0 OUT= " + V6.format(len=108) + "FRAG:0 ID:00000007 "
        "PROTO=TCP SPT=443 DPT=40000 WINDOW=1024 RES=0x00 FIN URGP=0 ",
    ),
    "icmp6": (
        ipv6("2001:db8::66", "2001:db8::1", 58, icmp_header(128, 0), hoplimit=52),
        "DROP IN=eth0 OUT= " + V6.format(len=48) + "PROTO=ICMPv6 TYPE=128 CODE=0 ",
    ),
    "none6": (
        ipv6("2001:db8::66", "2001:db8::1", 59, b"", hoplimit=52),
        "DROP IN=eth0 OUT= " + V6.format(len=40) + "PROTO=59 ",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_decoded_packet_equals_the_parsed_log_line(name: str) -> None:
    payload, line = CASES[name]
    expected = through_text(line)
    assert expected is not None, "the oracle line must parse"
    assert through_nflog(payload) == expected


def test_every_field_of_an_outgoing_packet_and_the_receive_clock() -> None:
    """The host's own RST (OUTPUT: no input interface, no kernel timestamp)."""
    payload = ipv4("192.0.2.10", "203.0.113.66", 6, tcp_header(40000, 443, "R"), ttl=64, ident=0)
    packet = through_nflog(
        payload, prefix=b"UNKNOWN_OUTGOING: ", indev=0, outdev=3, stamp=None, now=NOW
    )
    assert packet == Packet(
        NOW,
        "UNKNOWN_OUTGOING:",
        "",
        "eth1",
        ip_address("192.0.2.10"),
        ip_address("203.0.113.66"),
        "TCP",
        40000,
        443,
        frozenset({"RST"}),
        40,
        64,
        None,
        None,
        "",
        0,
    )
    assert packet.direction == "out"


def test_a_vanished_interface_keeps_the_direction() -> None:
    packet = through_nflog(tcp4("SA"), indev=99)
    assert packet is not None and packet.iface_in == "if99" and packet.direction == "in"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(tcp4("S", frag_offset=8), id="later IPv4 fragment: no ports"),
        pytest.param(
            ipv4("203.0.113.66", "192.0.2.10", 1, icmp_header(8, 0), frag_offset=8),
            id="later IPv4 ICMP fragment: no type",
        ),
        pytest.param(tcp4("S")[:30], id="TCP header cut short"),
        pytest.param(tcp6("S", extensions=(fragment_header(offset=8),)), id="later IPv6 fragment"),
    ],
)
def test_packets_logged_without_ports_or_type_are_refused(payload: bytes) -> None:
    assert through_nflog(payload) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(tcp4("S")[:19], id="IPv4 header cut"),
        pytest.param(tcp6("S")[:39], id="IPv6 header cut"),
        pytest.param(b"\x50" + bytes(40), id="version 5"),
        pytest.param(b"\x44" + tcp4("S")[1:], id="IHL below 5"),
        pytest.param(ipv6("2001:db8::66", "2001:db8::1", 50, bytes(8)), id="IPv6 ESP"),
        pytest.param(
            tcp6("S", extensions=(fragment_header(offset=8), options_header(60))),
            id="options after a later fragment",
        ),
        pytest.param(tcp6("S", extensions=(options_header(0),))[:41], id="extension header cut"),
    ],
)
def test_headers_log_prints_no_protocol_for_give_no_record(payload: bytes) -> None:
    assert decode(payload) is None


# -- the shipped samples: the same verdicts either way ------------------------------------


def sample_packet(sample: Sample) -> Packet | None:
    return KernelLogParser().parse(sample.line, NOW, STAMP)


def as_nflog(packet: Packet) -> Packet | None:
    """The packet a LOG line describes, sent as NFLOG would send it, decoded."""
    payload = from_fields(
        str(packet.src),
        str(packet.dst),
        packet.proto,
        spt=packet.spt,
        dpt=packet.dpt,
        flags=packet.flags,
        length=packet.length,
        ttl=packet.ttl,
        ip_id=packet.ip_id,
        icmp_type=packet.icmp_type,
        icmp_code=packet.icmp_code,
    )
    names: dict[str, object] = {**INDEX}
    for name in (packet.iface_in, packet.iface_out, packet.physin):
        names.setdefault(name, f"x{len(names)}")
    index = {name: i + 10 for i, name in enumerate(names)}
    NAMES.update({i: name for name, i in index.items()})
    return through_nflog(
        payload,
        prefix=packet.prefix.encode(),
        indev=index[packet.iface_in] if packet.iface_in else 0,
        outdev=index[packet.iface_out] if packet.iface_out else 0,
        physindev=index[packet.physin] if packet.physin else 0,
        stamp=packet.time,
    )


PARSED = [s for s in SAMPLES if sample_packet(s) is not None]


def test_most_samples_describe_a_packet() -> None:
    assert len(PARSED) >= 100


@pytest.mark.parametrize("sample", PARSED, ids=[s.id for s in PARSED])
def test_sample_gives_the_same_packet_and_verdict_through_nflog(sample: Sample) -> None:
    text = sample_packet(sample)
    assert text is not None
    packet = as_nflog(text)
    assert packet == text._replace(time=packet.time if packet else 0.0)
    assert packet is not None and abs(packet.time - text.time) < 1e-5
    flt: Filter = shipped_filters()[sample.filter]
    for one in shipped_filters().values():
        by_text = Matcher("t", [(one, 1.0)]).match(text)
        by_nflog = Matcher("t", [(one, 1.0)]).match(packet)
        assert (by_text is None) == (by_nflog is None), one.name
        if by_text is not None and by_nflog is not None:
            assert by_text.offender == by_nflog.offender
            assert by_text.distinct_key == by_nflog.distinct_key
    hit = Matcher("t", [(flt, 1.0)]).match(packet)
    assert (hit is not None) == sample.match
    if hit is not None:
        assert str(hit.offender) == sample.offender


def test_shipped_jails_decide_the_same_from_lines_and_from_records() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "jails.toml")
    by_text, by_nflog = Pipeline(config), Pipeline(config)
    lines, records = [], []
    for sample in PARSED * 6:  # enough repeats to cross thresholds
        text = sample_packet(sample)
        assert text is not None
        lines.append(sample.line)
        payload = from_fields(
            str(text.src),
            str(text.dst),
            text.proto,
            spt=text.spt,
            dpt=text.dpt,
            flags=text.flags,
            length=text.length,
            ttl=text.ttl,
            ip_id=text.ip_id,
            icmp_type=text.icmp_type,
            icmp_code=text.icmp_code,
        )
        indev = INDEX.get(text.iface_in, 0) if text.iface_in else 0
        outdev = INDEX.get(text.iface_out, 0) if text.iface_out else 0
        if (text.iface_in and not indev) or (text.iface_out and not outdev):
            lines.pop()
            continue
        rec = record(
            NflogPacket(
                2 if text.src.version == 4 else 10,
                5,
                1,
                text.prefix.encode(),
                indev,
                outdev,
                0,
                text.time,
                payload,
            ),
            name_of,
            NOW,
        )
        assert rec is not None
        records.append(rec)
    decided_text = [d for line in lines for d in by_text.feed_line(line, NOW, STAMP)]
    decided_nflog = by_nflog.feed_records(records)
    assert [(d.target, d.jail, d.filters) for d in decided_text] == [
        (d.target, d.jail, d.filters) for d in decided_nflog
    ]
    assert decided_text, "the samples must ban something"
    assert by_text.stats.parsed == by_nflog.stats.parsed == len(records)


# -- garbage ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_datagram_is_walked_without_raising(data: bytes) -> None:
    batch = nflog_wire.packets(data)
    for packet in batch.packets:
        record(packet, name_of, NOW)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([0x45, 0x46, 0x60, 0x4F]))
def test_any_payload_decodes_or_is_refused_without_raising(tail: bytes, first: int) -> None:
    payload = bytes((first,)) + tail
    found = record(NflogPacket(2, 5, 1, b"X ", 2, 0, 0, None, payload), name_of, NOW)
    if found is not None:
        KernelLogParser().packet(found)
        Pipeline(load_config(Path(__file__).resolve().parents[1] / "jails.toml")).feed_records(
            [found]
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.binary(max_size=40)), max_size=6))
def test_messages_with_any_attributes_survive(attrs: list[tuple[int, bytes]]) -> None:
    body = b"".join(struct.pack("=HH", 4 + len(v), k) + v + bytes(-len(v) & 3) for k, v in attrs)
    body = bytes((2, 0)) + struct.pack(">H", 5) + body
    message = struct.pack("=IHHII", 16 + len(body), nflog_wire.PACKET_TYPE, 0, 0, 0) + body
    batch = nflog_wire.packets(message)
    assert len(batch.packets) + batch.malformed == 1
    for packet in batch.packets:
        record(packet, name_of, NOW)


def test_a_message_whose_length_lies_ends_the_walk() -> None:
    good = nflog_wire.packet_message(NflogPacket(2, 5, 1, b"", 2, 0, 0, None, tcp4("S")))
    liar = struct.pack("=I", 10_000) + good[4:]
    batch = nflog_wire.packets(good + liar)
    assert len(batch.packets) == 1 and batch.malformed == 1


def test_config_request_layout() -> None:
    message = nflog_wire.config_request(5, seq=9, command=nflog_wire.CMD_BIND)
    size, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
    assert (size, kind, flags, seq) == (len(message), 0x401, 0x5, 9)
    assert message[16:20] == b"\x00\x00\x00\x05"  # AF_UNSPEC, version 0, group 5 big endian
    assert message[20:25] == struct.pack("=HH", 5, 1) + b"\x01"
    mode = nflog_wire.config_request(
        5, seq=1, copy_range=512, qthresh=64, timeout_cs=2, nlbufsiz=131072
    )
    assert struct.pack("=HH", 10, 2) + struct.pack(">I", 512) + b"\x02\x00" in mode
    assert struct.pack("=HH", 8, 5) + struct.pack(">I", 64) in mode
