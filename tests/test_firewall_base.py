"""Input checks shared by every backend, and the dry-run backend (no root needed)."""

from __future__ import annotations

import logging
import math
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest

from blocker.firewall import Backend, DryRunBackend, InvalidBan, Repair
from blocker.firewall.base import MAX_TIMEOUT, check_bans, check_targets, kernel_timeout
from blocker.firewall.namespace import check_netns, command
from blocker.firewall.rules import InputRules, default_ip6tables, rule_spec

HOST = ip_network("198.51.100.7/32")
NET = ip_network("203.0.113.0/24")
HOST6 = ip_network("2001:db8::1/128")


def test_kernel_timeout_rounds_up_clamps_and_maps_inf_to_permanent() -> None:
    assert kernel_timeout(0.2) == 1
    assert kernel_timeout(600) == 600
    assert kernel_timeout(600.01) == 601
    assert kernel_timeout(10**9) == MAX_TIMEOUT == 2_147_483
    assert kernel_timeout(math.inf) == 0


@pytest.mark.parametrize("seconds", [0, -5, math.nan, -math.inf, True, "600", None])
def test_kernel_timeout_rejects_non_positive_or_non_numbers(seconds: object) -> None:
    with pytest.raises(InvalidBan):
        kernel_timeout(seconds)


def test_check_bans_keeps_last_value_of_a_repeated_target() -> None:
    assert check_bans([(HOST, 10), (NET, math.inf), (HOST, 20)]) == {HOST: 20, NET: 0}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("198.51.100.7", "not an IPv4Network"),
        (IPv4Address("198.51.100.7"), "not an IPv4Network"),
        (IPv4Network("0.0.0.0/0"), "whole address family"),
        (IPv6Network("::/0"), "whole address family"),
        (IPv4Network("127.0.0.1/32"), "loopback"),
        (IPv4Network("96.0.0.0/3"), "loopback"),
        (IPv6Network("::1/128"), "loopback"),
        (IPv6Network("::ffff:198.51.100.7/128"), "IPv4-mapped"),
    ],
)
def test_bad_targets_are_rejected_with_a_reason(bad: object, message: str) -> None:
    with pytest.raises(InvalidBan, match=message):
        check_bans([(HOST, 60), (bad, 60)])  # type: ignore[list-item]
    with pytest.raises(InvalidBan, match=message):
        check_targets([bad])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "entries", ["198.51.100.7", [HOST], [(HOST,)], [(HOST, 60, "x")], [[HOST, 60]], None]
)
def test_malformed_batches_are_rejected(entries: object) -> None:
    with pytest.raises(InvalidBan):
        check_bans(entries)  # type: ignore[arg-type]


def test_rejection_names_every_bad_item_and_its_index() -> None:
    with pytest.raises(InvalidBan) as caught:
        check_bans([(HOST, 60), ("x", 60), (NET, -1)])  # type: ignore[list-item]
    assert "#1:" in str(caught.value)
    assert "#2:" in str(caught.value)
    assert "nothing applied" in str(caught.value)


def test_repair_is_truthy_only_when_something_was_fixed() -> None:
    assert not Repair()
    assert Repair(sets_recreated=(4,))
    assert Repair(rules_reinserted=(6,))
    assert Repair(rules_removed=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dry_run_logs_one_line_per_verb_and_ages_its_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    backend: Backend = DryRunBackend(clock=clock)
    caplog.set_level(logging.INFO, logger="blocker.firewall.dryrun")
    backend.setup()
    backend.ban([(HOST, 60), (HOST6, math.inf), (NET, 10**9)])
    backend.unban([NET, IPv4Network("192.0.2.9/32")])
    lines = [r.getMessage() for r in caplog.records]
    assert "dry-run: ban 198.51.100.7 60 s" in lines
    assert "dry-run: ban 2001:db8::1 permanently" in lines
    assert f"dry-run: ban 203.0.113.0/24 {MAX_TIMEOUT} s" in lines
    assert "dry-run: unban 203.0.113.0/24" in lines
    assert "dry-run: unban 192.0.2.9" in lines
    assert sorted(backend.list(), key=str) == sorted([(HOST, 60.0), (HOST6, math.inf)], key=str)
    clock.now += 45
    assert dict(backend.list())[HOST] == 15.0
    clock.now += 15
    assert backend.list() == [(HOST6, math.inf)]
    backend.ban([(HOST6, 30)])  # a new ban replaces the old timeout, even a permanent one
    assert backend.list() == [(HOST6, 30.0)]
    assert backend.ensure() == Repair()
    backend.teardown()
    assert backend.list() == []


def test_dry_run_rejects_bad_input_and_keeps_its_table() -> None:
    backend = DryRunBackend(clock=FakeClock())
    backend.ban([(HOST, 60)])
    with pytest.raises(InvalidBan):
        backend.ban([(NET, 60), (IPv4Network("0.0.0.0/0"), 60)])
    assert backend.list() == [(HOST, 60.0)]


def test_rule_spec_reads_back_as_iptables_prints_it() -> None:
    assert " ".join(rule_spec("blocker4", "blocker")) == (
        "-m set --match-set blocker4 src -m conntrack"
        " --ctstate INVALID,NEW,RELATED,ESTABLISHED --ctdir ORIGINAL"
        " -m comment --comment blocker -j DROP"
    )


def test_ip6tables_follows_the_iptables_variant() -> None:
    assert default_ip6tables("iptables") == "ip6tables"
    assert default_ip6tables("iptables-legacy") == "ip6tables-legacy"
    assert default_ip6tables("/usr/sbin/iptables-nft") == "/usr/sbin/ip6tables-nft"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sets": {4: "-blocker4"}},
        {"sets": {4: "a" * 32}},
        {"sets": {4: "blocker 4"}},
        {"sets": {5: "blocker5"}},
        {"sets": {4: "blocker4"}, "iptables": "sh"},
        {"sets": {4: "blocker4"}, "iptables": "ip6tables"},
        {"sets": {6: "blocker6"}, "ip6tables": "iptables"},
        {"sets": {4: "blocker4"}, "netns": "../etc"},
        {"sets": {4: "blocker4"}, "comment": "two words"},
    ],
)
def test_input_rules_reject_unsafe_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        InputRules(**kwargs)  # type: ignore[arg-type]


def test_commands_run_inside_the_namespace_when_one_is_given() -> None:
    assert command(None, ["iptables", "-S"]) == ["iptables", "-S"]
    assert command("blk-1", ["iptables", "-S"]) == [
        "ip",
        "netns",
        "exec",
        "blk-1",
        "iptables",
        "-S",
    ]
    assert check_netns("blk-1a2b") == "blk-1a2b"
    for bad in ["", "a/b", "..", "-x", "a b"]:
        with pytest.raises(ValueError):
            check_netns(bad)
