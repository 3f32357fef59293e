"""Flood benchmark (issue 9): `blockerctl test` on source floods, bans checked, RSS measured.

    .venv/bin/python bench/bench_flood.py a                  # 1M spoofed one-hit sources
    .venv/bin/python bench/bench_flood.py a --sources 10000000 --seconds 600
    .venv/bin/python bench/bench_flood.py b --spread clustered --baseline /tmp/score-base
    .venv/bin/python bench/bench_flood.py b --spread random

Scenarios (SYN/ACK lines in the rsyslog rfc3339 style, the shipped jails.toml):
  a  `--sources` spoofed one-hit sources, random public IPv4 outside the documentation
     ranges, spread evenly over `--seconds` of log time, with 10 attackers (198.51.100.1-10)
     each sending 6 SYN/ACKs 10 s apart in the middle minute. Checked: all 10 banned, no
     spoofed source banned (alone or inside a banned subnet).
  c  bench's mixed 1M-line log (gen_kernlog.py, cached): the full `bans` of every tree
     compared; prints whether they are identical (needs --baseline).
  b  `--sources` reflectors x 6 SYN/ACKs in 6 rounds of one line per reflector, same order
     every round, so each reflector's lines are `--sources` lines apart; the 6 rounds take
     55 s of log time (one window). Checked: every reflector banned, alone or inside a
     banned /24.  --spread clustered: real reflector sets sit in provider networks, so
     reflectors fill whole /24s (245 hosts each, /24s drawn at random); --spread random:
     every reflector anywhere in public IPv4.

Each commit (this worktree, and --baseline DIR, e.g. `git worktree add /tmp/score-base
7b02ffe`) runs `python -m blocker.cli test --config jails.toml --json LOG` as a child
process, back to back on the same file; the table gives wall time, lines/s, CPU time and
the child's peak RSS (ru_maxrss from wait4). Not a test: figures only, never fails. Logs
are cached in bench/out/ (gitignored). On a shared machine rerun and compare back to back.
"""

from __future__ import annotations

import argparse
import calendar
import json
import mmap
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_kernlog import DEFAULT_START, HOST, HOST_V4, MAC_V4, default_path, generate

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
ATTACKERS = [f"198.51.100.{i}" for i in range(1, 11)]
PER_SUBNET = 245
# First bytes never drawn: 0, 10, 127, 169.254's 169 (kept simple), 172, 192 (documentation
# and private ranges live there), 198, 203 and 224+ (special).
_FIRST_BYTES = [b for b in range(1, 224) if b not in {10, 127, 169, 172, 192, 198, 203}]


def _line(stamp: str, micros: int, src: str, dport: int) -> str:
    return (
        f"{stamp}.{micros:06d}+00:00 {HOST} kernel: [UFW BLOCK] IN=eth0 OUT= "
        f"MAC={MAC_V4} SRC={src} DST={HOST_V4} LEN=44 TOS=0x00 PREC=0x00 TTL=52 ID=0 DF "
        f"PROTO=TCP SPT=443 DPT={dport} WINDOW=65535 RES=0x00 ACK SYN URGP=0 "
        f"OPT (020405B4) \n"
    )


class Clock:
    """Formats log times: one strftime per second."""

    def __init__(self) -> None:
        self.epoch = float(calendar.timegm(time.strptime(DEFAULT_START, "%Y-%m-%dT%H:%M:%SZ")))
        self._second = -1
        self._text = ""

    def stamp(self, offset: float) -> tuple[str, int]:
        t = self.epoch + offset
        whole = int(t)
        if whole != self._second:
            self._second = whole
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return self._text, int((t - whole) * 1e6)


def random_sources(rng: random.Random, count: int) -> list[str]:
    seen: set[int] = set()
    out: list[str] = []
    while len(out) < count:
        value = rng.choice(_FIRST_BYTES) << 24 | rng.getrandbits(24)
        if value not in seen:
            seen.add(value)
            out.append(str(IPv4Address(value)))
    return out


def clustered_sources(rng: random.Random, count: int) -> list[str]:
    subnets = random_sources(rng, -(-count // PER_SUBNET))
    out: list[str] = []
    for text in subnets:
        base = int(IPv4Address(text)) & ~0xFF
        out.extend(str(IPv4Address(base + host)) for host in range(1, PER_SUBNET + 1))
    out = out[:count]
    rng.shuffle(out)
    return out


def write_a(path: Path, sources: int, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    middle = max(0.0, seconds / 2 - 30)
    attacks = sorted(
        (middle + 2 + 10 * k + i * 0.01, src) for k in range(6) for i, src in enumerate(ATTACKERS)
    )
    with path.open("w", encoding="ascii") as out:
        step = seconds / sources
        made = 0
        while made < sources:
            batch = random_sources(rng, min(100_000, sources - made))
            lines = []
            for src in batch:
                at = made * step
                while attacks and attacks[0][0] <= at:
                    when, attacker = attacks.pop(0)
                    lines.append(_line(*clock.stamp(when), attacker, 40000))
                lines.append(_line(*clock.stamp(at), src, rng.randrange(32768, 61000)))
                made += 1
            out.writelines(lines)
        for when, attacker in attacks:
            out.write(_line(*clock.stamp(when), attacker, 40000))


def reflectors_of(sources: int, spread: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    return (clustered_sources if spread == "clustered" else random_sources)(rng, sources)


def write_b(path: Path, reflectors: list[str]) -> None:
    clock = Clock()
    sources = len(reflectors)
    step = 55.0 / (6 * sources)
    with path.open("w", encoding="ascii") as out:
        n = 0
        for _ in range(6):
            lines = []
            for src in reflectors:
                lines.append(_line(*clock.stamp(n * step), src, 40000))
                n += 1
                if len(lines) >= 100_000:
                    out.writelines(lines)
                    lines = []
            out.writelines(lines)


def run(tree: Path, log: Path) -> tuple[float, float, int, Path]:
    """(wall s, CPU s, peak RSS bytes, JSON output file) of `blockerctl test` in `tree`."""
    result = Path(tempfile.mkstemp(prefix="bench_flood.", suffix=".json")[1])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # Spawned through /usr/bin/time, a small process: Linux carries the spawner's peak RSS
    # into the child's ru_maxrss across exec, and this process holds a million addresses.
    peak = Path(tempfile.mkstemp(prefix="bench_flood.", suffix=".rss")[1])
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(peak)] if Path("/usr/bin/time").exists() else []
    command = [
        *timer,
        sys.executable,
        "-m",
        "blocker.cli",
        "test",
        "--config",
        str(tree / "jails.toml"),
        "--json",
        str(log),
    ]
    with result.open("wb") as out:
        began = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, cwd=tree, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        print(f"  {tree}: exit {child.returncode}")
    text = peak.read_text(encoding="ascii").split()
    peak.unlink()
    rss = int(text[-1]) if text and text[-1].isdigit() else usage.ru_maxrss
    return wall, usage.ru_utime + usage.ru_stime, rss * 1024, result


def banned(result: Path) -> tuple[set[str], set[str]]:
    """(banned hosts, banned subnets) from `blockerctl test --json` output."""
    hosts: set[str] = set()
    subnets: set[str] = set()
    if result.stat().st_size == 0:
        return hosts, subnets
    with result.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for match in re.finditer(rb'"target": "([^"]+)"', data):
            text = match.group(1).decode()
            (subnets if "/" in text else hosts).add(text)
    return hosts, subnets


def covered(addr: str, hosts: set[str], subnets: set[str]) -> bool:
    if addr in hosts:
        return True
    return str(IPv4Network((int(IPv4Address(addr)) & ~0xFF, 24))) in subnets


def compare_mixed(baselines: list[Path]) -> int:
    log = default_path(1_000_000, 1, "rfc3339")
    if not log.exists():
        generate(log, 1_000_000, 1, "rfc3339")
    outputs = []
    for tree in [*baselines, REPO]:
        wall, cpu, rss, result = run(tree.resolve(), log)
        data = json.loads(result.read_text(encoding="utf-8"))
        result.unlink()
        outputs.append(data["bans"])
        print(
            f"  {tree!s:32} wall {wall:6.1f} s  cpu {cpu:6.1f} s  peak RSS "
            f"{rss / 2**20:6.0f} MiB  bans {len(data['bans']):,}"
        )
    same = all(bans == outputs[-1] for bans in outputs)
    print(f"{log.name}: bans identical in every tree: {same}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("scenario", choices=("a", "b", "c"))
    parser.add_argument("--sources", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="scenario a: log span")
    parser.add_argument("--spread", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout to run on the same file (repeatable)",
    )
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.scenario == "c":
        return compare_mixed(args.baseline)
    if args.scenario == "a":
        log = OUT / f"flood_a_{args.sources}_{args.seconds:g}s_{args.seed}.log"
    else:
        log = OUT / f"flood_b_{args.sources}_{args.spread}_{args.seed}.log"
    began = time.perf_counter()
    if args.scenario == "a":
        if not log.exists():
            write_a(log, args.sources, args.seconds, args.seed)
        expected = set(ATTACKERS)
    else:
        reflectors = reflectors_of(args.sources, args.spread, args.seed)
        if not log.exists():
            write_b(log.with_suffix(".tmp"), reflectors)
            log.with_suffix(".tmp").replace(log)
        expected = set(reflectors)
        del reflectors
    lines = sum(1 for _ in log.open("rb"))
    print(
        f"{log.name}: {lines:,} lines, {log.stat().st_size / 1e6:.0f} MB "
        f"(ready in {time.perf_counter() - began:.0f} s); load {os.getloadavg()}"
    )
    for tree in [*args.baseline, REPO]:
        wall, cpu, rss, result = run(tree.resolve(), log)
        hosts, subnets = banned(result)
        got = sum(1 for addr in expected if covered(addr, hosts, subnets))
        extra = len(hosts - expected) if args.scenario == "a" else 0
        print(
            f"  {tree!s:32} wall {wall:6.1f} s  {lines / wall:9,.0f} lines/s  "
            f"cpu {cpu:6.1f} s  peak RSS {rss / 2**20:6.0f} MiB  "
            f"bans {len(hosts):,} hosts + {len(subnets):,} subnets; "
            f"expected covered {got:,}/{len(expected):,}"
            + (f"; other hosts banned {extra}" if args.scenario == "a" else "")
        )
        result.unlink()
    print(f"  load after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
