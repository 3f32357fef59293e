"""End to end with no text in the path: real packets -> -j NFLOG -> blockerd -> kernel ipset.

blockerd runs inside the server namespace with `source = "nflog"` and the shipped jails;
every assertion about a ban reads the kernel's sets.
"""

from __future__ import annotations

import functools
import time

import pytest
from lab import must
from netns import SERVER_V4, SERVER_V6, linked_pair
from nflog_daemon import nflog_blockerd
from packets import RawSender, inside, ipv4, ipv6, tcp_header, with_checksums

pytestmark = pytest.mark.root


def test_spoofed_synacks_and_a_scan_are_banned_through_nflog() -> None:
    prober4, prober6, scanner = "192.0.2.66", "2001:db8:1::66", "192.0.2.67"
    with linked_pair("blkne") as (server, client), nflog_blockerd(server) as daemon:
        with inside(client.name):
            sender = RawSender()
        try:
            for i in range(6):
                sender.send(
                    with_checksums(ipv4(prober4, SERVER_V4, 6, tcp_header(443, 40000 + i, "SA")))
                )
                sender.send(
                    with_checksums(ipv6(prober6, SERVER_V6, 6, tcp_header(443, 40000 + i, "SA")))
                )
            for port in range(1000, 1008):
                sender.send(
                    with_checksums(ipv4(scanner, SERVER_V4, 6, tcp_header(5555, port, "S")))
                )
        finally:
            sender.close()
        for address in (prober4, prober6, scanner):
            must(functools.partial(daemon.banned, address), f"{address} in the kernel set")
        rows = daemon.ctl_json("list", "--json")
        assert isinstance(rows, list)
        assert {r["target"]: r["jail"] for r in rows} == {
            prober4: "probes",
            prober6: "probes",
            scanner: "scans",
        }
        status = daemon.status()
        sources = status["sources"]
        assert isinstance(sources, list) and len(sources) == 1
        assert sources[0]["kind"] == "nflog" and sources[0]["groups"] == [daemon.group]
        assert sources[0]["state"] == "ok" and sources[0]["overruns"] == 0
        assert status["malformed"] == 0


def test_a_flood_is_survived_and_counted() -> None:
    """A flood of SYN/ACKs from an allowlisted network (so the flood is never banned away and
    every packet is logged) fills the socket; blockerd counts overruns, keeps answering and
    still bans the prober sent after it."""
    with (
        linked_pair("blknf") as (server, client),
        nflog_blockerd(server, allow=["198.51.100.0/24"]) as daemon,
    ):
        with inside(client.name):
            sender = RawSender()
        try:
            packets = [
                with_checksums(
                    ipv4(f"198.51.100.{i % 200}", SERVER_V4, 6, tcp_header(443, 20000 + i, "SA"))
                )
                for i in range(2000)
            ]
            deadline = time.monotonic() + 3
            sent = 0
            while time.monotonic() < deadline:
                for packet in packets:
                    sender.send(packet)
                sent += len(packets)
            for i in range(6):
                sender.send(
                    with_checksums(
                        ipv4("192.0.2.250", SERVER_V4, 6, tcp_header(443, 30000 + i, "SA"))
                    )
                )
        finally:
            sender.close()
        must(lambda: daemon.banned("192.0.2.250"), "the prober after the flood", timeout=30)
        assert daemon.process is not None and daemon.process.poll() is None
        source = daemon.status()["sources"][0]  # type: ignore[index]
        assert source["packets"] > 0 and source["state"] == "ok"
        print(f"sent {sent}, read {source['packets']}, overruns {source['overruns']}")
