"""IpsetBackend against the real kernel, inside a throwaway network namespace (root only).

Kernel state is read back with the ipset binary (`ip netns exec NS ipset list`), never
through the backend itself. Run under both pyroute2 versions:
    .venv/bin/python -m pytest tests/test_firewall_ipset.py       (PyPI 0.9.x)
    /usr/bin/python3 -m pytest tests/test_firewall_ipset.py       (Debian 0.7.x)
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest
from netns import Namespace, namespace, wait_until
from pyroute2.ipset import IPSet

from blocker.firewall import FirewallError, InvalidBan, Repair
from blocker.firewall import namespace as entered_namespace
from blocker.firewall.base import MAX_TIMEOUT
from blocker.firewall.ipset import IpsetBackend
from blocker.records import Network

pytestmark = [
    pytest.mark.root("ipset in a network namespace"),
    pytest.mark.skipif(
        not (shutil.which("ipset") and shutil.which("iptables")), reason="needs ipset and iptables"
    ),
]

HOST = ip_network("198.51.100.7/32")
NET = ip_network("203.0.113.0/24")
HOST6 = ip_network("2001:db8::1/128")
NET6 = ip_network("2001:db8:1:2::/64")


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with namespace() as made:
        yield made


@pytest.fixture
def backend(ns: Namespace) -> Iterator[IpsetBackend]:
    tag = uuid.uuid4().hex[:8]
    fw = IpsetBackend(set4=f"blk4-{tag}", set6=f"blk6-{tag}", netns=ns.name)
    fw.setup()
    try:
        yield fw
    finally:
        fw.close()


def kernel_entries(ns: Namespace, name: str) -> dict[str, int]:
    """{member: timeout} as the ipset binary prints them ('198.51.100.7', '203.0.113.0/24')."""
    out = ns.run("ipset", "list", name).stdout
    members = out.split("Members:\n", 1)[1]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+) timeout (\d+)$", members, flags=re.MULTILINE)
    }


def header(ns: Namespace, name: str) -> str:
    return ns.run("ipset", "list", "-t", name).stdout


def test_setup_creates_hash_net_sets_with_timeout_support(
    ns: Namespace, backend: IpsetBackend
) -> None:
    v4, v6 = header(ns, backend.sets[4]), header(ns, backend.sets[6])
    assert "Type: hash:net" in v4
    assert "Type: hash:net" in v6
    assert re.search(r"Header: family inet .*maxelem 1048576 timeout 0", v4)
    assert re.search(r"Header: family inet6 .*maxelem 1048576 timeout 0", v6)
    backend.setup()  # idempotent
    assert "Number of entries: 0" in header(ns, backend.sets[4])


def test_ban_puts_entries_with_timeouts_into_the_kernel(
    ns: Namespace, backend: IpsetBackend
) -> None:
    backend.ban([(HOST, 600), (NET, 300.5), (HOST6, 900), (NET6, math.inf)])
    v4 = kernel_entries(ns, backend.sets[4])
    v6 = kernel_entries(ns, backend.sets[6])
    assert set(v4) == {"198.51.100.7", "203.0.113.0/24"}
    assert 590 <= v4["198.51.100.7"] <= 600
    assert 290 <= v4["203.0.113.0/24"] <= 301
    assert set(v6) == {"2001:db8::1", "2001:db8:1:2::/64"}
    assert 890 <= v6["2001:db8::1"] <= 900
    assert v6["2001:db8:1:2::/64"] == 0  # permanent


def test_list_reports_what_the_kernel_holds(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 600), (NET6, math.inf)])
    listed = dict(backend.list())
    assert set(listed) == {HOST, NET6}
    assert 590 <= listed[HOST] <= 600
    assert listed[NET6] == math.inf


def pyroute2_listing(ns: Namespace, name: str, family: int) -> dict[Network, int]:
    """{target: timeout} of one set decoded by pyroute2 (the reference for the hand parser)."""
    with entered_namespace.entered(ns.name):
        ipset = IPSet()
    try:
        replies = list(ipset.list(name))
    finally:
        ipset.close()
    address = "IPSET_ATTR_IPADDR_IPV4" if family == 4 else "IPSET_ATTR_IPADDR_IPV6"
    out: dict[Network, int] = {}
    for reply in replies:
        adt = reply.get_attr("IPSET_ATTR_ADT")
        for data in adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else ():
            text = data.get_attr("IPSET_ATTR_IP_FROM").get_attr(address)
            target = ip_network(f"{text}/{data.get_attr('IPSET_ATTR_CIDR')}")
            out[target] = data.get_attr("IPSET_ATTR_TIMEOUT") or 0
    return out


def test_list_agrees_with_pyroute2s_decoding(ns: Namespace, backend: IpsetBackend) -> None:
    # Enough entries for a dump of many messages, hosts and networks, finite and permanent.
    bans: list[tuple[Network, float]] = (
        [(IPv6Network(((0x20010DB8 << 96) + i, 128)), 600 + i % 7) for i in range(3000)]
        + [(IPv4Network(f"198.51.100.{host}/32"), 900) for host in range(256)]
        + [(NET, 300), (NET6, math.inf), (ip_network("192.0.2.0/25"), math.inf)]
    )
    backend.ban(bans)
    listed = backend.list()
    assert len(listed) == len(bans)
    reference = pyroute2_listing(ns, backend.sets[4], 4) | pyroute2_listing(ns, backend.sets[6], 6)
    assert {target for target, _ in listed} == set(reference) == {target for target, _ in bans}
    for target, seconds in listed:
        if reference[target] == 0:
            assert seconds == math.inf
        else:  # the two listings are a moment apart: the kernel's countdown may tick
            assert abs(seconds - reference[target]) <= 2


def test_list_batches_is_list_a_slice_at_a_time(ns: Namespace, backend: IpsetBackend) -> None:
    bans: list[tuple[Network, float]] = [
        (IPv6Network(((0x20010DB8 << 96) + (i << 64), 64)), 600) for i in range(5000)
    ] + [(HOST, math.inf)]
    backend.ban(bans)
    batches = list(backend.list_batches())
    assert len(batches) >= 5000 // 128  # slices of the several messages a dump of 5,000 takes
    assert max(map(len, batches)) <= 128
    streamed = [entry for batch in batches for entry in batch]
    assert len(streamed) == len(bans)
    assert {t for t, _ in streamed} == {t for t, _ in backend.list()} == {t for t, _ in bans}
    # Bans go on while a listing is half read: it has a socket of its own.
    half = backend.list_batches()
    next(half)
    backend.ban([(NET, 600)])
    assert NET in dict(backend.list())
    half.close()
    ns.run("iptables", "-F", "INPUT")
    ns.run("ipset", "destroy", backend.sets[4])  # a missing set holds nothing
    assert len([e for batch in backend.list_batches() for e in batch]) == 5000


def test_list_of_a_missing_set_is_empty_not_an_error(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 600), (HOST6, 600)])
    ns.run("iptables", "-F", "INPUT")
    ns.run("ipset", "destroy", backend.sets[4])
    assert [target for target, _ in backend.list()] == [HOST6]


def test_timeout_counts_down_in_the_kernel(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 100)])
    first = kernel_entries(ns, backend.sets[4])["198.51.100.7"]
    assert wait_until(lambda: kernel_entries(ns, backend.sets[4])["198.51.100.7"] < first, 5)


def test_short_ban_expires_on_its_own(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 2), (HOST6, 2)])
    assert "198.51.100.7" in kernel_entries(ns, backend.sets[4])
    assert wait_until(lambda: not kernel_entries(ns, backend.sets[4]), timeout=10)
    assert wait_until(lambda: not kernel_entries(ns, backend.sets[6]), timeout=5)


def test_unban_removes_at_once_and_absent_is_fine(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 600), (NET, 600), (HOST6, 600)])
    backend.unban([HOST, HOST6, ip_network("192.0.2.99/32")])
    assert set(kernel_entries(ns, backend.sets[4])) == {"203.0.113.0/24"}
    assert kernel_entries(ns, backend.sets[6]) == {}
    backend.unban([HOST, HOST6])  # idempotent


def test_reban_replaces_the_timeout(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 100)])
    backend.ban([(HOST, 5000)])
    assert kernel_entries(ns, backend.sets[4])["198.51.100.7"] > 4000
    backend.ban([(HOST, 50)])  # shorter replaces too
    assert kernel_entries(ns, backend.sets[4])["198.51.100.7"] <= 50
    backend.ban([(HOST, math.inf)])
    assert kernel_entries(ns, backend.sets[4])["198.51.100.7"] == 0
    assert len(kernel_entries(ns, backend.sets[4])) == 1


def test_long_bans_are_clamped_to_the_ipset_maximum(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 10**9)])
    assert MAX_TIMEOUT - 10 <= kernel_entries(ns, backend.sets[4])["198.51.100.7"] <= MAX_TIMEOUT


@pytest.mark.parametrize(
    "bad",
    [
        "198.51.100.8",
        IPv4Address("198.51.100.8"),
        IPv4Network("0.0.0.0/0"),
        IPv6Network("::ffff:198.51.100.8/128"),
        IPv4Network("127.0.0.1/32"),
    ],
)
def test_invalid_targets_are_rejected_and_nothing_applied(
    ns: Namespace, backend: IpsetBackend, bad: object
) -> None:
    with pytest.raises(InvalidBan):
        backend.ban([(HOST, 60), (bad, 60)])  # type: ignore[list-item]
    with pytest.raises(InvalidBan):
        backend.unban([bad])  # type: ignore[list-item]
    assert kernel_entries(ns, backend.sets[4]) == {}
    assert kernel_entries(ns, backend.sets[6]) == {}


@pytest.mark.parametrize("seconds", [0, -1, math.nan, "60"])
def test_invalid_durations_are_rejected(
    ns: Namespace, backend: IpsetBackend, seconds: object
) -> None:
    with pytest.raises(InvalidBan, match="duration"):
        backend.ban([(HOST, seconds)])  # type: ignore[list-item]
    assert kernel_entries(ns, backend.sets[4]) == {}


def test_burst_of_5000_lands_in_one_call(ns: Namespace, backend: IpsetBackend) -> None:
    # Every host of the three IPv4 documentation /24s (768), 5000 hosts of 2001:db8::/32.
    v4: list[tuple[Network, float]] = [
        (IPv4Network(f"{net}.{host}/32"), 600)
        for net in ("192.0.2", "198.51.100", "203.0.113")
        for host in range(256)
    ]
    v6: list[tuple[Network, float]] = [
        (IPv6Network(((0x20010DB8 << 96) + i, 128)), 600) for i in range(5000)
    ]
    backend.ban(v4 + v6)  # 6 messages: 1 + 5 per family
    assert "Number of entries: 768" in header(ns, backend.sets[4])
    assert "Number of entries: 5000" in header(ns, backend.sets[6])
    assert len(backend.list()) == 5768
    backend.unban([target for target, _ in v6])
    assert "Number of entries: 0" in header(ns, backend.sets[6])


def test_full_set_is_reported_by_target_and_the_rest_applied(ns: Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    with IpsetBackend(set4=f"blk4-{tag}", set6=f"blk6-{tag}", netns=ns.name, maxelem=2) as fw:
        fw.setup()
        refused = fw.ban([(ip_network(f"192.0.2.{i}/32"), 60) for i in (1, 2, 3)])
        assert refused == {ip_network("192.0.2.3/32"): "set is full (maxelem reached)"}
        assert set(kernel_entries(ns, fw.sets[4])) == {"192.0.2.1", "192.0.2.2"}
        # A present entry is still refreshed in a full set; the fill shows in status().
        assert fw.ban([(ip_network("192.0.2.1/32"), 3600)]) == {}
        assert kernel_entries(ns, fw.sets[4])["192.0.2.1"] > 60
        assert fw.fill()[4] == (2, 2)
        assert fw.status()["sets"]["ipv4"]["fill"] == 1.0  # type: ignore[index]
        fw.teardown()


def test_existing_set_of_another_type_is_refused(ns: Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    ns.run("ipset", "create", f"blk4-{tag}", "hash:ip")
    fw = IpsetBackend(set4=f"blk4-{tag}", set6=f"blk6-{tag}", netns=ns.name)
    with fw, pytest.raises(FirewallError, match="exists as hash:ip"):
        fw.setup()


def test_destroyed_set_is_recreated_by_ensure(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 600)])
    ns.run("iptables", "-F", "INPUT")  # a firewall reload drops the rule ...
    ns.run("ipset", "destroy", backend.sets[4])  # ... and then the set can go
    with pytest.raises(FirewallError, match="does not exist"):
        backend.ban([(HOST, 600)])
    assert backend.ensure() == Repair(sets_recreated=(4,), rules_reinserted=(4,))
    assert "Type: hash:net" in header(ns, backend.sets[4])
    backend.ban([(HOST, 600)])
    assert "198.51.100.7" in kernel_entries(ns, backend.sets[4])
    assert not backend.ensure()


def test_teardown_removes_rules_and_sets(ns: Namespace, backend: IpsetBackend) -> None:
    backend.ban([(HOST, 600), (HOST6, 600)])
    backend.teardown()
    assert ns.run("ipset", "list", "-n").stdout.split() == []
    assert "blocker" not in ns.run("iptables", "-S").stdout
    assert "blocker" not in ns.run("ip6tables", "-S").stdout
    backend.teardown()  # idempotent


def test_other_threads_work_in_the_backends_namespace(ns: Namespace, backend: IpsetBackend) -> None:
    # pyroute2 0.9 binds sockets to threads: a stray socket would land in the root namespace.
    errors: list[BaseException] = []

    def work() -> None:
        try:
            backend.ban([(HOST, 60)])
            assert not backend.ensure()
            assert [target for target, _ in backend.list()] == [HOST]
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=30)
    assert errors == []
    assert "198.51.100.7" in kernel_entries(ns, backend.sets[4])
    root_sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=True)
    assert backend.sets[4] not in root_sets.stdout.split()


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(FirewallError, match="not found"):
        IpsetBackend(netns=f"blk-{uuid.uuid4().hex[:8]}").ensure()


def test_sockets_reopen_after_close(ns: Namespace, backend: IpsetBackend) -> None:
    backend.close()
    backend.ban([(HOST, 60)])
    assert "198.51.100.7" in kernel_entries(ns, backend.sets[4])
    backend.close()
    assert not backend.ensure()
