"""blockerd, measured from outside through the kernel (issue 3). Root; prints figures only.

    sudo .venv/bin/python bench/bench_daemon.py [--offenders 300] [--burst 5000]

In a fresh network namespace (nothing else in it, no traffic), a real blockerd follows a
scratch kern.log with the real ipset backend. This script appends LOG lines and watches the
kernel's sets over its own netlink socket:

  latency  one offender at a time: 5 SYN/ACK lines appended in one write; time until the
           address is in the kernel set (p50/p99 over --offenders offenders)
  burst    --burst offenders (5 lines each) appended in one write; bans/s until all of
           them are in the kernel set
  ingest   the 1M-line mixed log of bench_replay.py appended at once to a daemon running
           with --dry-run (that log names public-looking addresses: they stay text); lines/s
           until `blockerctl status` has counted every line
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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from netns_rerun import rerun_in_netns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))


def synack_lines(address: str, count: int = 5) -> str:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    if ":" in address:  # the kernel's IPv6 layout: addresses fully expanded, TC/HOPLIMIT
        ip = (
            f"SRC={_expanded(address)} DST={_expanded('2001:db8::1')} LEN=60 "
            "TC=0 HOPLIMIT=52 FLOWLBL=0"
        )
    else:
        ip = f"SRC={address} DST=192.0.2.1 LEN=40 TOS=0x00 PREC=0x00 TTL=52 ID=0"
    lines = [
        f"{stamp} bench kernel: INVALID IN=veth0 OUT= MAC= {ip} PROTO=TCP SPT=443 "
        f"DPT={40000 + i} WINDOW=1024 RES=0x00 ACK SYN URGP=0 \n"
        for i in range(count)
    ]
    return "".join(lines)


def _expanded(address: str) -> str:
    from ipaddress import IPv6Address  # noqa: PLC0415 - only for IPv6 offenders

    return IPv6Address(address).exploded


def offenders_v4(count: int) -> list[str]:
    pool = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 255)]
    return pool[:count]


def offenders_v6(count: int, tag: int) -> list[str]:
    return [f"2001:db8:{tag:x}:{i // 65536:x}::{i % 65536 + 1:x}" for i in range(count)]


@contextmanager
def daemon(
    workdir: Path, dry_run: bool, tag: str, *, sets: str = "bb", extra_config: str = ""
) -> Iterator[Path]:
    """A blockerd of the shipped jails.toml (sets `<sets>4-<tag>`/`<sets>6-<tag>`, plus
    `extra_config`) following a fresh kern.log in `workdir`; yields the log once it answers."""
    config = (REPO / "jails.toml").read_text()
    config = config.replace('filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"')
    config = config.replace('"blocker4"', f'"{sets}4-{tag}"')
    config = config.replace('"blocker6"', f'"{sets}6-{tag}"')
    config = config.replace("subnet_min_offenders = 3", "subnet_min_offenders = 0")
    (workdir / "jails.toml").write_text(config + extra_config)
    log = workdir / "kern.log"
    log.write_text("")
    sock = workdir / "ctl.sock"
    argv = [
        str(BIN / "blockerd"),
        "--config",
        str(workdir / "jails.toml"),
        "--log",
        str(log),
        "--state-dir",
        str(workdir / "state"),
        "--socket",
        str(sock),
    ]
    if dry_run:
        argv.append("--dry-run")
    with open(workdir / "blockerd.err", "w") as err:
        process = subprocess.Popen(argv, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while not ctl(sock, "status"):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("blockerd did not start: see " + str(workdir))
                time.sleep(0.05)
            yield log
        finally:
            process.terminate()
            process.wait(timeout=20)


def ctl(sock: Path, *args: str) -> dict[str, object] | None:
    from blocker.control import ControlError, request  # noqa: PLC0415 - after sys.path

    try:
        reply = request(str(sock), {"cmd": args[0]})
    except ControlError:
        return None
    result = reply.get("result")
    return result if isinstance(result, dict) else None


class KernelSets:
    """Membership tests against the kernel's sets over netlink (pyroute2), in this netns."""

    def __init__(self) -> None:
        from pyroute2.ipset import IPSet  # noqa: PLC0415 - root-only dependency

        self.ipset = IPSet()

    def has(self, name: str, address: str) -> bool:
        etype = "ip"
        try:
            return bool(self.ipset.test(name, address, etype=etype))
        except Exception:  # absent set or entry: not there yet
            return False

    def close(self) -> None:
        self.ipset.close()

    def count(self, name: str) -> int:
        out = subprocess.run(
            ["ipset", "list", "-t", name], check=False, capture_output=True, text=True
        )
        for line in out.stdout.splitlines():
            if line.startswith("Number of entries:"):
                return int(line.split(":")[1])
        return 0


def wait_for(condition: object, timeout: float, interval: float = 0.0002) -> float | None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if condition():  # type: ignore[operator]
            return time.perf_counter()
        time.sleep(interval)
    return None


def bench_latency(log: Path, tag: str, count: int) -> list[float]:
    sets = KernelSets()
    latencies = []
    with log.open("a") as out:
        for address in offenders_v4(count):
            text = synack_lines(address)
            start = time.perf_counter()
            out.write(text)
            out.flush()
            done = wait_for(lambda a=address: sets.has(f"bb4-{tag}", a), timeout=5)
            if done is None:
                print(f"  {address}: not banned within 5 s", file=sys.stderr)
                continue
            latencies.append(done - start)
    sets.close()
    return latencies


def bench_burst(log: Path, tag: str, count: int, round_: int) -> tuple[float, int]:
    sets = KernelSets()
    name = f"bb6-{tag}"
    before = sets.count(name)
    addresses = offenders_v6(count, 0xB0 + round_)
    text = "".join(synack_lines(a) for a in addresses)
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(text)
    # A 10 ms poll: an `ipset` process every 2 ms competes with blockerd for the two cores.
    done = wait_for(lambda: sets.count(name) - before >= count, timeout=60, interval=0.01)
    banned = sets.count(name) - before
    sets.close()
    return (done - start) if done else float("nan"), banned


def bench_ingest(log: Path, source: Path) -> tuple[float, int]:
    sock = log.parent / "ctl.sock"
    lines = sum(1 for _ in source.open("rb"))
    start = time.perf_counter()
    with source.open("rb") as src, log.open("ab") as out:
        shutil.copyfileobj(src, out, 1 << 22)

    def counted() -> bool:
        status = ctl(sock, "status")
        return bool(status) and int(str(status.get("lines", 0))) >= lines  # type: ignore[union-attr]

    done = wait_for(counted, timeout=600, interval=0.05)
    return (done - start) if done else float("nan"), lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offenders", type=int, default=300)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument(
        "--ingest-log", type=Path, default=REPO / "bench/out/kern-rfc3339-1000000-s1-v1.log"
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_daemon: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkbench", __file__)
    tag = uuid.uuid4().hex[:6]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="blkbench-") as tmp:
        work = Path(tmp)
        with daemon(work, dry_run=False, tag=tag) as log:
            latencies = bench_latency(log, tag, args.offenders)
            ms = sorted(x * 1000 for x in latencies)
            p50 = statistics.median(ms)
            p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            print(
                f"latency  {len(ms)} single offenders (5 lines each, one write): "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
                f"(targets: p50 <= 10 ms, p99 <= 50 ms)"
            )
            rounds = [bench_burst(log, tag, args.burst, i) for i in range(3)]
            for seconds, banned in rounds:
                print(
                    f"burst    {args.burst} offenders in one write: {banned} in the kernel "
                    f"set after {seconds:.3f} s = {banned / seconds:,.0f} bans/s"
                )
            seconds, banned = sorted(rounds)[1]
            print(f"burst    median of 3: {banned / seconds:,.0f} bans/s (target >= 10,000)")
            report.update(p50_ms=p50, p99_ms=p99, burst_seconds=seconds, burst_banned=banned)
        if args.ingest_log.exists():
            ingest = work / "ingest"
            ingest.mkdir()
            with daemon(ingest, dry_run=True, tag=tag) as log:
                seconds, lines = bench_ingest(log, args.ingest_log)
                print(
                    f"ingest   {lines:,} mixed lines appended at once: {seconds:.2f} s = "
                    f"{lines / seconds:,.0f} lines/s (target >= 100,000)"
                )
                report.update(ingest_seconds=seconds, ingest_lines=lines)
        else:
            print(f"ingest   skipped: {args.ingest_log} missing (run bench/bench_replay.py once)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
