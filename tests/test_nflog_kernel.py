"""NFLOG against the real kernel: packets sent for real through `-j NFLOG` in namespaces, every
decoded field checked against what was sent; the namespace and privilege boundaries; overruns.
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import cast

import pytest
from netns import (
    CLIENT_V4,
    CLIENT_V6,
    SERVER_V4,
    SERVER_V6,
    Namespace,
    namespace,
    veth,
    wait_until,
)
from packets import (
    RawSender,
    ah_header,
    fragment_header,
    icmp_header,
    inside,
    ipv4,
    ipv6,
    options_header,
    tcp_header,
    udp_header,
    with_checksums,
)

from blocker.netfilter import KernelLogParser
from blocker.records import Packet
from blocker.sources.base import SourceError
from blocker.sources.nflog import NflogSource

pytestmark = pytest.mark.root
PREFIX = "BLKNF "
REPO = Path(__file__).resolve().parents[1]


def group() -> int:
    return random.randrange(1000, 60000)


@contextmanager
def logged_pair(nflog_group: int) -> Iterator[tuple[Namespace, Namespace, str, NflogSource]]:
    """(server, client, server's interface, source): the server logs every inbound packet but
    neighbour discovery, and its own RSTs, to `nflog_group`; the source is bound inside it."""
    with ExitStack() as stack:
        server = stack.enter_context(namespace("blknfs"))
        client = stack.enter_context(namespace("blknfc"))
        server_if, _ = stack.enter_context(veth(server, client))
        for binary in ("iptables", "ip6tables"):
            if binary == "ip6tables":
                server.run(
                    binary,
                    "-A",
                    "INPUT",
                    "-p",
                    "ipv6-icmp",
                    "--icmpv6-type",
                    "neighbour-solicitation",
                    "-j",
                    "ACCEPT",
                )
                server.run(
                    binary,
                    "-A",
                    "INPUT",
                    "-p",
                    "ipv6-icmp",
                    "--icmpv6-type",
                    "neighbour-advertisement",
                    "-j",
                    "ACCEPT",
                )
            server.run(
                binary,
                "-A",
                "INPUT",
                "-j",
                "NFLOG",
                "--nflog-group",
                str(nflog_group),
                "--nflog-prefix",
                PREFIX,
            )
            server.run(
                binary,
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--tcp-flags",
                "ALL",
                "RST,ACK",
                "-j",
                "NFLOG",
                "--nflog-group",
                str(nflog_group),
                "--nflog-prefix",
                "OUT ",
            )
        with inside(server.name):
            source = NflogSource([nflog_group])
        stack.callback(source.close)
        for address in (SERVER_V4, SERVER_V6):  # neighbours resolved: nothing waits on them
            assert wait_until(functools.partial(_resolved, client, address)), address
        time.sleep(0.1)
        source.read_records(time.time())  # the probes
        yield server, client, server_if, source


def _resolved(client: Namespace, address: str) -> bool:
    client.run("nc", "-z", "-w", "1", address, "9", check=False)  # refused, but resolved
    state = client.run("ip", "neigh", "show", address).stdout
    return any(word in state for word in ("REACHABLE", "STALE", "DELAY"))


def collect(source: NflogSource, count: int, timeout: float = 5.0) -> list[Packet]:
    parser = KernelLogParser()
    found: list[Packet] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        for rec in source.read_records(time.time()):
            packet = parser.packet(rec)
            assert packet is not None, rec
            found.append(packet)
        time.sleep(0.02)
    return found


def test_every_decoded_field_matches_what_was_sent() -> None:
    nflog_group = group()
    with logged_pair(nflog_group) as (_server, client, server_if, source):
        with inside(client.name):
            sender = RawSender()
        # (bytes sent, the Packet expected; time is checked apart)
        spoofed4, spoofed6 = "192.0.2.77", "2001:db8:1::77"
        cases: list[tuple[bytes, Packet]] = []

        def expect(
            payload: bytes,
            src: str,
            dst: str,
            proto: str,
            *,
            spt: int | None = None,
            dpt: int | None = None,
            flags: str = "",
            ttl: int = 64,
            ip_id: int | None = None,
            icmp: tuple[int, int] | None = None,
        ) -> None:
            packet = Packet(
                0.0,
                PREFIX.strip(),
                server_if,
                "",
                ip_address(src),
                ip_address(dst),
                proto,
                spt,
                dpt,
                frozenset(flags.split()),
                len(payload),
                ttl,
                icmp[0] if icmp else None,
                icmp[1] if icmp else None,
                "",
                ip_id,
            )
            cases.append((with_checksums(payload), packet))

        for i, flags in enumerate(
            ["ACK SYN", "FIN", "", "URG PSH FIN", "SYN FIN", "ACK", "RST", "CWR ECE SYN"]
        ):
            bits = "".join(
                {
                    "ACK": "A",
                    "SYN": "S",
                    "FIN": "F",
                    "URG": "U",
                    "PSH": "P",
                    "RST": "R",
                    "CWR": "C",
                    "ECE": "E",
                }[f]
                for f in flags.split()
            )
            expect(
                ipv4(
                    spoofed4,
                    SERVER_V4,
                    6,
                    tcp_header(443 + i, 40000 + i, bits),
                    ttl=55,
                    ident=700 + i,
                ),
                spoofed4,
                SERVER_V4,
                "TCP",
                spt=443 + i,
                dpt=40000 + i,
                flags=flags,
                ttl=55,
                ip_id=700 + i,
            )
        expect(
            ipv4(
                CLIENT_V4,
                SERVER_V4,
                6,
                tcp_header(1234, 22, "S"),
                ttl=33,
                ident=9,
                options=b"\x01\x01\x01\x00",
            ),
            CLIENT_V4,
            SERVER_V4,
            "TCP",
            spt=1234,
            dpt=22,
            flags="SYN",
            ttl=33,
            ip_id=9,
        )
        expect(
            ipv4(spoofed4, SERVER_V4, 17, udp_header(5353, 9999, b"hello"), ident=11),
            spoofed4,
            SERVER_V4,
            "UDP",
            spt=5353,
            dpt=9999,
            ip_id=11,
        )
        expect(
            ipv4(spoofed4, SERVER_V4, 1, icmp_header(13, 0), ident=12),
            spoofed4,
            SERVER_V4,
            "ICMP",
            ip_id=12,
            icmp=(13, 0),
        )
        expect(
            ipv4(spoofed4, SERVER_V4, 47, bytes(12), ident=13), spoofed4, SERVER_V4, "47", ip_id=13
        )
        expect(
            ipv6(spoofed6, SERVER_V6, 6, tcp_header(443, 40001, "SA"), hoplimit=50),
            spoofed6,
            SERVER_V6,
            "TCP",
            spt=443,
            dpt=40001,
            flags="ACK SYN",
            ttl=50,
        )
        expect(
            ipv6(
                spoofed6,
                SERVER_V6,
                17,
                udp_header(53, 5000),
                hoplimit=51,
                extensions=(options_header(0), options_header(60), fragment_header(), ah_header()),
            ),
            spoofed6,
            SERVER_V6,
            "UDP",
            spt=53,
            dpt=5000,
            ttl=51,
        )
        expect(
            ipv6(spoofed6, SERVER_V6, 58, icmp_header(128, 0), hoplimit=52),
            spoofed6,
            SERVER_V6,
            "ICMPv6",
            ttl=52,
            icmp=(128, 0),
        )

        before = time.time()
        for payload, _ in cases:
            sender.send(payload)
        sender.close()
        sources = {spoofed4, spoofed6, CLIENT_V4}
        got = [p for p in collect(source, len(cases) + 10, timeout=2) if str(p.src) in sources]
        after = time.time()
        missing = {c[1]._replace(time=0.0) for c in cases} - {p._replace(time=0.0) for p in got}
        assert len(got) == len(cases), [(str(p.src), p.proto, p.length) for p in missing]
        for packet, (_, expected) in zip(got, cases, strict=True):
            assert before - 0.001 <= packet.time <= after, "the kernel's timestamp"
            assert packet._replace(time=0.0) == expected
        assert source.health()["undecodable"] == 0


def test_the_hosts_own_packets_have_an_output_interface_and_the_receive_clock() -> None:
    nflog_group = group()
    with logged_pair(nflog_group) as (_server, client, server_if, source):
        client.run("nc", "-z", "-w", "1", SERVER_V4, "9", check=False)
        client.run("nc", "-z", "-w", "1", SERVER_V6, "9", check=False)
        got = collect(source, 4)
        resets = [p for p in got if p.prefix == "OUT"]
        assert {(str(p.src), str(p.dst)) for p in resets} == {
            (SERVER_V4, CLIENT_V4),
            (SERVER_V6, CLIENT_V6),
        }
        for packet in resets:
            assert (packet.iface_in, packet.iface_out, packet.direction) == ("", server_if, "out")
            assert packet.flags == {"ACK", "RST"} and packet.spt == 9
            assert abs(packet.time - time.time()) < 5
        inbound = [p for p in got if p.prefix == "BLKNF"]
        assert {p.flags for p in inbound} == {frozenset({"SYN"})}


def test_a_group_is_per_namespace_and_a_user_namespace_cannot_reach_ours() -> None:
    """A process in its own user+network namespace has CAP_NET_ADMIN there: it may add NFLOG
    rules and bind the same group, but only in its namespace; ours never sees its packets."""
    nflog_group = group()
    with logged_pair(nflog_group) as (server, _client, _if, source):
        before = source.health()["packets"]
        script = (
            f"ip link set lo up && iptables -A OUTPUT -p udp -j NFLOG --nflog-group "
            f"{nflog_group} && python3 -c 'import socket; s = socket.socket(socket.AF_INET,"
            f' socket.SOCK_DGRAM); [s.sendto(b"x", ("127.0.0.1", 9)) for _ in '
            f"range(50)]' && iptables -L OUTPUT -v -n -x"
        )
        # setpriv: an unprivileged user (nobody) makes the namespaces, as an attacker would.
        done = server.run(
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-U",
            "-r",
            "-n",
            "sh",
            "-c",
            script,
            check=False,
        )
        if done.returncode != 0 and "unshare" in done.stderr:
            pytest.skip(f"unprivileged user namespaces are off here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        assert " 50 " in done.stdout.split("NFLOG")[0].splitlines()[-1] + " ", (
            "the user namespace's own rule logged its 50 packets"
        )
        time.sleep(0.3)
        assert source.read_records(time.time()) == []
        assert source.health()["packets"] == before


def test_only_cap_net_admin_adds_rules_or_binds_a_group() -> None:
    nflog_group = group()
    with logged_pair(nflog_group) as (server, _client, _if, _source):
        rules = server.run("iptables", "-S", "INPUT").stdout
        denied = server.run(
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "iptables",
            "-A",
            "INPUT",
            "-j",
            "NFLOG",
            "--nflog-group",
            "77",
            check=False,
        )
        assert denied.returncode != 0
        assert server.run("iptables", "-S", "INPUT").stdout == rules
        bind = (
            "from blocker.sources.nflog import NflogSource\n"
            "try:\n    NflogSource([77])\nexcept Exception as e:\n    print('REFUSED', e)\n"
        )
        refused = server.run(
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            f"PYTHONPATH={REPO}",
            sys.executable,
            "-c",
            bind,
        )
        assert "REFUSED" in refused.stdout and "CAP_NET_ADMIN" in refused.stdout


def test_a_group_bound_elsewhere_is_refused_clearly() -> None:
    nflog_group = group()
    with (
        logged_pair(nflog_group) as (server, _client, _if, _source),
        inside(server.name),
        pytest.raises(SourceError, match="bound by another process"),
    ):
        NflogSource([nflog_group])


def test_an_overrun_is_counted_and_reading_goes_on() -> None:
    nflog_group = group()
    with logged_pair(nflog_group) as (server, client, _if, source):
        source.close()
        with inside(server.name):
            small = NflogSource([nflog_group], rcvbuf=4096)
        try:
            with inside(client.name):
                sender = RawSender()
            flood = with_checksums(ipv4("192.0.2.99", SERVER_V4, 17, udp_header(1, 2)))
            for _ in range(5000):
                sender.send(flood)
            time.sleep(0.3)
            small.read_records(time.time())
            health = small.health()
            assert cast(int, health["overruns"]) >= 1
            # ENOBUFS says "something was lost"; the drop counter says how much.
            assert cast(int, health["dropped_batches"]) > cast(int, health["overruns"])
            small.read_records(time.time())  # drain
            sender.send(with_checksums(ipv4("192.0.2.98", SERVER_V4, 17, udp_header(3, 4))))
            sender.close()
            deadline = time.monotonic() + 5
            seen: list[str] = []
            while not seen and time.monotonic() < deadline:
                seen = [
                    str(r[2][3]) for r in small.read_records(time.time()) if r[2][3] == "192.0.2.98"
                ]
                time.sleep(0.05)
            assert seen, "after the overrun the next packet is read"
        finally:
            small.close()


def test_closed_socket_releases_the_group() -> None:
    nflog_group = group()
    with logged_pair(nflog_group) as (server, _client, _if, source):
        source.close()
        with inside(server.name):
            again = NflogSource([nflog_group])
        again.close()


NFT_RULES = """
table inet blocker_test {
  chain input {
    type filter hook input priority 0;
    ct state invalid log group GROUP prefix "INVALID " drop
    tcp flags & (syn|ack|fin|rst) == syn ct state new log group GROUP prefix "DROP " drop
  }
}
"""


def test_the_readmes_nftables_rules_feed_the_source() -> None:
    """README's nft setup: `log group N prefix ...` reaches the source as LOG would print it."""
    nflog_group = group()
    with ExitStack() as stack:
        server = stack.enter_context(namespace("blknft"))
        client = stack.enter_context(namespace("blknfc"))
        server_if, _ = stack.enter_context(veth(server, client))
        server.run("nft", "-f", "-", stdin=NFT_RULES.replace("GROUP", str(nflog_group)))
        with inside(server.name):
            source = NflogSource([nflog_group])
        stack.callback(source.close)
        with inside(client.name):
            sender = RawSender()
        stack.callback(sender.close)
        sender.send(with_checksums(ipv4("192.0.2.77", SERVER_V4, 6, tcp_header(443, 40000, "SA"))))
        sender.send(with_checksums(ipv4(CLIENT_V4, SERVER_V4, 6, tcp_header(5555, 22, "S"))))
        got = [p for p in collect(source, 2) if str(p.src) in ("192.0.2.77", CLIENT_V4)]
        assert [(p.prefix, str(p.src), p.flags, p.dpt, p.iface_in) for p in got] == [
            ("INVALID", "192.0.2.77", frozenset({"SYN", "ACK"}), 40000, server_if),
            ("DROP", CLIENT_V4, frozenset({"SYN"}), 22, server_if),
        ]
