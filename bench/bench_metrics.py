"""Does scraping /metrics delay bans? Root; prints figures only.

    sudo .venv/bin/python bench/bench_metrics.py [--offenders 200] [--preload 20000]

In a fresh network namespace, a real blockerd (real ipset backend) follows a scratch kern.log
with `[metrics] listen` on the namespace's loopback. --preload offenders are banned first, so
each scrape walks that many active bans. Then, without and with a second process scraping
/metrics (once a second, then back to back), single offenders are appended (5 SYN/ACK lines in
one write) and the time until each is in the kernel set is measured (bench_daemon.py's way).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_daemon  # noqa: E402 (after the path is set)
from bench_daemon import (  # noqa: E402
    KernelSets,
    offenders_v6,
    synack_lines,
    wait_for,
)
from netns_rerun import rerun_in_netns  # noqa: E402

SCRAPER = """
import sys, time, urllib.request
url, seconds, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
took = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as reply:
        reply.read()
    took.append(time.perf_counter() - start)
    time.sleep(pause)
took.sort()
print(len(took), took[len(took) // 2] if took else 0.0)
"""


def daemon(workdir: Path, tag: str, port: int) -> AbstractContextManager[Path]:
    """bench_daemon's blockerd (real ipsets), with /metrics served on `port`."""
    metrics = f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    return bench_daemon.daemon(workdir, False, tag, sets="bm", extra_config=metrics)


def latencies(log: Path, name: str, addresses: list[str]) -> list[float]:
    sets = KernelSets()
    out: list[float] = []
    with log.open("a") as stream:
        for address in addresses:
            text = synack_lines(address)
            start = time.perf_counter()
            stream.write(text)
            stream.flush()
            done = wait_for(lambda a=address: sets.has(name, a), timeout=10)
            if done is None:
                print(f"  {address}: not banned within 10 s", file=sys.stderr)
                continue
            out.append((done - start) * 1000)
    sets.close()
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):6.1f} ms, p99 {p99:6.1f} ms, max {ms[-1]:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offenders", type=int, default=200, help="per round")
    parser.add_argument("--preload", type=int, default=20000, help="active bans first")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_metrics: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkmetrics", __file__)
    tag = uuid.uuid4().hex[:6]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"http://127.0.0.1:{port}/metrics"
    pool = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 255)]
    modes = (
        ("no scraping", None),
        ("a scrape a second", 1.0),
        ("no scraping", None),
        ("scraping nonstop", 0.0),
    )
    rounds = [pool[i * args.offenders : (i + 1) * args.offenders] for i in range(len(modes))]
    if len(rounds[-1]) < args.offenders:
        raise SystemExit(f"--offenders at most {len(pool) // len(modes)}")
    with (
        tempfile.TemporaryDirectory(prefix="blkmetrics-") as tmp,
        daemon(Path(tmp), tag, port) as log,
    ):
        sets = KernelSets()
        preload = offenders_v6(args.preload, 0xA1)
        with log.open("a") as stream:
            stream.write("".join(synack_lines(a) for a in preload))
        wait_for(lambda: sets.count(f"bm6-{tag}") >= args.preload, timeout=120, interval=0.1)
        print(f"preloaded {sets.count(f'bm6-{tag}')} active bans (each scrape walks them)")
        sets.close()
        figures: dict[str, list[float]] = {}
        for (mode, pause), addresses in zip(modes, rounds, strict=True):
            if pause is None:
                figures.setdefault(mode, []).extend(latencies(log, f"bm4-{tag}", addresses))
                continue
            scraper = subprocess.Popen(
                [sys.executable, "-c", SCRAPER, url, "3600", str(pause)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # let it get going
            figures.setdefault(mode, []).extend(latencies(log, f"bm4-{tag}", addresses))
            scraper.terminate()
            scraper.wait(timeout=10)
        probe_run = subprocess.run(
            [sys.executable, "-c", SCRAPER, url, "3", "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        scrapes, median = probe_run.stdout.split()
        print(
            f"scrape   {float(median) * 1000:.1f} ms median with {args.preload} active bans "
            f"({scrapes} scrapes in 3 s back to back)"
        )
        for mode, ms in figures.items():
            print(f"{mode:18} {len(ms)} offenders: {summary(ms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
