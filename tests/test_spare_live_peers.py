"""spare_live_peers without a kernel: the service asks a fake conntrack; the wire is checked
against hand-built ctnetlink messages. The real kernel: tests/test_e2e_spare.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_service import ATTACKER, CONFIG, NOW, Harness, ask, n, synacks

from blocker import conntrack_wire
from blocker.commands import SparedBan
from blocker.conntrack_wire import Entry
from blocker.live_peers import ConntrackError, LiveConnection, live_connection
from blocker.records import Network

PEER = "203.0.113.7"
TCP_EST = 432000.0


class FakeConntrack:
    """Live connections by address; every question is recorded."""

    def __init__(self, live: dict[str, float] | None = None) -> None:
        self.live = {ip_address(a): idle for a, idle in (live or {}).items()}
        self.asked: list[tuple[Network, float]] = []
        self.fail: str | None = None

    def find(self, target: Network, window: float) -> LiveConnection | None:
        self.asked.append((target, window))
        if self.fail:
            raise ConntrackError(self.fail)
        for address, idle in self.live.items():
            if address in target and idle <= window:
                return LiveConnection(
                    address, ip_address("192.0.2.10"), "TCP", 40000, 22, idle, True
                )
        return None


def harness(tmp_path: Path, conntrack: FakeConntrack, extra: str = "", **parts: Any) -> Harness:
    config = CONFIG.replace("[defaults]\n", "[defaults]\n" + extra)
    h = Harness(tmp_path, config, live_peers=conntrack, **parts)
    h.service.start(NOW)
    return h


@pytest.fixture
def ct() -> FakeConntrack:
    return FakeConntrack({PEER: 30.0})


@pytest.fixture
def h(tmp_path: Path, ct: FakeConntrack) -> Iterator[Harness]:
    harness_ = harness(tmp_path, ct)
    yield harness_
    harness_.state.close()


def test_a_live_peer_is_not_banned_and_explain_says_why(
    h: Harness, ct: FakeConntrack, caplog: pytest.LogCaptureFixture
) -> None:
    assert h.feed(synacks(PEER, NOW)) == []  # decided by the scorer, refused by the service
    assert h.backend.ban_batches == []
    assert h.state.active(NOW) == []
    assert ct.asked == [(n(PEER), 600.0)]
    explained = ask(h.service, "explain", {"address": PEER}, NOW)
    assert explained["banned_by"] == []
    (spared,) = cast(list[dict[str, str]], explained["spared"])
    assert spared["target"] == PEER and spared["jail"] == "probes"
    assert set(spared) == set(SparedBan.__annotations__)
    assert "live TCP connection" in spared["reason"] and "unsolicited_synack" in spared["reason"]
    assert ask(h.service, "status", {}, NOW)["spared_live_peers"] == 1
    assert sum("spare 203.0.113.7" in r.message for r in caplog.records) == 1


def test_the_scorer_is_told_the_ban_did_not_happen(h: Harness, ct: FakeConntrack) -> None:
    h.feed(synacks(PEER, NOW))
    scorer = h.service.pipeline.runner("probes").scorer  # type: ignore[union-attr]
    assert scorer.explain(ip_address(PEER), NOW)["score"] == 0
    # Not gated as banned: the next five packets are scored and checked again...
    h.feed(synacks(PEER, NOW + 10))
    assert len(ct.asked) == 2
    # ...and once the connection is gone, the ban is a first ban (no history from refusals).
    ct.live.clear()
    (decision,) = h.feed(synacks(PEER, NOW + 20))
    assert decision.duration == 600


def test_logged_once_per_address_and_window(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    for k in range(4):
        h.feed(synacks(PEER, NOW + 10 * k), now=NOW + 10 * k)
    assert sum("spare 203.0.113.7" in r.message for r in caplog.records) == 1
    h.feed(synacks(PEER, NOW + 700), now=NOW + 700)
    assert sum("spare 203.0.113.7" in r.message for r in caplog.records) == 2
    assert h.service.sparing.spared_count == 5


def test_an_address_without_a_live_connection_is_banned(h: Harness) -> None:
    (decision,) = h.feed(synacks(ATTACKER, NOW))
    assert decision.target == n(ATTACKER)
    assert h.backend.table == {n(ATTACKER): 600.0}


def test_an_idle_connection_beyond_the_window_spares_nobody(tmp_path: Path) -> None:
    h = harness(tmp_path, FakeConntrack({PEER: 601.0}))
    assert [d.target for d in h.feed(synacks(PEER, NOW))] == [n(PEER)]


def test_zero_disables_the_check(tmp_path: Path) -> None:
    ct = FakeConntrack({PEER: 0.0})
    h = harness(tmp_path, ct, "spare_live_peers = 0\n")
    assert [d.target for d in h.feed(synacks(PEER, NOW))] == [n(PEER)]
    assert ct.asked == []


def test_a_filter_marked_not_spoofable_is_not_checked(tmp_path: Path) -> None:
    ct = FakeConntrack({PEER: 0.0})
    h = harness(tmp_path, ct)
    for flt in h.service.config.filters.values():
        object.__setattr__(flt, "spoofable", False)
    assert [d.target for d in h.feed(synacks(PEER, NOW))] == [n(PEER)]
    assert ct.asked == []


def test_conntrack_failing_bans_as_before_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ct = FakeConntrack({PEER: 0.0})
    ct.fail = "no netlink"
    h = harness(tmp_path, ct)
    assert [d.target for d in h.feed(synacks(PEER, NOW))] == [n(PEER)]
    assert [d.target for d in h.feed(synacks("203.0.113.8", NOW))] == [n("203.0.113.8")]
    assert sum("cannot check live connections" in r.message for r in caplog.records) == 1
    assert ask(h.service, "status", {}, NOW)["conntrack"] == "no netlink"


def test_subnet_escalation_is_refused_when_it_would_cover_a_live_peer(tmp_path: Path) -> None:
    ct = FakeConntrack({"203.0.113.200": 5.0})  # a live peer, never probed itself
    h = harness(tmp_path, ct)
    targets: list[Network] = []
    for i, address in enumerate(("203.0.113.1", "203.0.113.2", "203.0.113.3")):
        targets += [d.target for d in h.feed(synacks(address, NOW + i))]
    assert targets == [n("203.0.113.1"), n("203.0.113.2"), n("203.0.113.3")]
    assert n("203.0.113.0/24") in [t for t, _ in ct.asked]
    assert n("203.0.113.0/24") not in h.backend.table
    # The refused escalation starts its count again: three more banned hosts, no live peer.
    ct.live.clear()
    more: list[Network] = []
    for i, address in enumerate(("203.0.113.4", "203.0.113.5", "203.0.113.6")):
        more += [d.target for d in h.feed(synacks(address, NOW + 5 + i))]
    assert n("203.0.113.0/24") in more, "without the live peer the subnet is banned"


def test_manual_bans_are_never_checked(h: Harness, ct: FakeConntrack) -> None:
    ask(h.service, "ban", {"target": PEER}, NOW)
    assert ct.asked == []
    assert n(PEER) in h.backend.table


# -- which connections count ------------------------------------------------------------------


def entry(
    src: str,
    dst: str,
    *,
    proto: int = 6,
    state: int | None = 3,
    left: float = TCP_EST,
    status: int = conntrack_wire.IPS_ASSURED,
) -> Entry:
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    return Entry(
        socket.inet_pton(family, src),
        socket.inet_pton(family, dst),
        proto,
        40000,
        22,
        status,
        int(left),
        state,
    )


@pytest.mark.parametrize(
    ("item", "live"),
    [
        pytest.param(entry(PEER, "192.0.2.10"), True, id="established, it opened"),
        pytest.param(entry("192.0.2.10", PEER), True, id="established, the host opened"),
        pytest.param(entry(PEER, "192.0.2.10", left=TCP_EST - 601), False, id="idle too long"),
        pytest.param(entry(PEER, "192.0.2.10", status=0), False, id="never answered"),
        pytest.param(entry(PEER, "192.0.2.10", state=4), False, id="closing (FIN_WAIT)"),
        pytest.param(
            entry(PEER, "192.0.2.10", status=conntrack_wire.IPS_ASSURED | conntrack_wire.IPS_DYING),
            False,
            id="dying",
        ),
        pytest.param(
            entry(PEER, "192.0.2.10", proto=17, state=None, left=100),
            False,
            id="assured UDP: forgeable, never counts",
        ),
        pytest.param(entry(PEER, "192.0.2.10", proto=1, state=None, left=30), False, id="ICMP"),
        pytest.param(entry("203.0.113.9", "192.0.2.10"), False, id="another address"),
    ],
)
def test_what_proves_a_live_peer(item: Entry, live: bool) -> None:
    found = live_connection([item], ip_network(PEER), 600, TCP_EST)
    assert (found is not None) == live
    if found is not None:
        assert found.peer == ip_address(PEER)


def test_dump_request_asks_for_assured_entries() -> None:
    request = conntrack_wire.dump_request(socket.AF_INET6, 7)
    assert request[4:8] == bytes((1, 1, 1, 3))  # CT_GET in ctnetlink, REQUEST|DUMP (LE host)
    assert request[16] == socket.AF_INET6
    assured = conntrack_wire.IPS_ASSURED.to_bytes(4, "big")
    assert request[20:28] == (8).to_bytes(2, "little") + bytes((3, 0)) + assured
    assert request[28:36] == (8).to_bytes(2, "little") + bytes((26, 0)) + assured


def test_dump_replies_read_what_the_kernel_sends() -> None:
    entries = [
        entry(PEER, "192.0.2.10"),
        entry("2001:db8::7", "2001:db8::10", proto=17, state=None, left=90),
    ]
    data = b"".join(conntrack_wire.entry_message(e, 5) for e in entries)
    done = bytes(16)
    done = (
        (16).to_bytes(4, "little")
        + (3).to_bytes(2, "little")
        + bytes(2)
        + (5).to_bytes(4, "little")
        + bytes(4)
    )
    assert conntrack_wire.dump_replies(data, 5) == (entries, None)
    assert conntrack_wire.dump_replies(data + done, 5) == (entries, 0)
    assert conntrack_wire.dump_replies(data, 6) == ([], None), "another dump's messages"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 3))
def test_any_answer_is_read_without_raising(data: bytes, seq: int) -> None:
    found, end = conntrack_wire.dump_replies(data, seq)
    assert end is None or isinstance(end, int)
    live_connection(found, ip_network("0.0.0.0/0"), 600, TCP_EST)
