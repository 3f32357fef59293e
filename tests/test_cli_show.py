"""`blockerctl test --show {hits,bans,unparsed,malformed,all}`: what became of each line.

The --show path runs each line alone through the reference path (parse, Matcher.match,
Scorer.feed); its summary must equal the fast path's on every corpus we have.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loglines import BASE, PROBER4, synack

from blocker.cli import main
from blocker.config import load_config
from blocker.replay import replay_file
from blocker.verdicts import replay_file_verdicts

REPO = Path(__file__).resolve().parents[1]
JAILS = str(REPO / "jails.toml")
CORPUS = REPO.parent / "shared" / "corpora" / "psad-scans"  # as tests/test_corpus.py
SAMPLES = sorted((REPO / "tests" / "samples").glob("*.log")) + sorted(
    p for p in (CORPUS.iterdir() if CORPUS.is_dir() else ()) if p.name != "SOURCE.md"
)

LINES = [
    *(synack(at=BASE + i) for i in range(5)),  # 1-5: hits, the 5th bans
    "Nov 22 02:04:54 host sshd[1]: Accepted publickey for root",  # 6: not a LOG record
    synack(at=BASE + 6).split("PROTO=")[0],  # 7: cut before PROTO=
    synack(at=BASE + 6).replace(f"SRC={PROBER4}", "SRC=203.0.113.666"),  # 8: bad address
    synack(at=BASE + 6).replace(" kernel: ", " logger: "),  # 9: forged by a user process
    synack(at=BASE + 7),  # 10: already banned
    synack("127.0.0.1", at=BASE + 7),  # 11: loopback: never banned
    synack(at=BASE + 8).replace("ACK SYN URGP", "ACK BOGUS URGP"),  # 12: mangled flags
]


def show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], choice: str, lines: list[str] = LINES
) -> list[dict[str, object]]:
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    assert main(["test", "--config", JAILS, "--json", "--show", choice, str(log)]) == 0
    return [json.loads(row) for row in capsys.readouterr().out.splitlines()]


def test_every_line_gets_its_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = show(tmp_path, capsys, "all")
    summary = rows.pop()["summary"]
    verdicts = [(row["line"], row["verdict"]) for row in rows]
    assert verdicts == [
        (1, "hit"),
        (2, "hit"),
        (3, "hit"),
        (4, "hit"),
        (5, "hit"),
        (5, "ban"),
        (6, "not_log"),
        (7, "malformed"),
        (8, "malformed"),
        (9, "malformed"),
        (10, "ignored"),
        (11, "ignored"),
        (12, "malformed"),
    ]
    by_line = {(row["line"], row["verdict"]): row for row in rows}
    first = by_line[1, "hit"]
    assert (first["jail"], first["filter"], first["offender"]) == (
        "probes",
        "unsolicited_synack",
        PROBER4,
    )
    assert [by_line[n, "hit"]["score"] for n in range(1, 6)] == [1, 2, 3, 4, 5]
    fields = first["fields"]
    assert isinstance(fields, dict)
    assert (fields["src"], fields["proto"], fields["flags"], fields["dpt"]) == (
        PROBER4,
        "TCP",
        ["ACK", "SYN"],
        40000,
    )
    ban = by_line[5, "ban"]
    assert (ban["target"], ban["jail"], ban["duration"]) == (PROBER4, "probes", 600.0)
    assert "before PROTO=" in str(by_line[7, "malformed"]["reason"])
    assert by_line[8, "malformed"]["reason"] == "SRC=203.0.113.666 is not an IP address"
    assert "not the kernel's" in str(by_line[9, "malformed"]["reason"])
    assert by_line[10, "ignored"]["reason"] == "already banned"
    assert by_line[11, "ignored"]["reason"] == "never banned (special)"
    assert "flags" in str(by_line[12, "malformed"]["reason"])
    assert isinstance(summary, dict)
    assert (summary["lines"], summary["parsed"], summary["malformed"]) == (12, 7, 4)


@pytest.mark.parametrize(
    ("choice", "wanted"),
    [
        ("hits", {"hit", "ban"}),
        ("bans", {"ban"}),
        ("malformed", {"malformed"}),
        ("unparsed", {"malformed", "not_log"}),
    ],
)
def test_show_choices_pick_their_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], choice: str, wanted: set[str]
) -> None:
    rows = show(tmp_path, capsys, choice)
    assert "summary" in rows.pop()
    assert {row["verdict"] for row in rows} == wanted


def test_text_output_names_line_verdict_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "kern.log"
    log.write_text("".join(f"{line}\n" for line in LINES), encoding="utf-8")
    assert main(["test", "--config", JAILS, "--show", "all", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["1", "hit", "probes/unsolicited_synack", PROBER4, "score"]
    assert any(line.split()[:3] == ["5", "ban", PROBER4] for line in out)
    assert any(line.split()[:2] == ["6", "not_log"] for line in out)
    assert any("lines 12, parsed 7" in line for line in out)  # the usual summary follows


def test_no_filter_matched_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outgoing = synack(at=BASE).replace("IN=eth0 OUT=", "IN= OUT=eth0")
    rows = show(tmp_path, capsys, "all", [outgoing])
    assert rows[0]["verdict"] == "ignored"
    assert rows[0]["reason"] == "no filter of any jail matches this packet"


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_show_path_agrees_with_the_fast_path(sample: Path) -> None:
    config = load_config(REPO / "jails.toml")
    fast = replay_file(sample, config).to_json()
    slow = replay_file_verdicts(sample, config, lambda _verdicts: None).to_json()
    assert slow == fast


def test_agreement_on_garbage_and_cut_records(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    data = "".join(f"{line}\n" for line in LINES).encode()
    data += bytes(range(256)) * 3 + b"\n" + synack().encode()[:150] + b"\nIN=eth0 OUT=\n"
    data += synack(at=BASE + 30).encode()  # no final newline
    log.write_bytes(data)
    config = load_config(REPO / "jails.toml")
    fast = replay_file(log, config).to_json()
    slow = replay_file_verdicts(log, config, lambda _verdicts: None).to_json()
    assert slow == fast
    assert fast["malformed"] == 6  # LINES' 4, the cut record and the bare header
