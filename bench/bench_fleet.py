"""The fleet through a real Redis into real kernel sets (issue 12). Root; prints figures only.

    sudo .venv/bin/python bench/bench_fleet.py [--bans 200] [--burst 100000]

A redis-server on a Unix socket in a temp dir; hosts A, B and C, each a fresh network
namespace with a real blockerd (ipset backend, own sets) in the same fleet. This script reads
the kernel's sets of B and C over netlink sockets opened inside their namespaces:

  latency  `ban` on A over its control socket, one at a time; time until the address is in
           B's and in C's kernel set (p50/p99/max over --bans bans and both hosts)
  burst    --burst signed ban events published in one burst (MULTI/EXEC batches of 1,000,
           the writer thread's own transport code, as host "bench"); time from the first
           publish until every one is in B's and in C's kernel set
  catch-up C stopped; --burst more events published; C started again: time from starting
           the process until all of them are in C's kernel set

Also printed: each receiving blockerd's peak RSS (VmHWM, whole process) after the run.
BENCH_FLEET_PROFILE=DIR runs each blockerd's main thread under cProfile (DIR/<host>-<n>.prof;
the figures are then those of a profiled run, several times slower).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

KEY = b"bench-fleet-key-0123456789abcdef"


class Host:
    def __init__(self, name: str, work: Path, redis_url: str, key_file: Path) -> None:
        self.name = name
        self.tag = uuid.uuid4().hex[:6]
        self.netns = f"blkfb{name}-{self.tag}"
        self.home = work / name
        self.home.mkdir()
        self.sock = self.home / "ctl.sock"
        self.set4, self.set6 = f"fb4-{self.tag}", f"fb6-{self.tag}"
        (self.home / "kern.log").write_text("")
        (self.home / "jails.toml").write_text(f"""
filters_dir = "{REPO / "filters"}"
[firewall]
set_v4 = "{self.set4}"
set_v6 = "{self.set6}"
[defaults]
source = "kernlog"
subnet_min_offenders = 0
[jails.probes]
filters = ["unsolicited_synack"]
[fleet]
url = "{redis_url}"
key_file = "{key_file}"
host_id = "{name}"
publish = ["probes"]
""")
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.ipset = None
        self.starts = 0

    def start(self) -> float:
        """Start blockerd; returns the perf_counter time of the start."""
        started = time.perf_counter()
        self.starts += 1
        # BENCH_FLEET_PROFILE=DIR: each blockerd's main thread under cProfile, DIR/<host>-<n>.prof
        profile = os.environ.get("BENCH_FLEET_PROFILE")
        profiler = (
            [sys.executable, "-m", "cProfile", "-o", f"{profile}/{self.name}-{self.starts}.prof"]
            if profile
            else []
        )
        with (self.home / "blockerd.err").open("ab") as err:
            self.process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    *profiler,
                    str(BIN / "blockerd"),
                    "--config",
                    str(self.home / "jails.toml"),
                    "--log",
                    str(self.home / "kern.log"),
                    "--state-dir",
                    str(self.home / "state"),
                    "--socket",
                    str(self.sock),
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        return started

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = self.request({"cmd": "status"})
            result = cast(dict[str, Any], status.get("result", {})) if status else {}
            if result.get("fleet", {}).get("reader") == "up":
                return
            time.sleep(0.05)
        raise SystemExit(f"blockerd {self.name} not ready: see {self.home / 'blockerd.err'}")

    def request(self, message: dict[str, object]) -> dict[str, object] | None:
        from blocker.control import ControlError, request  # noqa: PLC0415

        try:
            return request(str(self.sock), message)
        except ControlError:
            return None

    def open_sets(self) -> None:
        from pyroute2.ipset import IPSet  # noqa: PLC0415

        from blocker.firewall.namespace import entered  # noqa: PLC0415

        with entered(self.netns):
            self.ipset = IPSet()

    def has(self, address: str) -> bool:
        assert self.ipset is not None
        name = self.set6 if ":" in address else self.set4
        try:
            return bool(self.ipset.test(name, address, etype="ip"))
        except Exception:  # the set or entry is not there yet
            return False

    def count(self, family: int = 6) -> int:
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "ipset",
                "list",
                "-t",
                self.set6 if family == 6 else self.set4,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in out.splitlines():
            if line.startswith("Number of entries:"):
                return int(line.split(":")[1])
        return 0

    def peak_rss_mib(self) -> float:
        if self.process is None:
            return 0.0
        # The blockerd is the child of `ip netns exec` (which execs: same pid).
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self.ipset is not None:
            self.ipset.close()
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ipset", "destroy"],
            check=False,
            capture_output=True,
        )
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)


def burst_events(count: int, round_: int) -> list[object]:
    from blocker.fleet.events import FleetEvent  # noqa: PLC0415

    now = time.time()
    base = int(IPv6Address(f"2001:db8:{round_ + 1:x}::"))
    from ipaddress import ip_network  # noqa: PLC0415

    return [
        FleetEvent(
            "ban",
            uuid.uuid4().hex,
            "bench",
            ip_network(IPv6Address(base + i)),
            "probes",
            now,
            now + 3600,
            "bench burst",
        )
        for i in range(1, count + 1)
    ]


def publish(url: str, events: list[object]) -> float:
    from blocker.fleet.redis_transport import RedisTransport  # noqa: PLC0415

    transport = RedisTransport(url, key=KEY)
    started = time.perf_counter()
    for i in range(0, len(events), 1000):
        transport.publish(events[i : i + 1000], time.time())  # type: ignore[arg-type]
    transport.close()
    return started


def wait_count(hosts: list[Host], want: int, timeout: float) -> dict[str, float]:
    """perf_counter time at which each host's IPv6 set first held `want` entries."""
    reached: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(reached) < len(hosts) and time.monotonic() < deadline:
        for host in hosts:
            if host.name not in reached and host.count() >= want:
                reached[host.name] = time.perf_counter()
        time.sleep(0.02)
    return reached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_fleet: needs root (network namespaces, ipset)", file=sys.stderr)
        return 1
    from redis_server import redis_server  # noqa: PLC0415 - tests/ helper: the real server

    report: dict[str, object] = {}
    with redis_server() as redis, tempfile.TemporaryDirectory(prefix="blkfb-") as tmp:
        work = Path(tmp)
        key_file = work / "fleet.key"
        key_file.write_bytes(KEY)
        os.chmod(key_file, 0o600)
        hosts = [Host(name, work, redis.url, key_file) for name in ("a", "b", "c")]
        try:
            for host in hosts:
                host.start()
            for host in hosts:
                host.wait_ready()
                host.open_sets()
            a, b, c = hosts

            latencies: list[float] = []
            for i in range(args.bans):
                target = f"198.51.100.{i % 250 + 1}" if i < 250 else f"203.0.113.{i - 249}"
                started = time.perf_counter()
                reply = a.request({"cmd": "ban", "target": target})
                assert reply and reply.get("ok"), reply
                pending = {b.name: b, c.name: c}
                while pending:
                    for name, host in list(pending.items()):
                        if host.has(target):
                            latencies.append(time.perf_counter() - started)
                            del pending[name]
                    if time.perf_counter() - started > 10:
                        raise SystemExit(f"{target} never reached {sorted(pending)}")
                    time.sleep(0.0005)
            ms = sorted(x * 1000 for x in latencies)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(
                f"latency  {args.bans} bans on A, {len(ms)} arrivals in B's and C's kernel "
                f"sets: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
                f"max {ms[-1]:.1f} ms (target: p99 <= 1000 ms)"
            )
            report.update(latency_p50_ms=statistics.median(ms), latency_p99_ms=p99)

            events = burst_events(args.burst, 0)
            started = publish(redis.url, events)
            published = time.perf_counter() - started
            reached = wait_count([b, c], args.burst, 120)
            for name in ("b", "c"):
                seconds = reached[name] - started if name in reached else float("nan")
                print(
                    f"burst    {args.burst:,} events published in {published:.2f} s; all in "
                    f"{name}'s kernel set {seconds:.2f} s after the first publish "
                    f"(target <= 10 s)"
                )
                report[f"burst_{name}_s"] = seconds

            c.stop()
            events = burst_events(args.burst, 1)
            publish(redis.url, events)
            started = c.start()
            while c.request({"cmd": "status"}) is None and (
                c.process is not None and c.process.poll() is None
            ):
                time.sleep(0.01)
            answering = time.perf_counter() - started
            reached = wait_count([c], 2 * args.burst, 120)
            seconds = reached["c"] - started if "c" in reached else float("nan")
            print(
                f"catch-up C started after {args.burst:,} events went by: all in its kernel "
                f"set {seconds:.2f} s after the process started (target <= 5 s); it "
                f"answered `status` after {answering:.2f} s (start-up: restoring "
                f"{args.burst:,} active bans)"
            )
            report["catchup_answering_s"] = answering
            report["catchup_s"] = seconds
            c.wait_ready()
            for host in (b, c):
                print(f"rss      blockerd {host.name}: peak {host.peak_rss_mib():.0f} MiB")
                report[f"rss_{host.name}_mib"] = host.peak_rss_mib()
        finally:
            for host in hosts:
                host.close()
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
