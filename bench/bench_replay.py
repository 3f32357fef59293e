"""Replay benchmark (issue 2): `blockerctl test` vs fail2ban-regex vs a bare regex loop.

    .venv/bin/python bench/bench_replay.py                 # 1M lines, best of 3
    .venv/bin/python bench/bench_replay.py --lines 200000 --runs 2 --skip-fail2ban

Generates a realistic mixed kern.log once (cached under bench/out/, gitignored), then times,
each as a subprocess pinned to one core (taskset -c CPU) and measured by wall clock:
  blockerctl test   python -m blocker.cli test --config jails.toml --json FILE (best of --runs)
  fail2ban-regex    /usr/bin/fail2ban-regex with one failregex for the SYN/ACK line (once: slow)
  bare loops        `for line in file: rx.search(line)`, the issue's reference point: with a
                    tight regex, and with the failregex itself (fail2ban minus fail2ban)
  floor loop        blocker's own read and LOG-record regex, plus the least any Python
                    pipeline does per record: its header, fields, a time, kind and source
                    lookup each. No validation, filters or scoring: a lower bound
and prints a table with the issue's targets. A benchmark, not a test: it prints figures and
never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_kernlog import default_path, describe, generate  # a sibling script

REPO = Path(__file__).resolve().parent.parent
TARGET_LINES_PER_SECOND = 300_000
TARGET_RATIO = 10.0
# The SYN/ACK line as a fail2ban user would write it (kernel prints the flags as "ACK SYN").
SYNACK_FAILREGEX = r"kernel: .*IN=\S+ OUT= .*SRC=<HOST> DST=\S+ .*PROTO=TCP .* ACK SYN URGP="
# Pinning the date format spares fail2ban its template search: the fairest setting for it.
DATEPATTERNS = {
    "rfc3339": r"{^LN-BEG}%ExY-%m-%dT%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    "traditional": r"{^LN-BEG}%b %d %H:%M:%S",
}
FAIL2BAN_SUMMARY = re.compile(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed")
BARE_LOOP = r"""
import re, sys, time
rx = re.compile(sys.argv[2])
began = time.perf_counter()
found = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as stream:
    for line in stream:
        if rx.search(line):
            found += 1
print(found, time.perf_counter() - began)
"""
# The least per-record work a Python pipeline can do after blocker's read and regex: cut the
# header, take the fields, look up the record's time, its kind and its source in a dict.
FLOOR_LOOP = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from blocker.netfilter import _PACKET
from blocker.replay import read_text_chunks
began = time.perf_counter()
times, kinds, sources = {}, {}, {}
found = 0
with open(sys.argv[1], "rb") as stream:
    for text in read_text_chunks(stream):
        text.count("\n")
        for m in _PACKET.finditer(text):
            start = m.start()
            head = text[text.rfind("\n", 0, start) + 1 : start]
            t = times.get(head[:19])
            if t is None:
                t = times[head[:19]] = 0.0
            g = m.groups()
            kind = (g[0], g[1], g[9], g[12])
            if kind not in kinds:
                kinds[kind] = 1
            seen = sources.get(g[3])
            sources[g[3]] = t if seen is None else seen
            found += 1
print(found, time.perf_counter() - began)
"""


@dataclass
class Timing:
    tool: str
    seconds: list[float] = field(default_factory=list)  # wall clock per run
    cpu: list[float] = field(default_factory=list)  # the child's user + system time per run
    detail: str = ""

    @property
    def best(self) -> float:
        return min(self.seconds)

    def add(self, wall: float, cpu: float) -> str:
        self.seconds.append(wall)
        self.cpu.append(cpu)
        return f"{wall:.2f} s (cpu {cpu:.2f} s)"


def pinned(command: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


def run_timed(command: list[str]) -> tuple[float, float, str]:
    """Wall time, CPU time and stdout of one subprocess run; exits with its stderr if it fails.

    CPU time barely moves when other work shares the core; wall time is what a user waits.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode != 0:
        sys.exit(
            f"bench: {' '.join(command[:6])} ... exited {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return seconds, cpu, done.stdout


def ensure_log(
    lines: int, seed: int, style: str, regenerate: bool
) -> tuple[Path, dict[str, object]]:
    path = default_path(lines, seed, style)
    manifest_path = path.with_name(path.name + ".json")
    if not regenerate and path.exists() and manifest_path.exists():
        manifest: dict[str, object] = json.loads(manifest_path.read_text())
        if manifest.get("bytes") == path.stat().st_size:
            print(f"reusing {path.relative_to(REPO)}")
            print(describe(manifest))
            return path, manifest
    print(f"generating {path.relative_to(REPO)} ...", flush=True)
    manifest = generate(path, lines, seed, style)
    print(describe(manifest))
    return path, manifest


def bench_blockerctl(path: Path, runs: int, cpu: int | None) -> tuple[Timing, dict[str, object]]:
    command = pinned(
        [
            sys.executable,
            "-m",
            "blocker.cli",
            "test",
            "--config",
            "jails.toml",
            "--json",
            str(path),
        ],
        cpu,
    )
    timing = Timing("blockerctl test")
    result: dict[str, object] = {}
    for run in range(runs):
        wall, cpu_s, out = run_timed(command)
        result = json.loads(out)
        print(f"  blockerctl test run {run + 1}/{runs}: {timing.add(wall, cpu_s)}", flush=True)
    bans = result.get("bans")
    assert isinstance(bans, list)
    parsed = int(str(result["parsed"]))
    timing.detail = (
        f"parsed {parsed} LOG records ({parsed / timing.best:,.0f}/s), malformed "
        f"{result['malformed']}, hits {result['hits']}, bans {len(bans)}"
    )
    return timing, result


def startup_cost(cpu: int | None) -> float:
    """Interpreter start + imports + config load: `blockerctl test` on an empty file."""
    command = pinned(
        [
            sys.executable,
            "-m",
            "blocker.cli",
            "test",
            "--config",
            "jails.toml",
            "--json",
            os.devnull,
        ],
        cpu,
    )
    return min(run_timed(command)[1] for _ in range(3))


def bench_fail2ban(
    path: Path, style: str, expected: int, runs: int, cpu: int | None
) -> Timing | None:
    binary = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"
    if not Path(binary).exists():
        print(
            "  fail2ban-regex not found: install it with `sudo apt-get install fail2ban` "
            "(Debian/Ubuntu), or pass --skip-fail2ban"
        )
        return None
    command = pinned(
        [
            binary,
            "-l",
            "error",
            "--print-no-missed",
            "--print-no-ignored",
            "-r",
            "--datepattern",
            DATEPATTERNS[style],
            str(path),
            SYNACK_FAILREGEX,
        ],
        cpu,
    )
    timing = Timing("fail2ban-regex")
    matched = -1
    for run in range(runs):
        wall, cpu_s, out = run_timed(command)
        summary = FAIL2BAN_SUMMARY.search(out)
        matched = int(summary.group(3)) if summary else -1
        print(
            f"  fail2ban-regex run {run + 1}/{runs}: {timing.add(wall, cpu_s)}, matched {matched}",
            flush=True,
        )
    verdict = (
        "= the SYN/ACK lines written"
        if matched == expected
        else (f"!= {expected} SYN/ACK lines written: the failregex does not fit the log")
    )
    timing.detail = f"matched {matched} {verdict}"
    return timing


def bench_bare_loop(
    path: Path, runs: int, cpu: int | None, *, name: str, regex: str, what: str
) -> Timing:
    return bench_loop(
        [sys.executable, "-c", BARE_LOOP, str(path), regex],
        runs,
        cpu,
        name=name,
        what=f"{what} (no parsing, no scoring)",
    )


def bench_loop(command: list[str], runs: int, cpu: int | None, *, name: str, what: str) -> Timing:
    command = pinned(command, cpu)
    timing = Timing(name)
    found = ""
    for run in range(runs):
        wall, cpu_s, out = run_timed(command)
        found = out.split()[0]
        print(f"  {name} run {run + 1}/{runs}: {timing.add(wall, cpu_s)}", flush=True)
    timing.detail = f"{found} {what}"
    return timing


def report(lines: int, timings: list[Timing], fail2ban: Timing | None, startup: float) -> None:
    reference = lines / fail2ban.best if fail2ban else None
    reference_cpu = lines / min(fail2ban.cpu) if fail2ban else None
    print()
    print(
        f"{'tool':24} {'seconds':>8} {'lines/s':>10} {'vs fail2ban':>11}   "
        f"{'cpu s':>6} {'lines/cpu-s':>11} {'vs fail2ban':>11}"
    )
    for timing in timings:
        rate = lines / timing.best
        rate_cpu = lines / min(timing.cpu)
        versus = f"{rate / reference:.1f}x" if reference else "-"
        versus_cpu = f"{rate_cpu / reference_cpu:.1f}x" if reference_cpu else "-"
        print(
            f"{timing.tool:24} {timing.best:8.2f} {rate:10,.0f} {versus:>11}   "
            f"{min(timing.cpu):6.2f} {rate_cpu:11,.0f} {versus_cpu:>11}"
        )
        runs = ", ".join(f"{s:.2f}" for s in timing.seconds)
        print(f"{'':26}runs (wall s): {runs}")
        if timing.detail:
            print(f"{'':26}{timing.detail}")
    print(
        f"(whole process, best of the runs: wall clock, and CPU time which other work on the "
        f"core disturbs less;\n blockerctl's fixed cost -- interpreter, imports, config -- is "
        f"{startup:.2f} cpu s of it)"
    )
    blocker = timings[0]
    rate = lines / blocker.best
    rate_cpu = lines / min(blocker.cpu)
    print()
    verdict = "holds" if rate >= TARGET_LINES_PER_SECOND else "MISSED"
    print(
        f"target >= {TARGET_LINES_PER_SECOND:,} lines/s for blockerctl test: {rate:,.0f} "
        f"(per cpu-second {rate_cpu:,.0f}) -> {verdict}"
    )
    if reference and reference_cpu:
        ratio = rate / reference
        verdict = "holds" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"target >= {TARGET_RATIO:.0f}x fail2ban-regex: {ratio:.1f}x "
            f"(per cpu-second {rate_cpu / reference_cpu:.1f}x) -> {verdict}"
        )
    else:
        print(f"target >= {TARGET_RATIO:.0f}x fail2ban-regex: not measured (--skip-fail2ban)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--style", choices=sorted(DATEPATTERNS), default="rfc3339")
    parser.add_argument("--runs", type=int, default=3, help="runs of blockerctl and the bare loop")
    parser.add_argument("--fail2ban-runs", type=int, default=1)
    parser.add_argument("--skip-fail2ban", action="store_true")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin every run to")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the cached log")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.runs < 1 or args.fail2ban_runs < 1:
        parser.error("--lines, --runs and --fail2ban-runs must be >= 1")
    cpu = None if args.no_pin else args.cpu

    path, manifest = ensure_log(args.lines, args.seed, args.style, args.regenerate)
    lines = int(str(manifest["lines"]))
    print()
    pin = f"core {cpu}" if cpu is not None and shutil.which("taskset") else "none"
    print(
        f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} cores, "
        f"pinned to {pin}, load average {os.getloadavg()[0]:.2f} (other work on the "
        "machine makes figures noisy)",
        flush=True,
    )

    blocker, _ = bench_blockerctl(path, args.runs, cpu)
    startup = startup_cost(cpu)
    fail2ban = None
    if not args.skip_fail2ban:
        fail2ban = bench_fail2ban(
            path, args.style, int(str(manifest["synack"])), args.fail2ban_runs, cpu
        )
    bare = bench_bare_loop(
        path,
        args.runs,
        cpu,
        name="bare loop, SRC= regex",
        regex=r" SRC=([0-9A-Fa-f.:]+) DST=",
        what="lines with SRC=",
    )
    # fail2ban's own regex without fail2ban around it: what its per-line machinery costs.
    bare_failregex = bench_bare_loop(
        path,
        args.runs,
        cpu,
        name="bare loop, the failregex",
        regex=SYNACK_FAILREGEX.replace("<HOST>", r"(\S+)"),
        what="SYN/ACK lines",
    )
    floor = bench_loop(
        [sys.executable, "-c", FLOOR_LOOP, str(path), str(REPO)],
        args.runs,
        cpu,
        name="floor loop",
        what="LOG records; a lower bound for a Python pipeline (no scoring)",
    )
    timings = [blocker, *([fail2ban] if fail2ban else []), bare, bare_failregex, floor]
    report(lines, timings, fail2ban, startup)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
