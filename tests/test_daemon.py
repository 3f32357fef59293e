"""blockerd end to end: the real daemon (dry-run backend) in a subprocess, on a tmp kern.log."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from daemon_fixture import (
    CONFIG,
    Blockerd,
    check_config,
    poll,
    running_blockerd,
    short_directory,
)
from loglines import synack

from blocker.sources.rsyslog_guard import unguarded_reason

ATTACKER = "203.0.113.66"


def synack_train(src: str, count: int = 5) -> list[str]:
    """SYN/ACK lines stamped now, as rsyslog would write them while they arrive."""
    now = time.time()
    return [synack(src, at=now - count + 1 + i) for i in range(count)]


@pytest.fixture
def daemon() -> Iterator[Blockerd]:
    with running_blockerd(notify=True) as running:
        yield running


def test_ready_ban_stop_and_restore(daemon: Blockerd) -> None:
    assert daemon.notify is not None
    daemon.notify.wait_for("READY=1")
    daemon.append(synack_train(ATTACKER))
    ban = daemon.wait_ban(ATTACKER)
    assert ban["jail"] == "probes"
    expires = datetime.fromisoformat(ban["expires"])
    assert expires.tzinfo is not None
    assert 0 < expires.timestamp() - time.time() <= 600
    assert "unsolicited_synack x5" in ban["reason"]

    assert daemon.stop(signal.SIGTERM) == 0
    daemon.notify.wait_for("STOPPING=1")
    assert "stopped; bans stay in the kernel" in daemon.stderr()
    assert not Path(daemon.socket).exists()

    daemon.start()
    restored = daemon.wait_ban(ATTACKER)
    assert restored["jail"] == "probes"
    assert "restored 1 active ban(s)" in daemon.stderr()
    # The restart resumed at the saved position: the old lines were not read twice.
    status = daemon.ctl("status", "--json")
    assert status.code == 0
    assert json.loads(status.out)["lines"] == 0


def test_sigint_stops_cleanly_too(daemon: Blockerd) -> None:
    assert daemon.stop(signal.SIGINT) == 0


def test_sighup_reloads_and_survives_a_broken_config(daemon: Blockerd) -> None:
    assert daemon.notify is not None
    daemon.notify.wait_for("READY=1")
    daemon.append(synack_train(ATTACKER))
    daemon.wait_ban(ATTACKER)

    daemon.config.write_text(CONFIG + '\n[jails.scans]\nfilters = ["syn_scan"]\n', encoding="utf-8")
    daemon.send(signal.SIGHUP)
    messages = daemon.notify.wait_for("READY=1")
    reloading = next(i for i, m in enumerate(messages) if "RELOADING=1" in m.splitlines())
    assert any("READY=1" in m.splitlines() for m in messages[reloading + 1 :])
    assert any(line.startswith("MONOTONIC_USEC=") for line in messages[reloading].splitlines())
    daemon.wait_log("configuration reloaded: 2 jail(s)")
    assert set(json.loads(daemon.ctl("status", "--json").out)["jails"]) == {"probes", "scans"}

    daemon.config.write_text("[jails.probes\nfilters = 3\n", encoding="utf-8")
    daemon.send(signal.SIGHUP)
    daemon.notify.wait_for("READY=1")
    daemon.wait_log(f"reload refused, keeping the running configuration: {daemon.config}: ")
    assert daemon.alive
    assert set(json.loads(daemon.ctl("status", "--json").out)["jails"]) == {"probes", "scans"}
    assert [b["target"] for b in daemon.bans()] == [ATTACKER]
    daemon.append(synack_train("198.51.100.9"))
    daemon.wait_ban("198.51.100.9")


def test_garbage_lines_do_not_stop_it(daemon: Blockerd) -> None:
    daemon.append(
        [
            bytes(range(256)).replace(b"\n", b""),
            b"A" * (1024 * 1024),
            b"\xff\xfe\xc3\x28 kernel: SRC=\xe2\x82 DST=192.0.2.10 PROTO=TCP",
            synack("203.0.113.1").encode()[:80] + b"\xff" * 50,
            b"\0" * 4096,
        ]
    )
    daemon.append(synack_train(ATTACKER))
    daemon.wait_ban(ATTACKER)
    status = json.loads(daemon.ctl("status", "--json").out)
    assert status["lines"] >= 9
    assert status["parsed"] == 5


def test_a_log_that_appears_later() -> None:
    with running_blockerd(notify=True) as daemon:
        assert not daemon.log.exists()
        status = json.loads(daemon.ctl("status", "--json").out)
        assert [s["state"] for s in status["sources"]] == ["waiting"]
        daemon.log.write_text("", encoding="utf-8")
        daemon.append(synack_train(ATTACKER))
        daemon.wait_ban(ATTACKER)


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon: Blockerd) -> None:
    with short_directory() as other_root:
        second = Blockerd(other_root)
        second.socket = daemon.socket
        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(timeout=30) == 1
        assert "another blockerd is already listening" in second.stderr()
        second.close()
    assert daemon.ctl("status").code == 0


def _refused_and_still_serving(daemon: Blockerd, request: bytes) -> None:
    """Send one raw request: the reply is an error and blockerd keeps serving."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(daemon.socket)
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply, f"no reply; blockerd's log ends:\n{daemon.stderr()[-1500:]}"
    assert json.loads(reply)["ok"] is False
    assert daemon.ctl("status").code == 0


def test_deeply_nested_json_does_not_kill_the_daemon(daemon: Blockerd) -> None:
    _refused_and_still_serving(daemon, b"[" * 3000 + b"]" * 3000 + b"\n")


def test_a_huge_integer_duration_does_not_kill_the_daemon(daemon: Blockerd) -> None:
    assert daemon.ctl("status").code == 0
    _refused_and_still_serving(
        daemon, b'{"cmd": "ban", "target": "203.0.113.5", "duration": 1' + b"0" * 400 + b"}\n"
    )


# -- --check-config -----------------------------------------------------------------------


def test_check_config_good(tmp_path: Path) -> None:
    path = tmp_path / "jails.toml"
    path.write_text(CONFIG, encoding="utf-8")
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config OK: 1 jail(s) (probes), ")
    assert done.stdout.rstrip().endswith(f"filter(s) in {path}")


def test_the_shipped_config_checks() -> None:
    shipped = Path(__file__).resolve().parent.parent / "jails.toml"
    done = check_config(shipped)
    assert done.returncode == 0, done.stderr
    assert "2 jail(s) (probes, scans)" in done.stdout


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (CONFIG + "bogus = 1\n", "jails.probes.bogus", "unknown key"),
        (CONFIG.replace('"dry-run"', '"nftables"'), "firewall.backend", "must be one of"),
        (CONFIG + 'ban_time = "soon"\n', "jails.probes.ban_time", "must be a duration"),
        (CONFIG + "[jails.x]\nfilters = ['no_such']\n", "jails.x.filters", "unknown filter"),
        ("[jails\n", "(syntax)", ""),
    ],
)
def test_check_config_bad(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "jails.toml"
    path.write_text(text, encoding="utf-8")
    done = check_config(path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"blockerd: {path}: {key}: {reason}")
    assert "Traceback" not in done.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    done = check_config(tmp_path / "nope.toml")
    assert done.returncode == 1
    assert f"{tmp_path / 'nope.toml'}: (file): cannot read" in done.stderr


@pytest.mark.parametrize("key", ["ban_time", "threshold"])
def test_check_config_huge_number(tmp_path: Path, key: str) -> None:
    path = tmp_path / "jails.toml"
    path.write_text(CONFIG + f"{key} = 1{'0' * 400}\n", encoding="utf-8")
    done = check_config(path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"blockerd: {path}: jails.probes.{key}: ")


def test_poll_gives_up() -> None:
    """The fixture's wait fails instead of hanging (so a broken daemon cannot stall CI)."""
    with pytest.raises(AssertionError, match="timed out"):
        poll(lambda: False, timeout=0.1, what="nothing")


def test_a_kern_log_without_the_rsyslog_guard_is_warned_about_at_start(daemon: Blockerd) -> None:
    # What blockerd finds on this host decides: the warning names the reason it found.
    reason = unguarded_reason(frozenset((4,)))
    daemon.wait_log("following kernlog:")
    if reason is None:
        assert "not guarded by blocker's rsyslog drop-in" not in daemon.stderr()
    else:
        daemon.wait_log(
            f"is not guarded by blocker's rsyslog drop-in, so local users may forge "
            f"LOG lines in it (see README, 'Only the kernel can write'): {reason}"
        )


def test_a_reload_that_changes_log_level_reopens_the_source_where_it_was(daemon: Blockerd) -> None:
    assert daemon.notify is not None
    daemon.notify.wait_for("READY=1")
    daemon.append(synack_train(ATTACKER, count=3))
    poll(lambda: json.loads(daemon.ctl("status", "--json").out)["lines"] == 3, what="3 lines read")
    daemon.config.write_text(CONFIG + 'log_level = "info"\n', encoding="utf-8")
    daemon.send(signal.SIGHUP)
    daemon.notify.wait_for("READY=1")
    assert daemon.stderr().count("following kernlog:") == 2  # closed and opened again
    if unguarded_reason(frozenset((6,))) is not None:  # the check names the new level's rule
        daemon.wait_log("$syslogseverity != 6")
    # Reopened at the saved position: the 3 lines read before are not read again (a reload
    # starts the scores and counters afresh), the new ones are.
    daemon.append(synack_train(ATTACKER))
    assert daemon.wait_ban(ATTACKER)["jail"] == "probes"
    assert json.loads(daemon.ctl("status", "--json").out)["lines"] == 5
