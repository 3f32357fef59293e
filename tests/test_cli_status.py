"""`blockerctl status` for people (and --json for machines); `list --jail` and `--sort expiry`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from daemon_fixture import CONFIG, Blockerd, poll, running_blockerd
from loglines import synack

from blocker.cli import status_report

TWO_JAILS = (
    CONFIG
    + """
[jails.scans]
filters = ["syn_scan"]
"""
)


@pytest.fixture
def daemon() -> Iterator[Blockerd]:
    with running_blockerd(TWO_JAILS) as running:
        yield running


def test_status_summary_of_a_running_daemon(daemon: Blockerd) -> None:
    now = time.time()
    daemon.append([synack("203.0.113.66", at=now - 5 + i) for i in range(5)])
    daemon.wait_ban("203.0.113.66")
    poll(lambda: "lines 5:" in daemon.ctl("status").out, what="the lines in the status")
    out = daemon.ctl("status").out
    lines = out.splitlines()
    assert lines[0].startswith("blockerd ") and ", up " in lines[0]
    assert "lines 5: parsed 5, unparsed 0 (malformed 0)" in out
    probes = lines.index(next(line for line in lines if line.startswith("  probes")))
    assert "hits 5 (unsolicited_synack 5)" in lines[probes]
    assert "active bans 1, last ban 20" in lines[probes + 1]
    assert "last ban never" in out  # the scans jail
    assert f"kernlog:{daemon.log}: following, 0 bytes behind, last line" in out
    assert "backend DryRunBackend: no kernel rules" in out
    assert "ipv4 set blocker4: 1 entries" in out
    assert "checks: ok, failures 0, repairs none" in out
    machine = json.loads(daemon.ctl("status", "--json").out)
    assert machine["jails"]["probes"]["active_bans"] == 1
    assert machine["sets"]["ipv4"] == {"name": "blocker4", "entries": 1, "capacity": None}
    assert machine["sources"][0]["status"] == "following"


def test_a_log_not_there_yet_is_waited_for(daemon: Blockerd) -> None:
    assert not daemon.log.exists()
    assert f"kernlog:{daemon.log}: waiting" in daemon.ctl("status").out


def test_list_by_jail_and_by_expiry(daemon: Blockerd) -> None:
    assert daemon.ctl("ban", "198.51.100.1", "--for", "1h", "--jail", "probes").code == 0
    assert daemon.ctl("ban", "198.51.100.2", "--for", "10m", "--jail", "scans").code == 0
    assert daemon.ctl("ban", "198.51.100.3", "--for", "permanent", "--jail", "scans").code == 0
    assert daemon.ctl("ban", "2001:db8::7", "--for", "5m", "--jail", "probes").code == 0

    def targets(*args: str) -> list[str]:
        result = daemon.ctl("list", "--json", *args)
        assert result.code == 0, result
        return [row["target"] for row in json.loads(result.out)]

    assert targets() == ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::7"]
    assert targets("--sort", "expiry") == [
        "2001:db8::7",
        "198.51.100.2",
        "198.51.100.1",
        "198.51.100.3",
    ]
    assert targets("--jail", "scans") == ["198.51.100.2", "198.51.100.3"]
    assert targets("--jail", "scans", "--sort", "expiry") == ["198.51.100.2", "198.51.100.3"]
    bad = daemon.ctl("list", "--jail", "nope")
    assert bad.code == 1 and "no jail 'nope'" in bad.err
    human = daemon.ctl("list", "--sort", "expiry").out.splitlines()
    assert human[0].split() == ["TARGET", "JAIL", "ORIGIN", "EXPIRES"]
    assert human[1].split()[0] == "2001:db8::7"
    assert human[-1].split() == ["198.51.100.3", "scans", "manual", "never"]


def test_status_report_flags_a_missing_rule_and_a_full_set() -> None:
    status = {
        "version": "0.1.0",
        "uptime": 90061.0,
        "lines": 10,
        "parsed": 8,
        "unparsed": 2,
        "malformed": 1,
        "active_bans": 3,
        "jails": {
            "probes": {
                "hits": {"unsolicited_synack": 7, "outgoing_rst": 1},
                "tracked": 2,
                "active_bans": 3,
                "last_ban": "2026-11-22T02:04:58",
            }
        },
        "sources": [
            {
                "source": "kernlog:/var/log/kern.log",
                "status": "lagging",
                "behind_bytes": 5000,
                "last_line_age": 0.5,
            },
            {
                "source": "journald:",
                "state": "error",
                "status": "error",
                "error": "journalctl not found",
            },
        ],
        "firewall": {
            "rules": {
                "ipv4": {"in_place": True, "positions": [1], "variant": "nf_tables"},
                "ipv6": {"in_place": False, "positions": [], "variant": "nf_tables"},
            }
        },
        "sets": {
            "ipv4": {"name": "blocker4", "entries": 1000, "capacity": 1024},
            "ipv6": {"name": "blocker6", "entries": 0, "capacity": 1024},
        },
        "firewall_checks": {"ok": True, "failures": 0, "repairs": {"rule": 2}},
    }
    out = status_report(status)
    assert out.splitlines()[0] == "blockerd 0.1.0, up 1d 1h"
    assert "hits 8 (unsolicited_synack 7, outgoing_rst 1)" in out
    assert "kernlog:/var/log/kern.log: lagging, 5000 bytes behind, last line 0.5s ago" in out
    assert "journald:: error (journalctl not found)" in out
    assert "ipv4 rule: in place (INPUT position 1, nf_tables)" in out
    assert "ipv6 rule: MISSING (INPUT position -, nf_tables)" in out
    assert "ipv4 set blocker4: 1000/1024 (97.7% full)" in out
    assert "checks: ok, failures 0, repairs rule 2" in out
