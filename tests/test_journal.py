"""Structured journal entries for bans and unbans (blocker/journal.py).

journald does not run on this build VM (no systemd as PID 1): the real-journal test skips
there. The rest checks the fields, the one-entry-per-ban split of a batch record as the
service logs it, and the JOURNAL_STREAM detection in a real child process.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from fakes.backend import FakeBackend
from loglines import BASE, synack
from test_service import ask

from blocker.config import load_config
from blocker.journal import JournalHandler, journal_fields
from blocker.service import Service
from blocker.sources.base import SourceLine
from blocker.state import State

REPO = Path(__file__).resolve().parents[1]
NOW = BASE + 3600.0


def test_fields_of_a_ban_a_permanent_ban_and_an_unban() -> None:
    target = ip_network("203.0.113.66/32")
    assert journal_fields(("ban", target, "probes", 600.0, "score 5 >= 5", "auto")) == {
        "BLOCKER_ACTION": "ban",
        "BLOCKER_TARGET": "203.0.113.66",
        "BLOCKER_JAIL": "probes",
        "BLOCKER_DURATION": "600",
        "BLOCKER_REASON": "score 5 >= 5",
        "BLOCKER_ORIGIN": "auto",
    }
    permanent = journal_fields(
        ("ban", ip_network("2001:db8::/48"), "scans", math.inf, "x", "admin")
    )
    assert (permanent["BLOCKER_TARGET"], permanent["BLOCKER_DURATION"]) == (
        "2001:db8::/48",
        "permanent",
    )
    unban = journal_fields(("unban", target, "probes", None, "", "admin"))
    assert unban == {
        "BLOCKER_ACTION": "unban",
        "BLOCKER_TARGET": "203.0.113.66",
        "BLOCKER_JAIL": "probes",
        "BLOCKER_ORIGIN": "admin",
    }


class Sent:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.entries.append((message, fields))


@pytest.fixture
def journal() -> Iterator[Sent]:
    sent = Sent()
    handler = JournalHandler(sent)
    logger = logging.getLogger("blocker")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield sent
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def service(tmp_path: Path) -> Service:
    config = tmp_path / "jails.toml"
    config.write_text(
        f"""
filters_dir = "{REPO / "filters"}"
[defaults]
source = "kernlog"
log_path = "/var/log/kern.log"
[jails.probes]
filters = ["unsolicited_synack"]
""",
        encoding="utf-8",
    )
    return Service(load_config(config), State(tmp_path / "state"), FakeBackend())


def test_a_batch_of_bans_is_one_entry_per_ban_with_its_fields(
    tmp_path: Path, journal: Sent
) -> None:
    svc = service(tmp_path)
    lines = [
        SourceLine(synack(src, at=NOW - 5 + i), None)
        for src in ("203.0.113.66", "198.51.100.7")
        for i in range(5)
    ]
    decisions = svc.handle_lines(("kernlog", "/var/log/kern.log"), lines, NOW)
    assert len(decisions) == 2
    bans = [(m, f) for m, f in journal.entries if f.get("BLOCKER_ACTION") == "ban"]
    assert [f["BLOCKER_TARGET"] for _, f in bans] == ["203.0.113.66", "198.51.100.7"]
    for message, fields in bans:
        assert message.startswith(f"ban {fields['BLOCKER_TARGET']} (probes)")
        assert (fields["BLOCKER_JAIL"], fields["BLOCKER_ORIGIN"], fields["PRIORITY"]) == (
            "probes",
            "auto",
            "4",
        )
        assert fields["SYSLOG_IDENTIFIER"] == "blockerd"
        assert "unsolicited_synack" in fields["BLOCKER_REASON"]


def test_admin_ban_and_unban_carry_their_fields(tmp_path: Path, journal: Sent) -> None:
    svc = service(tmp_path)
    ask(svc, "ban", {"target": "198.51.100.9", "duration": "1h"}, NOW)
    ask(svc, "unban", {"target": "198.51.100.9"}, NOW + 1)
    actions = [
        (f.get("BLOCKER_ACTION"), f.get("BLOCKER_ORIGIN"), f.get("BLOCKER_DURATION"))
        for _, f in journal.entries
        if "BLOCKER_ACTION" in f
    ]
    assert actions == [("ban", "admin", "3600"), ("unban", "admin", None)]


def test_other_records_carry_no_blocker_fields(journal: Sent) -> None:
    logging.getLogger("blocker").info("ready: 1 jail(s)\nsecond line")
    assert [(m, "BLOCKER_ACTION" in f) for m, f in journal.entries] == [
        ("ready: 1 jail(s)", False),
        ("second line", False),
    ]


def test_journal_stream_is_detected_only_when_it_names_stderr(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    code = "from blocker.journal import stderr_is_journal as f; print(f())"
    with err.open("w") as stream:
        info = os.fstat(stream.fileno())
        for value, expected in (
            (f"{info.st_dev}:{info.st_ino}", "True"),
            (f"{info.st_dev}:{info.st_ino + 1}", "False"),
            ("", "False"),
        ):
            out = subprocess.run(
                [sys.executable, "-c", code],
                stderr=stream,
                text=True,
                stdout=subprocess.PIPE,
                check=True,
                cwd=REPO,
                env={**os.environ, "JOURNAL_STREAM": value, "PYTHONPATH": str(REPO)},
            )
            assert out.stdout.strip() == expected


@pytest.mark.skipif(
    not Path("/run/systemd/journal/socket").exists() or shutil.which("journalctl") is None,
    reason="systemd-journald does not run here",
)
def test_real_journal_finds_a_ban_by_its_jail() -> None:
    """With python3-systemd (Debian's python3) and a running journald: send, read back."""
    tag = f"blkjournal-{uuid.uuid4().hex[:8]}"
    code = (
        "import logging; from systemd import journal; "
        "from ipaddress import ip_network; from blocker.journal import JournalHandler; "
        f"h = JournalHandler(journal.send, identifier={tag!r}); "
        "log = logging.getLogger('t'); log.addHandler(h); "
        "log.warning('ban 203.0.113.66 (probes) for 600s: test', extra={'bans': "
        "[('ban', ip_network('203.0.113.66/32'), 'probes', 600.0, 'test', 'auto')]})"
    )
    subprocess.run(
        ["/usr/bin/python3", "-c", code],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["journalctl", "-o", "export", f"SYSLOG_IDENTIFIER={tag}", "BLOCKER_JAIL=probes"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "BLOCKER_TARGET=203.0.113.66" in out:
            return
        time.sleep(0.2)
    raise AssertionError("the ban did not reach the journal")
