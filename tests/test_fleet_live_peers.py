"""LivePeers.live_addresses() against the real kernel's conntrack: it lists exactly the
addresses find() calls live (a fleet catching up sorts a slice of remote bans with one such
pass instead of a pass per ban)."""

from __future__ import annotations

import socket
import time
from ipaddress import ip_address, ip_network

import pytest
from netns import namespace
from packets import inside

from blocker.live_peers import LivePeers

pytestmark = pytest.mark.root

SERVER, CLIENT, STRANGER = "192.0.2.1", "192.0.2.2", "192.0.2.3"
# A ct expression makes the kernel track connections in the namespace.
TRACK = """table inet blkt {
 chain c {
  type filter hook input priority 0;
  ct state established accept
 }
}
"""


def test_live_addresses_agree_with_find() -> None:
    with namespace("blkflp") as ns:
        for address in (SERVER, CLIENT):
            ns.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        ns.run("nft", "-f", "-", stdin=TRACK)
        with inside(ns.name):
            server = socket.create_server((SERVER, 0))
            client = socket.socket()
            peers = LivePeers(ttl=0)
        try:
            client.bind((CLIENT, 0))
            client.connect(server.getsockname())
            accepted, _ = server.accept()
            for _ in range(3):  # answered both ways: ASSURED, ESTABLISHED
                client.sendall(b"x")
                accepted.recv(1)
                accepted.sendall(b"y")
                client.recv(1)
            time.sleep(0.5)  # the last ACK out: else conntrack holds data unacknowledged
            live = peers.live_addresses(4, 600)
            assert live == {int(ip_address(SERVER)), int(ip_address(CLIENT))}
            for address in (SERVER, CLIENT, STRANGER):
                found = peers.find(ip_network(address), 600)
                assert (found is not None) == (int(ip_address(address)) in live), address
            assert peers.live_addresses(6, 600) == set()
            accepted.close()
        finally:
            client.close()
            server.close()
            peers.close()
