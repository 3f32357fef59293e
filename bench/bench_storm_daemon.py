"""Issue 9 (d): a reflection storm through a real blockerd and the kernel. Root; prints figures.

    sudo .venv/bin/python bench/bench_storm_daemon.py [--reflectors 1000000] [--trains 6]

In a fresh network namespace, blockerd (the shipped jails.toml, the real ipset backend) follows
a scratch kern.log. The storm of (b) is appended to it: --reflectors reflectors x --trains
unsolicited SYN/ACKs, interleaved round by round so each reflector's lines are --reflectors
lines apart, all within one 60 s window of log time. Reflectors are IPv6 hosts of
2001:db8::/32, one per /64 (text in a log and entries in our own namespace's set: nothing is
sent anywhere).

Then: how long until blockerd has read every line and its bans stopped growing, how many
reflectors the kernel set holds or covers with a subnet entry, and blockerd's whole-process
RSS (peak VmHWM, and VmRSS sampled every second). Target: every reflector, RSS <= 300 MB.

--timeline S runs blockerd through storm_probe.py, which samples its memory every S seconds
(RSS against glibc's heap and pymalloc's arenas) and prints the timeline: where RSS runs above
what is alive, it says which allocator holds the difference. --tracemalloc N adds tracemalloc
(slower, and its RSS then includes tracemalloc's own books: read the breakdown, not the RSS)
and prints the N biggest allocation sites alive at the sample that traced the most.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from ipaddress import IPv6Address
from pathlib import Path

from netns_rerun import rerun_in_netns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

BASE = 0x20010DB8 << 96
WINDOW_USED = 54.0  # seconds of log time the whole storm spans (the jail's window is 60 s)


def reflector(i: int) -> int:
    return BASE | (i >> 16) << 80 | (i & 0xFFFF) << 64 | 1


def generate_storm(path: Path, reflectors: int, trains: int, start: float) -> int:
    """Write the storm to `path` (before blockerd sees any of it) -> lines.

    The reflectors' texts are made once and each line's timestamp from a per-second prefix,
    so 6M lines take seconds, not minutes of datetime formatting."""
    total = reflectors * trains
    step = WINDOW_USED / total
    dst = IPv6Address("2001:db8::10").exploded
    head = " storm kernel: INVALID IN=veth0 OUT= MAC= SRC="
    tail = (
        f" DST={dst} LEN=60 TC=0 HOPLIMIT=52 FLOWLBL=0 PROTO=TCP SPT=443 DPT=40312 "
        "WINDOW=1024 RES=0x00 ACK SYN URGP=0\n"
    )
    sources = [
        f"2001:0db8:{i >> 16:04x}:{i & 0xFFFF:04x}:0000:0000:0000:0001{tail}"
        for i in range(reflectors)
    ]
    assert sources[1].startswith(IPv6Address(reflector(1)).exploded + " ")
    seconds: dict[int, str] = {}
    line = 0
    with path.open("w") as out:
        for _train in range(trains):
            for begin in range(0, reflectors, 100_000):
                chunk: list[str] = []
                for source in sources[begin : begin + 100_000]:
                    stamp = start + line * step
                    whole = int(stamp)
                    prefix = seconds.get(whole)
                    if prefix is None:
                        prefix = seconds[whole] = datetime.fromtimestamp(whole, UTC).strftime(
                            "%Y-%m-%dT%H:%M:%S"
                        )
                    micros = int((stamp - whole) * 1_000_000)
                    chunk.append(f"{prefix}.{micros:06d}+00:00{head}{source}")
                    line += 1
                out.write("".join(chunk))
    return line


def append_storm(source: Path, log: Path, block: int = 16 << 20) -> None:
    """Append the pre-made storm to the followed log in blocks of whole lines."""
    with source.open("rb") as made, log.open("ab") as out:
        rest = b""
        while data := made.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            out.write(data[:cut])
            out.flush()
            rest = data[cut:]
        out.write(rest)


def rss(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = text.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


def print_timeline(pid: int, path: Path, top: int) -> None:
    """Ask the probe for a last sample, then print the timeline storm_probe.py wrote: RSS
    against what each allocator holds, and under tracemalloc the sites alive at the sample
    where the most was traced (the peak of what is alive)."""
    lines = len(path.read_text().splitlines()) if path.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    for _ in range(600):  # a snapshot of millions of blocks takes a while
        time.sleep(1.0)
        if path.exists() and len(path.read_text().splitlines()) > lines:
            break
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print(
        "timeline (MB; heap = glibc brk heap held, of it free; mmap = big blocks; "
        "py = pymalloc: arenas held, bytes alive in them, free in used pools, empty pools)"
    )
    print(
        f"  {'t':>5} {'RSS':>5} {'HWM':>5} {'heap':>5} {'free':>5} {'mmap':>5} "
        f"{'arenas':>6} {'pyused':>6} {'pyfree':>6} {'pools':>6} {'traced':>6}"
    )
    for row in rows:
        print(
            f"  {row['t']:5.0f} {row.get('VmRSS', 0):5.0f} {row.get('VmHWM', 0):5.0f} "
            f"{row.get('heap_mb', 0):5.0f} {row.get('heap_free_mb', 0):5.0f} "
            f"{row.get('mmap_mb', 0):5.0f} {row.get('arenas', 0):6.0f} "
            f"{row.get('py_used_mb', 0):6.0f} {row.get('py_free_mb', 0):6.0f} "
            f"{row.get('py_pools_free_mb', 0):6.0f} "
            f"{row.get('traced_mb', 0):6.0f}"
        )
    traced = [row for row in rows if "top" in row]
    if traced:
        peak = max(traced, key=lambda row: row["traced_mb"])
        print(f"alive at t={peak['t']:.0f} s ({peak['traced_mb']:.0f} MB traced), biggest sites:")
        for size, count, where in peak["top"][:top]:
            print(f"  {size:7.1f} MB {count:>10,} blocks  {where.replace(str(REPO) + '/', '')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reflectors", type=int, default=1_000_000)
    parser.add_argument("--trains", type=int, default=6)
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N")
    parser.add_argument(
        "--timeline",
        type=float,
        default=0.0,
        metavar="S",
        help="sample blockerd's memory every S seconds (storm_probe.py) and print it",
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_storm_daemon: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkbench", __file__)
    from blocker.control import ControlError, request  # noqa: PLC0415 - after sys.path
    from blocker.firewall.ipset import IpsetBackend  # noqa: PLC0415

    tag = uuid.uuid4().hex[:6]
    set4, set6 = f"bs4-{tag}", f"bs6-{tag}"
    with tempfile.TemporaryDirectory(prefix="blkstorm-") as tmp:
        work = Path(tmp)
        config = (REPO / "jails.toml").read_text()
        config = config.replace('filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"')
        config = config.replace('"blocker4"', f'"{set4}"').replace('"blocker6"', f'"{set6}"')
        (work / "jails.toml").write_text(config)
        log = work / "kern.log"
        log.write_text("")
        sock = str(work / "ctl.sock")
        argv = [
            str(BIN / "blockerd"),
            "--config",
            str(work / "jails.toml"),
            "--log",
            str(log),
            "--state-dir",
            str(work / "state"),
            "--socket",
            sock,
        ]
        timeline = work / "blockerd.timeline"
        if args.tracemalloc or args.timeline:  # the bench's blockerd only: storm_probe.py
            every = str(args.timeline or 3600.0)
            probe = [sys.executable, str(Path(__file__).with_name("storm_probe.py"))]
            traced = ["--tracemalloc", str(args.tracemalloc)] if args.tracemalloc else []
            argv[:1] = [*probe, str(timeline), every, *traced, "--"]
        with open(work / "blockerd.err", "w") as err:
            process = subprocess.Popen(argv, stderr=err)
        peak_sampled = [0.0]
        series: list[tuple[float, float, float]] = []  # (s since the first append, RSS, HWM)
        stop = threading.Event()

        def sample() -> None:
            began = time.perf_counter()
            while not stop.wait(1.0):
                try:
                    now = rss(process.pid)
                except (OSError, KeyError):
                    return
                peak_sampled[0] = max(peak_sampled[0], now["VmRSS"])
                series.append((time.perf_counter() - began, now["VmRSS"], now["VmHWM"]))

        def status() -> dict[str, object]:
            try:
                result = request(sock, {"cmd": "status"}, timeout=120).get("result")
            except ControlError:
                return {}
            return result if isinstance(result, dict) else {}

        try:
            deadline = time.monotonic() + 60
            while not status():
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"blockerd did not start: see {work}/blockerd.err")
                time.sleep(0.1)
            made = time.perf_counter()
            storm = work / "storm.log"
            start = time.time() - WINDOW_USED - 1
            lines = generate_storm(storm, args.reflectors, args.trains, start)
            print(
                f"storm    {lines:,} lines ({args.reflectors:,} reflectors x {args.trains}, "
                f"{storm.stat().st_size / 1e6:.0f} MB) generated in "
                f"{time.perf_counter() - made:.1f} s (before blockerd sees any)"
            )
            threading.Thread(target=sample, daemon=True).start()
            began = time.perf_counter()
            append_storm(storm, log)
            print(f"append   in {time.perf_counter() - began:.1f} s (16 MB blocks)")
            last, steady = -1, 0
            while True:  # every line read, then the active bans unchanged for 3 s
                now = status()
                read = int(str(now.get("lines", 0)))
                bans = int(str(now.get("active_bans", 0)))
                if read >= lines and bans == last:
                    steady += 1
                    if steady >= 3:
                        break
                else:
                    steady = 0
                last = bans
                time.sleep(1.0)
                if time.perf_counter() - began > 3600:
                    print("gave up after an hour", file=sys.stderr)
                    break
            took = time.perf_counter() - began - 3.0
            mem = rss(process.pid)
            if args.tracemalloc or args.timeline:
                print_timeline(process.pid, timeline, args.tracemalloc)
            with IpsetBackend(set4=set4, set6=set6) as backend:
                held = {(int(t.network_address), t.prefixlen) for t, _ in backend.list()}
            covered = 0
            for i in range(args.reflectors):
                value = reflector(i)
                covered += any(
                    (value >> (128 - p) << (128 - p), p) in held for p in range(128, 0, -1)
                )
            stats = {name: jail.get("scorer") for name, jail in dict(now.get("jails", {})).items()}  # type: ignore[call-overload]
            print(
                f"daemon   all lines read and bans settled {took:.1f} s after the first "
                f"append = {lines / took:,.0f} lines/s"
            )
            print(
                f"kernel   {covered:,} of {args.reflectors:,} reflectors banned or inside a "
                f"banned subnet ({len(held):,} entries); refused by the kernel: "
                f"{now.get('refused_bans')} (target: every reflector)"
            )
            print(
                f"memory   blockerd RSS peak {mem['VmHWM']:.0f} MB, end {mem['VmRSS']:.0f} MB,"
                f" sampled max {peak_sampled[0]:.0f} MB (target <= 300 MB)"
            )
            stride = max(1, len(series) // 30)
            print(
                "rss/s    "
                + " ".join(f"{t:.0f}:{r:.0f}/{h:.0f}" for t, r, h in series[::stride])
                + "  (s after the first append: VmRSS/VmHWM MB)"
            )
            print(
                json.dumps(
                    {
                        "reflectors": args.reflectors,
                        "lines": lines,
                        "seconds": round(took, 1),
                        "covered": covered,
                        "entries": len(held),
                        "rss_peak_mb": round(mem["VmHWM"]),
                        "scorer": stats,
                    },
                    default=str,
                )
            )
        finally:
            stop.set()
            process.terminate()
            process.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
