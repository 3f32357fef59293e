"""service.py: lines in, bans out, admin commands, driven directly with a fake backend.

Time is an argument everywhere: `NOW` is a fixed instant and the kern.log lines carry RFC 3339
stamps built from it, so no test reads the clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, cast

import pytest
from fakes.backend import FakeBackend
from loglines import BASE, syn, synack

from blocker.admin_commands import LIST_SLICE
from blocker.commands import (
    CoveringBan,
    ExplainReply,
    FirewallChecks,
    JailStatus,
    ListedBan,
    SetStatus,
    StatusReply,
)
from blocker.config import Config, load_config
from blocker.control import RequestError, Streamed
from blocker.firewall.base import Repair
from blocker.pipeline import MAX_LINE
from blocker.records import Decision, Network, network_text
from blocker.service import Service
from blocker.sources.base import SourceLine
from blocker.state import State

FILTERS = Path(__file__).resolve().parent.parent / "filters"
LOG = "/var/log/kern.log"
KEY = ("kernlog", LOG)
NOW = BASE + 3600.0
HOST4 = "192.0.2.10"  # the host (own address handed to Service, as the daemon does)
HOST6 = "2001:db8::10"
CONFIG_OWN = "198.51.100.1"  # an own address listed in the config
ALLOWED = "198.51.100.77"
ATTACKER = "203.0.113.66"
ATTACKER6 = "2001:db8:66::1"

CONFIG = f"""
filters_dir = "{FILTERS}"
[firewall]
backend = "dry-run"
[defaults]
source = "kernlog"
log_path = "{LOG}"
allow = ["{ALLOWED}"]
own_addresses = ["{CONFIG_OWN}"]
[jails.probes]
filters = ["unsolicited_synack", "outgoing_rst"]
[jails.scans]
filters = ["syn_scan"]
ban_time = "1h"
"""


def n(text: str) -> Network:
    return ip_network(text)


def write_config(path: Path, text: str = CONFIG) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def synacks(src: str, end: float, count: int = 5) -> list[SourceLine]:
    """`count` SYN/ACK lines from `src`, one a second, the last one stamped `end`."""
    return [SourceLine(synack(src, at=end - count + 1 + i), None) for i in range(count)]


def ask(service: Service, command: str, message: dict[str, object], now: float) -> Any:
    """`command` as the control socket hands it over: a raw message through the service's
    dispatch table (parsed into its request type there), at time `now`."""
    return service.handlers(lambda: now)[command]({"cmd": command, **message})


def listed(service: Service, now: float) -> list[dict[str, Any]]:
    """Every row `list` streams, in blockerctl's order (by address)."""
    streamed = ask(service, "list", {}, now)
    assert isinstance(streamed, Streamed)
    rows = [cast(dict[str, Any], row) for batch in streamed.batches for row in batch]
    return sorted(rows, key=lambda row: (n(row["target"]).version, n(row["target"])))


class Harness:
    def __init__(self, tmp_path: Path, config_text: str = CONFIG, **parts: Any) -> None:
        """`parts`: the Service's collaborators (fleet, live_peers, source_health...), kept
        for every restart."""
        self.config_path = write_config(tmp_path / "jails.toml", config_text)
        self.state_dir = tmp_path / "state"
        self.state = State(self.state_dir)
        self.backend = FakeBackend()
        self.parts = parts
        self.service = self.make_service(self.state, self.backend)

    def make_service(self, state: State, backend: FakeBackend) -> Service:
        return Service(
            self.load(),
            state,
            backend,
            own_addresses=(ip_address(HOST4), ip_address(HOST6)),
            reload_config=self.load,
            **self.parts,
        )

    def load(self) -> Config:
        return load_config(self.config_path)

    def feed(self, lines: Iterable[SourceLine], now: float = NOW) -> list[Decision]:
        return self.service.handle_lines(KEY, list(lines), now)

    def restart(self, now: float) -> Service:
        """A new daemon process on the same state: new Service, new (empty) backend."""
        self.state.close()
        self.state = State(self.state_dir)
        self.backend = FakeBackend()
        self.service = self.make_service(self.state, self.backend)
        self.service.start(now)
        return self.service


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    harness.service.start(NOW)
    yield harness
    harness.state.close()


# -- the hot path ---------------------------------------------------------------------------


def test_five_synacks_give_one_ban_batch(h: Harness) -> None:
    decisions = h.feed(synacks(ATTACKER, NOW))
    assert [(d.target, d.jail, d.duration) for d in decisions] == [(n(ATTACKER), "probes", 600)]
    assert h.backend.ban_batches == [[(n(ATTACKER), 600.0)]]
    assert h.backend.table == {n(ATTACKER): 600.0}
    assert set(h.service.active) == {n(ATTACKER)}
    rows = h.state.active(NOW)
    assert [(r.target, r.jail, r.expires, r.origin) for r in rows] == [
        (n(ATTACKER), "probes", NOW + 600, "auto")
    ]


def test_four_synacks_ban_nobody(h: Harness) -> None:
    assert h.feed(synacks(ATTACKER, NOW, count=4)) == []
    assert h.backend.ban_batches == []


def test_lines_of_another_source_are_ignored(h: Harness) -> None:
    assert h.service.handle_lines(("kernlog", "/elsewhere.log"), synacks(ATTACKER, NOW), NOW) == []
    assert h.backend.ban_batches == []


def test_kern_log_lines_get_the_same_length_bound_as_live_lines(h: Harness) -> None:
    """A record starting past the parser's bound (MAX_LINE) is cut off on both paths."""
    padded = "x" * (MAX_LINE + 100) + " " + synack(ATTACKER, at=None)
    h.service.handle_lines(("kernlog", LOG), [SourceLine(padded, None)], NOW)
    h.service.handle_lines(("kernlog", LOG), [SourceLine(padded, NOW)], NOW)
    assert h.service.pipeline.stats.lines == 2
    assert h.service.pipeline.stats.parsed == 0


def test_ipv6_attacker_is_banned(h: Harness) -> None:
    h.feed(synacks(ATTACKER6, NOW))
    assert h.backend.banned_targets == [n(ATTACKER6)]


def test_lines_from_a_source_with_its_own_times(h: Harness) -> None:
    """journald/kmsg lines carry no syslog header; their time comes with the SourceLine."""
    lines = [SourceLine(synack(ATTACKER, at=None), NOW - 4 + i) for i in range(5)]
    h.feed(lines)
    assert h.backend.banned_targets == [n(ATTACKER)]


def test_a_backlog_whose_ban_has_ended_does_not_reach_the_backend(h: Harness) -> None:
    # Read an hour late: the 600 s ban these lines earned ended long ago.
    decisions = h.feed(synacks(ATTACKER, NOW - 3600))
    assert [d.target for d in decisions] == [n(ATTACKER)]
    assert h.backend.ban_batches == []
    assert h.service.active == {}
    assert h.state.active(NOW) == []


def test_a_backlog_ban_keeps_only_its_remaining_time(h: Harness) -> None:
    end = NOW - 200.5
    h.feed(synacks(ATTACKER, end))
    assert h.backend.ban_batches == [[(n(ATTACKER), end + 600 - NOW)]]
    assert h.service.active[n(ATTACKER)].expires == end + 600


def test_no_second_ban_while_banned(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    assert h.feed(synacks(ATTACKER, NOW + 10), now=NOW + 10) == []
    assert len(h.backend.ban_batches) == 1


def test_a_ban_after_expiry_lasts_longer(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    later = NOW + 700
    decisions = h.feed(synacks(ATTACKER, later), now=later)
    assert [d.duration for d in decisions] == [1200]
    assert h.backend.ban_batches[-1] == [(n(ATTACKER), 1200.0)]


def decision(target: str, at: float, duration: float, jail: str = "probes") -> Decision:
    return Decision(
        target=n(target),
        jail=jail,
        at=at,
        duration=duration,
        score=5.0,
        filters=("unsolicited_synack",),
        reason="test",
    )


def test_apply_skips_a_duplicate_or_shorter_ban_and_passes_a_longer_one(h: Harness) -> None:
    h.service.apply([decision(ATTACKER, NOW, 600)], NOW)
    h.service.apply([decision(ATTACKER, NOW, 600)], NOW)  # duplicate
    h.service.apply([decision(ATTACKER, NOW, 300, "scans")], NOW)  # shorter
    assert h.backend.ban_batches == [[(n(ATTACKER), 600.0)]]
    h.service.apply([decision(ATTACKER, NOW, 3600, "scans")], NOW)  # longer
    assert h.backend.ban_batches[-1] == [(n(ATTACKER), 3600.0)]
    assert h.service.active[n(ATTACKER)].jail == "scans"
    assert len(h.state.history(0)) == 2


def test_one_batch_for_many_decisions(h: Harness) -> None:
    lines = synacks("203.0.113.1", NOW) + synacks("198.51.100.9", NOW)
    h.feed(lines)
    assert len(h.backend.ban_batches) == 1
    assert {t for t, _ in h.backend.ban_batches[0]} == {n("203.0.113.1"), n("198.51.100.9")}


def test_a_firewall_error_on_the_hot_path_is_logged_not_raised(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.backend.fail = "ipset is gone"
    h.feed(synacks(ATTACKER, NOW))
    assert "firewall refused 1 ban(s): ipset is gone" in caplog.text


def test_garbage_lines_do_not_disturb_scoring(h: Harness) -> None:
    garbage = [
        SourceLine(text, None)
        for text in (
            "",
            "\ufffd\ufffd binary",
            "x" * 100_000,
            "kernel: SRC=999.1.1.1 PROTO=TCP",
            synack(ATTACKER, at=NOW)[:60],
        )
    ]
    h.feed(garbage + synacks(ATTACKER, NOW))
    assert h.backend.banned_targets == [n(ATTACKER)]
    status = ask(h.service, "status", {}, NOW)
    assert status["lines"] == 10
    assert status["parsed"] == 5


# -- own addresses ------------------------------------------------------------------------


@pytest.mark.parametrize("own", [HOST4, HOST6, CONFIG_OWN, ALLOWED])
def test_own_and_allowlisted_addresses_are_never_banned(h: Harness, own: str) -> None:
    assert h.feed(synacks(own, NOW, count=20)) == []
    assert h.backend.ban_batches == []


def test_no_subnet_ban_around_an_own_address(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    service = Service(
        harness.load(), harness.state, harness.backend, own_addresses=(ip_address("203.0.113.200"),)
    )
    service.start(NOW)
    for i, src in enumerate(("203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4")):
        service.handle_lines(KEY, synacks(src, NOW + i), NOW + i)
    assert all(t.prefixlen == 32 for t in harness.backend.banned_targets)
    assert len(harness.backend.banned_targets) == 4
    harness.state.close()


def test_three_offenders_escalate_to_the_subnet(h: Harness) -> None:
    for i, src in enumerate(("203.0.113.1", "203.0.113.2", "203.0.113.3")):
        h.feed(synacks(src, NOW + i), now=NOW + i)
    assert n("203.0.113.0/24") in h.backend.banned_targets


# -- start: restoring the saved state -----------------------------------------------------


def test_start_restores_active_bans_with_their_remaining_time(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    with harness.state.transaction():
        harness.state.record_bans(
            [
                decision(ATTACKER, NOW - 100, 600),
                decision("198.51.100.9", NOW - 1000, 600),  # ended
                decision("203.0.113.0/24", NOW - 10, math.inf, "scans"),
            ]
        )
    harness.service.start(NOW)
    assert harness.backend.setups == 1
    (batch,) = harness.backend.ban_batches  # one batch, in no particular order
    assert sorted(batch, key=str) == [(n("203.0.113.0/24"), math.inf), (n(ATTACKER), 500.0)]
    assert set(harness.service.active) == {n(ATTACKER), n("203.0.113.0/24")}
    # Still banned: its lines make no new decision (they were logged before the ban bit).
    assert harness.feed(synacks(ATTACKER, NOW + 5), now=NOW + 5) == []
    harness.state.close()


def test_restart_restores_a_ban_and_its_mark(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    later = NOW + 60
    h.restart(later)
    assert h.backend.ban_batches == [[(n(ATTACKER), 540.0)]]
    assert h.feed(synacks(ATTACKER, later), now=later) == []
    rows = listed(h.service, later)
    assert [(r["target"], r["jail"]) for r in rows] == [(ATTACKER, "probes")]


def test_restart_in_bulk_marks_as_one_by_one(tmp_path: Path) -> None:
    """Past the scorers' caps (max_tracked 50 here, 1M bans in a flood), the bulk restore
    leaves every jail's marks, history and subnet counts as marking each ban did."""
    from blocker.active import target_of  # noqa: PLC0415
    from blocker.scoring import Scorer  # noqa: PLC0415

    config = CONFIG.replace("[jails.probes]", "max_tracked = 50\n[jails.probes]")
    harness = Harness(tmp_path, config)
    texts = [f"2001:db8:{i >> 8:x}:{i & 0xFF:x}::1" for i in range(300)] + ["203.0.113.0/24"]
    with harness.state.transaction():
        harness.state.record_bans(
            [
                decision(text, NOW - 300 + i, 3600 if i % 7 else math.inf)
                for i, text in enumerate(texts)
            ]
        )
    service = harness.restart(NOW)
    for runner in service.pipeline.runners:
        alone = Scorer(runner.jail.policy)
        alone.restore_history((n(t), at) for t, at in harness.state.history_rows(0))
        for key, until in service.active.keyed().items():
            alone.mark_banned(target_of(key), until)
        mine = runner.scorer
        assert list(mine.book.hosts.items()) == list(alone.book.hosts.items())
        assert mine.book.gate == alone.book.gate
        assert mine.book.dropped_permanent_hosts == alone.book.dropped_permanent_hosts
        assert list(mine.book.subnets.items()) == list(alone.book.subnets.items())
        assert mine.history.items() == alone.history.items()
        assert mine.escalation.items() == alone.escalation.items()
    assert len(service.pipeline.runners[0].scorer.book.hosts) < 300  # the cap did bite
    harness.state.close()


def test_restart_keeps_ban_time_growth(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    later = NOW + 700
    h.restart(later)
    decisions = h.feed(synacks(ATTACKER, later), now=later)
    assert [d.duration for d in decisions] == [1200]


def test_restart_keeps_an_admins_shortened_ban(h: Harness) -> None:
    ask(h.service, "ban", {"target": ATTACKER, "duration": "permanent"}, NOW)
    ask(h.service, "ban", {"target": ATTACKER, "duration": 3600}, NOW + 1)
    assert h.service.active[n(ATTACKER)].expires == NOW + 3601
    h.restart(NOW + 2)
    assert h.service.active[n(ATTACKER)].expires == NOW + 3601


# -- tick ---------------------------------------------------------------------------------


def test_tick_re_adds_active_bans_of_a_recreated_set(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW) + synacks(ATTACKER6, NOW))
    ask(h.service, "ban", {"target": "198.51.100.128/25", "duration": "permanent"}, NOW)
    h.backend.ban_batches.clear()
    h.backend.repairs = [Repair(sets_recreated=(4,))]
    h.service.tick(NOW + 100)
    assert h.backend.ban_batches == [[(n(ATTACKER), 500.0), (n("198.51.100.128/25"), math.inf)]]


def test_tick_without_repair_bans_nothing(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    h.backend.ban_batches.clear()
    h.backend.repairs = [Repair(rules_reinserted=(4, 6))]
    h.service.tick(NOW + 1)
    assert h.backend.ban_batches == []


def test_tick_does_not_re_add_expired_bans_and_drops_them(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    h.backend.ban_batches.clear()
    h.backend.repairs = [Repair(sets_recreated=(4, 6))]
    h.service.tick(NOW + 600)
    assert h.backend.ban_batches == []
    assert h.service.active == {}


def test_tick_survives_a_failing_check(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.backend.fail = "netlink says no"
    h.service.tick(NOW)
    assert "firewall check failed: netlink says no" in caplog.text


# -- cmd_ban ------------------------------------------------------------------------------


def test_ban_an_address_with_the_first_jails_ban_time(h: Harness) -> None:
    text = ask(h.service, "ban", {"target": ATTACKER}, NOW)
    assert text == f"banned {ATTACKER} for 600s (jail probes)"
    assert h.backend.ban_batches == [[(n(ATTACKER), 600.0)]]
    row = h.state.active(NOW)[0]
    assert (row.origin, row.jail, row.expires) == ("manual", "probes", NOW + 600)


def test_ban_a_network_in_another_jail_for_a_duration(h: Harness) -> None:
    text = ask(
        h.service, "ban", {"target": "203.0.113.0/24", "jail": "scans", "duration": "2h"}, NOW
    )
    assert text == "banned 203.0.113.0/24 for 7200s (jail scans)"
    assert h.backend.ban_batches == [[(n("203.0.113.0/24"), 7200.0)]]
    assert h.service.active[n("203.0.113.0/24")].jail == "scans"


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("7d", 604800.0), (1.5, 1.5)],
)
def test_ban_durations(h: Harness, given: object, seconds: float) -> None:
    ask(h.service, "ban", {"target": ATTACKER, "duration": given}, NOW)
    assert h.backend.ban_batches == [[(n(ATTACKER), seconds)]]


def test_permanent_ban(h: Harness) -> None:
    text = ask(h.service, "ban", {"target": ATTACKER6, "duration": "permanent"}, NOW)
    assert text == f"banned {ATTACKER6} permanently (jail probes)"
    assert h.backend.table == {n(ATTACKER6): math.inf}
    assert h.state.active(NOW + 1e9)[0].expires == math.inf
    assert listed(h.service, NOW)[0]["expires"] is None


def test_a_manual_ban_marks_the_target_in_every_jail(h: Harness) -> None:
    ask(h.service, "ban", {"target": ATTACKER, "jail": "scans"}, NOW)
    assert h.feed(synacks(ATTACKER, NOW + 5), now=NOW + 5) == []
    explained = ask(h.service, "explain", {"address": ATTACKER}, NOW + 5)
    banned_by = explained["banned_by"]
    assert isinstance(banned_by, list)
    assert [b["jail"] for b in banned_by] == ["scans"]


def test_a_manual_ban_replaces_a_longer_one(h: Harness) -> None:
    ask(h.service, "ban", {"target": ATTACKER, "duration": "1d"}, NOW)
    ask(h.service, "ban", {"target": ATTACKER, "duration": "1m"}, NOW)
    assert h.backend.table == {n(ATTACKER): 60.0}
    assert h.service.active[n(ATTACKER)].expires == NOW + 60


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "give an address or a network"),
        ({"target": ""}, "give an address or a network"),
        ({"target": 7}, "give an address or a network"),
        ({"target": "not-an-ip"}, "'not-an-ip' is not an address or network"),
        ({"target": "203.0.113.7/24"}, "has host bits set; did you mean 203.0.113.0/24?"),
        ({"target": "2001:db8::1/64"}, "has host bits set; did you mean 2001:db8::/64?"),
        ({"target": ATTACKER, "jail": "nope"}, "no jail 'nope' (jails: probes, scans)"),
        ({"target": ATTACKER, "jail": 3}, "no jail 3"),
        ({"target": ATTACKER, "duration": "soon"}, "duration: must be a duration like"),
        ({"target": ATTACKER, "duration": -5}, "duration: must be a finite, non-negative"),
        ({"target": ATTACKER, "duration": 0}, "duration must be longer than 0 s"),
        ({"target": ATTACKER, "duration": float("nan")}, "duration: must be a finite"),
        ({"target": ATTACKER, "duration": True}, "duration: must be a duration"),
    ],
)
def test_ban_errors(h: Harness, message: dict[str, object], error: str) -> None:
    with pytest.raises(RequestError) as info:
        ask(h.service, "ban", message, NOW)
    assert error in str(info.value)
    assert h.backend.ban_batches == []
    assert h.state.active(NOW) == []


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1", "loopback, link-local"),
        ("127.0.0.0/8", "loopback, link-local"),
        ("::1", "loopback, link-local"),
        ("169.254.169.254", "loopback, link-local"),
        ("fe80::1", "loopback, link-local"),
        ("224.0.0.1", "loopback, link-local"),
        ("ff02::1", "loopback, link-local"),
        ("0.0.0.0", "loopback, link-local"),
        ("::", "loopback, link-local"),
        ("255.255.255.255", "loopback, link-local"),
        ("0.0.0.0/0", "that is every address"),
        ("::/0", "that is every address"),
        ("126.0.0.0/7", "loopback, link-local"),  # ends inside 127/8
        (ALLOWED, "it is allowlisted (198.51.100.77 in jail probes)"),
        ("198.51.100.64/26", "it is allowlisted"),
        (HOST4, f"it holds this host's own address {HOST4}"),
        ("192.0.2.0/24", f"it holds this host's own address {HOST4}"),
        ("2001:db8::/32", f"it holds this host's own address {HOST6}"),
        (CONFIG_OWN, f"it holds this host's own address {CONFIG_OWN}"),
    ],
)
def test_ban_refusals(h: Harness, target: str, why: str) -> None:
    with pytest.raises(RequestError) as info:
        ask(h.service, "ban", {"target": target}, NOW)
    assert str(info.value).startswith("refusing to ban ")
    assert why in str(info.value)
    assert h.backend.ban_batches == []


@pytest.mark.parametrize("target", ["169.0.0.0/8", "128.0.0.0/2"])
def test_ban_refuses_networks_with_special_addresses_inside(h: Harness, target: str) -> None:
    with pytest.raises(RequestError, match="refusing to ban"):
        ask(h.service, "ban", {"target": target}, NOW)


def test_ban_with_a_huge_integer_duration_is_an_error(h: Harness) -> None:
    with pytest.raises(RequestError, match="duration"):
        ask(h.service, "ban", {"target": ATTACKER, "duration": 10**400}, NOW)


@pytest.mark.parametrize(
    ("target", "fail"), [("203.0.113.7", "ipset is gone"), ("::ffff:203.0.113.7", None)]
)
def test_ban_reports_a_ban_the_firewall_refused(h: Harness, target: str, fail: str | None) -> None:
    h.backend.fail = fail
    with pytest.raises(RequestError):
        ask(h.service, "ban", {"target": target}, NOW)


# -- cmd_unban ----------------------------------------------------------------------------


def test_unban_lifts_kernel_entry_state_and_score(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    # Four more stray packets before the unban: they must not count afterwards.
    h.feed(synacks(ATTACKER, NOW + 10, count=4), now=NOW + 10)
    text = ask(h.service, "unban", {"target": ATTACKER}, NOW + 20)
    assert text == f"unbanned {ATTACKER}"
    assert h.backend.unban_batches == [[n(ATTACKER)]]
    assert h.backend.table == {}
    assert h.service.active == {}
    assert h.state.active(NOW + 20) == []
    assert len(h.backend.ban_batches) == 1
    # ...and after a restart, nothing comes back.
    h.restart(NOW + 30)
    assert h.backend.ban_batches == []


def test_unban_resets_the_score_so_a_stray_packet_does_not_ban(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW, count=4))
    text = ask(h.service, "unban", {"target": ATTACKER}, NOW)
    assert text == f"unbanned {ATTACKER} (it was not banned)"
    assert h.feed([SourceLine(synack(ATTACKER, at=NOW + 1), None)], now=NOW + 1) == []
    assert h.backend.ban_batches == []
    # The control: without the unban, that fifth packet bans.
    h.feed(synacks("198.51.100.9", NOW, count=4))
    h.feed([SourceLine(synack("198.51.100.9", at=NOW + 1), None)], now=NOW + 1)
    assert h.backend.banned_targets == [n("198.51.100.9")]


def test_unban_tells_about_a_covering_subnet_ban(h: Harness) -> None:
    ask(h.service, "ban", {"target": "203.0.113.0/24"}, NOW)
    ask(h.service, "ban", {"target": ATTACKER}, NOW)
    text = ask(h.service, "unban", {"target": ATTACKER}, NOW + 1)
    assert text == f"unbanned {ATTACKER}; still covered by the ban of 203.0.113.0/24"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "give an address or a network"),
        ({"target": "203.0.113.7/24"}, "did you mean 203.0.113.0/24?"),
        ({"target": "127.0.0.1"}, "cannot unban 127.0.0.1"),
    ],
)
def test_unban_errors(h: Harness, message: dict[str, object], error: str) -> None:
    with pytest.raises(RequestError) as info:
        ask(h.service, "unban", message, NOW)
    assert error in str(info.value)


def test_unban_with_a_failing_firewall_keeps_the_ban(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    h.backend.fail = "netlink says no"
    with pytest.raises(RequestError, match=r"cannot unban 203\.0\.113\.66: netlink says no"):
        ask(h.service, "unban", {"target": ATTACKER}, NOW)
    assert set(h.service.active) == {n(ATTACKER)}
    assert len(h.state.active(NOW)) == 1


# -- cmd_list, cmd_explain, cmd_status ----------------------------------------------------


def test_list_comes_from_the_backend_with_the_jail_from_state(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    ask(
        h.service,
        "ban",
        {"target": "2001:db8:77::/48", "duration": "permanent", "jail": "scans"},
        NOW,
    )
    h.backend.table[n("198.51.100.200")] = 30.0  # someone else's entry in our set
    del h.backend.table[n(ATTACKER)]  # an admin deleted it with `ipset del`
    rows = listed(h.service, NOW)
    assert rows == [
        {
            "target": "198.51.100.200",
            "jail": "(not blocker's)",
            "origin": "",
            "expires": "2026-11-22T03:05:24+00:00",
            "remaining": 30,
            "reason": "",
        },
        {
            "target": "2001:db8:77::/48",
            "jail": "scans",
            "origin": "manual",
            "expires": None,
            "remaining": None,
            "reason": "manual ban (blockerctl)",
        },
    ]
    json.dumps(rows)


def test_list_with_a_failing_firewall_is_an_error(h: Harness) -> None:
    h.backend.fail = "no sets"
    with pytest.raises(RequestError, match="cannot read the kernel sets: no sets"):
        listed(h.service, NOW)


def test_list_on_the_socket_is_streamed_a_slice_at_a_time(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    others = [n(f"198.51.100.{i}") for i in range(100, 250)] + [
        n(f"2001:db8:99::{i:x}") for i in range(150)
    ]
    h.backend.table.update(dict.fromkeys(others, 30.0))
    streamed = ask(h.service, "list", {}, NOW)
    assert isinstance(streamed, Streamed)
    batches: list[list[dict[str, Any]]] = list(streamed.batches)  # type: ignore[arg-type]
    assert [len(batch) for batch in batches] == [LIST_SLICE, LIST_SLICE, 301 - 2 * LIST_SLICE]
    rows = {row["target"]: row["jail"] for batch in batches for row in batch}
    assert rows == {ATTACKER: "probes", **{network_text(t): "(not blocker's)" for t in others}}
    of_probes = ask(h.service, "list", {"jail": "probes"}, NOW).batches
    assert [row["target"] for batch in of_probes for row in batch] == [ATTACKER]
    h.backend.fail = "no sets"
    with pytest.raises(RequestError, match="cannot read the kernel sets: no sets"):
        ask(h.service, "list", {}, NOW)


def test_explain(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW, count=3))
    ask(h.service, "ban", {"target": "203.0.113.0/24"}, NOW)
    result = ask(h.service, "explain", {"address": f" {ATTACKER} "}, NOW)
    json.dumps(result)
    assert result["address"] == ATTACKER
    assert result["refusal"] is None
    assert result["banned_by"] == [
        {
            "target": "203.0.113.0/24",
            "jail": "probes",
            "reason": "manual ban (blockerctl)",
            "origin": "manual",
            "expires": "2026-11-22T03:14:54+00:00",
        }
    ]
    jails = result["jails"]
    assert isinstance(jails, dict)
    assert set(jails) == {"probes", "scans"}
    assert jails["probes"]["score"] == 3.0
    assert len(jails["probes"]["hits"]) == 3
    assert jails["probes"]["tier"] == "climbing"
    assert jails["scans"]["score"] == 0.0
    assert jails["scans"]["tier"] is None


def test_explain_an_allowlisted_address(h: Harness) -> None:
    result = ask(h.service, "explain", {"address": ALLOWED}, NOW)
    assert "allowlisted" in str(result["refusal"])
    assert result["jails"]["probes"]["never_banned_because"] == "allowlisted"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "explain needs an address"),
        ({"address": 5}, "explain needs an address"),
        ({"address": "203.0.113.0/24"}, "is not an IP address"),
        ({"address": "bogus"}, "'bogus' is not an IP address"),
    ],
)
def test_explain_errors(h: Harness, message: dict[str, object], error: str) -> None:
    with pytest.raises(RequestError) as info:
        ask(h.service, "explain", message, NOW)
    assert error in str(info.value)


def test_status_shape(tmp_path: Path) -> None:
    h = Harness(tmp_path, source_health=lambda: [{"source": f"kernlog:{LOG}", "state": "ok"}])
    h.service.start(NOW)
    h.feed(
        [
            *synacks(ATTACKER, NOW),
            SourceLine(syn("198.51.100.9", 22, NOW), None),
            SourceLine("noise", None),
        ]
    )
    status = ask(h.service, "status", {}, NOW + 12.34)
    json.dumps(status)
    assert status["uptime"] == 12.3
    assert (status["lines"], status["parsed"], status["unparsed"]) == (7, 6, 1)
    assert status["active_bans"] == 1
    assert status["sources"] == [{"source": f"kernlog:{LOG}", "state": "ok"}]
    assert status["firewall"] == {"backend": "FakeBackend"}
    jails = status["jails"]
    assert isinstance(jails, dict)
    probes = jails["probes"]
    assert probes["filters"] == ["unsolicited_synack", "outgoing_rst"]
    assert probes["source"] == f"kernlog:{LOG}"
    assert {k: v for k, v in probes["hits"].items() if v} == {"unsolicited_synack": 5}
    assert probes["active_bans"] == 1
    assert probes["scorer"]["bans"] == 1
    assert {k: v for k, v in jails["scans"]["hits"].items() if v} == {"syn_scan": 1}
    assert jails["scans"]["tracked"] == 1
    assert jails["scans"]["active_bans"] == 0
    # Issue 9's visibility: sources per tier, evictions, sources a minute, under flood.
    assert {
        k: jails["scans"]["scorer"][k]
        for k in (
            "tracked_admission",
            "tracked_climbing",
            "tracked_windows",
            "evicted",
            "sources_per_minute",
            "under_flood",
        )
    } == {
        "tracked_admission": 1,
        "tracked_climbing": 0,
        "tracked_windows": 0,
        "evicted": 0,
        "sources_per_minute": 1,
        "under_flood": False,
    }
    h.state.close()


def test_replies_have_the_shapes_commands_py_declares(tmp_path: Path) -> None:
    """The TypedDicts in commands.py are what blockerd sends: no key missing, none extra."""
    h = Harness(tmp_path, fleet_health=lambda: {"connected": True})
    h.service.start(NOW)
    h.feed(synacks(ATTACKER, NOW))
    status = ask(h.service, "status", {}, NOW)
    assert set(status) == set(StatusReply.__annotations__)
    assert set(status["jails"]["probes"]) == set(JailStatus.__annotations__)
    assert set(status["sets"]["ipv4"]) == set(SetStatus.__annotations__)
    assert set(status["firewall_checks"]) == set(FirewallChecks.__annotations__)
    [row] = listed(h.service, NOW)
    assert set(row) == set(ListedBan.__annotations__)
    explained = ask(h.service, "explain", {"address": ATTACKER}, NOW)
    assert set(explained) == set(ExplainReply.__annotations__)
    assert set(explained["banned_by"][0]) == set(CoveringBan.__annotations__)
    h.state.close()


def test_status_uses_the_backends_own_report(h: Harness) -> None:
    h.backend.status = lambda: {"sets": 2}  # type: ignore[attr-defined]
    assert ask(h.service, "status", {}, NOW)["firewall"] == {"sets": 2}


def test_handlers_table_reads_the_clock_per_call(h: Harness) -> None:
    times = iter([NOW + 1, NOW + 2])
    handlers = h.service.handlers(lambda: next(times))
    assert sorted(handlers) == ["ban", "explain", "list", "reload", "status", "unban"]
    assert handlers["status"]({"cmd": "status"})["uptime"] == 1.0  # type: ignore[index]
    assert handlers["status"]({"cmd": "status"})["uptime"] == 2.0  # type: ignore[index]


# -- reload -------------------------------------------------------------------------------


def test_reload_with_a_changed_config_keeps_bans_and_marks(h: Harness) -> None:
    h.feed(synacks(ATTACKER, NOW))
    ask(h.service, "ban", {"target": ATTACKER6, "duration": "1h"}, NOW)
    h.config_path.write_text(
        CONFIG.replace('ban_time = "1h"', 'ban_time = "2h"').replace(
            "[jails.scans]", '[jails.probes2]\nfilters = ["unsolicited_synack"]\n[jails.scans]'
        ),
        encoding="utf-8",
    )
    text = ask(h.service, "reload", {}, NOW + 1)
    assert text == f"reloaded {h.config_path}: probes, probes2, scans"
    assert [r.jail.name for r in h.service.pipeline.runners] == ["probes", "probes2", "scans"]
    assert h.service.pipeline.runner("scans").jail.policy.ban_time == 7200  # type: ignore[union-attr]
    assert set(h.service.active) == {n(ATTACKER), n(ATTACKER6)}
    assert h.backend.unban_batches == []
    # Marks are restored in every new scorer: the banned attackers' lines decide nothing.
    assert h.feed(synacks(ATTACKER, NOW + 5) + synacks(ATTACKER6, NOW + 5), now=NOW + 5) == []
    # ...and ban-time growth survives too.
    later = NOW + 700
    decisions = h.feed(synacks(ATTACKER, later), now=later)
    assert {(d.jail, d.duration) for d in decisions} == {("probes", 1200), ("probes2", 1200)}


def test_reload_with_a_broken_config_keeps_the_running_one(h: Harness) -> None:
    running = h.service.config
    h.config_path.write_text(CONFIG + "\n[jails.probes3]\nfilters = ['nope']\n", encoding="utf-8")
    with pytest.raises(RequestError) as info:
        ask(h.service, "reload", {}, NOW)
    message = str(info.value)
    assert message.startswith("reload refused, keeping the running configuration: ")
    assert f"{h.config_path}: jails.probes3.filters: unknown filter 'nope'" in message
    assert h.service.config is running
    h.config_path.write_text("this is [ not toml", encoding="utf-8")
    with pytest.raises(RequestError, match=r"\(syntax\)"):
        h.service.reload(NOW)
    h.feed(synacks(ATTACKER, NOW))
    assert h.backend.banned_targets == [n(ATTACKER)]


def test_reload_without_a_config_file(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    service = Service(harness.load(), harness.state, harness.backend)
    with pytest.raises(RequestError, match="no configuration file to reload"):
        ask(service, "reload", {}, NOW)
    harness.state.close()


def test_prune_forgets_old_bans_only(h: Harness) -> None:
    with h.state.transaction():
        h.state.record_bans(
            [decision(ATTACKER, NOW - 40 * 86400, 600), decision("198.51.100.9", NOW - 86400, 600)]
        )
        h.service.prune(NOW)
    assert [t for t, _ in h.state.history(0)] == [n("198.51.100.9")]
