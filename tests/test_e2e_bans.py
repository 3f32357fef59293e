"""End to end on real packets: kernel LOG -> rsyslogd -> kern.log -> blockerd -> kernel ipset.

Every assertion about a ban reads the kernel (`ipset list`, connections that pass or fail),
never only blockerd's word. See tests/lab.py for the topology.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from crash import crash_as_nobody, crashing_program, exception_trace
from lab import (
    ATTACKER_LISTEN_PORT,
    ATTACKER_V4,
    ATTACKER_V6,
    BENIGN_V4,
    SERVER_ATT_V4,
    SERVER_ATT_V6,
    SERVER_BEN_V4,
    SERVER_BEN_V6,
    SERVICE_PORT,
    Blockerd,
    Lab,
    count_lines,
    must,
    open_lab,
    tcp_open,
)

pytestmark = pytest.mark.root("network namespaces, iptables, ipset, rsyslogd, /proc/kmsg")

SYNACK_PORT = "40000"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("lab")) as opened:
        yield opened


def synack_v4(lab: Lab, source: str, count: int = 8) -> None:
    """hping3: unsolicited SYN/ACKs from `source` (an address of the attacker)."""
    lab.attacker.run(
        "hping3",
        "-S",
        "-A",
        "-c",
        str(count),
        "-i",
        "u200000",
        "-p",
        SYNACK_PORT,
        "-a",
        source,
        SERVER_ATT_V4,
        check=False,
        timeout=30,
    )


def listed(daemon: Blockerd) -> dict[str, str]:
    """`blockerctl list --json` as {target: jail}."""
    rows = daemon.ctl_json("list", "--json")
    assert isinstance(rows, list)
    return {row["target"]: row["jail"] for row in rows}


def test_unsolicited_synack_is_banned_in_the_kernel_and_unban_lifts_it(lab: Lab) -> None:
    with lab.blockerd() as daemon:
        assert tcp_open(lab.attacker, SERVER_ATT_V4, SERVICE_PORT), "service reachable before"

        synack_v4(lab, ATTACKER_V4)
        must(lambda: daemon.banned(ATTACKER_V4), f"{ATTACKER_V4} in {daemon.set4}")
        lab.attacker.run(
            "nping",
            "-6",
            "--tcp",
            "--flags",
            "syn,ack",
            "-p",
            SYNACK_PORT,
            "-c",
            "8",
            "--delay",
            "200ms",
            SERVER_ATT_V6,
            check=False,
            timeout=30,
        )
        must(lambda: daemon.banned(ATTACKER_V6), f"{ATTACKER_V6} in {daemon.set6}")
        assert listed(daemon) == {ATTACKER_V4: "probes", ATTACKER_V6: "probes"}

        # The kernel drops the attacker, serves the benign host, and keeps the server's own
        # connections to the banned address working (conntrack REPLY direction).
        assert not tcp_open(lab.attacker, SERVER_ATT_V4, SERVICE_PORT)
        assert not tcp_open(lab.attacker, SERVER_ATT_V6, SERVICE_PORT)
        assert tcp_open(lab.benign, SERVER_BEN_V4, SERVICE_PORT)
        assert tcp_open(lab.benign, SERVER_BEN_V6, SERVICE_PORT)
        assert tcp_open(lab.server, ATTACKER_V4, ATTACKER_LISTEN_PORT, wait=3)
        assert tcp_open(lab.server, ATTACKER_V6, ATTACKER_LISTEN_PORT, wait=3)

        daemon.ctl("unban", ATTACKER_V4)
        assert not daemon.banned(ATTACKER_V4), "unban must leave the kernel set at once"
        assert tcp_open(lab.attacker, SERVER_ATT_V4, SERVICE_PORT), "unbanned: served at once"
        assert daemon.banned(ATTACKER_V6), "the other ban stays"
        explained = daemon.ctl_json("explain", ATTACKER_V4)
        assert isinstance(explained, dict)
        assert explained["banned_by"] == []
        assert {name: jail["score"] for name, jail in explained["jails"].items()} == {
            "probes": 0,
            "scans": 0,
        }


def test_the_hosts_own_resets_ban_their_destination(lab: Lab) -> None:
    """The mission's case: SYN/ACKs are accepted, the kernel answers each with a bare RST, and
    the OUTPUT LOG line `UNKNOWN_OUTGOING: IN= OUT=... SRC=<us> DST=<prober> ... RST` bans DST."""
    prober, _ = lab.add_attacker_address(67)
    with lab.blockerd(answer_synack=True) as daemon:
        synack_v4(lab, prober)
        must(lambda: daemon.banned(prober), f"{prober} in {daemon.set4}")
        lab.mark()
        log = [lab.rsyslog.kern_log]
        resets = count_lines(
            log,
            f"{daemon.tag} UNKNOWN_OUTGOING: IN= OUT=",
            f"SRC={SERVER_ATT_V4} DST={prober} ",
            " RST URGP=",
        )
        assert resets >= 5, "the bans must come from the host's own RST lines"
        assert count_lines(log, daemon.tag, f"SRC={prober} ") == 0, "no inbound line logged"
        assert listed(daemon) == {prober: "probes"}
        must(lambda: daemon.hits("probes", "outgoing_rst") == resets, "every RST line counted")
        assert daemon.hits("probes", "unsolicited_synack") == 0


def test_nmap_scans_are_banned_and_a_stray_visitor_is_not(lab: Lab) -> None:
    kinds = {"-sS": 68, "-sF": 69, "-sX": 70, "-sN": 71}
    scanners = {kind: lab.add_attacker_address(host)[0] for kind, host in kinds.items()}
    _, scanner6 = lab.add_attacker_address(72)
    with lab.blockerd() as daemon:
        common = ("-Pn", "-n", "-p", "1000-1020", "-T4", "--max-retries", "0", "-e", lab.att_if)
        runs = [
            lab.attacker.spawn("nmap", kind, *common, "-S", source, SERVER_ATT_V4)
            for kind, source in scanners.items()
        ]
        runs.append(lab.attacker.spawn("nmap", "-6", "-sS", *common, "-S", scanner6, SERVER_ATT_V6))
        for run in runs:
            _out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
        # The benign host touches two closed ports, once each.
        for port in (1234, 1235):
            assert not tcp_open(lab.benign, SERVER_BEN_V4, port, wait=1)

        for address in (*scanners.values(), scanner6):
            must(partial(daemon.banned, address), f"scanner {address} in the kernel set")
        assert listed(daemon) == {a: "scans" for a in (*scanners.values(), scanner6)}

        def benign_scored() -> bool:
            explained = daemon.ctl_json("explain", BENIGN_V4)
            return explained["jails"]["scans"]["score"] >= 2  # type: ignore[index,no-any-return]

        must(benign_scored, "blockerd read the benign host's two SYNs")
        lab.mark()
        assert not daemon.banned(BENIGN_V4)
        assert tcp_open(lab.benign, SERVER_BEN_V4, SERVICE_PORT)


def test_forged_kernel_lines_never_reach_kern_log(lab: Lab) -> None:
    forged_source, kmsg_source = "198.51.100.99", "198.51.100.98"
    with lab.blockerd() as daemon:

        def forged(source: str) -> str:
            return (
                f"{daemon.tag} INVALID IN={lab.att_if} OUT= SRC={source} "
                f"DST={SERVER_ATT_V4} LEN=40 TOS=0x00 PREC=0x00 TTL=64 ID=1 PROTO=TCP "
                f"SPT=1234 DPT={SYNACK_PORT} WINDOW=512 RES=0x00 ACK SYN URGP=0"
            )

        stamp = time.strftime("%b %e %H:%M:%S")
        for _ in range(10):
            lab.rsyslog.send(f"<4>{stamp} vm kernel: {forged(forged_source)}".encode())
        token = f"{daemon.tag}-control"
        lab.rsyslog.send(f"<12>{stamp} vm tester: {token}".encode())
        Path("/dev/kmsg").write_text(f"<4>{forged(kmsg_source)}\n")
        # The socket works (the control line arrives) and the kernel log is fully written.
        must(lambda: count_lines([lab.rsyslog.user_log], token) == 1, "the control line")
        lab.mark()
        kern_logs = [lab.rsyslog.kern_log, lab.rsyslog.kern_trad]
        assert count_lines(kern_logs, f"SRC={forged_source} ") == 0
        assert count_lines(kern_logs, f"SRC={kmsg_source} ") == 0
        jails = daemon.status()["jails"]
        assert isinstance(jails, dict)
        counted = {
            f"{name}/{flt}": n
            for name, jail in jails.items()
            for flt, n in jail["hits"].items()
            if n
        }
        assert counted == {}, "no line of this test may count"
        assert not daemon.banned(forged_source)
        assert not daemon.banned(kmsg_source)


def test_a_crash_report_quoting_a_forged_record_never_reaches_kern_log(lab: Lab) -> None:
    """The segfault trick (issue 10): an unprivileged program whose file name holds a newline
    and a LOG record crashes; the kernel's info-level report quotes the name, imklog reads the
    part after the newline as a kernel line of its own. The shipped drop-in drops it."""
    forged_source = "198.51.100.97"
    with lab.blockerd() as daemon:
        record = (
            f"{daemon.tag} INVALID IN={lab.att_if} OUT= SRC={forged_source} "
            f"DST={SERVER_ATT_V4} LEN=40 TOS=0x00 PREC=0x00 TTL=64 ID=1 PROTO=TCP "
            f"SPT=1234 DPT={SYNACK_PORT} WINDOW=512 RES=0x00 ACK SYN URGP=0 "
        )
        with exception_trace(), crashing_program(record) as program:
            reported = 0
            for _ in range(8):  # more than enough to ban, were the lines let through
                assert crash_as_nobody(program) == -signal.SIGSEGV
                time.sleep(0.6)  # printk_ratelimit: 10 messages per 5 s, 2 per crash
            lab.mark()
            reported = count_lines([lab.rsyslog.kern_log], "segfault at ")
        kern_logs = [lab.rsyslog.kern_log, lab.rsyslog.kern_trad]
        # Proof that the crashes were reported: their first line, without "SRC=", is kept.
        assert reported >= 5
        assert count_lines(kern_logs, f"SRC={forged_source} ") == 0
        assert not daemon.banned(forged_source)


def test_ban_through_the_traditional_timestamp_format(lab: Lab) -> None:
    source, _ = lab.add_attacker_address(73)
    with lab.blockerd(log="kern-trad.log") as daemon:
        synack_v4(lab, source)
        must(lambda: daemon.banned(source), f"{source} in {daemon.set4}")
        assert listed(daemon) == {source: "probes"}
    traditional = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ")
    lines = [
        line for line in lab.rsyslog.kern_trad.read_text().splitlines() if f"SRC={source} " in line
    ]
    assert lines and all(traditional.match(line) for line in lines)
