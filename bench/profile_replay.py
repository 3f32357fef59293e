"""Where `blockerctl test`'s time goes: cumulative stage timings, optionally a cProfile table.

    .venv/bin/python bench/profile_replay.py                # the cached 1M-line log
    .venv/bin/python bench/profile_replay.py --cprofile 25  # plus the top 25 functions

Stages, each one a superset of the one before, in this process (pinned to one core):
  read      read_text_chunks: bytes -> str in 64 KiB chunks (replay.CHUNK)
  regex     + the parser's LOG-record regex scanning every chunk (C only, no Python per line)
  scan      + KernelLogParser.scan: event time, prefix and fields per record
  plans     + the pipeline's compiled plans: addresses, filters, distinct keys; no scoring
  pipeline  + Scorer.add: Pipeline.feed_text, what `blockerctl test` runs
The difference between two rows is the cost of the stage added. For a sampling profile of the
real subprocess instead, see bench/README.md (py-spy).

    .venv/bin/python bench/profile_replay.py --opcodes 50000

counts the Python opcodes the full pipeline executes on the log's first 50,000 lines (a few
seconds under the tracer): a deterministic measure of Python-level work, for comparing two trees
where this VM's run-to-run timing noise (10-30%) hides a change of a few percent. It does not
see time spent in C (the regex, dict internals).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_kernlog import default_path  # a sibling script

if TYPE_CHECKING:
    from _typeshed import TraceFunction

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blocker import netfilter  # noqa: E402  (after the repository is on the path)
from blocker.config import Config, load_config  # noqa: E402
from blocker.pipeline import Pipeline  # noqa: E402
from blocker.replay import read_text_chunks  # noqa: E402


def stage_read(path: Path, config: Config) -> int:
    with path.open("rb") as stream:
        return sum(len(text) for text in read_text_chunks(stream))


def stage_regex(path: Path, config: Config) -> int:
    packet_regex = netfilter._PACKET  # the parser's own pattern: its C cost alone
    found = 0
    with path.open("rb") as stream:
        for text in read_text_chunks(stream):
            for _ in packet_regex.finditer(text):
                found += 1
    return found


def stage_scan(path: Path, config: Config) -> int:
    parser = netfilter.KernelLogParser()
    now = path.stat().st_mtime
    found = 0
    with path.open("rb") as stream:
        for text in read_text_chunks(stream):
            for _ in parser.scan(text, now):
                found += 1
    return found


def stage_plans(path: Path, config: Config) -> int:
    pipeline = Pipeline(config)
    hits = 0

    def count(*_: object) -> None:
        nonlocal hits
        hits += 1

    for runner in pipeline.runners:
        runner.scorer.add = count  # type: ignore[method-assign, assignment]  # before any plan is made
    now = path.stat().st_mtime
    with path.open("rb") as stream:
        for text in read_text_chunks(stream):
            pipeline.feed_text(text, now)
    return hits


def count_opcodes(path: Path, config: Config, lines: int) -> tuple[int, int]:
    """(Python opcodes executed, decisions) for a replay of the first `lines` lines."""
    from types import FrameType  # noqa: PLC0415 - only this mode needs it

    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> TraceFunction:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    with tempfile.NamedTemporaryFile(suffix=".log") as head, path.open("rb") as stream:
        head.writelines(itertools.islice(stream, lines))
        head.flush()
        sys.settrace(tracer)
        try:
            decisions = stage_pipeline(Path(head.name), config)
        finally:
            sys.settrace(None)
    return count, decisions


def stage_pipeline(path: Path, config: Config) -> int:
    pipeline = Pipeline(config)
    now = path.stat().st_mtime
    decisions = 0
    with path.open("rb") as stream:
        for text in read_text_chunks(stream):
            decisions += len(pipeline.feed_text(text, now))
    return decisions


STAGES: list[tuple[str, Callable[[Path, Config], int], str]] = [
    ("read", stage_read, "characters"),
    ("regex", stage_regex, "regex matches"),
    ("scan", stage_scan, "records"),
    ("plans", stage_plans, "hits"),
    ("pipeline", stage_pipeline, "decisions"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "log",
        nargs="?",
        type=Path,
        default=None,
        help="log file (default: the cached 1M-line rfc3339 log)",
    )
    parser.add_argument("--runs", type=int, default=2, help="runs per stage; the best counts")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (-1: do not pin)")
    parser.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="also profile the full pipeline once and print the top N functions",
    )
    parser.add_argument(
        "--opcodes",
        type=int,
        default=0,
        metavar="LINES",
        help="only count the Python opcodes of a replay of the first LINES lines",
    )
    args = parser.parse_args(argv)
    path = args.log or default_path(1_000_000, 1, "rfc3339")
    if not path.exists():
        sys.exit(f"{path} does not exist: run bench/bench_replay.py or bench/gen_kernlog.py")
    if args.opcodes > 0:
        config = load_config(REPO / "jails.toml")
        opcodes, decisions = count_opcodes(path, config, args.opcodes)
        print(
            f"{path}, first {args.opcodes} lines: {opcodes:,} Python opcodes, "
            f"{decisions} decisions ({REPO / 'blocker'})"
        )
        return 0
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    config = load_config(REPO / "jails.toml")
    with path.open("rb") as stream:
        lines = sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
    print(f"{path}: {lines} lines; load average {os.getloadavg()[0]:.2f}")
    # CPU time: other work sharing the core disturbs it far less than wall time.
    print(f"{'stage':10} {'cpu s':>8} {'lines/s':>11} {'+cpu s':>9} {'wall s':>8}  result")
    previous = 0.0
    for name, stage, unit in STAGES:
        best = best_wall = float("inf")
        result = 0
        for _ in range(args.runs):
            began, began_wall = time.process_time(), time.perf_counter()
            result = stage(path, config)
            best = min(best, time.process_time() - began)
            best_wall = min(best_wall, time.perf_counter() - began_wall)
        print(
            f"{name:10} {best:8.2f} {lines / best:11,.0f} {best - previous:+9.2f} "
            f"{best_wall:8.2f}  {result} {unit}",
            flush=True,
        )
        previous = best
    if args.cprofile:
        profile = cProfile.Profile()
        profile.runcall(stage_pipeline, path, config)
        print("\ncProfile of the full pipeline (its overhead inflates Python-heavy functions):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
