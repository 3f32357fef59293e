"""`list` of a million bans against ban latency (issue 10, part 4). Root; prints figures only.

    sudo .venv/bin/python bench/bench_list.py [--entries 1000000] [--blockerd PATH] [--baseline 50]

In a fresh network namespace a real blockerd (real ipset backend) follows a scratch kern.log.
Its IPv6 set is filled with --entries entries (2001:db8::/32 networks, `ipset restore`), then a
client asks for `list` over the control socket and reads the whole reply (bytes only: the
cost measured is the daemon's). While that reply streams, offenders are banned one at a time
(5 SYN/ACK lines appended to kern.log, then the time until the address is in the kernel's
IPv4 set): the worst of those latencies is how long a `list` delays a ban. The same latencies
are measured before the list, as the baseline. Whole-process peak RSS of blockerd (VmHWM) is
printed. `--blockerd` runs another checkout's blockerd (e.g. main's, to compare commits back
to back in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_daemon import KernelSets, ctl, offenders_v4, synack_lines, wait_for  # noqa: E402
from netns_rerun import rerun_in_netns  # noqa: E402


def start_daemon(
    work: Path, tag: str, blockerd: list[str], cwd: Path | None
) -> subprocess.Popen[bytes]:
    config = (REPO / "jails.toml").read_text()
    config = config.replace('filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"')
    config = config.replace('"blocker4"', f'"bl4-{tag}"').replace('"blocker6"', f'"bl6-{tag}"')
    config = config.replace("subnet_min_offenders = 3", "subnet_min_offenders = 0")
    (work / "jails.toml").write_text(config)
    (work / "kern.log").write_text("")
    argv = [
        *blockerd,
        "--config",
        str(work / "jails.toml"),
        "--log",
        str(work / "kern.log"),
        "--state-dir",
        str(work / "state"),
        "--socket",
        str(work / "ctl.sock"),
    ]
    err = (work / "blockerd.err").open("w")
    # In the checkout's directory: `python -m` looks for the package there first.
    process = subprocess.Popen(argv, stderr=err, cwd=cwd)
    deadline = time.monotonic() + 30
    while not ctl(work / "ctl.sock", "status"):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"blockerd did not start: see {work}/blockerd.err")
        time.sleep(0.05)
    return process


def fill_set(name: str, count: int) -> float:
    lines = "".join(
        f"add {name} 2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64 timeout 86400\n" for i in range(count)
    )
    start = time.perf_counter()
    subprocess.run(["ipset", "restore", "-exist"], input=lines.encode(), check=True)
    return time.perf_counter() - start


# The reader runs as its own process: in this one it would compete with the latency probe
# for the GIL and the figures would measure the bench, not blockerd.
_READER = """
import json, socket, sys, time
start = time.perf_counter()
first = None
size = rows = 0
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(120)
    sock.connect(sys.argv[1])
    sock.sendall(b'{"cmd": "list"}\\n')
    while chunk := sock.recv(1 << 20):
        if first is None:
            first = time.perf_counter() - start
        size += len(chunk)
        rows += chunk.count(b'"target"')
print(json.dumps({"seconds": time.perf_counter() - start, "first_byte": first or 0.0,
                  "bytes": size, "rows": rows}))
"""


def read_list(path: Path, result: dict[str, float]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _READER, str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr else "reader failed")
    result.update(json.loads(done.stdout))


def ban_latencies(
    log: Path, tag: str, addresses: list[str], until: threading.Event | None = None
) -> list[float]:
    sets = KernelSets()
    latencies = []
    with log.open("a") as out:
        for address in addresses:
            if until is not None and until.is_set():
                break
            start = time.perf_counter()
            out.write(synack_lines(address))
            out.flush()
            done = wait_for(lambda a=address: sets.has(f"bl4-{tag}", a), timeout=30)
            if done is None:
                print(f"  {address}: not banned within 30 s", file=sys.stderr)
                continue
            latencies.append(done - start)
    sets.close()
    return latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return "none measured"
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"{len(ms)} bans: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument(
        "--blockerd",
        default=str(Path(sys.executable).parent / "blockerd"),
        help="blockerd to run, or a checkout's directory (run with its code)",
    )
    parser.add_argument(
        "--baseline",
        type=int,
        default=50,
        help="bans measured before the list (of 508 addresses; the rest go during it)",
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_list: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkbench", __file__)
    blockerd = [args.blockerd]
    checkout = None
    if Path(args.blockerd).is_dir():  # a checkout: its package, this interpreter
        checkout = Path(args.blockerd).resolve()
        os.environ["PYTHONPATH"] = str(checkout)
        blockerd = [sys.executable, "-m", "blocker.daemon"]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tag = uuid.uuid4().hex[:6]
    pool = offenders_v4(508)
    with tempfile.TemporaryDirectory(prefix="blkbench-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        process = start_daemon(work, tag, blockerd, checkout)
        print(f"blockerd {' '.join(blockerd)} (cwd {checkout or '.'})")
        try:
            filled = fill_set(f"bl6-{tag}", args.entries)
            print(
                f"filled   {args.entries:,} entries into bl6-{tag} in {filled:.1f} s "
                "(ipset restore)"
            )
            before = ban_latencies(work / "kern.log", tag, pool[: args.baseline])
            print(f"before   ban latency, no list running: {summary(before)}")
            listed: dict[str, float] = {}
            done = threading.Event()

            def lister() -> None:
                try:
                    read_list(work / "ctl.sock", listed)
                except OSError as exc:  # e.g. no byte within the client's 120 s
                    print(f"list     failed: {exc!r}")
                finally:
                    done.set()

            thread = threading.Thread(target=lister)
            thread.start()
            during = ban_latencies(work / "kern.log", tag, pool[args.baseline :], until=done)
            thread.join()
            print(
                f"list     {listed.get('rows', 0):,.0f} rows, {listed.get('bytes', 0) / 1e6:.0f}"
                f" MB in {listed.get('seconds', 0):.1f} s (first byte after "
                f"{listed.get('first_byte', 0) * 1000:.0f} ms)"
            )
            print(f"during   ban latency while the list streamed: {summary(during)}")
            print(f"rss      blockerd peak (VmHWM): {peak_rss_mib(process.pid):.0f} MiB")
            print(
                json.dumps(
                    {
                        "before_ms": [round(x * 1000, 1) for x in before],
                        "during_ms": [round(x * 1000, 1) for x in during],
                        **listed,
                    }
                )
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
