"""The service's fleet side (fleet_role.py): remote bans through the local gate, origin,
holds, the outbox, and no escalation from other hosts' bans. A fake backend; time passed in."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from test_service import (
    ALLOWED,
    ATTACKER,
    CONFIG,
    CONFIG_OWN,
    HOST4,
    NOW,
    Harness,
    ask,
    listed,
    n,
    synacks,
)

from blocker.control import RequestError
from blocker.fleet.events import FleetEvent, from_payload
from blocker.fleet_role import FleetRole

PEER = "198.51.100.50"


def remote(
    target: str,
    *,
    expires: float = NOW + 600,
    origin: str = "web-2",
    kind: Literal["ban", "unban"] = "ban",
    event_id: str = "b" * 32,
) -> FleetEvent:
    return FleetEvent(
        kind,
        event_id,
        origin,
        ip_network(target),
        "probes",
        NOW - 1,
        expires,
        "score 6 >= 5 within 60s",
    )


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, fleet=FleetRole("web-1", frozenset({"probes"}), accept=True))
    harness.service.start(NOW)
    yield harness
    harness.state.close()


def test_a_remote_ban_is_applied_with_its_remaining_time_and_origin(h: Harness) -> None:
    counts = h.service.apply_remote([remote(PEER)], NOW + 100)
    assert counts["applied"] == 1
    assert h.backend.table == {n(PEER): 500.0}
    [row] = h.state.active(NOW + 100)
    assert (row.origin, row.jail, row.expires) == ("fleet:web-2", "probes", NOW + 600)
    [row_listed] = listed(h.service, NOW + 100)
    assert (row_listed["origin"], row_listed["target"]) == ("fleet:web-2", PEER)
    banned_by = cast(
        list[dict[str, Any]], ask(h.service, "explain", {"address": PEER}, NOW + 100)["banned_by"]
    )
    assert banned_by[0]["origin"] == ("fleet:web-2")
    assert h.state.outbox(0) == [], "a remote ban is never published again"


@pytest.mark.parametrize(
    "target", [ALLOWED, CONFIG_OWN, HOST4, "127.0.0.1", "0.0.0.0/0", "224.0.0.1", "fe80::1"]
)
def test_remote_bans_pass_the_local_gate(h: Harness, target: str) -> None:
    counts = h.service.apply_remote([remote(target)], NOW)
    assert (counts["applied"], counts["refused"]) == (0, 1)
    assert h.backend.table == {}
    assert h.state.active(NOW) == []


def test_an_expired_or_shorter_remote_ban_changes_nothing(h: Harness) -> None:
    assert h.service.apply_remote([remote(PEER, expires=NOW - 1)], NOW)["expired"] == 1
    h.service.apply_remote([remote(PEER, expires=NOW + 600)], NOW)
    assert h.service.apply_remote([remote(PEER, expires=NOW + 300)], NOW)["expired"] == 1
    assert len(h.backend.ban_batches) == 1


def test_accept_false_applies_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path, fleet=FleetRole("web-1", frozenset(), accept=False))
    h.service.start(NOW)
    assert h.service.apply_remote([remote(PEER)], NOW)["applied"] == 0
    assert h.backend.table == {}
    h.state.close()


def test_remote_bans_never_make_local_bans_longer(h: Harness) -> None:
    for i in range(3):
        h.service.apply_remote(
            [remote(ATTACKER, expires=NOW + 10 * i + 5, event_id=f"{i:032x}")], NOW + 10 * i
        )
    later = NOW + 1000
    decisions = h.feed(synacks(ATTACKER, later), later)
    assert [d.duration for d in decisions] == [600], "first local ban: ban_time, not grown"
    h.restart(later + 1000)
    decisions = h.feed(synacks(ATTACKER, later + 2000), later + 2000)
    assert [d.duration for d in decisions] == [1200], "grown by the one local ban only"


def test_local_bans_of_published_jails_go_to_the_outbox_in_order(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    ask(h.service, "ban", {"target": "2001:db8:77::/48", "jail": "scans"}, NOW)  # not shared
    ask(h.service, "ban", {"target": "198.51.100.9", "jail": "probes"}, NOW)
    events = [from_payload(p) for _, p in h.state.outbox(0)]
    assert [(e.kind, str(e.target), e.jail, e.origin, e.expires) for e in events if e] == [
        ("ban", f"{ATTACKER}/32", "probes", "web-1", NOW + 600),
        ("ban", "198.51.100.9/32", "probes", "web-1", NOW + 600),
    ]
    assert len({e.id for e in events if e}) == 2


def test_a_local_unban_of_a_remote_ban_holds_until_it_would_have_expired(h: Harness) -> None:
    h.service.apply_remote([remote(PEER, expires=NOW + 600)], NOW)
    ask(h.service, "unban", {"target": PEER}, NOW + 10)
    assert h.backend.table == {}
    again = remote(PEER, expires=NOW + 1200, event_id="c" * 32)  # a peer bans it again
    assert h.service.apply_remote([again], NOW + 20)["held"] == 1
    assert h.backend.table == {}
    restarted = h.restart(NOW + 30)  # the hold is in the state
    assert restarted.apply_remote([again], NOW + 30)["held"] == 1
    assert restarted.apply_remote([again], NOW + 601)["applied"] == 1, "over once it expired"


def test_unban_fleet_publishes_and_a_remote_unban_lifts(h: Harness) -> None:
    h.service.apply_remote([remote(PEER)], NOW)
    assert "every host" in ask(h.service, "unban", {"target": PEER, "fleet": True}, NOW + 1)
    [(_, payload)] = h.state.outbox(0)
    event = from_payload(payload)
    assert event is not None and (event.kind, str(event.target)) == ("unban", f"{PEER}/32")
    ask(h.service, "ban", {"target": "203.0.113.9"}, NOW)
    counts = h.service.apply_remote([remote("203.0.113.9", kind="unban")], NOW + 2)
    assert counts["unbans"] == 1
    assert n("203.0.113.9") not in h.backend.table
    assert json.dumps(ask(h.service, "status", {}, NOW))


def test_unban_fleet_outside_a_fleet_is_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.service.start(NOW)
    with pytest.raises(RequestError, match="in no fleet"):
        ask(h.service, "unban", {"target": PEER, "fleet": True}, NOW)
    h.state.close()


def test_a_fleet_unban_is_no_hold_after_a_restart(h: Harness) -> None:
    h.service.apply_remote([remote(PEER, expires=NOW + 600)], NOW)
    h.service.apply_remote([remote(PEER, kind="unban", event_id="d" * 32)], NOW + 1)
    restarted = h.restart(NOW + 2)
    again = remote(PEER, expires=NOW + 900, event_id="e" * 32)
    assert restarted.apply_remote([again], NOW + 3)["applied"] == 1


def test_holds_end_with_the_ban_they_lifted(h: Harness) -> None:
    h.service.apply_remote([remote(PEER, expires=NOW + 600)], NOW)
    ask(h.service, "unban", {"target": PEER}, NOW + 10)
    h.service.tick(NOW + 601)
    assert h.service.remote.held == {}


def test_a_remote_ban_spares_a_live_peer_of_this_host(tmp_path: Path) -> None:
    from test_spare_live_peers import FakeConntrack, harness  # noqa: PLC0415

    conntrack = FakeConntrack({PEER: 30.0})
    h = harness(tmp_path, conntrack, fleet=FleetRole("web-1", frozenset(), accept=True))
    try:
        counts = h.service.apply_remote(
            [remote(PEER), remote("203.0.113.99", event_id="9" * 32)], NOW
        )
        assert (counts["spared"], counts["applied"]) == (1, 1)
        assert set(h.backend.table) == {n("203.0.113.99")}
        assert [t for t, _ in conntrack.asked] == [n(PEER), n("203.0.113.99")]
    finally:
        h.state.close()


def test_a_fleet_without_redis_py_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redis-py the link would retry an ImportError forever: say so at start."""
    import importlib.util  # noqa: PLC0415

    from blocker.fleet import daemon_side  # noqa: PLC0415

    key_file = tmp_path / "fleet.key"
    key_file.write_text("k" * 64 + "\n")
    key_file.chmod(0o600)
    config = f'{CONFIG}\n[fleet]\nurl = "redis://127.0.0.1:1"\nkey_file = "{key_file}"\n'
    h = Harness(tmp_path, config)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "redis" else real(name, *rest),
    )
    with pytest.raises(OSError, match=r"redis-py is not installed \(Debian: python3-redis\)"):
        daemon_side.FleetWiring.open(h.load(), h.state, h.service.apply_remote, lambda: None)
    h.state.close()


class ListingConntrack:
    """A conntrack that also lists its live addresses at once, as live_peers.LivePeers does."""

    def __init__(self, live: dict[str, float], fail: str | None = None) -> None:
        from test_spare_live_peers import FakeConntrack  # noqa: PLC0415

        self.inner = FakeConntrack(live)
        self.inner.fail = fail
        self.listed: list[tuple[int, float]] = []

    def find(self, target: Any, window: float) -> Any:
        return self.inner.find(target, window)

    def live_addresses(self, version: int, window: float) -> set[int]:
        from blocker.live_peers import ConntrackError  # noqa: PLC0415

        self.listed.append((version, window))
        if self.inner.fail:
            raise ConntrackError(self.inner.fail)
        return {
            int(a) for a, idle in self.inner.live.items() if a.version == version and idle <= window
        }


def test_a_slice_of_remote_bans_asks_conntrack_once_and_checks_only_live_ones(
    tmp_path: Path,
) -> None:
    from test_spare_live_peers import harness  # noqa: PLC0415

    conntrack = ListingConntrack({PEER: 30.0, "203.0.113.5": 30.0})
    h = harness(tmp_path, cast(Any, conntrack), fleet=FleetRole("web-1", frozenset(), accept=True))
    try:
        events = [remote(f"203.0.113.{i}", event_id=f"{i:032x}") for i in range(10, 60)] + [
            remote(PEER, event_id="1" * 32),
            remote("203.0.113.0/29", event_id="2" * 32),  # holds 203.0.113.5
            remote("2001:db8::7", event_id="3" * 32),
        ]
        counts = h.service.apply_remote(events, NOW)
        assert (counts["spared"], counts["applied"]) == (2, 51)
        assert sorted(conntrack.listed) == [(4, 600.0), (6, 600.0)]
        assert [t for t, _ in conntrack.inner.asked] == [n(PEER), n("203.0.113.0/29")]
        assert n(PEER) not in h.backend.table and n("203.0.113.0/29") not in h.backend.table
        assert n("203.0.113.10") in h.backend.table and n("2001:db8::7") in h.backend.table
    finally:
        h.state.close()


def test_conntrack_failing_to_list_falls_back_to_the_per_ban_check(tmp_path: Path) -> None:
    from test_spare_live_peers import harness  # noqa: PLC0415

    conntrack = ListingConntrack({PEER: 30.0}, fail="no conntrack here")
    h = harness(tmp_path, cast(Any, conntrack), fleet=FleetRole("web-1", frozenset(), accept=True))
    try:
        counts = h.service.apply_remote([remote(PEER)], NOW)
        assert counts["applied"] == 1, "unable to ask: banned as with the check off"
        assert [t for t, _ in conntrack.inner.asked] == [n(PEER)]
    finally:
        h.state.close()


@pytest.mark.parametrize(
    ("target", "held"),
    [
        ("203.0.113.5", True),
        ("203.0.113.6", False),
        ("203.0.113.0/29", True),
        ("203.0.113.8/29", False),
        ("2001:db8::5", False),  # another family's ints never match: the caller sorts them
    ],
)
def test_holds_any(target: str, held: bool) -> None:
    from blocker.fleet.remote_bans import holds_any  # noqa: PLC0415

    live = {int(ip_network("203.0.113.5").network_address)}
    assert holds_any(n(target), live if n(target).version == 4 else set()) is held


def test_a_slice_is_one_kernel_batch_one_record_per_ban_and_one_log_record(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="blocker")
    events = [remote(f"2001:db8:5::{i:x}", event_id=f"{i:032x}") for i in range(1, 301)]
    events.append(remote(ALLOWED, event_id="a" * 32))
    counts = h.service.apply_remote(events, NOW)
    assert (counts["applied"], counts["refused"]) == (300, 1)
    assert len(h.backend.ban_batches) == 1 and len(h.backend.ban_batches[0]) == 300
    assert len(h.state.active(NOW)) == 300
    bans = [r for r in caplog.records if r.getMessage().startswith("ban ")]
    assert len(bans) == 1 and bans[0].getMessage().count("\n") == 299
    assert f"not banning {ALLOWED} from web-2" in caplog.text
    assert h.service.activity.bans["probes", "fleet"] == 300


def test_order_is_kept_across_an_unban_and_a_target_keeps_its_longest_ban(h: Harness) -> None:
    events = [
        remote(PEER, expires=NOW + 300, event_id="1" * 32),
        remote(PEER, expires=NOW + 900, event_id="2" * 32),  # the longest of the run wins
        remote(PEER, expires=NOW + 600, event_id="3" * 32),
        remote("203.0.113.5", event_id="4" * 32),
        remote("203.0.113.5", kind="unban", event_id="5" * 32),  # lifts the ban before it
        remote("203.0.113.6", kind="unban", event_id="6" * 32),
        remote("203.0.113.6", event_id="7" * 32),  # stands: after its unban
    ]
    counts = h.service.apply_remote(events, NOW)
    assert (counts["applied"], counts["expired"], counts["unbans"]) == (3, 2, 1)
    assert h.backend.table == {n(PEER): 900.0, n("203.0.113.6"): 600.0}
    assert sorted((str(r.target), r.expires) for r in h.state.active(NOW)) == [
        (f"{PEER}/32", NOW + 900),
        ("203.0.113.6/32", NOW + 600),
    ]


def test_bans_the_kernel_refuses_are_not_recorded(tmp_path: Path) -> None:
    harness = Harness(tmp_path, fleet=FleetRole("web-1", frozenset(), accept=True))
    harness.backend.capacity = 2
    harness.service.start(NOW)
    try:
        events = [remote(f"203.0.113.{i}", event_id=f"{i:032x}") for i in range(1, 5)]
        counts = harness.service.apply_remote(events, NOW)
        assert counts["applied"] == 2
        assert len(harness.service.active) == 2 and len(harness.state.active(NOW)) == 2
        assert harness.service.refusals.total == 2
    finally:
        harness.state.close()
