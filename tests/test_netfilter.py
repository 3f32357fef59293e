"""netfilter.py: one kernel LOG line -> Packet | None, for every line form admins have."""

from __future__ import annotations

import re
import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loglines import BASE, HOST4, MAC4, MAC6, PROBER4, outgoing_rst, outgoing_syn, synack

from blocker.netfilter import (
    _PACKET,
    AddressTable,
    KernelLogParser,
    KeyTable,
    LogFields,
    address_of,
    looks_like_netfilter,
)
from blocker.records import Packet

NOW = BASE + 3600.0
V4_BODY = (
    f"IN=eth0 OUT= {MAC4} SRC=203.0.113.66 DST=192.0.2.10 LEN=40 TOS=0x00 PREC=0x00 TTL=64 "
    "ID=0 PROTO=TCP SPT=2372 DPT=0 WINDOW=512 RES=0x00 ACK SYN URGP=0 "
)
V6_BODY = (
    f"IN=eth0 OUT= {MAC6} SRC=2001:0db8:0000:0000:0000:0000:0000:0042 "
    "DST=2001:0db8:0000:0000:0000:0000:0000:0010 LEN=80 TC=0 HOPLIMIT=57 FLOWLBL=0 "
    "PROTO=TCP SPT=46395 DPT=80 WINDOW=5760 RES=0x00 SYN URGP=0 "
)
UDP_BODY = (
    f"IN=eth1 OUT= {MAC4} SRC=198.51.100.7 DST=192.0.2.10 LEN=28 TOS=0x00 PREC=0x00 TTL=50 "
    "ID=54985 PROTO=UDP SPT=44318 DPT=1146 LEN=8 "
)
ICMP_BODY = (
    f"IN=eth0 OUT= {MAC4} SRC=198.51.100.7 DST=192.0.2.10 LEN=28 TOS=0x00 PREC=0x00 TTL=64 "
    "ID=18443 PROTO=ICMP TYPE=8 CODE=0 ID=2158 SEQ=512 "
)
PROTO_BODY = (
    f"IN=eth0 OUT= {MAC4} SRC=198.51.100.7 DST=192.0.2.10 LEN=20 TOS=0x00 PREC=0x00 TTL=56 "
    "ID=50515 PROTO=162 "
)


def parse(line: str, now: float = NOW, source_time: float | None = None) -> Packet | None:
    return KernelLogParser().parse(line, now, source_time)


def must_parse(line: str, now: float = NOW, source_time: float | None = None) -> Packet:
    packet = parse(line, now, source_time)
    assert packet is not None, line
    return packet


def local(*fields: int) -> float:
    """Epoch of a local wall-clock time (traditional syslog stamps are local time)."""
    year, month, day, hour, minute, second = fields
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


# ---- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-22T02:04:54.684948+00:00", BASE + 0.684948),
        ("2026-11-22T04:04:54.684948+02:00", BASE + 0.684948),
        ("2026-11-21T21:04:54.5-05:00", BASE + 0.5),
        ("2026-11-22T02:04:54Z", BASE),
        ("2026-11-22T02:04:54.25Z", BASE + 0.25),
        ("2026-11-22T02:04:54+00:00", BASE),
        ("2026-11-22T03:34:54+0130", BASE),
        ("2026-11-22T02:04:54.123456789+00:00", BASE + 0.123456789),
    ],
)
def test_rfc3339_timestamps_to_epoch(stamp: str, expected: float) -> None:
    packet = must_parse(f"{stamp} host kernel: DROP {V4_BODY}")
    assert packet.time == pytest.approx(expected, abs=1e-6)
    assert packet.prefix == "DROP"


def test_rfc3339_without_zone_is_local_time() -> None:
    packet = must_parse(f"2026-11-22T02:04:54 host kernel: DROP {V4_BODY}")
    assert packet.time == local(2026, 11, 22, 2, 4, 54)


def test_traditional_timestamp_is_placed_in_the_year_of_now() -> None:
    now = local(2026, 11, 22, 3, 0, 0)
    packet = must_parse(f"Nov 22 02:04:54 host kernel: [81795.100496] DROP {V4_BODY}", now)
    assert packet.time == local(2026, 11, 22, 2, 4, 54)
    padded = must_parse(f"Nov  2 02:04:54 host kernel: DROP {V4_BODY}", now)
    assert padded.time == local(2026, 11, 2, 2, 4, 54)


def test_year_rollover_a_december_line_read_on_new_year_is_last_year() -> None:
    now = local(2027, 1, 1, 0, 0, 10)
    packet = must_parse(f"Dec 31 23:59:59 host kernel: DROP {V4_BODY}", now)
    assert packet.time == local(2026, 12, 31, 23, 59, 59)


def test_a_line_slightly_in_the_future_stays_in_this_year() -> None:
    # Clock skew between the logger and the reader: days ahead is this year, not last year.
    now = local(2026, 11, 22, 3, 0, 0)
    assert must_parse(f"Nov 28 02:04:54 host kernel: DROP {V4_BODY}", now).time == local(
        2026, 11, 28, 2, 4, 54
    )
    assert must_parse(f"Dec  5 02:04:54 host kernel: DROP {V4_BODY}", now).time == local(
        2025, 12, 5, 2, 4, 54
    )


def test_year_inference_follows_now_on_a_reused_parser() -> None:
    line = f"Dec 31 23:59:59 host kernel: DROP {V4_BODY}"
    parser = KernelLogParser()
    first = parser.parse(line, local(2026, 1, 1, 0, 0, 10))
    second = parser.parse(line, local(2027, 1, 1, 0, 0, 10))
    assert first is not None and second is not None
    assert first.time == local(2025, 12, 31, 23, 59, 59)
    assert second.time == local(2026, 12, 31, 23, 59, 59)


@pytest.mark.parametrize(
    "header",
    [
        "Foo 22 02:04:54 host kernel: ",  # no such month
        "2026-13-22T02:04:54Z host kernel: ",  # no such month
        "2026-11-22T02:04:54+00:00 kernel: ",  # no host field
        "Nov 22 02:04:54 kernel: ",
    ],
)
def test_bad_headers_are_refused(header: str) -> None:
    assert parse(f"{header}DROP {V4_BODY}") is None


def test_uptime_is_skipped_after_a_syslog_header() -> None:
    packet = must_parse(
        f"Nov 22 02:04:54 host kernel: [ 3445.031964] DROP {V4_BODY}", local(2026, 11, 22, 3, 0, 0)
    )
    assert packet.prefix == "DROP"
    assert packet.time == local(2026, 11, 22, 2, 4, 54)


def test_dmesg_uptime_is_the_clock_when_nothing_else_is_known() -> None:
    assert must_parse(f"[81795.100496] DROP {V4_BODY}").time == pytest.approx(81795.100496)
    assert must_parse(f"[81795.100496] DROP {V4_BODY}", source_time=5.0).time == 5.0


def test_headerless_text_takes_source_time_else_now() -> None:
    assert must_parse(f"DROP {V4_BODY}").time == NOW
    packet = must_parse(f"DROP {V4_BODY}", source_time=BASE + 1.5)
    assert packet.time == BASE + 1.5
    assert packet.prefix == "DROP"
    assert must_parse(V4_BODY).prefix == ""


@pytest.mark.parametrize(
    ("line", "source_time"),
    [
        (f"[UFW BLOCK] {V4_BODY}", None),
        (f"[UFW BLOCK] {V4_BODY}", BASE),
        (f"Nov 22 02:04:54 host kernel: [UFW BLOCK] {V4_BODY}", None),
        (f"2026-11-22T02:04:54.684948+00:00 host kernel: [UFW BLOCK] {V4_BODY}", None),
    ],
    ids=["headerless", "journald-source-time", "traditional-no-uptime", "rfc3339"],
)
def test_bracketed_prefix_without_uptime(line: str, source_time: float | None) -> None:
    assert must_parse(line, source_time=source_time).prefix == "[UFW BLOCK]"


def test_bracketed_prefix_after_uptime() -> None:
    line = f"Nov 22 02:04:54 host kernel: [81795.100496] [UFW BLOCK] {V4_BODY}"
    assert must_parse(line).prefix == "[UFW BLOCK]"


# ---- fields ------------------------------------------------------------------------------


def test_ipv4_tcp_fields() -> None:
    packet = must_parse(f"2026-11-22T02:04:54Z host kernel: UNKNOWN_INCOMING: {V4_BODY}")
    assert packet == Packet(
        time=BASE,
        prefix="UNKNOWN_INCOMING:",
        iface_in="eth0",
        iface_out="",
        src=IPv4Address("203.0.113.66"),
        dst=IPv4Address("192.0.2.10"),
        proto="TCP",
        spt=2372,
        dpt=0,
        flags=frozenset({"SYN", "ACK"}),
        length=40,
        ttl=64,
        ip_id=0,
    )
    assert packet.direction == "in"


def test_ipv6_addresses_are_normalized_and_hoplimit_is_ttl() -> None:
    packet = must_parse(f"DROP {V6_BODY}")
    assert packet.src == IPv6Address("2001:db8::42")
    assert str(packet.src) == "2001:db8::42"
    assert str(packet.dst) == "2001:db8::10"
    assert (packet.length, packet.ttl, packet.flags) == (80, 57, frozenset({"SYN"}))
    upper = must_parse(f"DROP {V6_BODY.replace('0db8', '0DB8')}")
    assert upper.src == packet.src


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("ACK SYN ", {"ACK", "SYN"}),
        ("RST ", {"RST"}),
        ("FIN ", {"FIN"}),
        ("URG PSH FIN ", {"URG", "PSH", "FIN"}),
        ("ACK RST ", {"ACK", "RST"}),
        ("CWR ECE SYN ", {"CWR", "ECE", "SYN"}),
        (
            "CWR ECE URG ACK PSH RST SYN FIN ",
            {"CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"},
        ),
        ("", set()),
    ],
)
def test_tcp_flag_sets(text: str, flags: set[str]) -> None:
    body = V4_BODY.replace("ACK SYN ", text)
    assert must_parse(f"DROP {body}").flags == frozenset(flags)


@pytest.mark.parametrize("text", ["FOO ", "SYN XYZ ", "syn "])
def test_unknown_tcp_flag_words_are_refused(text: str) -> None:
    assert parse(f"DROP {V4_BODY.replace('ACK SYN ', text)}") is None


def test_tcp_sequence_numbers_and_tcp_options() -> None:
    body = V4_BODY.replace("DPT=0 ", "DPT=0 SEQ=3149642317 ACK=1 ").replace(
        "URGP=0 ", "URGP=0 OPT (020405B40402080A5A2A3B3C0000000001030307) "
    )
    packet = must_parse(f"DROP {body}")
    assert (packet.spt, packet.dpt, packet.flags) == (2372, 0, frozenset({"ACK", "SYN"}))


def test_ip_options_and_flags_before_proto() -> None:
    body = V4_BODY.replace("ID=0 ", "ID=0 CE DF MF OPT (07070400000000) ")
    packet = must_parse(f"DROP {body}")
    assert (packet.proto, packet.dpt) == ("TCP", 0)


def test_topera_ipv6_extension_options_before_proto() -> None:
    line = (
        "Dec 20 20:10:01 rohan kernel: [  449.059230] DROP IN=eth0 OUT= "
        "MAC=00:1b:b9:76:9c:e4:00:13:46:3a:41:36:86:dd "
        "SRC=2001:0db8:1234:0000:0000:0000:0000:0001 DST=2001:0db8:1234:0000:0000:0000:0000:0002 "
        "LEN=132 TC=0 HOPLIMIT=64 FLOWLBL=0 OPT ( ) OPT ( ) OPT ( ) OPT ( ) OPT ( ) OPT ( ) "
        "OPT ( ) OPT ( ) OPT ( ) PROTO=TCP SPT=58537 DPT=1234 WINDOW=8192 RES=0x00 SYN URGP=0 "
    )
    packet = must_parse(line, local(2026, 12, 21, 0, 0, 0))
    assert str(packet.src) == "2001:db8:1234::1"
    assert (packet.proto, packet.dpt, packet.ttl) == ("TCP", 1234, 64)


def test_udp_icmp_and_protocol_numbers() -> None:
    udp = must_parse(f"DROP {UDP_BODY}")
    assert (udp.proto, udp.spt, udp.dpt, udp.flags, udp.length) == (
        "UDP",
        44318,
        1146,
        frozenset(),
        28,
    )
    icmp = must_parse(f"ICMP {ICMP_BODY}")
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code, icmp.spt) == ("ICMP", 8, 0, None)
    other = must_parse(f"DROP {PROTO_BODY}")
    assert (other.proto, other.spt, other.icmp_type, other.ttl) == ("162", None, None, 56)
    lite_body = PROTO_BODY.replace("PROTO=162 ", "PROTO=UDPLITE INCOMPLETE [0 bytes] ")
    lite = must_parse(f"DROP {lite_body}")
    assert lite.proto == "UDPLITE"


def test_icmpv6_type_and_code() -> None:
    body = V6_BODY.split("PROTO=", maxsplit=1)[0] + "PROTO=ICMPv6 TYPE=135 CODE=0 "
    packet = must_parse(f"DROP {body}")
    assert (packet.proto, packet.icmp_type, packet.icmp_code) == ("ICMPv6", 135, 0)


def test_icmp_error_takes_the_outer_packet_not_the_quoted_one() -> None:
    line = (
        f"DROP IN=eth0 OUT= {MAC4} SRC=198.51.100.1 DST=192.0.2.10 LEN=68 TOS=0x00 PREC=0xC0 "
        "TTL=63 ID=1 PROTO=ICMP TYPE=3 CODE=3 [SRC=192.0.2.10 DST=203.0.113.66 LEN=40 "
        "TOS=0x00 PREC=0x00 TTL=63 ID=2 PROTO=TCP SPT=40000 DPT=80 WINDOW=0 RES=0x00 "
        "ACK SYN URGP=0 ] "
    )
    packet = must_parse(line)
    assert (str(packet.src), str(packet.dst)) == ("198.51.100.1", "192.0.2.10")
    assert (packet.proto, packet.icmp_type, packet.icmp_code) == ("ICMP", 3, 3)
    assert (packet.spt, packet.dpt, packet.flags, packet.length) == (None, None, frozenset(), 68)
    assert list(KernelLogParser().parse_text(line + "\n", NOW)) == [packet]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"kernel: [ 1.0] DROP {V4_BODY}", True),
        (f"DROP {V6_BODY}", True),
        ("IN=eth0 OUT= SRC=203.0.113.66 DST=", True),  # cut short: refused, but worth reporting
        ("usb 1-1: new high-speed USB device number 2 using xhci_hcd", False),
        ("SRC=203.0.113.66 DST=192.0.2.10", False),  # no IN=: not the kernel's LOG format
        ("IN=eth0 OUT= DST=192.0.2.10", False),
        ("", False),
    ],
)
def test_looks_like_netfilter(line: str, expected: bool) -> None:
    assert looks_like_netfilter(line) is expected


def test_regex_groups_are_the_log_fields_in_order() -> None:
    # The contract between the regex and every positional reader of scan()'s fields
    # (Pipeline._feed_records, packet_decode.record): group n is LogFields' field n-1.
    assert _PACKET.groupindex == {name: number for number, name in enumerate(LogFields._fields, 1)}
    assert _PACKET.groups == len(LogFields._fields)


def test_scanned_fields_read_by_name() -> None:
    parser = KernelLogParser()
    ((_, prefix, fields),) = parser.scan(f"DROP {V4_BODY}\n", NOW)
    named = LogFields._make(fields)
    assert prefix == "DROP "
    assert (named.iface_in, named.iface_out, named.src, named.dst, named.length) == (
        "eth0",
        "",
        "203.0.113.66",
        "192.0.2.10",
        "40",
    )
    assert (named.ttl, named.ip_id, named.hoplimit, named.proto) == ("64", "0", None, "TCP")
    assert (named.spt, named.dpt, named.flags) == ("2372", "0", "ACK SYN ")
    assert (named.icmp_type, named.icmp_code, named.incomplete, named.physin) == (
        None,
        None,
        None,
        None,
    )
    ((_, _, v6),) = parser.scan(f"{V6_BODY}\n", NOW)
    assert (LogFields._make(v6).hoplimit, LogFields._make(v6).ttl) == ("57", None)
    ((_, _, icmp),) = parser.scan(f"{ICMP_BODY}\n", NOW)
    assert LogFields._make(icmp)[-3:] == ("8", "0", None)


def test_address_table_resolves_and_caches_any_text() -> None:
    parser = KernelLogParser()
    table = parser.addresses
    assert table["203.0.113.66"] == IPv4Address("203.0.113.66")
    assert table["2001:0db8:0000:0000:0000:0000:0000:0042"] == IPv6Address("2001:db8::42")
    assert table["203.0.113.256"] is None
    assert table["not an address"] is None
    assert "203.0.113.66" in table  # kept: the next lookup is a plain dict hit
    assert parser.address("203.0.113.66") is table["203.0.113.66"]


def test_bridge_physin_lines() -> None:
    body = V4_BODY.replace("IN=eth0 OUT= ", "IN=br0 OUT= PHYSIN=eth0 ")
    packet = must_parse(f"DROP {body}")
    assert (packet.iface_in, packet.physin, packet.direction) == ("br0", "eth0", "in")
    forward = V4_BODY.replace("IN=eth0 OUT= ", "IN=br0 OUT=br0 PHYSIN=eth0 PHYSOUT=eth1 ")
    bridged = must_parse(f"FWD {forward}")
    assert (bridged.physin, bridged.direction) == ("eth0", "forward")


def test_missing_mac_and_direction() -> None:
    out = must_parse(outgoing_rst())
    assert (out.iface_in, out.iface_out, out.direction) == ("", "eth0", "out")
    assert (str(out.src), str(out.dst), out.flags) == (HOST4, PROBER4, frozenset({"RST"}))
    assert out.prefix == "UNKNOWN_OUTGOING:"
    assert must_parse(outgoing_syn()).flags == frozenset({"SYN"})
    inbound = must_parse(synack())
    assert inbound.direction == "in"
    forward = must_parse(f"FWD {V4_BODY.replace('OUT= ', 'OUT=eth1 ')}")
    assert forward.direction == "forward"
    no_mac = must_parse(f"DROP {V4_BODY.replace(MAC4 + ' ', '')}")
    assert no_mac == must_parse(f"DROP {V4_BODY}")


# ---- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"Nov 22 02:04:54 host sshd[1]: Invalid user x from 198.51.100.9 kernel: DROP {V4_BODY}",
        f"Nov 22 02:04:54 host sshd[1]: kernel: DROP {V4_BODY}",
        f"Nov 22 02:04:54 host myapp[77]: DROP {V4_BODY}",
        f"2026-11-22T02:04:54.684948+00:00 host myapp[77]: DROP {V4_BODY}",
        f"2026-11-22T02:04:54.684948+00:00 host myapp[77]: x kernel: DROP {V4_BODY}",
        f"Nov 22 02:04:54 host kernel[12]: DROP {V4_BODY}",
    ],
    ids=[
        "sshd-kernel-text",
        "sshd-kernel-tag",
        "user-tag",
        "rfc-user-tag",
        "rfc-forged",
        "kernel-with-pid",
    ],
)
def test_forged_tag_lines_are_refused(line: str) -> None:
    assert parse(line) is None
    assert list(KernelLogParser().parse_text(line + "\n", NOW)) == []


@pytest.mark.parametrize(
    "body",
    [
        V4_BODY.replace("SRC=203.0.113.66", "SRC=999.1.1.1"),
        V4_BODY.replace("DST=192.0.2.10", "DST=192.0.2"),
        V6_BODY.replace("SRC=2001:0db8:0000:0000:0000:0000:0000:0042", "SRC=2001:zz::"),
        V6_BODY.replace("SRC=2001:0db8:0000:0000:0000:0000:0000:0042", "SRC=2001:db8::1::2"),
        V4_BODY.replace("DST=192.0.2.10", "DST=2001:0db8:0000:0000:0000:0000:0000:0010"),
        V6_BODY.replace("SRC=2001:0db8:0000:0000:0000:0000:0000:0042", "SRC=203.0.113.66"),
        V4_BODY.replace("SRC=203.0.113.66", "SRC="),
    ],
    ids=["v4-999", "v4-short", "v6-zz", "v6-double-colon", "mixed-4-6", "mixed-6-4", "empty"],
)
def test_bad_and_mixed_addresses_are_refused(body: str) -> None:
    assert parse(f"DROP {body}") is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\x00\x01\x02\xff\xfe",
        "IN=",
        "IN=eth0 OUT= SRC=1.2.3.4",
        "DROP IN=eth0 OUT= SRC=203.0.113.66 DST=192.0.2.10 LEN=x PROTO=TCP",
        "Nov 22 02:04:54 host kernel: random kernel chatter without a packet",
        "x" * 1_000_000,
        "IN=a OUT=b " * 100_000,
    ],
    ids=["empty", "binary", "IN-only", "no-dst", "bad-len", "chatter", "1MB", "1MB-IN"],
)
def test_garbage_is_not_a_packet(line: str) -> None:
    assert parse(line) is None
    assert list(KernelLogParser().parse_text(line, NOW)) == []


@pytest.mark.parametrize(
    "line",
    [
        f"2026-11-22T02:04:54.{chr(0xB2) * 6}+00:00 host kernel: DROP {V4_BODY}",
        f"2026-11-22T02:04:54.\u00b2+00:00 host kernel: DROP {V4_BODY}",
        f"[\u00b2\u00b2.5] DROP {V4_BODY}",
        f"Nov 22 02:04:54 host kernel: [\u00b2] DROP {V4_BODY}",
        "DROP " + V4_BODY.replace("PROTO=TCP", "PROTO=\u00b2"),
    ],
    ids=["fraction", "short-fraction", "dmesg-uptime", "uptime", "proto"],
)
def test_digits_that_int_refuses_never_raise(line: str) -> None:
    # str.isdigit() is true for '\u00b2', which int() and float() refuse.
    packet = parse(line)
    assert packet is None or packet.src == IPv4Address(PROBER4)
    for packet in KernelLogParser().parse_text(line + "\n" + line + "\n", NOW):
        assert packet.src == IPv4Address(PROBER4)


def test_a_valid_record_after_a_huge_head_does_not_raise() -> None:
    packet = parse("A " * 500_000 + f"DROP {V4_BODY}")
    assert packet is None or str(packet.src) == PROBER4


# ---- truncation --------------------------------------------------------------------------

FULL_LINES = {
    "tcp-v4": f"Nov 22 02:04:54 host kernel: [81795.100496] DROP {V4_BODY}",
    "tcp-v6": f"2026-11-22T02:04:54.684948+00:00 host kernel: DROP {V6_BODY}",
    "udp": f"DROP {UDP_BODY}",
    "icmp": f"[81795.100496] ICMP {ICMP_BODY}",
    "proto": f"DROP {PROTO_BODY}",
}


@pytest.mark.parametrize("name", sorted(FULL_LINES))
def test_every_prefix_cut_before_proto_is_refused(name: str) -> None:
    line = FULL_LINES[name]
    for cut in range(line.index("PROTO=") + len("PROTO=")):
        assert parse(line[:cut]) is None, line[:cut]


@pytest.mark.parametrize("name", sorted(FULL_LINES))
def test_a_cut_after_the_last_field_changes_nothing(name: str) -> None:
    line = FULL_LINES[name]
    full = must_parse(line)
    end = len(line.rstrip())
    for cut in range(end, len(line) + 1):
        assert parse(line[:cut]) == full


@pytest.mark.parametrize("name", sorted(FULL_LINES))
def test_every_prefix_is_refused_or_the_full_packet(name: str) -> None:
    line = FULL_LINES[name]
    full = must_parse(line)
    wrong = [
        line[:cut]
        for cut in range(len(line))
        if (packet := parse(line[:cut])) is not None
        and packet != full
        and not _cut_inside_a_trailing_protocol_number(line, cut)
    ]
    assert wrong == []


def _cut_inside_a_trailing_protocol_number(line: str, cut: int) -> bool:
    """Known limit: "PROTO=16" cut to "PROTO=1" at the end of a line looks whole (real logs
    end "PROTO=2" both with and without a trailing space)."""
    number = re.search(r"PROTO=(\d+) ?$", line)
    return number is not None and number.start(1) < cut <= number.end(1)


@settings(max_examples=300)
@given(st.sampled_from(sorted(FULL_LINES)), st.data())
def test_truncated_lines_never_raise_nor_misplace_the_header(
    name: str, data: st.DataObject
) -> None:
    line = FULL_LINES[name]
    cut = data.draw(st.integers(0, len(line)))
    full = must_parse(line)
    packet = parse(line[:cut])
    if packet is None:
        return
    assert (
        packet.time,
        packet.prefix,
        packet.iface_in,
        packet.iface_out,
        packet.src,
        packet.dst,
        packet.length,
        packet.ttl,
    ) == (
        full.time,
        full.prefix,
        full.iface_in,
        full.iface_out,
        full.src,
        full.dst,
        full.length,
        full.ttl,
    )
    if packet.proto == "TCP":
        assert packet == full  # a TCP record is only accepted once its flags are complete


@settings(max_examples=300)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_never_raises(text: str) -> None:
    packet = parse(text)
    assert packet is None or isinstance(packet, Packet)
    # kmsg reports the look-alikes it cannot parse: whatever parses must look like a record.
    assert packet is None or looks_like_netfilter(text)
    for packet in KernelLogParser().parse_text(text, NOW):
        assert isinstance(packet, Packet)
        assert looks_like_netfilter(text)


VALID_LINES = [
    *FULL_LINES.values(),
    synack(),
    outgoing_rst(),
    outgoing_syn(),
    synack("2001:db8::42", at=None),
    outgoing_rst("2001:db8::42"),
]
_noise = st.text(st.characters(blacklist_characters="\n"), max_size=120)


def _mutated(line: str) -> st.SearchStrategy[str]:
    """A valid line with one character replaced or deleted, or cut short."""

    def mutate(args: tuple[int, str, int]) -> str:
        index, char, how = args
        index %= len(line)
        if how == 0:
            return line[:index] + line[index + 1 :]
        if how == 1:
            return line[:index] + char + line[index + 1 :]
        return line[:index]

    return st.tuples(
        st.integers(0, 10_000), st.characters(blacklist_characters="\n"), st.integers(0, 2)
    ).map(mutate)


_lines = st.one_of(
    st.sampled_from(VALID_LINES),
    _noise,
    st.sampled_from(VALID_LINES).flatmap(_mutated),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_lines, max_size=30), st.booleans())
def test_parse_text_equals_parse_per_line(lines: list[str], trailing_newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    one_by_one = [p for line in lines if (p := parse(line)) is not None]
    assert list(KernelLogParser().parse_text(text, NOW)) == one_by_one


def _split_by_newline(line: str) -> st.SearchStrategy[str]:
    """A valid line with a newline put in somewhere: a record the regex may match across."""
    return st.integers(0, len(line)).map(lambda i: line[:i] + "\n" + line[i:])


def _lines_of(text: str) -> int:
    return text.count("\n") + (bool(text) and not text.endswith("\n"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(_lines, st.just(""), st.sampled_from(VALID_LINES).flatmap(_split_by_newline)),
        max_size=30,
    ),
    st.booleans(),
    st.booleans(),
)
def test_scan_counts_every_line_of_its_text(
    lines: list[str], trailing_newline: bool, headerless: bool
) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    parser = KernelLogParser()
    parser.scan(text, NOW, headerless=headerless)
    assert parser.lines == _lines_of(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\n\nnoise",
        f"{synack()}\n",
        f"{synack()}",
        f"noise\n\n{synack()}\nnoise\n{synack()}",
        f"{synack()} IN=eth1 again\n\n",  # a second 'IN=' on a line already handled
        # The record runs across the newline (IN= at the end of a line): read line by line.
        f"noise\nDROP IN=eth0\nx{V4_BODY[len('IN=eth0') :]}\nnoise\n",
        f"DROP IN=eth0\n\nx{V4_BODY[len('IN=eth0') :]}",
    ],
)
def test_scan_counts_lines_around_records(text: str) -> None:
    parser = KernelLogParser()
    parser.scan(text, NOW)
    assert parser.lines == _lines_of(text)


def test_parse_text_counts_rejected_log_like_lines() -> None:
    parser = KernelLogParser()
    text = (
        "\n".join(
            [
                synack(),
                f"DROP {V4_BODY.replace('SRC=203.0.113.66', 'SRC=999.1.1.1')}",
                f"Nov 22 02:04:54 host sshd[1]: x kernel: DROP {V4_BODY}",
                "plain noise",
                outgoing_rst(),
            ]
        )
        + "\n"
    )
    packets = list(parser.parse_text(text, NOW))
    assert [str(p.src) for p in packets] == [PROBER4, HOST4]
    assert parser.take_rejected() == 2
    assert parser.take_rejected() == 0


def test_rfc3339_fraction_is_kept_across_the_header_cache() -> None:
    parser = KernelLogParser()
    times = [parser.parse(synack(at=BASE + fraction), NOW) for fraction in (0.1, 0.7, 0.1)]
    assert [p.time if p else None for p in times] == [
        pytest.approx(BASE + 0.1),
        pytest.approx(BASE + 0.7),
        pytest.approx(BASE + 0.1),
    ]


def test_ipv4_identification_is_kept_and_ipv6_has_none() -> None:
    v4 = must_parse(
        "Mar 11 20:35:11 linux kernel: [463490.251762] DROP IN=eth1 OUT= "
        "SRC=192.0.2.55 DST=192.0.2.1 LEN=44 TOS=0x00 PREC=0x00 TTL=53 ID=15270 "
        "PROTO=TCP SPT=56247 DPT=1025 WINDOW=3072 RES=0x00 SYN URGP=0 "
    )
    assert (v4.ip_id, v4.ttl, v4.length) == (15270, 53, 44)
    v6 = must_parse(
        "Mar 17 13:39:13 linux kernel: DROP IN=eth0 OUT= "
        "SRC=2001:0db8:0000:f101:0000:0000:0000:0002 "
        "DST=2001:0db8:0000:f101:0000:0000:0000:0001 LEN=80 TC=0 HOPLIMIT=64 "
        "FLOWLBL=0 PROTO=TCP SPT=46395 DPT=80 WINDOW=5760 RES=0x00 SYN URGP=0 "
    )
    assert (v6.ip_id, v6.ttl) == (None, 64)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_address_table_makes_ipv4_addresses_the_stdlib_way(value: int) -> None:
    # AddressTable builds IPv4 addresses around IPv4Address.__init__: whatever it makes must
    # be indistinguishable from the stdlib's own (a Python upgrade that changes ipaddress
    # internals fails here, not in a jail's dict).
    text = str(IPv4Address(value))
    made = AddressTable()[text]
    plain = IPv4Address(text)
    assert isinstance(made, IPv4Address)
    assert made == plain
    assert hash(made) == hash(plain)
    assert {plain: 1}[made] == 1
    assert int(made) == value
    assert made.packed == plain.packed
    assert str(made) == text
    assert repr(made) == repr(plain)
    assert made.is_private == plain.is_private
    assert made.is_global == plain.is_global
    assert made.version == 4
    assert (made < IPv4Address(min(value + 1, 2**32 - 1))) == (value < 2**32 - 1)


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.256", "01.2.3.4", "1.2.3.4 ", "", "::ffff:"])
def test_address_table_refuses_what_is_no_address(text: str) -> None:
    assert AddressTable()[text] is None


# Headers of one second, two hosts, other zones and look-alikes: a text of them takes scan()'s
# cached-header paths (the last host's header with another time first) in every order.
_STAMP_HEADERS = st.builds(
    "{}.{}{} {} kernel: {}".format,
    st.sampled_from(["2026-11-22T02:04:54", "2026-11-22T02:04:55", "2026-11-22T02:04:5x"]),
    st.sampled_from(["000000", "684948", "999999", "68494", "6849481", "²00000"]),
    st.sampled_from(["+00:00", "Z", "-05:30", "+0100", "", "+00:00 kernel:"]),
    st.sampled_from(["host", "edge1", "kernel:", "IN=x"]),
    st.sampled_from(["", "[81795.100496] ", "[UFW BLOCK] ", "kernel: "]),
)
_STAMP_LINES = st.one_of(
    st.tuples(_STAMP_HEADERS, st.sampled_from([V4_BODY, V6_BODY, UDP_BODY])).map("".join),
    st.sampled_from(VALID_LINES),
)


@settings(max_examples=300)
@given(st.lists(_STAMP_LINES, max_size=40))
def test_parse_text_with_cached_headers_equals_parse_per_line(lines: list[str]) -> None:
    one_by_one = [(p, p.time) if (p := parse(line)) else None for line in lines]
    parser = KernelLogParser()
    in_one_text = []
    for line in lines:  # one line per scan() and a few lines per scan(): the caches persist
        packets = list(parser.parse_text(line + "\n", NOW))
        in_one_text.append((packets[0], packets[0].time) if packets else None)
    assert in_one_text == one_by_one
    together = list(KernelLogParser().parse_text("\n".join(lines) + "\n", NOW))
    assert together == [p for p, _ in filter(None, one_by_one)]


def test_cached_header_of_another_host_or_second_keeps_its_own_time() -> None:
    parser = KernelLogParser()
    # (second, fraction, zone, host): each host's lines take the cached paths, then the other's
    headers = [
        *[(54, "100000", "+00:00", "a")] * 3,
        *[(55, "250000", "+00:00", "a")] * 3,
        *[(54, "500000", "-01:00", "b")] * 3,
        (55, "750000", "-01:00", "b"),
        (55, "000001", "+00:00", "a"),
    ]
    lines = [
        f"2026-11-22T02:04:{second}.{fraction}{zone} {host} kernel: DROP {V4_BODY}"
        for second, fraction, zone, host in headers
    ]
    times = [p.time for p in parser.parse_text("\n".join(lines) + "\n", NOW)]
    midnight = 1795305600.0  # 2026-11-22T00:00:00Z
    expected = [
        midnight + 2 * 3600 + 4 * 60 + second + int(fraction) * 1e-6 + (zone == "-01:00") * 3600
        for second, fraction, zone, _ in headers
    ]
    assert times == [pytest.approx(t, abs=1e-6) for t in expected]


# _PACKET as first written, with `(?:X)?` for every optional part and no possessive
# repeats: the oracle for the spelling the parser runs (the same matches, cheaper).
_PACKET_AS_WRITTEN = re.compile(
    r"IN=(?P<iface_in>[^ ]*) OUT=(?P<iface_out>[^ ]*)(?: (?:PHYSIN=(?P<physin>[^ ]*) )?"
    r"(?:PHYSOUT=[^ ]* )?(?:MAC=[^ ]* )?"
    r"SRC=(?P<src>[^ ]+) DST=(?P<dst>[^ ]+) LEN=(?P<length>[0-9]+) "
    r"(?:T(?:OS=[^ ]* PREC=[^ ]* TTL=(?P<ttl>[0-9]+) ID=(?P<ip_id>[0-9]+)"
    r"|C=[0-9]+ HOPLIMIT=(?P<hoplimit>[0-9]+) FLOWLBL=[0-9]+) )?"
    r"[^=\n]*PROTO=(?P<proto>\w+)"
    r"(?: SPT=(?P<spt>[0-9]+) DPT=(?P<dpt>[0-9]+) (?:SEQ=[0-9]+ ACK=[0-9]+ )?"
    r"(?:WINDOW=[0-9]+ RES=[^ ]* (?P<flags>(?:[A-Z]{3} )*)URGP=)?"
    r"| TYPE=(?P<icmp_type>[0-9]+) CODE=(?P<icmp_code>[0-9]+)(?= |$)"
    r"| (?P<incomplete>INCOMPLETE) \[)?)?",
    re.MULTILINE,
)
# Pieces the optional parts start and end with, to splice into valid lines.
_FIELD_PIECES = st.sampled_from(
    [
        " ",
        "PHYSIN=br0 ",
        "PHYSOUT=eth1 ",
        f"{MAC4} ",
        "TOS=0x00 PREC=0x00 TTL=64 ID=1 ",
        "TC=0 HOPLIMIT=64 FLOWLBL=0 ",
        "SEQ=1 ACK=2 ",
        "WINDOW=512 RES=0x00 ACK SYN URGP=0 ",
        "TYPE=8 CODE=0 ",
        "INCOMPLETE [",
        "URGP=",
        "PROTO=TCP",
        "PROTO=UDP SPT=1 DPT=2",
        "\n",
        "=",
    ]
)


def _spliced(line: str) -> st.SearchStrategy[str]:
    """`line` with a piece put in at a field boundary, or in place of some fields."""

    def splice(args: tuple[int, int, str]) -> str:
        index, dropped, piece = args
        words = line.split(" ")
        index %= len(words) + 1
        return " ".join([*words[:index], piece, *words[index + dropped :]])

    return st.tuples(st.integers(0, 60), st.integers(0, 3), _FIELD_PIECES).map(splice)


# Every optional part present somewhere: bridged, with sequence numbers, IPv6, cut.
_FULL_RECORDS = [
    *VALID_LINES,
    f"DROP IN=br0 OUT=br0 PHYSIN=eth0 PHYSOUT=eth1 {V4_BODY[len('IN=eth0 OUT= ') :]}",
    V4_BODY.replace("DPT=0 ", "DPT=0 SEQ=4134 ACK=0 "),
    V6_BODY.replace("DPT=80 ", "DPT=80 SEQ=1 ACK=2 "),
    ICMP_BODY.replace("PROTO=ICMP ", "MF FRAG:8 PROTO=ICMP "),
    V4_BODY.replace("SPT=2372 DPT=0 WINDOW=512 RES=0x00 ACK SYN URGP=0 ", "INCOMPLETE [8 bytes] "),
]
_REGEX_LINES = st.one_of(
    _lines,
    st.sampled_from(_FULL_RECORDS),
    st.sampled_from(_FULL_RECORDS).flatmap(_spliced),
    st.sampled_from(_FULL_RECORDS).flatmap(_spliced).flatmap(_spliced),
    st.sampled_from(_FULL_RECORDS).flatmap(_mutated),
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_REGEX_LINES, max_size=8))
def test_packet_regex_matches_as_written(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert [(m.span(), m.groups()) for m in _PACKET.finditer(text)] == [
        (m.span(), m.groups()) for m in _PACKET_AS_WRITTEN.finditer(text)
    ]


def test_packet_regex_is_the_one_as_written_with_branches_for_options() -> None:
    branches = _PACKET_AS_WRITTEN.pattern.replace(")?", "|)")
    possessive = branches.replace("[0-9]+", "[0-9]++").replace("{3} )*)", "{3} )*+)")
    assert _PACKET.pattern == possessive
    assert _PACKET.groupindex == _PACKET_AS_WRITTEN.groupindex


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_address_table_makes_ipv6_addresses_the_stdlib_way(value: int) -> None:
    text = IPv6Address(value).exploded  # as the kernel prints it
    made = AddressTable()[text]
    plain = IPv6Address(text)
    assert isinstance(made, IPv6Address)
    assert (made, hash(made), int(made), str(made), repr(made)) == (
        plain,
        hash(plain),
        value,
        str(plain),
        repr(plain),
    )
    assert {plain: 1}[made] == 1
    assert made.scope_id is None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(0, 2**32 - 1).map(IPv4Address), st.integers(0, 2**128 - 1).map(IPv6Address)
    )
)
def test_key_table_names_the_address_that_address_table_makes(
    plain: IPv4Address | IPv6Address,
) -> None:
    text = plain.exploded  # as the kernel prints it
    key = KeyTable()[text]
    made = AddressTable()[text]
    assert key is not None
    assert key >> 128 == (plain.version == 6)  # IPv6 tagged: ::192.0.2.1 is no 192.0.2.1
    back = address_of(key)
    assert type(back) is type(made)
    assert (back, hash(back), int(back), str(back)) == (made, hash(made), int(plain), str(plain))


def test_key_table_refuses_what_address_table_refuses() -> None:
    for text in (
        "",
        "1.2.3",
        "1.2.3.256",
        "::g",
        "192.0.2.1 ",
        "1:2:3:4:5:6:7:8:9",
        "\x00",
        "٣.1.1.1",
    ):
        assert KeyTable()[text] is None
        assert AddressTable()[text] is None
