"""Real nmap/psad captures (psad-scans) through `blockerctl test --json` with the shipped jails.

The corpus sits beside the repository (../shared/corpora/psad-scans) or where BLOCKER_CORPUS
points; without it these tests skip. Every file in it must have a row in EXPECTED: a new
capture is annotated before it counts as evidence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from loglines import blockerctl_test_json

REPO = Path(__file__).resolve().parents[1]
JAILS = str(REPO / "jails.toml")
CORPUS = Path(
    os.environ.get("BLOCKER_CORPUS")
    or Path(__file__).resolve().parents[2] / "shared/corpora/psad-scans"
)
SCANNER = "192.168.10.55"


class Verdict(NamedTuple):
    lines: int
    parsed: int
    hits: int
    bans: frozenset[tuple[str, str]]  # (target, jail)
    why: str


def scans(target: str) -> frozenset[tuple[str, str]]:
    return frozenset({(target, "scans")})


NONE: frozenset[tuple[str, str]] = frozenset()
EXPECTED: dict[str, Verdict] = {
    "ack_scan_1000_1150": Verdict(
        302, 302, 302, scans(SCANNER), "nmap -sA over 150 ports: 150 distinct ports in seconds"
    ),
    "fin_scan_1000_1150": Verdict(302, 302, 302, scans(SCANNER), "nmap -sF over 150 ports"),
    "null_scan_1000_1150": Verdict(
        303, 303, 302, scans(SCANNER), "nmap -sN; the host's own outgoing ping is no hit"
    ),
    "xmas_scan_1000_1150": Verdict(302, 302, 302, scans(SCANNER), "nmap -sX over 150 ports"),
    "udp_scan_1000_1150": Verdict(302, 302, 302, scans(SCANNER), "nmap -sU over 150 ports"),
    "proto_scan": Verdict(
        510, 510, 508, scans(SCANNER), "nmap -sO: 250+ protocol numbers (IGMP excluded)"
    ),
    "syn_scan_1000_1500": Verdict(1002, 1002, 1002, scans(SCANNER), "nmap -sS over 500 ports"),
    "syn_scan_1000_1500_multi_dst": Verdict(
        4008, 4008, 4008, scans(SCANNER), "nmap -sS against four hosts"
    ),
    "syn_sweep": Verdict(
        12, 12, 12, scans(SCANNER), "one port on 11 hosts: (dst, dport) pairs are distinct"
    ),
    "ipv6_tcp_connect_nmap_default_scan": Verdict(
        1009,
        1009,
        1005,
        scans("2001:db8:0:f101::2"),
        "nmap -6 -sT: expanded IPv6 source, compressed in the ban",
    ),
    "topera_ipv6_syn_scan_no_ip_opts": Verdict(
        1058,
        1058,
        1024,
        scans("2012:1234:1234::1"),
        "topera IPv6 SYN scan; link-local (fe80::) neighbour traffic is never banned",
    ),
    "topera_ipv6_syn_scan_with_ip_opts": Verdict(
        1046,
        1046,
        1025,
        scans("2012:1234:1234::1"),
        "same scan with extension-header OPT ( ) fields before PROTO",
    ),
    "syn_scan_1000_1500_localhost": Verdict(
        1002, 1002, 1002, NONE, "source 127.0.0.1 is special: never banned"
    ),
    "syn_scan_1000_1500_zeroip": Verdict(
        1002, 1002, 1002, NONE, "source 0.0.0.0 is special: never banned"
    ),
    "mirai_default_credentials_scan": Verdict(
        11, 11, 11, NONE, "11 SYNs to 2 ports: 2 + 9 * 0.25 = 4.25 < 5, by design"
    ),
    "ms_sql_server_sig_match": Verdict(2, 2, 2, NONE, "two SYNs to one port: a stray retry"),
    "reputation_scan": Verdict(
        7, 7, 7, NONE, "five sources with <= 2 packets each: strays never ban"
    ),
    "fwknop_spa_pkt": Verdict(1, 1, 1, NONE, "a single UDP knock packet"),
    "ipv4_valid_ping": Verdict(5, 5, 0, NONE, "ICMP echo requests are no offence"),
    "invalid_icmp_type_code": Verdict(5, 5, 0, NONE, "odd ICMP codes: no filter for ICMP"),
    "ipv4_igmp": Verdict(4, 4, 0, NONE, "IGMP to 224.0.0.1: multicast chatter"),
    "ipv6_ping_scan": Verdict(2, 2, 0, NONE, "neighbour solicitations to ff02:: multicast"),
    "ipv6_invalid_icmp6_type_code": Verdict(2, 2, 0, NONE, "ICMPv6 to multicast"),
    "ipv6_ms_sql_server_sig_match": Verdict(
        1, 0, 0, NONE, "a grep-prefixed line ('file:Mar 17 ...'): not a syslog header"
    ),
    "syslog_time_fmt1.log": Verdict(
        6, 6, 2, NONE, "RFC 3339 stamps; two single SYNs from two sources"
    ),
}

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"psad-scans corpus not found at {CORPUS}"
)


def corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".md")


def ban_set(result: dict[str, object]) -> frozenset[tuple[str, str]]:
    items = result["bans"]
    assert isinstance(items, list)
    return frozenset((ban["target"], ban["jail"]) for ban in items)


@needs_corpus
def test_every_corpus_file_is_annotated() -> None:
    assert sorted(set(corpus_files()) - set(EXPECTED)) == []
    assert sorted(set(EXPECTED) - set(corpus_files())) == []


@needs_corpus
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    expected = EXPECTED[name]
    result = blockerctl_test_json(CORPUS / name, capsys)
    assert (result["lines"], result["parsed"], result["hits"]) == (
        expected.lines,
        expected.parsed,
        expected.hits,
    ), expected.why
    assert ban_set(result) == expected.bans, expected.why
    assert not any(target.startswith("fe80:") for target, _ in ban_set(result))
    items = result["bans"]
    assert isinstance(items, list)
    for ban in items:
        assert ban["duration"] == 600.0  # a first offence: jails.toml's ban_time
        assert ban["filters"], ban


@needs_corpus
def test_blockerctl_as_a_subprocess(capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / "ipv6_tcp_connect_nmap_default_scan"
    done = subprocess.run(
        [sys.executable, "-m", "blocker.cli", "test", "--config", JAILS, "--json", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == blockerctl_test_json(path, capsys)
    assert ban_set(json.loads(done.stdout)) == EXPECTED[path.name].bans
