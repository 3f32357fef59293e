"""`blockerctl test LOG [--config PATH] [--json]`: the production defaults, end to end.

jails.toml's promise: 5 unsolicited SYN/ACKs (or the host's bare RSTs answering them) within
a minute ban; 5 distinct closed ports within a minute ban; one or two stray packets never do.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from loglines import (
    BASE,
    HOST4,
    PROBER4,
    PROBER6,
    blockerctl_test_json,
    outgoing_rst,
    outgoing_syn,
    rfc3339,
    syn,
    synack,
    tcp_line,
)

from blocker.cli import main
from blocker.config import load_config
from blocker.replay import replay_file

REPO = Path(__file__).resolve().parents[1]
JAILS = str(REPO / "jails.toml")
INVALID = Path(__file__).resolve().parent / "configs" / "invalid"


def run_json(
    tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]
) -> dict[str, object]:
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return blockerctl_test_json(log, capsys)


def bans(result: dict[str, object]) -> list[tuple[str, str]]:
    items = result["bans"]
    assert isinstance(items, list)
    return [(ban["target"], ban["jail"]) for ban in items]


def test_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [synack(at=BASE + i) for i in range(5)]
    result = run_json(tmp_path, lines, capsys)
    assert (result["lines"], result["parsed"], result["hits"]) == (5, 5, 5)
    items = result["bans"]
    assert isinstance(items, list) and len(items) == 1
    ban = items[0]
    assert {"target", "jail", "at", "duration", "score", "filters"} <= set(ban)
    assert (ban["target"], ban["jail"], ban["duration"], ban["score"], ban["filters"]) == (
        PROBER4,
        "probes",
        600.0,
        5.0,
        ["unsolicited_synack"],
    )
    assert datetime.fromisoformat(ban["at"]).timestamp() == BASE + 4
    assert isinstance(ban["duration"], float | int)


@pytest.mark.parametrize("prober", [PROBER4, PROBER6])
def test_five_synacks_within_a_minute_ban(
    tmp_path: Path, prober: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [synack(prober, at=BASE + 14 * i, dpt=40000 + i) for i in range(5)]  # 56 s
    assert bans(run_json(tmp_path, lines, capsys)) == [(prober, "probes")]


def test_four_synacks_do_not_ban(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(tmp_path, [synack(at=BASE + i) for i in range(4)], capsys)
    assert (result["hits"], bans(result)) == (4, [])


def test_five_synacks_spread_over_more_than_a_minute_do_not_ban(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_json(tmp_path, [synack(at=BASE + 20 * i) for i in range(5)], capsys)
    assert (result["hits"], bans(result)) == (5, [])


@pytest.mark.parametrize(
    "lines",
    [
        [synack()],
        [synack(), synack(at=BASE + 1)],
        [outgoing_rst(), outgoing_rst(at=BASE + 1)],
        [syn(dpt=22), syn(dpt=23, at=BASE + 1)],
        [synack(), outgoing_rst(at=BASE + 1)],
    ],
    ids=["one-synack", "two-synacks", "two-rsts", "two-syns", "synack-and-rst"],
)
def test_one_or_two_stray_packets_never_ban(
    tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_json(tmp_path, lines, capsys)
    assert result["hits"] == len(lines)
    assert bans(result) == []


@pytest.mark.parametrize("prober", [PROBER4, PROBER6])
def test_scan_of_five_distinct_closed_ports_bans(
    tmp_path: Path, prober: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [syn(prober, dpt=port, at=BASE + i) for i, port in enumerate((21, 22, 23, 25, 80))]
    assert bans(run_json(tmp_path, lines, capsys)) == [(prober, "scans")]


def test_scan_of_four_ports_does_not_ban(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [syn(dpt=port, at=BASE + i) for i, port in enumerate((21, 22, 23, 25))]
    assert bans(run_json(tmp_path, lines, capsys)) == []


def test_repeats_of_one_port_weigh_little(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1 + 12 * 0.25 = 4 < 5: a client retrying one port is no scan.
    lines = [syn(dpt=22, at=BASE + i) for i in range(13)]
    result = run_json(tmp_path, lines, capsys)
    assert (result["hits"], bans(result)) == (13, [])


def test_the_missions_outgoing_rst_bans_the_prober_after_five(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    four = run_json(tmp_path, [outgoing_rst(at=BASE + i, spt=40000 + i) for i in range(4)], capsys)
    assert bans(four) == []
    five = run_json(tmp_path, [outgoing_rst(at=BASE + i, spt=40000 + i) for i in range(5)], capsys)
    assert bans(five) == [(PROBER4, "probes")]
    assert HOST4 not in json.dumps(five["bans"])
    items = five["bans"]
    assert isinstance(items, list) and items[0]["filters"] == ["outgoing_rst"]


def test_synacks_and_the_rsts_answering_them_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        synack(at=BASE),
        outgoing_rst(at=BASE + 0.001),
        synack(at=BASE + 1),
        outgoing_rst(at=BASE + 1.001),
        synack(at=BASE + 2),
    ]
    result = run_json(tmp_path, lines, capsys)
    assert bans(result) == [(PROBER4, "probes")]
    items = result["bans"]
    assert isinstance(items, list)
    assert sorted(items[0]["filters"]) == ["outgoing_rst", "unsolicited_synack"]


def test_the_hosts_own_connections_never_ban(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [outgoing_syn(at=BASE + i, dpt=port) for i, port in enumerate(range(20, 60))]
    result = run_json(tmp_path, lines, capsys)
    assert (result["parsed"], result["hits"], bans(result)) == (40, 0, [])


def test_accepted_and_forged_lines_never_ban(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accepted = [
        tcp_line(flags="ACK SYN", dpt=40000 + i, prefix="ACCEPT ", at=BASE + i) for i in range(10)
    ]
    forged = [
        synack(at=BASE + i).replace(" host kernel: ", " host sshd[1]: kernel: ") for i in range(10)
    ]
    result = run_json(tmp_path, accepted + forged, capsys)
    assert (result["parsed"], result["hits"], bans(result)) == (10, 0, [])


def test_traditional_timestamps_are_placed_by_the_files_mtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamps = [f"Nov 22 02:04:5{i} host kernel: [81795.10049{i}] " for i in range(5)]
    body = synack(at=None)
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{stamp}{body}\n" for stamp in stamps), encoding="utf-8")
    written = time.mktime((2027, 1, 3, 0, 0, 0, 0, 0, -1))  # early next year: last November
    os.utime(log, (written, written))
    assert main(["test", "--config", JAILS, "--json", str(log)]) == 0
    items = json.loads(capsys.readouterr().out)["bans"]
    assert [ban["target"] for ban in items] == [PROBER4]
    expected = time.mktime((2026, 11, 22, 2, 4, 54, 0, 0, -1))
    assert datetime.fromisoformat(items[0]["at"]).timestamp() == expected


def test_headerless_text_replays_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(tmp_path, [synack(at=None, dpt=40000 + i) for i in range(5)], capsys)
    assert bans(result) == [(PROBER4, "probes")]


def test_human_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{synack(at=BASE + i)}\nnoise\n" for i in range(5)), encoding="utf-8")
    assert main(["test", "--config", JAILS, str(log)]) == 0
    out = capsys.readouterr().out
    assert "lines 10, parsed 5, unparsed 5" in out
    assert "probes/unsolicited_synack" in out
    assert "bans 1:" in out
    assert PROBER4 in out and "10m" in out and rfc3339(BASE + 4)[:19] in out


def test_garbage_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "kern.log"
    good = "".join(f"{synack(at=BASE + i)}\n" for i in range(5)).encode()
    log.write_bytes(b"\x00\xff\xfe" * 1000 + b"\n" + good + b"\xc3\x28" * 600_000 + b"\x00")
    assert main(["test", "--config", JAILS, "--json", str(log)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["lines"], result["parsed"]) == (7, 5)
    assert bans(result) == [(PROBER4, "probes")]


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(tmp_path, [], capsys)
    assert (result["lines"], result["parsed"], result["hits"], result["bans"]) == (0, 0, 0, [])


def test_missing_log_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.log"
    assert main(["test", "--config", JAILS, "--json", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(missing) in err and "No such file" in err


def test_log_that_is_a_directory_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "--config", JAILS, str(tmp_path)]) == 1
    assert str(tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fixture", "key"),
    [
        ("unknown_jail_key.toml", "jails.probes.threshhold"),
        ("syntax_error.toml", "(syntax)"),
        ("bad_allow_cidr.toml", "jails.probes.allow"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, fixture: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "kern.log"
    log.write_text(synack() + "\n", encoding="utf-8")
    config = INVALID / fixture
    assert main(["test", "--config", str(config), "--json", str(log)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{config}: {key}: " in err


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "kern.log"
    log.write_text("", encoding="utf-8")
    assert main(["test", "--config", str(tmp_path / "nope.toml"), str(log)]) == 2
    assert "nope.toml: (file): cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("count", [0, 1, 7])
def test_json_spooled_bans_print_as_json_dumps_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count: int
) -> None:
    lines = [synack(at=BASE + i, src=f"198.51.100.{n + 1}") for n in range(count) for i in range(5)]
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{line}\n" for line in ["garbage", *lines]), encoding="utf-8")
    assert main(["test", "--config", JAILS, "--json", str(log)]) == 0
    expected = json.dumps(replay_file(log, load_config(Path(JAILS))).to_json()) + "\n"
    assert capsys.readouterr().out == expected
