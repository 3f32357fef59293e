"""End to end: blockerd keeps its rule, its bans and its lines through what admins and logrotate
do to it (flushed INPUT chains, SIGTERM and kill -9 restarts, rotation mid-attack).

Every assertion reads the kernel (`iptables -S`, `ipset list`) or the log files themselves.
See tests/lab.py for the topology.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from lab import (
    SERVER_ATT_V4,
    SERVICE_PORT,
    Blockerd,
    Lab,
    count_lines,
    input_rules,
    must,
    open_lab,
    tcp_open,
)

pytestmark = pytest.mark.root("network namespaces, iptables, ipset, rsyslogd, /proc/kmsg")

BAN_TIME = 600  # the shipped ban_time, "10m"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("lab")) as opened:
        yield opened


def synack_v4(lab: Lab, source: str, count: int = 8, interval: str = "u200000") -> None:
    lab.attacker.run(
        "hping3",
        "-S",
        "-A",
        "-c",
        str(count),
        "-i",
        interval,
        "-p",
        "40000",
        "-a",
        source,
        SERVER_ATT_V4,
        check=False,
        timeout=60,
    )


def rule_is_first(daemon: Blockerd, family: int) -> bool:
    return ours(daemon, family) == [1]


def ours(daemon: Blockerd, family: int) -> list[int]:
    """1-based positions of blockerd's rule in the server's INPUT chain."""
    name = daemon.set6 if family == 6 else daemon.set4
    return [
        n
        for n, rule in enumerate(input_rules(daemon.lab.server, family), start=1)
        if f"--match-set {name} src" in rule
    ]


def test_the_drop_rule_comes_back_first_and_once(lab: Lab) -> None:
    source, _ = lab.add_attacker_address(74)
    with lab.blockerd() as daemon:
        assert tcp_open(lab.attacker, SERVER_ATT_V4, SERVICE_PORT, source=source)
        synack_v4(lab, source)
        must(lambda: daemon.banned(source), f"{source} in {daemon.set4}")
        assert ours(daemon, 4) == [1] and ours(daemon, 6) == [1]

        tampering = [
            ("iptables", "-D", "INPUT", "1"),
            ("iptables", "-F", "INPUT"),
            ("iptables", "-I", "INPUT", "1", "-p", "icmp", "-j", "ACCEPT"),
            ("ip6tables", "-F", "INPUT"),
        ]
        for command in tampering:
            family = 6 if command[0] == "ip6tables" else 4
            lab.server.run(*command)
            must(
                partial(rule_is_first, daemon, family),
                f"rule #1 of INPUT (IPv{family}) again after {' '.join(command)}",
                timeout=5,
            )
        # Each change was seen and repaired once (the daemon's log), and stays repaired.
        must(
            lambda: daemon.stderr().count("firewall repaired") == len(tampering),
            "one repair per change",
        )
        time.sleep(2.5)  # two more check intervals: still exactly one copy, no more repairs
        assert daemon.stderr().count("firewall repaired") == len(tampering)
        assert ours(daemon, 4) == [1] and ours(daemon, 6) == [1]
        assert input_rules(lab.server, 4)[1] == "-A INPUT -p icmp -j ACCEPT"
        assert not tcp_open(lab.attacker, SERVER_ATT_V4, SERVICE_PORT, source=source), (
            "the banned attacker is dropped again"
        )
        assert daemon.banned(source)


def test_bans_survive_sigterm_and_kill9_with_their_timeout_running(lab: Lab) -> None:
    source, _ = lab.add_attacker_address(75)
    with lab.blockerd() as daemon:
        synack_v4(lab, source)
        must(lambda: daemon.banned(source), f"{source} in {daemon.set4}")
        start = time.monotonic()
        first = daemon.members(4)[source]
        assert BAN_TIME - 5 <= first <= BAN_TIME
        for sig in (signal.SIGTERM, signal.SIGKILL):
            before = daemon.members(4)[source]
            sampled = time.monotonic()
            code = daemon.stop(sig)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
            assert daemon.banned(source), "the kernel keeps the ban while blockerd is down"
            # Let whole seconds pass, so a refreshed timeout would show as a rise.
            time.sleep(max(0.0, sampled + 2.2 - time.monotonic()))
            gone: list[int] = []
            watcher = _watch_absence(daemon, source, gone)
            daemon.start()
            watcher.stop()
            after = daemon.members(4)[source]
            elapsed = time.monotonic() - start
            assert not gone, f"the ban left the kernel during the restart after {sig!r}"
            assert after <= before - 1, f"timeout reset upward: {before} -> {after}"
            assert after <= BAN_TIME - elapsed + 1, f"{after}s left after {elapsed:.1f}s"
            rows = daemon.ctl_json("list", "--json")
            assert isinstance(rows, list)
            assert [(r["target"], r["jail"]) for r in rows] == [(source, "probes")]


class _watch_absence:
    """Poll `ipset list` in a child process while blockerd restarts; note any absence."""

    def __init__(self, daemon: Blockerd, address: str, gone: list[int]) -> None:
        script = (
            f"while :; do ipset list {daemon.set4} | grep -q '^{address} ' || echo gone; "
            "sleep 0.02; done"
        )
        self.gone = gone
        self.process = subprocess.Popen(
            daemon.lab.server.argv("sh", "-c", script), stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> None:
        self.process.kill()
        out, _ = self.process.communicate(timeout=10)
        self.gone.extend(1 for line in out.splitlines() if line == "gone")


def _offender_lines(tag: str, address: str, count: int) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())
    return "".join(
        f"{stamp} vm kernel: {tag} INVALID IN=veth0 OUT= SRC={address} DST={SERVER_ATT_V4} "
        f"LEN=40 TOS=0x00 PREC=0x00 TTL=64 ID=1 PROTO=TCP SPT={1000 + n} DPT=40000 "
        "WINDOW=512 RES=0x00 ACK SYN URGP=0\n"
        for n in range(count)
    )


def test_kill9_during_a_burst_leaves_usable_state_and_loses_no_ban(lab: Lab) -> None:
    """Lines of 60 offenders (10 each) are appended to a log blockerd follows; kill -9 strikes
    midway. After a restart blockerd serves `status`, its sqlite file is intact, it reads on
    from the saved position (no line twice, none skipped) and every offender ends up banned."""
    with lab.blockerd() as daemon:
        burst = daemon.tmp / "burst.log"
        burst.write_text("")
        daemon.stop()
        daemon.log_path = burst
        daemon.start()
        offenders = [f"198.51.100.{host}" for host in range(100, 160)]
        lines = [
            line
            for address in offenders
            for line in _offender_lines(daemon.tag, address, 10).splitlines(keepends=True)
        ]
        assert daemon.process is not None
        pid = daemon.process.pid  # `ip netns exec` execs blockerd: same pid
        with burst.open("a") as log:
            for index in range(0, len(lines), 10):
                log.writelines(lines[index : index + 10])
                log.flush()
                if index == len(lines) // 2:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.002)
        assert daemon.stop() == -signal.SIGKILL
        state = daemon.tmp / "state" / "state.sqlite"
        with sqlite3.connect(state) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            saved = db.execute(
                "SELECT data FROM positions WHERE source = ?", (f"kernlog:{burst}",)
            ).fetchone()
        db.close()
        assert saved is not None, "blockerd saved no position before kill -9"
        offset = json.loads(saved[0])["offset"]
        done = burst.read_bytes()[:offset].count(b"\n")
        assert 0 < done < len(lines), f"kill -9 did not strike mid-burst ({done} lines read)"

        daemon.start()
        must(lambda: all(daemon.banned(a) for a in offenders), "all 60 offenders banned")
        must(
            lambda: daemon.hits("probes", "unsolicited_synack") >= len(lines) - done,
            "blockerd reads the rest",
        )
        assert daemon.hits("probes", "unsolicited_synack") == len(lines) - done


def test_lines_written_while_a_fresh_daemon_was_down_are_read(lab: Lab) -> None:
    """blockerd starts at the end of a log it never read; killed before its first line, it
    must resume there, not at the new end, or what was logged in between is never read."""
    with lab.blockerd() as daemon:
        daemon.stop()
        fresh = Blockerd(lab, daemon.tag, daemon.tmp / "fresh", daemon.tmp / "quiet.log")
        fresh.tmp.mkdir()
        fresh.log_path.write_text("")
        fresh.config.write_text(daemon.config.read_text())
        fresh.start()
        assert fresh.stop(signal.SIGKILL) == -signal.SIGKILL
        offender = "198.51.100.200"
        with fresh.log_path.open("a") as log:
            log.write(_offender_lines(daemon.tag, offender, 10))
        fresh.start()
        try:
            must(lambda: fresh.banned(offender), f"{offender} banned after the restart")
        finally:
            fresh.stop()


def test_rotation_mid_attack_loses_and_repeats_no_line(lab: Lab) -> None:
    source, _ = lab.add_attacker_address(76)
    rsyslog = lab.rsyslog
    kern_log = rsyslog.kern_log
    rotated, copied = Path(f"{kern_log}.1"), Path(f"{kern_log}.copy")
    with lab.blockerd(threshold=100000) as daemon:

        def source_health() -> dict[str, object]:
            sources = daemon.status()["sources"]
            assert isinstance(sources, list) and len(sources) == 1
            return sources[0]  # type: ignore[no-any-return]

        needles = (daemon.tag, f"SRC={source} ", " ACK SYN URGP=")
        stream = lab.attacker.spawn(
            "hping3",
            "-S",
            "-A",
            "-c",
            "300",
            "-i",
            "u10000",
            "-p",
            "40000",
            "-a",
            source,
            SERVER_ATT_V4,
        )
        must(lambda: count_lines([kern_log], *needles) >= 50, "the stream reaches kern.log")

        # (a) rename + HUP: rsyslog reopens kern.log by name.
        kern_log.rename(rotated)
        rsyslog.hup()
        must(lambda: source_health()["rotations"] == 1, "blockerd follows the new kern.log")

        # (b) copytruncate. rsyslogd is paused around cp + truncate only so that no line can
        # fall between the two (logrotate's own race, which would lose the line for everyone);
        # the kernel keeps logging meanwhile, and blockerd must notice the truncation.
        must(lambda: count_lines([kern_log], *needles) >= 50, "the stream reaches the new file")
        assert rsyslog.process is not None
        rsyslog.process.send_signal(signal.SIGSTOP)
        try:
            subprocess.run(["cp", str(kern_log), str(copied)], check=True, timeout=10)
            subprocess.run(["truncate", "-s", "0", str(kern_log)], check=True, timeout=10)
            must(lambda: source_health()["truncations"] == 1, "blockerd sees the truncation")
        finally:
            rsyslog.process.send_signal(signal.SIGCONT)

        stream.communicate(timeout=30)
        lab.mark()
        files = [rotated, copied, kern_log]
        written = count_lines(files, *needles)
        assert written == count_lines([rsyslog.kern_trad], *needles), "no line lost by rsyslog"
        assert written >= 250, f"only {written} lines: the stream did not flow"
        assert count_lines([copied], *needles) > 0 and count_lines([kern_log], *needles) > 0
        must(
            lambda: daemon.hits("probes", "unsolicited_synack") >= written,
            f"blockerd counts {written} lines",
        )
        time.sleep(1)  # a late duplicate would show up now
        assert daemon.hits("probes", "unsolicited_synack") == written
        assert not daemon.banned(source)
