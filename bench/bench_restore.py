"""blockerd restarting with a million active bans (issue 9). Root; prints figures only.

    sudo .venv/bin/python bench/bench_restore.py [--bans 1000000]

In a fresh network namespace, a state database is filled with --bans active bans (IPv6 hosts
of 2001:db8::/32, text only: nothing is ever sent), then a real blockerd with the real ipset
backend starts on it, twice:

  cold   the kernel sets are empty (a reboot): time from exec until systemd's READY=1
         (sd_notify, read from our own notify socket), then how many entries the kernel set
         holds at that moment (all of them, or the restore is not done)
  warm   the same daemon restarted with the sets still full (a crash or an upgrade)

and, with the million bans active, the time `blockerctl status` takes to answer, and the time
from SIGTERM to exit. RSS is blockerd's whole-process peak (VmHWM) and current (VmRSS).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from netns_rerun import rerun_in_netns

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

CONFIG = """
filters_dir = "{filters}"
[firewall]
set_v4 = "{set4}"
set_v6 = "{set6}"
[defaults]
source = "kernlog"
[jails.probes]
filters = ["unsolicited_synack", "outgoing_rst"]
[jails.scans]
filters = ["syn_scan"]
"""


def fill_state(state_dir: Path, count: int, now: float) -> None:
    """`count` active bans as blockerd writes them (State.record_bans' columns)."""
    from blocker.state import State  # noqa: PLC0415 - after sys.path

    State(state_dir).close()  # the schema
    db = sqlite3.connect(state_dir / "state.sqlite")
    reason = "score 5.0 >= 5 within 60s: unsolicited_synack x5"

    def rows() -> Iterator[tuple[object, ...]]:
        for i in range(count):
            # Spread over 2001:db8::/32, a /64 each, ban ends spread over the next hour.
            target = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"
            yield (
                target,
                "probes",
                now - 60,
                now + 3600 + i % 3600,
                5.0,
                "unsolicited_synack",
                reason,
                "auto",
            )

    with db:
        db.executemany(
            "INSERT INTO bans (target, jail, at, expires, score, filters, reason, "
            "origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
    db.close()


def set_entries(name: str) -> int:
    out = subprocess.run(
        ["ipset", "list", "-t", name], check=False, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("Number of entries:"):
            return int(line.split(":")[1])
    return -1


def memory(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


def start(work: Path, notify: socket.socket) -> tuple[subprocess.Popen[bytes], float]:
    argv = [
        str(BIN / "blockerd"),
        "--config",
        str(work / "jails.toml"),
        "--log",
        str(work / "kern.log"),
        "--state-dir",
        str(work / "state"),
        "--socket",
        str(work / "ctl.sock"),
    ]
    env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock")}
    began = time.perf_counter()
    process = subprocess.Popen(argv, stderr=(work / "blockerd.err").open("ab"), env=env)
    notify.settimeout(600)
    while True:
        message = notify.recv(4096).decode()
        if "READY=1" in message.splitlines():
            return process, time.perf_counter() - began


def stop(process: subprocess.Popen[bytes]) -> float:
    began = time.perf_counter()
    process.terminate()
    process.wait(timeout=600)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=1_000_000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_restore: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkbench", __file__)
    from blocker.control import request  # noqa: PLC0415 - after sys.path

    tag = uuid.uuid4().hex[:6]
    set4, set6 = f"br4-{tag}", f"br6-{tag}"
    report: dict[str, object] = {"bans": args.bans}
    with tempfile.TemporaryDirectory(prefix="blkrestore-") as tmp:
        work = Path(tmp)
        (work / "jails.toml").write_text(
            CONFIG.format(filters=REPO / "filters", set4=set4, set6=set6)
        )
        (work / "kern.log").write_text("")
        began = time.perf_counter()
        fill_state(work / "state", args.bans, time.time())
        print(f"state    {args.bans:,} active bans written in {time.perf_counter() - began:.1f} s")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify.sock"))
        try:
            for run in ("cold", "warm"):
                process, ready = start(work, notify)
                held = set_entries(set6)
                mem = memory(process.pid)
                print(
                    f"{run:8} READY=1 after {ready:.2f} s with {held:,} of {args.bans:,} in "
                    f"the kernel set; RSS {mem['VmRSS']:.0f} MB, peak {mem['VmHWM']:.0f} MB "
                    "(target: ready <= 30 s with all of them)"
                )
                report[f"{run}_ready_s"] = round(ready, 2)
                report[f"{run}_in_kernel"] = held
                report[f"{run}_rss_peak_mb"] = round(mem["VmHWM"])
                asked = time.perf_counter()
                reply = request(str(work / "ctl.sock"), {"cmd": "status"}, timeout=600)
                took = time.perf_counter() - asked
                result = reply.get("result", {})
                print(
                    f"{'':8} status answered in {took * 1000:.0f} ms: active_bans "
                    f"{result.get('active_bans')}, sets "
                    f"{json.dumps(result.get('firewall', {}).get('sets'))}"
                )
                report[f"{run}_status_ms"] = round(took * 1000)
                stopped = stop(process)
                print(f"{'':8} SIGTERM -> exit in {stopped:.2f} s")
                report[f"{run}_sigterm_s"] = round(stopped, 2)
        finally:
            notify.close()
            for name in (set4, set6):
                subprocess.run(["ipset", "destroy", name], check=False, capture_output=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
