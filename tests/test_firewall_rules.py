"""The early INPUT rule against real traffic: two namespaces on a veth link (root only).

server = the host running blocker (192.0.2.1, 2001:db8:1::1);
client = the peer that gets banned (192.0.2.2, 2001:db8:1::2).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Namespace, linked_pair, wait_until

from blocker.firewall import Repair
from blocker.firewall.ipset import IpsetBackend

pytestmark = [
    pytest.mark.root("network namespaces, iptables, ipset"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ipset", "iptables", "nc", "hping3")),
        reason="needs ipset, iptables, nc and hping3",
    ),
]

CLIENT = {4: ip_network(CLIENT_V4), 6: ip_network(CLIENT_V6)}
SERVER_ADDRESS = {4: SERVER_V4, 6: SERVER_V6}
CLIENT_ADDRESS = {4: CLIENT_V4, 6: CLIENT_V6}
PORT = "8080"
VARIANTS = [
    pytest.param("iptables", id="nft"),
    pytest.param(
        "iptables-legacy",
        id="legacy",
        marks=pytest.mark.skipif(not shutil.which("iptables-legacy"), reason="no iptables-legacy"),
    ),
]


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    with linked_pair() as made:
        yield made


def make_backend(server: Namespace, iptables: str = "iptables") -> IpsetBackend:
    tag = uuid.uuid4().hex[:8]
    fw = IpsetBackend(set4=f"blk4-{tag}", set6=f"blk6-{tag}", netns=server.name, iptables=iptables)
    fw.setup()
    return fw


@pytest.fixture(params=VARIANTS)
def setup(
    request: pytest.FixtureRequest, pair: tuple[Namespace, Namespace]
) -> Iterator[tuple[Namespace, Namespace, IpsetBackend]]:
    server, client = pair
    fw = make_backend(server, request.param)
    try:
        yield server, client, fw
    finally:
        fw.close()


def binary(fw: IpsetBackend, family: int) -> str:
    return fw.rules.binaries[family]


def input_rules(ns: Namespace, fw: IpsetBackend, family: int) -> list[str]:
    lines = ns.run(binary(fw, family), "-S", "INPUT").stdout.splitlines()
    return [line for line in lines if line.startswith("-A ")]


def ours(line: str) -> bool:
    return "--comment blocker" in line


def can_connect(source: Namespace, address: str) -> bool:
    return source.run("nc", "-z", "-w", "2", address, PORT, check=False).returncode == 0


def listen(ns: Namespace, family: int, address: str) -> None:
    ns.spawn("nc", f"-{family}", "-l", "-k", address, PORT)
    assert wait_until(lambda: PORT in ns.run("ss", "-Htln").stdout, 5)


# -- traffic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_banned_client_cannot_open_connections_unbanned_can(
    setup: tuple[Namespace, Namespace, IpsetBackend], family: int
) -> None:
    server, client, fw = setup
    listen(server, family, SERVER_ADDRESS[family])
    assert can_connect(client, SERVER_ADDRESS[family])
    fw.ban([(CLIENT[family], 600)])
    assert not can_connect(client, SERVER_ADDRESS[family])
    fw.unban([CLIENT[family]])
    assert can_connect(client, SERVER_ADDRESS[family])


@pytest.mark.parametrize("family", [4, 6])
def test_server_can_still_connect_out_to_a_banned_client(
    setup: tuple[Namespace, Namespace, IpsetBackend], family: int
) -> None:
    server, client, fw = setup
    listen(client, family, CLIENT_ADDRESS[family])
    listen(server, family, SERVER_ADDRESS[family])
    fw.ban([(CLIENT[family], 600)])
    assert not can_connect(client, SERVER_ADDRESS[family])  # the ban is in force ...
    assert can_connect(server, CLIENT_ADDRESS[family])  # ... yet replies to the server pass


def counters(ns: Namespace, fw: IpsetBackend) -> list[tuple[int, str]]:
    out = ns.run(binary(fw, 4), "-L", "INPUT", "-v", "-n", "-x").stdout.splitlines()[2:]
    return [(int(line.split()[0]), line) for line in out]


@pytest.mark.parametrize("banned", [True, False])
def test_unsolicited_synack_from_a_banned_client_is_dropped(
    setup: tuple[Namespace, Namespace, IpsetBackend], banned: bool
) -> None:
    server, client, fw = setup
    # A counting rule after ours sees whatever our rule lets through.
    probe = ["-s", CLIENT_V4, "-p", "tcp", "--dport", PORT, "--tcp-flags", "SYN,ACK", "SYN,ACK"]
    server.run(binary(fw, 4), "-A", "INPUT", *probe, "-m", "comment", "--comment", "probe")
    if banned:
        fw.ban([(CLIENT[4], 600)])
    client.run("hping3", "-S", "-A", "-c", "3", "-i", "u20000", "-p", PORT, SERVER_V4, check=False)
    seen = {
        "blocker" if "/* blocker */" in line else "probe": n for n, line in counters(server, fw)
    }
    if banned:
        assert seen == {"blocker": 3, "probe": 0}
    else:  # control: the probe does count SYN/ACKs that get through
        assert seen == {"blocker": 0, "probe": 3}


def test_banned_clients_established_inbound_connection_is_cut(
    setup: tuple[Namespace, Namespace, IpsetBackend], tmp_path: Path
) -> None:
    server, client, fw = setup
    received = tmp_path / "received"
    server.spawn("sh", "-c", f"nc -4 -l {SERVER_V4} {PORT} > {received}")
    assert wait_until(lambda: PORT in server.run("ss", "-Htln").stdout, 5)
    sender = client.spawn(
        "sh", "-c", f"(echo before; sleep 1; echo after) | timeout 4 nc -N {SERVER_V4} {PORT}"
    )
    assert wait_until(lambda: received.exists() and "before" in received.read_text(), 5)
    fw.ban([(CLIENT[4], 600)])
    sender.wait(timeout=10)
    assert received.read_text() == "before\n"


# -- ensure() -----------------------------------------------------------------------------------


def test_setup_puts_exactly_one_rule_first_per_family(
    setup: tuple[Namespace, Namespace, IpsetBackend],
) -> None:
    server, _client, fw = setup
    for family in (4, 6):
        rules = input_rules(server, fw, family)
        assert ours(rules[0])
        assert f"--match-set {fw.sets[family]} src" in rules[0]
        assert sum(map(ours, rules)) == 1
    fw.setup()
    assert sum(map(ours, input_rules(server, fw, 4))) == 1
    assert not fw.ensure()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(["-F", "INPUT"], id="flush"),
        pytest.param(["-D", "INPUT", "1"], id="delete"),
    ],
)
@pytest.mark.parametrize("family", [4, 6])
def test_ensure_reinserts_a_removed_rule(
    setup: tuple[Namespace, Namespace, IpsetBackend], damage: list[str], family: int
) -> None:
    server, _client, fw = setup
    server.run(binary(fw, family), *damage)
    assert not any(map(ours, input_rules(server, fw, family)))
    assert fw.ensure() == Repair(rules_reinserted=(family,))
    rules = input_rules(server, fw, family)
    assert ours(rules[0])
    assert sum(map(ours, rules)) == 1
    assert not fw.ensure()


def test_ensure_moves_the_rule_back_above_an_inserted_one(
    setup: tuple[Namespace, Namespace, IpsetBackend],
) -> None:
    server, _client, fw = setup
    server.run(binary(fw, 4), "-I", "INPUT", "1", "-s", "198.51.100.9", "-j", "ACCEPT")
    assert fw.ensure() == Repair(rules_reinserted=(4,), rules_removed=1)
    rules = input_rules(server, fw, 4)
    assert ours(rules[0])
    assert "198.51.100.9" in rules[1]
    assert len(rules) == 2


def test_ensure_removes_duplicates_and_altered_copies(
    setup: tuple[Namespace, Namespace, IpsetBackend],
) -> None:
    server, _client, fw = setup
    name = fw.sets[4]
    server.run(binary(fw, 4), "-A", "INPUT", "-m", "set", "--match-set", name, "src",
               "-m", "comment", "--comment", "blocker", "-j", "DROP")  # fmt: skip
    assert fw.ensure() == Repair(rules_reinserted=(4,), rules_removed=2)
    assert len(input_rules(server, fw, 4)) == 1
    server.run(binary(fw, 4), "-R", "INPUT", "1", "-m", "set", "--match-set", name, "src",
               "-m", "comment", "--comment", "blocker", "-j", "ACCEPT")  # fmt: skip
    assert fw.ensure() == Repair(rules_reinserted=(4,), rules_removed=1)
    rules = input_rules(server, fw, 4)
    assert len(rules) == 1
    assert rules[0].endswith("-j DROP")


def test_ensure_recreates_a_destroyed_set_and_its_rule(
    setup: tuple[Namespace, Namespace, IpsetBackend],
) -> None:
    server, client, fw = setup
    server.run(binary(fw, 4), "-F", "INPUT")
    server.run("ipset", "destroy", fw.sets[4])
    assert fw.ensure() == Repair(sets_recreated=(4,), rules_reinserted=(4,))
    listen(server, 4, SERVER_V4)
    fw.ban([(CLIENT[4], 600)])  # what the daemon does after sets_recreated
    assert not can_connect(client, SERVER_V4)


def test_status_names_the_iptables_variant(
    setup: tuple[Namespace, Namespace, IpsetBackend],
) -> None:
    _server, _client, fw = setup
    status = fw.status()
    expected = "legacy" if binary(fw, 4).endswith("legacy") else "nf_tables"
    rules = status["rules"]
    assert isinstance(rules, dict)
    assert rules["ipv4"]["variant"] == expected
    assert rules["ipv6"]["variant"] == expected
    assert rules["ipv4"]["positions"] == [1]
    assert rules["ipv4"]["in_place"] is True
    assert status["sets"] == {
        "ipv4": {
            "name": fw.sets[4],
            "present": True,
            "entries": 0,
            "maxelem": 1_048_576,
            "fill": 0.0,
        },
        "ipv6": {
            "name": fw.sets[6],
            "present": True,
            "entries": 0,
            "maxelem": 1_048_576,
            "fill": 0.0,
        },
    }


def test_teardown_removes_only_our_rules(setup: tuple[Namespace, Namespace, IpsetBackend]) -> None:
    server, _client, fw = setup
    server.run(binary(fw, 4), "-A", "INPUT", "-s", "198.51.100.9", "-j", "ACCEPT")
    fw.teardown()
    assert input_rules(server, fw, 4) == ["-A INPUT -s 198.51.100.9/32 -j ACCEPT"]
    assert input_rules(server, fw, 6) == []
    assert server.run("ipset", "list", "-n").stdout.split() == []
