"""The Redis transport and two real blockerds (dry-run) sharing bans through a real
redis-server: no mock of Redis anywhere here."""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import redis
from daemon_fixture import FILTERS, Blockerd, poll, short_directory
from redis_server import RedisServer, redis_server

from blocker.fleet.events import FleetEvent, decode, decode_snapshot, entry, sign, snapshot_value
from blocker.fleet.redis_transport import RedisTransport
from blocker.fleet.transport import START, TransportError

KEY = b"fleet-test-key-0123456789abcdef"
T0 = time.time()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as started:
        yield started


def event(
    target: str,
    i: int = 0,
    *,
    kind: Literal["ban", "unban"] = "ban",
    origin: str = "h1",
    expires: float = T0 + 600,
) -> FleetEvent:
    return FleetEvent(
        kind,
        f"{i:032x}",
        origin,
        ip_network(target),
        "probes",
        T0,
        expires,
        "test",
    )


# -- the transport ---------------------------------------------------------------------------


def test_publish_read_and_a_cold_start_snapshot(server: RedisServer) -> None:
    transport = RedisTransport(server.url, key=KEY)
    try:
        assert transport.resume(None) is not None  # no cursor: snapshot (empty)
        transport.publish(
            [
                event("203.0.113.1", 1),
                event("203.0.113.2", 2),
                event("2001:db8::/48", 3, expires=math.inf),
            ],
            time.time(),
        )
        transport.publish([event("203.0.113.1", 4, kind="unban")], time.time())
        read = transport.read(START, 0.1, 100)
        decoded = [decode(KEY, fields) for _, fields in read]
        assert [[e.kind for e in d] for d in decoded] == [  # type: ignore[union-attr]
            ["ban", "ban", "ban"],
            ["unban"],
        ]
        assert transport.read(read[-1][0], 0.1, 100) == []
        snapshot = transport.resume(None)
        assert snapshot is not None and snapshot.cursor == read[-1][0]
        events = [decode_snapshot(KEY, v) for v in snapshot.values]
        assert sorted(str(e.target) for e in events if not isinstance(e, str)) == [
            "2001:db8::/48",
            "203.0.113.2/32",
        ]
        assert transport.resume(read[1][0]) is None, "an untrimmed cursor reads on"
    finally:
        transport.close()


def test_a_trimmed_cursor_falls_back_to_the_snapshot(server: RedisServer) -> None:
    transport = RedisTransport(server.url, key=KEY, retention=60)
    try:
        transport.publish([event("203.0.113.1", 1)], time.time())
        [(first, _)] = transport.read(START, 0.1, 10)
        # Trim by MINID as a later publish would, exactly (not "~"): everything before now.
        client = redis.Redis.from_url(server.url)
        transport.publish([event("203.0.113.2", 2)], time.time())
        client.execute_command(  # type: ignore[no-untyped-call]
            "XTRIM", "blocker:events", "MINID", str(int(time.time() * 1000) + 1)
        )
        client.close()
        assert transport.resume(START) is not None
        snapshot = transport.resume(first)
        assert snapshot is not None
        assert len(snapshot.values) == 2
    finally:
        transport.close()


# redis-py 4.3 (Debian 12) leaves the socket of a failed Unix connect to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_down_or_wrongly_typed_redis_is_a_transport_error(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    client.set("blocker:events", "not a stream")
    client.close()
    transport = RedisTransport(server.url, key=KEY)
    with pytest.raises(TransportError, match="WRONGTYPE"):
        transport.read(START, 0.1, 10)
    server.kill()
    with pytest.raises(TransportError):
        transport.publish([event("203.0.113.1")], time.time())
    transport.close()


# The ACL the README gives: blocker's keys only, only the commands the transport sends.
ACL = (
    "~blocker:*",
    "resetchannels",
    "-@all",
    "+xadd",
    "+xread",
    "+xrevrange",
    "+xinfo|stream",
    "+hset",
    "+hdel",
    "+hgetall",
    "+zadd",
    "+zrem",
    "+zrangebyscore",
    "+multi",
    "+exec",
    "+watch",
    "+unwatch",
    "+discard",
    "+ping",
    "+hello",
    "+auth",
)


def test_acl_user_and_password(tmp_path: Path) -> None:
    with redis_server(
        "--user", "default", "off", "--user", "blocker", "on", ">s3cret-pass", *ACL
    ) as acl:
        with pytest.raises(TransportError):
            RedisTransport(acl.url, key=KEY).read(START, 0.1, 1)
        wrong = RedisTransport(acl.url, key=KEY, username="blocker", password="nope")
        with pytest.raises(TransportError):
            wrong.read(START, 0.1, 1)
        good = RedisTransport(acl.url, key=KEY, username="blocker", password="s3cret-pass")
        good.publish([event("203.0.113.1", 1, expires=time.time() - 1)], time.time())  # prunes
        good.publish([event("203.0.113.2", 2), event("203.0.113.1", 3, kind="unban")], time.time())
        read = good.read(START, 0.1, 10)
        assert len(read) == 2
        snapshot = good.resume(None)
        assert snapshot is not None and len(snapshot.values) == 1
        assert good.resume(read[0][0]) is None
        good.close()
        other = RedisTransport(
            acl.url, key=KEY, username="blocker", password="s3cret-pass", prefix="elsewhere"
        )
        with pytest.raises(TransportError, match=r"(?i)no permissions"):
            other.read(START, 0.1, 1)
        other.close()


# -- two blockerds ---------------------------------------------------------------------------


def fleet_config(
    url: str,
    key_file: Path,
    host: str,
    *,
    allow: str = "",
    publish: str = '["probes"]',
    extra: str = "",
) -> str:
    allow_line = f'allow = ["{allow}"]' if allow else ""
    return f"""
filters_dir = "{FILTERS}"
[firewall]
backend = "dry-run"
rule_check_interval = "0.5s"
[defaults]
source = "kernlog"
{allow_line}
[jails.probes]
filters = ["unsolicited_synack", "outgoing_rst"]
[fleet]
url = "{url}"
key_file = "{key_file}"
host_id = "{host}"
publish = {publish}
{extra}
"""


class Fleet:
    def __init__(self, root: Path, server: RedisServer) -> None:
        self.root = root
        self.server = server
        self.key_file = root / "fleet.key"
        self.key_file.write_bytes(KEY + b"\n")
        os.chmod(self.key_file, 0o600)
        self.daemons: dict[str, Blockerd] = {}

    def add(self, host: str, start: bool = True, **options: Any) -> Blockerd:
        home = self.root / host
        home.mkdir()
        daemon = Blockerd(home, fleet_config(self.server.url, self.key_file, host, **options))
        self.daemons[host] = daemon
        if start:
            daemon.start()
        return daemon

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.close()


@pytest.fixture
def fleet(server: RedisServer) -> Iterator[Fleet]:
    with short_directory() as root:
        pack = Fleet(root, server)
        try:
            yield pack
        finally:
            pack.close()


def fleet_status(daemon: Blockerd) -> dict[str, Any]:
    result = daemon.ctl("status", "--json")
    assert result.code == 0, result
    status = json.loads(result.out)["fleet"]
    assert isinstance(status, dict)
    return status


def rows_of(daemon: Blockerd, target: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(daemon.state / "state.sqlite")
    try:
        return list(db.execute("SELECT origin, jail FROM bans WHERE target = ?", (target,)))
    finally:
        db.close()


def test_a_ban_on_one_host_reaches_the_other_with_its_origin(fleet: Fleet) -> None:
    a, b = fleet.add("host-a"), fleet.add("host-b")
    assert a.ctl("ban", "203.0.113.10", "--for", "1h").code == 0
    ban = b.wait_ban("203.0.113.10")
    assert (ban["jail"], ban["origin"]) == ("probes", "fleet:host-a")
    assert 3500 <= ban["remaining"] <= 3600
    assert "fleet:host-a" in b.ctl("list").out
    explained = json.loads(b.ctl("explain", "203.0.113.10").out)
    assert explained["banned_by"][0]["origin"] == "fleet:host-a"
    poll(lambda: fleet_status(a)["counters"]["echoes"] >= 1, what="A to see its own echo")
    assert [b["target"] for b in a.bans()] == ["203.0.113.10"], "A's echo changes nothing"
    assert rows_of(a, "203.0.113.10") == [("manual", "probes")]
    assert fleet_status(b)["remote"]["applied"] == 1


def test_an_allowlisted_address_is_not_banned_by_the_fleet(fleet: Fleet) -> None:
    a, b = fleet.add("host-a"), fleet.add("host-b", allow="203.0.113.20")
    assert a.ctl("ban", "203.0.113.20").code == 0
    assert a.ctl("ban", "203.0.113.21").code == 0
    b.wait_ban("203.0.113.21")
    assert fleet_status(b)["remote"]["refused"] == 1
    assert "203.0.113.20" not in {r["target"] for r in b.bans()}


def test_garbage_in_the_stream_is_dropped_and_counted(fleet: Fleet) -> None:
    b = fleet.add("host-b")
    # Raw entries are not in the snapshot: B must be past its cold start before they come.
    poll(lambda: fleet_status(b)["reader"] == "up", what="B's reader")
    client = redis.Redis.from_url(fleet.server.url)
    good = entry(KEY, [event("203.0.113.30", 30, origin="host-a")])
    forged = entry(b"another key, not the fleet's", [event("203.0.113.31", 31)])
    payload = good[b"e"].replace(b"203.0.113.30", b"203.0.113.32")
    client.xadd("blocker:events", {"e": payload})  # unsigned
    client.xadd("blocker:events", cast(Any, forged))  # badly signed
    client.xadd("blocker:events", {"e": payload, "s": good[b"s"]})  # tampered
    client.xadd("blocker:events", {"e": b"x" * 2_000_000, "s": b"0" * 64})  # oversized
    client.xadd("blocker:events", {"junk": "1"})  # wrongly typed
    garbage = b'[{"v":1,"kind":"ban","target":7}]'
    client.xadd("blocker:events", {"e": garbage, "s": sign(KEY, garbage)})  # signed nonsense
    client.xadd("blocker:events", cast(Any, good))
    client.close()
    b.wait_ban("203.0.113.30")
    counters = fleet_status(b)["counters"]
    assert (
        counters["unsigned"],
        counters["bad_signature"],
        counters["oversized"],
        counters["malformed"],
    ) == (1, 2, 1, 2)
    assert {r["target"] for r in b.bans()} == {"203.0.113.30"}
    assert b.alive


def _unbanned(daemon: Blockerd, target: str) -> bool:
    return target not in {r["target"] for r in daemon.bans()}


def test_unban_fleet_lifts_everywhere_and_a_local_unban_holds(fleet: Fleet) -> None:
    a, b, c = fleet.add("host-a"), fleet.add("host-b"), fleet.add("host-c")
    for target in ("203.0.113.40", "203.0.113.41"):
        assert a.ctl("ban", target).code == 0
        for other in (b, c):
            other.wait_ban(target)
    assert b.ctl("unban", "--fleet", "203.0.113.40").code == 0
    for daemon in (a, c):
        poll(
            functools.partial(_unbanned, daemon, "203.0.113.40"),
            what="the fleet unban",
        )
    # A local unban on C of A's ban holds there, even when A bans it again.
    assert c.ctl("unban", "203.0.113.41").code == 0
    assert a.ctl("ban", "203.0.113.41", "--for", "2h").code == 0
    poll(lambda: fleet_status(c)["remote"].get("held") == 1, what="C to hold its unban")
    assert "203.0.113.41" not in {r["target"] for r in c.bans()}
    assert b.wait_ban("203.0.113.41")["remaining"] > 3600


def test_a_restart_resumes_from_the_saved_id(fleet: Fleet) -> None:
    a, b = fleet.add("host-a"), fleet.add("host-b")
    assert a.ctl("ban", "203.0.113.50").code == 0
    b.wait_ban("203.0.113.50")
    b.stop()
    assert a.ctl("ban", "203.0.113.51").code == 0  # goes by while B is down
    b.start()
    b.wait_ban("203.0.113.51")
    assert rows_of(b, "203.0.113.50") == [("fleet:host-a", "probes")], "applied once"
    assert rows_of(b, "203.0.113.51") == [("fleet:host-a", "probes")]
    assert fleet_status(b)["counters"]["snapshot_loads"] == 0


def test_redis_down_local_bans_go_on_and_both_ways_catch_up(fleet: Fleet) -> None:
    a, b = fleet.add("host-a"), fleet.add("host-b")
    assert a.ctl("ban", "203.0.113.60").code == 0
    b.wait_ban("203.0.113.60")
    fleet.server.kill()
    started = time.monotonic()
    assert a.ctl("ban", "203.0.113.61").code == 0
    assert b.ctl("ban", "203.0.113.62").code == 0
    assert time.monotonic() - started < 5, "banning never waits for Redis"
    a.wait_ban("203.0.113.61")
    poll(lambda: fleet_status(a)["writer"] == "down", what="A to notice Redis is down")
    assert fleet_status(a)["unsent"] >= 1
    fleet.server.start()
    b.wait_ban("203.0.113.61", timeout=30)
    a.wait_ban("203.0.113.62", timeout=30)
    assert fleet_status(a)["unsent"] == 0
    assert a.alive and b.alive


def test_a_missing_or_loose_key_file_stops_the_start(fleet: Fleet) -> None:
    a = fleet.add("host-a", start=False)
    os.chmod(fleet.key_file, 0o644)
    a.start(wait=False)
    assert a.proc is not None and a.proc.wait(timeout=30) == 1
    assert "readable by every user" in a.stderr()


def test_garbage_in_the_snapshot_is_dropped_and_counted(fleet: Fleet) -> None:
    """A new host loads the snapshot hash: what a stranger put there is dropped and counted."""
    good = event("203.0.113.80", 80, origin="host-a")
    payload = good.payload()
    big = b" " * 3000 + payload
    client = redis.Redis.from_url(fleet.server.url)
    client.hset(
        "blocker:bans",
        mapping={
            "203.0.113.80": snapshot_value(KEY, good),
            "203.0.113.81": payload.replace(b"203.0.113.80", b"203.0.113.81"),  # unsigned
            "203.0.113.82": sign(b"another key, not the fleet's", payload) + b" " + payload,
            "203.0.113.83": sign(KEY, big) + b" " + big,  # oversized
            "203.0.113.84": sign(KEY, b"[1]") + b" [1]",  # signed, but no event
        },
    )
    client.close()
    b = fleet.add("host-b")
    b.wait_ban("203.0.113.80")
    counters = fleet_status(b)["counters"]
    assert counters["snapshot_loads"] == 1
    assert (
        counters["unsigned"],
        counters["bad_signature"],
        counters["oversized"],
        counters["malformed"],
    ) == (1, 1, 1, 1)
    assert {r["target"] for r in b.bans()} == {"203.0.113.80"}
    assert b.alive
