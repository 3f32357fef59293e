"""blockerctl against a running blockerd (dry-run subprocess): outputs and exit codes.

One daemon serves the whole module; each test bans its own addresses so the tests stay
independent of their order.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from daemon_fixture import Blockerd, run_ctl, running_blockerd, short_directory

from blocker.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def daemon() -> Iterator[Blockerd]:
    with running_blockerd() as running:
        yield running


def listed(daemon: Blockerd, target: str) -> dict[str, object] | None:
    return next((b for b in daemon.bans() if b["target"] == target), None)


def test_status(daemon: Blockerd) -> None:
    result = daemon.ctl("status", "--json")
    assert (result.code, result.err) == (EXIT_OK, "")
    status = json.loads(result.out)
    assert set(status) >= {
        "uptime",
        "lines",
        "parsed",
        "unparsed",
        "malformed",
        "active_bans",
        "jails",
        "sources",
        "firewall",
    }
    assert set(status["jails"]) == {"probes"}
    assert status["firewall"] == {"backend": "DryRunBackend"}
    assert [s["source"] for s in status["sources"]] == [f"kernlog:{daemon.log}"]


def test_ban_list_unban(daemon: Blockerd) -> None:
    result = daemon.ctl("ban", "203.0.113.21")
    assert (result.code, result.out, result.err) == (
        EXIT_OK,
        "banned 203.0.113.21 for 600s (jail probes)\n",
        "",
    )

    human = daemon.ctl("list")
    assert human.code == EXIT_OK
    lines = human.out.splitlines()
    assert lines[0].split() == ["TARGET", "JAIL", "ORIGIN", "EXPIRES"]
    row = next(line for line in lines[1:] if line.startswith("203.0.113.21 "))
    target, jail, origin, expires = row.split()
    assert (target, jail, origin) == ("203.0.113.21", "probes", "manual")
    assert 590 <= datetime.fromisoformat(expires).timestamp() - time.time() <= 600

    rows = json.loads(daemon.ctl("list", "--json").out)
    assert isinstance(rows, list)
    ban = next(r for r in rows if r["target"] == "203.0.113.21")
    assert set(ban) >= {"target", "jail", "expires"}
    assert ban["jail"] == "probes"
    assert ban["reason"] == "manual ban (blockerctl)"
    assert datetime.fromisoformat(ban["expires"]).tzinfo is not None

    result = daemon.ctl("unban", "203.0.113.21")
    assert (result.code, result.out) == (EXIT_OK, "unbanned 203.0.113.21\n")
    assert listed(daemon, "203.0.113.21") is None
    again = daemon.ctl("unban", "203.0.113.21")
    assert (again.code, again.out) == (EXIT_OK, "unbanned 203.0.113.21 (it was not banned)\n")


@pytest.mark.parametrize(
    ("args", "printed", "expires"),
    [
        (("--for", "1h"), "banned 203.0.113.31 for 3600s (jail probes)", "iso"),
        (("--for", "90"), "banned 203.0.113.31 for 90s (jail probes)", "iso"),
        (
            ("--for", "permanent", "--jail", "probes"),
            "banned 203.0.113.31 permanently (jail probes)",
            None,
        ),
    ],
)
def test_ban_for(
    daemon: Blockerd, args: tuple[str, ...], printed: str, expires: str | None
) -> None:
    result = daemon.ctl("ban", "203.0.113.31", *args)
    assert (result.code, result.out) == (EXIT_OK, printed + "\n")
    ban = listed(daemon, "203.0.113.31")
    assert ban is not None
    if expires is None:
        assert ban["expires"] is None
        human = daemon.ctl("list").out.splitlines()
        assert (
            next(line for line in human if line.startswith("203.0.113.31 ")).split()[-1] == "never"
        )
    else:
        assert isinstance(ban["expires"], str)
        datetime.fromisoformat(ban["expires"])
    assert daemon.ctl("unban", "203.0.113.31").code == EXIT_OK


def test_ban_a_network(daemon: Blockerd) -> None:
    result = daemon.ctl("ban", "2001:db8:bad::/48", "--for", "10m")
    assert (result.code, result.out) == (
        EXIT_OK,
        "banned 2001:db8:bad::/48 for 600s (jail probes)\n",
    )
    assert listed(daemon, "2001:db8:bad::/48") is not None
    inside = daemon.ctl("ban", "2001:db8:bad::1")
    assert inside.code == EXIT_OK
    text = daemon.ctl("unban", "2001:db8:bad::1").out
    assert text == "unbanned 2001:db8:bad::1; still covered by the ban of 2001:db8:bad::/48\n"
    assert daemon.ctl("unban", "2001:db8:bad::/48").code == EXIT_OK


@pytest.mark.parametrize("value", ["nonsense", "-5", "1y", ""])
def test_ban_for_nonsense_is_a_usage_error(daemon: Blockerd, value: str) -> None:
    result = daemon.ctl("ban", "203.0.113.41", "--for", value)
    assert result.code == EXIT_USAGE
    assert result.out == ""
    assert result.err.startswith("blockerctl: --for: must be a")
    assert listed(daemon, "203.0.113.41") is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("ban", "127.0.0.1"), "blockerctl: refusing to ban 127.0.0.1: loopback"),
        (("ban", "203.0.113.7/24"), "has host bits set; did you mean 203.0.113.0/24?"),
        (("ban", "banana"), "'banana' is not an address or network"),
        (("ban", "203.0.113.51", "--jail", "nope"), "no jail 'nope' (jails: probes)"),
        (("ban", "203.0.113.51", "--for", "0"), "duration must be longer than 0 s"),
        (("unban", "example.org"), "'example.org' is not an address or network"),
        (("explain", "203.0.113.0/24"), "is not an IP address"),
    ],
)
def test_refused_requests_exit_1(daemon: Blockerd, args: tuple[str, ...], error: str) -> None:
    result = daemon.ctl(*args)
    assert result.code == EXIT_FAIL
    assert result.out == ""
    assert result.err.startswith("blockerctl: ")
    assert error in result.err
    assert daemon.ctl("status").code == EXIT_OK


def test_explain(daemon: Blockerd) -> None:
    daemon.ctl("ban", "198.51.100.61", "--for", "5m")
    result = daemon.ctl("explain", "198.51.100.61")
    assert result.code == EXIT_OK
    explained = json.loads(result.out)
    assert explained["address"] == "198.51.100.61"
    assert [b["target"] for b in explained["banned_by"]] == ["198.51.100.61"]
    assert explained["refusal"] is None
    assert set(explained["jails"]) == {"probes"}
    assert explained["jails"]["probes"]["banned_until"] is not None
    loopback = json.loads(daemon.ctl("explain", "127.0.0.1").out)
    assert "loopback" in loopback["refusal"]


def test_reload(daemon: Blockerd) -> None:
    daemon.ctl("ban", "198.51.100.71")
    result = daemon.ctl("reload")
    assert (result.code, result.out) == (EXIT_OK, f"reloaded {daemon.config}: probes\n")
    assert listed(daemon, "198.51.100.71") is not None


def test_reload_with_a_broken_config_exits_1(daemon: Blockerd) -> None:
    good = daemon.config.read_text(encoding="utf-8")
    try:
        daemon.config.write_text(good + "typo = 1\n", encoding="utf-8")
        result = daemon.ctl("reload")
        assert result.code == EXIT_FAIL
        assert result.err == (
            "blockerctl: reload refused, keeping the running configuration: "
            f"{daemon.config}: jails.probes.typo: unknown key\n"
        )
    finally:
        daemon.config.write_text(good, encoding="utf-8")
    assert daemon.ctl("status").code == EXIT_OK


def test_no_daemon_exits_1() -> None:
    with short_directory() as root:
        result = run_ctl(["--socket", str(root / "none.sock"), "status"])
    assert result.code == EXIT_FAIL
    assert result.out == ""
    assert result.err == (
        f"blockerctl: {root / 'none.sock'}: no such socket (is blockerd running?)\n"
    )


def test_a_socket_nobody_listens_on_exits_1() -> None:
    with short_directory() as root:
        path = root / "dead.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(str(path))
        result = run_ctl(["--socket", str(path), "list"])
    assert result.code == EXIT_FAIL
    assert result.err.startswith(f"blockerctl: {path}: ")


def test_usage_errors_exit_2() -> None:
    assert run_ctl([]).code == EXIT_USAGE
    assert run_ctl(["frobnicate"]).code == EXIT_USAGE
    assert run_ctl(["ban"]).code == EXIT_USAGE
