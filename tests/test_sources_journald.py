"""journald source: the JSON parser and trust filter, a fake journalctl, a real journal file."""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.select_loop import collect, settle

from blocker.sources import open_source
from blocker.sources.base import MAX_LINE_BYTES, SourceError
from blocker.sources.journald import JournaldSource, parse_journal_line

LOG_LINE = "IN=veth0 OUT= MAC= SRC=192.0.2.2 DST=192.0.2.1 PROTO=TCP SPT=40000 DPT=22 SYN"


def entry(
    cursor: str, transport: str = "kernel", message: object = LOG_LINE, **extra: str
) -> bytes:
    fields: dict[str, object] = {
        "__CURSOR": cursor,
        "__REALTIME_TIMESTAMP": "1700000000250000",
        "_TRANSPORT": transport,
        "PRIORITY": "4",
        "MESSAGE": message,
        **extra,
    }
    return json.dumps(fields).encode()


# -- the parser (pure) ----------------------------------------------------------


def test_kernel_entry_is_accepted_with_time_and_cursor() -> None:
    parsed = parse_journal_line(entry("c1"))
    assert parsed.line is not None
    assert parsed.line.text == LOG_LINE
    assert parsed.line.time == 1700000000.25
    assert parsed.cursor == "c1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # A syslog client may claim to be "kernel"; only journald's own field counts.
        (entry("c", transport="syslog", SYSLOG_IDENTIFIER="kernel"), "_TRANSPORT is not kernel"),
        (entry("c", transport="journal", TRANSPORT="kernel"), "_TRANSPORT is not kernel"),
        (entry("c", transport="stdout"), "_TRANSPORT is not kernel"),
        (b'{"__CURSOR": "c", "MESSAGE": "no transport"}', "_TRANSPORT is not kernel"),
        (entry("c", message=None), "no readable MESSAGE"),
        (entry("c", message=[]), "no readable MESSAGE"),
        (entry("c", message=[300, 1]), "no readable MESSAGE"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'["a list"]', "not a JSON object"),
    ],
)
def test_rejected_entries_say_why(raw: bytes, reason: str) -> None:
    parsed = parse_journal_line(raw)
    assert parsed.line is None
    assert parsed.rejected == reason


def test_rejected_entry_still_moves_the_cursor() -> None:
    assert parse_journal_line(entry("c9", transport="syslog")).cursor == "c9"


def test_message_as_byte_list_is_decoded_with_replacement() -> None:
    parsed = parse_journal_line(entry("c", message=[*b"IN=eth0 ", 0xFF, *b" SRC"]))
    assert parsed.line is not None
    assert parsed.line.text == "IN=eth0 \ufffd SRC"


def test_message_with_several_values_uses_the_first() -> None:
    parsed = parse_journal_line(entry("c", message=["first", "second"]))
    assert parsed.line is not None
    assert parsed.line.text == "first"


def test_huge_message_is_cut() -> None:
    parsed = parse_journal_line(entry("c", message="x" * (2 * MAX_LINE_BYTES)))
    assert parsed.line is not None
    assert len(parsed.line.text) == MAX_LINE_BYTES


@pytest.mark.parametrize("stamp", ["soon", "\u00b2\u00b2\u00b2", "\u0663\u0663"])
def test_bad_timestamp_gives_no_time(stamp: str) -> None:
    # '\u00b2' passes str.isdigit() but not int(); Arabic-Indic digits are not journald's.
    parsed = parse_journal_line(entry("c", __REALTIME_TIMESTAMP=stamp))
    assert parsed.line is not None
    assert parsed.line.time is None


# -- a fake journalctl ----------------------------------------------------------

FAKE_JOURNALCTL = """
import json, signal, sys
record, data, mode = sys.argv[1:4]
with open(record, "a") as handle:
    handle.write(json.dumps(sys.argv[4:]) + "\\n")
with open(data, "rb") as handle:
    sys.stdout.buffer.write(handle.read())
sys.stdout.flush()
sys.stderr.write("fake journalctl: no more entries\\n")
sys.stderr.flush()
if mode == "stay":
    signal.pause()
sys.exit(3)
"""


class FakeJournal:
    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "fake_journalctl.py"
        self.script.write_text(FAKE_JOURNALCTL)
        self.record = tmp_path / "argv.jsonl"
        self.data = tmp_path / "entries.jsonl"

    def command(self, mode: str) -> list[str]:
        return [sys.executable, str(self.script), str(self.record), str(self.data), mode]

    def runs(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path) -> FakeJournal:
    return FakeJournal(tmp_path)


def test_reads_kernel_entries_only_and_remembers_the_cursor(fake: FakeJournal) -> None:
    fake.data.write_bytes(
        b"\n".join(
            [
                entry("c1"),
                entry("c2", transport="syslog", SYSLOG_IDENTIFIER="kernel"),
                b"garbage",
                entry("c3", message="second kernel line"),
            ]
        )
        + b"\n"
        + entry("c4")[:20]  # cut off mid-line: never delivered
    )
    source = JournaldSource(command=fake.command("stay"))
    try:
        lines = collect(source, 2) + settle(source)
        assert [line.text for line in lines] == [LOG_LINE, "second kernel line"]
        assert source.position() == {"cursor": "c3"}
        health = source.health()
        assert health["state"] == "ok"
        assert health["rejected"] == 2
        assert health["lines"] == 2
        assert fake.runs() == [
            [
                "--follow",
                "--output=json",
                "--no-pager",
                "--lines=0",
                "_TRANSPORT=kernel",
                "PRIORITY=4",
            ]
        ]
    finally:
        source.close()


def test_start_options(fake: FakeJournal) -> None:
    fake.data.write_bytes(b"")
    for kwargs, expected in [
        ({"from_start": True}, "--lines=all"),
        ({"start": {"cursor": "s=abc;i=5"}}, "--after-cursor=s=abc;i=5"),
        ({"start": {"cursor": "s=abc;i=5"}, "from_start": True}, "--after-cursor=s=abc;i=5"),
        # No usable cursor: started with --lines=0, restarted from that start's time.
        ({"start": {"cursor": 12}}, "--since=@"),
        ({"start": {"inode": 1, "offset": 2}}, "--since=@"),
    ]:
        source = JournaldSource(command=fake.command("stay"), **kwargs)  # type: ignore[arg-type]
        try:
            assert source.command_line()[-3].startswith(expected)
        finally:
            source.close()


def test_exited_journalctl_is_restarted_after_the_last_cursor(fake: FakeJournal) -> None:
    fake.data.write_bytes(entry("c1") + b"\n" + entry("c2") + b"\n")
    source = JournaldSource(command=fake.command("exit"), backoff_base=0.05)
    fileno = source.fileno()
    try:
        first = collect(source, 2)
        assert len(first) == 2
        # The restarted fake replays the same file; the cursor option is what matters here.
        again = collect(source, 2)
        assert len(again) == 2
        assert source.fileno() == fileno
        runs = fake.runs()
        assert runs[0][-3] == "--lines=0"
        assert runs[1][-3] == "--after-cursor=c2"
        health = source.health()
        assert int(str(health["restarts"])) >= 1
        assert (
            health["last_error"]
            == "journalctl exited with status 3: fake journalctl: no more entries"
        )
        assert health["state"] == "error"  # it keeps dying quickly: backoff is in force
        assert float(str(health["backoff_seconds"])) > 0
    finally:
        source.close()


def test_journalctl_restarted_before_any_entry_resumes_from_its_first_start(
    fake: FakeJournal,
) -> None:
    fake.data.write_bytes(b"")
    began = time.time()
    source = JournaldSource(command=fake.command("exit"), backoff_base=0.01)
    ended = time.time()
    try:
        deadline = time.monotonic() + 10
        while len(fake.runs()) < 2 and time.monotonic() < deadline:
            if select.select([source.fileno()], [], [], 0.5)[0]:
                assert source.read() == []
        first, second = fake.runs()[:2]
        assert first[-3] == "--lines=0"
        # Not --lines=0 again: what the kernel logged while journalctl was down would be lost.
        option, _, stamp = second[-3].partition("=@")
        assert option == "--since"
        assert began <= float(stamp) <= ended
    finally:
        source.close()


def test_backoff_grows_while_journalctl_keeps_failing(fake: FakeJournal) -> None:
    fake.data.write_bytes(b"")
    source = JournaldSource(command=fake.command("exit"), backoff_base=0.01)
    try:
        backoffs: list[float] = []
        deadline = time.monotonic() + 10
        while len(backoffs) < 3 and time.monotonic() < deadline:
            if select.select([source.fileno()], [], [], 1)[0]:
                assert source.read() == []
                restarts = source.health()["restarts"]
                if restarts != len(backoffs):
                    backoffs.append(float(str(source.health()["backoff_seconds"])))
        assert backoffs == [0.01, 0.02, 0.04]
    finally:
        source.close()


def test_close_ends_the_child(fake: FakeJournal) -> None:
    fake.data.write_bytes(b"")
    source = JournaldSource(command=fake.command("stay"))
    pid = source.health()["pid"]
    assert isinstance(pid, int)
    source.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by close()


def test_missing_journalctl_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot run"):
        JournaldSource(command=[str(tmp_path / "no-journalctl")])


def test_open_source_journald_kind(monkeypatch: pytest.MonkeyPatch, fake: FakeJournal) -> None:
    # open_source runs the real journalctl; put the fake first on PATH under that name.
    bin_dir = fake.script.parent / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "journalctl"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(fake.command("stay"))} "$@"\n')
    wrapper.chmod(0o755)
    fake.data.write_bytes(entry("c1") + b"\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    source = open_source("journald", "/nonexistent/kern.log", None)
    try:
        assert source.name == "journald"
        assert [line.text for line in collect(source, 1)] == [LOG_LINE]
    finally:
        source.close()


# -- real journalctl on a journal file made by systemd-journal-remote -----------

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def export_entry(fields: dict[str, bytes]) -> bytes:
    """One entry in the journal export format (binary-safe fields get a length prefix)."""
    out = b""
    for key, value in fields.items():
        if b"\n" in value or any(byte < 32 for byte in value):
            out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key.encode() + b"=" + value + b"\n"
    return out + b"\n"


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    if not os.path.exists(JOURNAL_REMOTE) or shutil.which("journalctl") is None:
        pytest.skip("needs journalctl and systemd-journal-remote (Debian: systemd-journal-remote)")
    boot = b"4d4c38e9199a40e5b869a5befe2adb1b"
    entries = [
        {"_TRANSPORT": b"kernel", "MESSAGE": LOG_LINE.encode(), "PRIORITY": b"4"},
        # What a user process can send: it may name itself "kernel", not set _TRANSPORT.
        {
            "_TRANSPORT": b"syslog",
            "SYSLOG_IDENTIFIER": b"kernel",
            "MESSAGE": b"IN=forged SRC=192.0.2.9",
        },
        {"_TRANSPORT": b"kernel", "MESSAGE": b"binary \xff\x02 kernel line", "PRIORITY": b"4"},
        # The kernel's own info-level messages, and the segfault trick: a file name holding a
        # newline and a LOG-like record, quoted by a kernel message (refused, not parsed).
        {"_TRANSPORT": b"kernel", "MESSAGE": LOG_LINE.encode(), "PRIORITY": b"6"},
        {
            "_TRANSPORT": b"kernel",
            "PRIORITY": b"4",
            "MESSAGE": b"a[1]: segfault at 0 ip 0 sp 0 error 4 in x\n" + LOG_LINE.encode(),
        },
        {"_TRANSPORT": b"kernel", "MESSAGE": b"third kernel line", "PRIORITY": b"4"},
    ]
    data = b"".join(
        export_entry(
            {
                "__CURSOR": f"s={n}".encode(),
                "__REALTIME_TIMESTAMP": str(1700000000000000 + n * 1000000).encode(),
                "__MONOTONIC_TIMESTAMP": str(1000 + n).encode(),
                "_BOOT_ID": boot,
                "_HOSTNAME": b"blocker-test",
                **fields,
            }
        )
        for n, fields in enumerate(entries)
    )
    path = tmp_path / "test.journal"
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(path), "-"], input=data, check=True, capture_output=True
    )
    return path


def test_real_journalctl_on_a_journal_file(journal_file: Path) -> None:
    command = ["journalctl", f"--file={journal_file}"]
    source = JournaldSource(from_start=True, command=command)
    try:
        lines = collect(source, 2) + settle(source)
        assert [line.text for line in lines] == [LOG_LINE, "third kernel line"]
        assert lines[0].time == 1700000000.0
        position = source.position()
        assert position is not None
    finally:
        source.close()

    # Resume after the second kernel entry: only the third comes again.
    listing = subprocess.run(
        [*command, "--output=json", "_TRANSPORT=kernel"], check=True, capture_output=True
    )
    cursors = [json.loads(line)["__CURSOR"] for line in listing.stdout.splitlines()]
    assert position == {"cursor": cursors[-1]}
    resumed = JournaldSource(start={"cursor": cursors[-2]}, command=command)
    try:
        assert [line.text for line in collect(resumed, 1) + settle(resumed)] == [
            "third kernel line"
        ]
    finally:
        resumed.close()


def test_real_journalctl_takes_the_restart_time_option(journal_file: Path) -> None:
    # The option a restart before any cursor uses. Kernel entries are at 1700000000, ...02-...05.
    def since(stamp: str) -> list[object]:
        listing = subprocess.run(
            [
                "journalctl",
                f"--file={journal_file}",
                "--output=json",
                f"--since=@{stamp}",
                "_TRANSPORT=kernel",
            ],
            check=True,
            capture_output=True,
        )
        return [json.loads(line)["MESSAGE"] for line in listing.stdout.splitlines()]

    assert len(since("1700000003.500000")) == 2
    assert since("1700000004.000001") == ["third kernel line"]  # to the microsecond
