"""spare_live_peers against the real kernel: a peer with a live session, a third namespace
forging SYN/ACKs and a scan in its name, blockerd asking conntrack before it bans.

    peer    192.0.2.2 ---- 192.0.2.1     server (blockerd, NFLOG, an echo service)
    spoofer 198.51.100.2 - 198.51.100.1

Every verdict is read from the kernel: the set's members and the session itself.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from lab import SERVICE_PORT, must
from netns import Namespace, namespace, veth
from nflog_daemon import nflog_blockerd
from packets import RawSender, inside, ipv4, tcp_header, with_checksums

pytestmark = pytest.mark.root

SERVER_PEER, PEER = "192.0.2.1", "192.0.2.2"
SERVER_SPOOF, SPOOFER = "198.51.100.1", "198.51.100.2"
NO_SESSION = "192.0.2.3"

_ECHO = """
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(__import__("sys").argv[1])))
s.listen()
def serve(c):
    while (data := c.recv(100)):
        c.sendall(data)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


@contextmanager
def topology() -> Iterator[tuple[Namespace, Namespace, Namespace]]:
    with ExitStack() as stack:
        server = stack.enter_context(namespace("blksps"))
        peer = stack.enter_context(namespace("blkspp"))
        spoofer = stack.enter_context(namespace("blksp"))
        stack.enter_context(veth(server, peer, (f"{SERVER_PEER}/24",), (f"{PEER}/24",)))
        stack.enter_context(veth(server, spoofer, (f"{SERVER_SPOOF}/24",), (f"{SPOOFER}/24",)))
        for key in ("all", "default"):  # forged sources arrive on the "wrong" link
            server.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        server.spawn(sys.executable, "-c", _ECHO, str(SERVICE_PORT))
        yield server, peer, spoofer


def forge(sender: RawSender, source: str) -> None:
    """8 SYN/ACKs and a SYN scan of 8 closed ports, all 'from' `source`."""
    for i in range(8):
        sender.send(with_checksums(ipv4(source, SERVER_SPOOF, 6, tcp_header(443, 41000 + i, "SA"))))
    for port in range(2000, 2008):
        sender.send(with_checksums(ipv4(source, SERVER_SPOOF, 6, tcp_header(5555, port, "S"))))


def echo(session: socket.socket, text: bytes) -> bool:
    try:
        session.sendall(text)
        return session.recv(100) == text
    except OSError:
        return False


def test_a_live_peer_survives_forged_evidence_and_the_others_are_banned() -> None:
    with topology() as (server, peer, spoofer), nflog_blockerd(server) as daemon:
        with inside(peer.name):
            session = socket.create_connection((SERVER_PEER, SERVICE_PORT), timeout=5)
        with inside(spoofer.name):
            sender = RawSender()
        try:
            assert echo(session, b"before")
            forge(sender, PEER)
            forge(sender, NO_SESSION)
            for port in range(3000, 3008):  # the spoofer scanning in its own name
                sender.send(
                    with_checksums(ipv4(SPOOFER, SERVER_SPOOF, 6, tcp_header(6666, port, "S")))
                )
            must(lambda: daemon.banned(NO_SESSION), "the forged address without a session")
            must(lambda: daemon.banned(SPOOFER), "the real scanner")
            must(
                lambda: daemon.status()["spared_live_peers"] == 2,
                "the SYN/ACK ban and the scan ban of the peer, both refused",
            )
            status = daemon.status()
            assert status["conntrack"] == "ok"
            time.sleep(1.5)  # more than rule_check_interval: the kernel has what it will have
            assert not daemon.banned(PEER)
            assert echo(session, b"after"), "the session is alive"
            explained = daemon.ctl_json("explain", PEER)
            assert isinstance(explained, dict)
            assert explained["banned_by"] == []
            reasons = [s["reason"] for s in explained["spared"]]
            assert any("live TCP connection that it opened" in r for r in reasons), reasons
            assert {s["jail"] for s in explained["spared"]} == {"probes", "scans"}
            assert "spare 192.0.2.2" in daemon.stderr()
        finally:
            sender.close()
            session.close()


def test_with_the_check_off_the_same_forgery_locks_the_peer_out() -> None:
    """The threat the check answers, shown for real: spare_live_peers = 0."""
    with (
        topology() as (server, peer, spoofer),
        nflog_blockerd(server, spare_live_peers=0) as daemon,
    ):
        with inside(peer.name):
            session = socket.create_connection((SERVER_PEER, SERVICE_PORT), timeout=3)
        with inside(spoofer.name):
            sender = RawSender()
        try:
            assert echo(session, b"before")
            forge(sender, PEER)
            must(lambda: daemon.banned(PEER), "the peer, banned on forged evidence")
            assert not echo(session, b"after"), "its session is cut"
        finally:
            sender.close()
            session.close()
