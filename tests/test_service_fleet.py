"""The service's fleet side (fleet_role.py): remote bans through the local gate, origin,
holds, the outbox, and no escalation from other hosts' bans. A fake backend; time passed in."""

from __future__ import annotations

import json
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
