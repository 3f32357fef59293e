"""Text sources accept only what a netfilter LOG rule could have printed (issue 10, part 2).

Unit tests of each gate: the syslog header a file line must carry, the LOG level and the
control characters kmsg and journald records are checked for, the `log_level` key, and the
rsyslog drop-in rule blockerd looks for. The real kernel, journald and rsyslogd are in
test_forgery_real.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loglines import BASE, PROBER4, rfc3339, synack

from blocker.config import load_config
from blocker.netfilter import KernelLogParser
from blocker.pipeline import Pipeline
from blocker.sources.base import SourceLine
from blocker.sources.journald import parse_journal_line
from blocker.sources.kmsg import RecordFilter
from blocker.sources.rsyslog_guard import guard_rule, holds_guard, unguarded_reason

REPO = Path(__file__).resolve().parents[1]
DROPIN = REPO / "packaging" / "rsyslog" / "00-blocker-kernel-only.conf"
NOW = BASE + 60
BODY = synack(PROBER4, at=None)  # "UNKNOWN_INCOMING: IN=eth0 ... ACK SYN URGP=0 "
# What a crash report looks like when the crashing file's name holds a newline and a record.
SEGFAULT = f"a.out[4242]: segfault at 0 ip 0000 sp 0000 error 4 in x\nRTP {BODY}"


# -- kern.log: only lines with a `kernel:` syslog header ----------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"host myapp: DROP {BODY}",  # a user's tag, no recognised timestamp
        f"[81795.100496] {BODY}",  # dmesg style: headerless
        BODY,  # bare record text
        f"{rfc3339(BASE)} host myapp: {BODY}",  # a user's tag with a timestamp
        f"kernel: {BODY}",  # the tag without a timestamp
    ],
    ids=["tag-no-timestamp", "dmesg", "bare", "user-tag", "tag-only"],
)
def test_a_file_line_needs_a_kernel_syslog_header(line: str) -> None:
    parser = KernelLogParser()
    assert parser.scan(line + "\n", NOW, headerless=False) == []
    assert parser.take_rejected() == 1
    # Unchanged for the sources that vouch for the kernel themselves (and for replay).
    if not line.startswith(rfc3339(BASE)):
        assert len(parser.scan(line + "\n", NOW, source_time=NOW)) == 1


def test_a_file_line_with_a_kernel_header_still_parses() -> None:
    text = f"{rfc3339(BASE)} host kernel: [81795.100496] {BODY}\n"
    assert len(KernelLogParser().scan(text, NOW, headerless=False)) == 1
    cut = f"{rfc3339(BASE)} host kernel: {BODY[:40]}\nhost myapp: {BODY}\n"  # cut-line path
    parser = KernelLogParser()
    # The cut record comes back with PROTO= missing, for the caller to count as malformed
    # (issue 11); the forged line never comes back.
    records = parser.scan(cut, NOW, headerless=False)
    assert [parser.packet(record) for record in records] == [None]
    assert parser.take_rejected() == 1


# -- /dev/kmsg ----------------------------------------------------------------------------


def kmsg(level: int, message: str, seq: int = 1) -> bytes:
    return f"{level},{seq},1000,-;{message}\n".encode()


def test_kmsg_takes_records_at_the_log_level_only() -> None:
    records = RecordFilter(boot_time=0.0)
    assert records.take(kmsg(4, BODY, 1)) == SourceLine(BODY, 0.001)
    assert records.take(kmsg(6, BODY, 2)) is None  # the kernel's info level (a segfault's)
    assert records.take(kmsg(3, BODY, 3)) is None
    assert records.wrong_level == 2
    other = RecordFilter(boot_time=0.0, levels=frozenset((6,)))
    assert other.take(kmsg(6, BODY, 1)) is not None
    assert other.take(kmsg(4, BODY, 2)) is None


def test_kmsg_refuses_a_record_that_held_a_newline() -> None:
    # /dev/kmsg escapes a newline inside a record as \x0a (and a backslash as \x5c).
    escaped = SEGFAULT.replace("\n", "\\x0a")
    records = RecordFilter(boot_time=0.0)
    assert records.take(kmsg(4, escaped, 1)) is None
    assert records.take(kmsg(4, "tab\\x09" + BODY, 2)) is None
    assert records.take(kmsg(4, "del\\x7f" + BODY, 3)) is None
    assert records.control_chars == 3
    # An escaped backslash or a UTF-8 byte is no control character.
    assert records.take(kmsg(4, "a\\x5cx0a " + BODY, 4)) is not None
    assert records.take(kmsg(4, "caf\\xc3\\xa9 " + BODY, 5)) is not None


# -- journald -----------------------------------------------------------------------------


def journal(message: object, priority: object = "4", transport: str = "kernel") -> bytes:
    fields: dict[str, object] = {"__CURSOR": "c", "_TRANSPORT": transport, "MESSAGE": message}
    if priority is not None:
        fields["PRIORITY"] = priority
    return json.dumps(fields).encode()


def test_journald_takes_kernel_entries_at_the_log_level_only() -> None:
    assert parse_journal_line(journal(BODY)).line is not None
    for priority, why in [
        ("6", "PRIORITY 6 is not the LOG level"),
        (None, "no PRIORITY"),
        ("x", "no PRIORITY"),
        ("", "no PRIORITY"),
    ]:
        entry = parse_journal_line(journal(BODY, priority))
        assert (entry.line, entry.rejected) == (None, why)
    assert parse_journal_line(journal(BODY, "6"), frozenset((6,))).line is not None


@pytest.mark.parametrize(
    "message",
    [SEGFAULT, list(SEGFAULT.encode()), "a\rb " + BODY, "\x00" + BODY, BODY + "\ttail"],
    ids=["newline", "newline-bytes", "cr", "nul", "tab"],
)
def test_journald_refuses_a_message_with_a_newline_or_control_character(message: object) -> None:
    entry = parse_journal_line(journal(message))
    assert entry.line is None
    assert entry.rejected == "MESSAGE holds a newline or control character"


def test_journald_trailing_newline_is_not_an_embedded_one() -> None:
    assert parse_journal_line(journal(BODY + "\n")).line == SourceLine(BODY.rstrip("\n"), None)


# -- log_level in the configuration -------------------------------------------------------


def test_log_level_by_name_or_number(tmp_path: Path) -> None:
    base = f'filters_dir = "{REPO / "filters"}"\n[jails.probes]\nfilters = ["unsolicited_synack"]\n'
    for value, level in [('"warning"', 4), ('"info"', 6), ("0", 0), ("7", 7)]:
        path = tmp_path / "jails.toml"
        path.write_text(base + f"log_level = {value}\n")
        assert load_config(path).jails[0].log_level == level
    path.write_text(base)
    assert load_config(path).jails[0].log_level == 4


# -- the rsyslog drop-in ------------------------------------------------------------------


def test_the_shipped_drop_in_holds_the_guard_blockerd_looks_for() -> None:
    text = DROPIN.read_text()
    assert holds_guard(text, 4)
    assert not holds_guard(text, 6)
    assert not holds_guard("# " + guard_rule(4), 4)  # commented out guards nothing


def test_unguarded_reason(tmp_path: Path) -> None:
    conf = tmp_path / "rsyslog.conf"
    dropins = tmp_path / "rsyslog.d"
    dropins.mkdir()
    args = {"conf": str(conf), "dropin_dir": str(dropins)}
    four = frozenset((4,))
    assert "cannot read" in (unguarded_reason(four, **args) or "")
    conf.write_text('module(load="imklog")\nkern.* -/var/log/kern.log\n')
    assert "does not include" in (unguarded_reason(four, **args) or "")
    conf.write_text("$IncludeConfig /etc/rsyslog.d/*.conf\nkern.* -/var/log/kern.log\n")
    assert "no file in" in (unguarded_reason(four, **args) or "")
    (dropins / "00-blocker-kernel-only.conf").write_text(DROPIN.read_text())
    assert unguarded_reason(four, **args) is None
    assert "no file in" in (unguarded_reason(frozenset((6,)), **args) or "")
    assert "several log levels" in (unguarded_reason(frozenset((4, 6)), **args) or "")
    conf.write_text('include(file="/etc/rsyslog.d/*.conf")\n')
    assert unguarded_reason(four, **args) is None


def test_headerless_kern_log_lines_never_ban_but_kmsg_lines_do() -> None:
    config = load_config(REPO / "jails.toml")
    lines = [f"host myapp: DROP {synack(PROBER4, at=None)}" for _ in range(10)]
    assert Pipeline(config).feed_lines(lines, NOW) == []  # the kern.log path
    pipeline = Pipeline(config)
    decisions = [
        d
        for i, line in enumerate(lines)
        for d in pipeline.feed_line(line, NOW, source_time=NOW - 10 + i)
    ]
    assert [d.target_text for d in decisions] == [PROBER4]  # kmsg/journald: the kernel's word
