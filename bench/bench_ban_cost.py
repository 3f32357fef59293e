"""CPU per ban and per line of the reflection storm (issue 9 (b)), without the parser.

    .venv/bin/python bench/bench_ban_cost.py                     # 200k reflectors, clustered
    .venv/bin/python bench/bench_ban_cost.py --sources 1000000 --spread random

Builds the storm's hits in memory (`--sources` reflectors x 6 SYN/ACKs, rounds of one hit
per reflector, 55 s of log time, the shipped jails.toml's policy), then feeds them straight
to Scorer.add() in this process, four ways, and prints process CPU seconds for each:

  no bans      threshold out of reach: the tiers' per-line cost alone
  no subnets   every reflector banned, subnet escalation off
  full         the shipped policy: host bans and subnet escalation
  + spool      full, and every Decision written as `blockerctl test --json` spools it

Differences give CPU per ban by step: (no subnets - no bans) / bans is a host ban,
(full - no subnets) / bans the escalation, (+ spool - full) / bans the JSON spool.  The
tiers do less work when sources are banned (a banned source's window is dropped), so that
difference understates a ban; `ban path` measures it alone: the engine's ban step
(Scorer._ban_host, with escalation), its spool line and the spool read back into the
output (replay.write_json), called for each reflector in turn.

`--bytes` prints instead what the ban state holds per entry at its cap (max_tracked =
100,000), IPv4 and IPv6 hosts each in its own /24 or /64 as a storm's reflectors are:
tracemalloc's traced memory after 2 * cap bans minus before, over the entries held.  The
addresses are made beforehand (the parser's), so the book's figure leaves them out.
Figures only, never fails; this VM varies 20-30% between runs (other work loads it):
compare trees back to back (`--tree DIR` runs another checkout's scorer on the same hits).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blocker.records import Address, Decision
    from blocker.scoring import JailPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sources", type=int, default=200_000)
    parser.add_argument("--spread", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--only", choices=("nobans", "nosubnets", "full", "spool", "banpath"))
    parser.add_argument("--bytes", action="store_true", help="bytes per entry of the ban state")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.tree.resolve()))
    if args.bytes:
        return bytes_per_entry(args.tree)
    from bench_flood import reflectors_of  # noqa: PLC0415 - after the path is set

    from blocker import netfilter, replay  # noqa: PLC0415
    from blocker.config import load_config  # noqa: PLC0415
    from blocker.scoring import Scorer  # noqa: PLC0415

    config = load_config(args.tree / "jails.toml")
    jail = config.jail("probes")
    if jail is None:
        raise SystemExit("jails.toml: no [jails.probes]")
    policy = jail.policy
    # Addresses as the parser makes them (older trees: KernelLogParser.address)
    table = getattr(netfilter, "AddressTable", None)
    parse = table().__getitem__ if table else netfilter.KernelLogParser().address
    addresses = [
        address
        for address in map(parse, reflectors_of(args.sources, args.spread, args.seed))
        if address is not None
    ]
    start = 1_700_000_000.0
    step = 55.0 / (6 * len(addresses))
    hits = [
        (round(start + (r * len(addresses) + i) * step, 6), addr)
        for r in range(6)
        for i, addr in enumerate(addresses)
    ]
    print(
        f"{len(addresses):,} reflectors ({args.spread}) x 6 = {len(hits):,} hits; "
        f"tree {args.tree}; load {os.getloadavg()}"
    )
    variants = {
        "nobans": dataclasses.replace(policy, threshold=1e6),
        "nosubnets": dataclasses.replace(policy, subnet_min_offenders=0),
        "full": policy,
        "spool": policy,
    }
    # The spool's line per ban as `blockerctl test --json` writes it (older trees: the dict)
    line = getattr(replay, "decision_line", None) or (lambda d: json.dumps(replay.decision_json(d)))
    weight = next(w for f, w in jail.filters if f.name == "unsolicited_synack")
    figures: dict[str, tuple[float, int]] = {}
    for name, chosen in variants.items():
        if args.only and name != args.only:
            continue
        scorer = Scorer(chosen)
        add = scorer.add
        bans = 0
        gc.collect()
        gc.set_threshold(100_000, 50, 100)  # as replay runs (pipeline.tune_gc)
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            began = time.process_time()
            if name == "spool":
                write = spool.writelines
                for t, addr in hits:
                    found = add(t, "unsolicited_synack", addr, weight)
                    if found:
                        bans += len(found)
                        write(line(d) + "\n" for d in found)
            else:
                for t, addr in hits:
                    found = add(t, "unsolicited_synack", addr, weight)
                    if found:
                        bans += len(found)
            cpu = time.process_time() - began
        figures[name] = cpu, bans
        print(f"  {name:10} cpu {cpu:6.2f} s  decisions {bans:,}")
        del scorer, add
    if not args.only or args.only == "banpath":
        figures["banpath"] = ban_path(policy, addresses, start, line)
    if len(figures) == len(variants) + 1:
        bans = figures["nosubnets"][1]
        per = {
            "host ban": figures["nosubnets"][0] - figures["nobans"][0],
            "escalation": figures["full"][0] - figures["nosubnets"][0],
            "spool": figures["spool"][0] - figures["full"][0],
        }
        lines = len(hits)
        print(
            f"  per line without bans {figures['nobans'][0] / lines * 1e6:.2f} us; per ban: "
            + ", ".join(f"{k} {v / bans * 1e6:.1f} us" for k, v in per.items())
        )
    return 0


def ban_path(
    policy: JailPolicy, addresses: list[Address], start: float, line: Callable[[Decision], str]
) -> tuple[float, int]:
    """CPU of the ban step alone: _ban_host (history, book, escalation, the Decision) and
    the spool line, for every reflector at its 5th hit, one every 10 us of log time."""
    from blocker import replay  # noqa: PLC0415
    from blocker.pipeline import LineStats  # noqa: PLC0415
    from blocker.scoring import Scorer  # noqa: PLC0415 - after the path is set

    scorer = Scorer(policy)
    counts = {"unsolicited_synack": 5}
    ban = scorer._ban_host  # the step measured
    made = 0
    gc.collect()
    gc.freeze()  # as replay runs (pipeline.tune_gc): the hits made beforehand out of its sight
    gc.set_threshold(100_000, 50, 100)
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as spool,
        open(os.devnull, "w", encoding="utf-8") as out,
    ):
        # Spooled in batches, as `blockerctl test --json` spools a chunk's bans at once
        # (older trees: line by line)
        lines = getattr(replay, "decision_lines", None) or (
            lambda found: "".join(line(d) + "\n" for d in found)
        )
        batch: list[Decision] = []
        began = time.process_time()
        for i, addr in enumerate(addresses):
            at = start + i * 1e-5
            scorer._now = at  # as add() sets it before a ban
            batch += ban(addr, counts, at, 5.0)
            if len(batch) >= 1000:
                made += len(batch)
                spool.write(lines(batch))
                batch = []
        made += len(batch)
        spool.write(lines(batch))
        spooled = time.process_time()
        spool.seek(0)  # read back into the output, as `blockerctl test --json` ends
        replay.write_json(replay.ReplayResult(LineStats(), [], {}), spool, out)
        cpu = time.process_time() - began
    per = cpu / len(addresses) * 1e6
    back = (cpu - (spooled - began)) / len(addresses) * 1e6
    print(
        f"  {'ban path':10} cpu {cpu:6.2f} s  decisions {made:,}  {per:.2f} us a ban "
        f"(of which {back:.2f} us the spool read back into the output)"
    )
    return cpu, made


def bytes_per_entry(tree: Path, cap: int = 100_000) -> int:
    """Traced bytes per entry held of ban history, subnet escalation and ban book at `cap`."""
    from ipaddress import IPv4Address, IPv6Address  # noqa: PLC0415

    from blocker.ban_book import BanBook  # noqa: PLC0415 - after the path is set
    from blocker.ban_history import BanHistory, host_key  # noqa: PLC0415
    from blocker.subnet_escalation import SubnetOffenders  # noqa: PLC0415
    from blocker.tiers import key_of  # noqa: PLC0415

    print(f"tree {tree}; cap {cap:,}; bytes per entry held (tracemalloc)")
    families: dict[str, list[Address]] = {
        "IPv4": [IPv4Address(0x0B000001 + (i << 8)) for i in range(2 * cap)],
        "IPv6": [IPv6Address((0x20010DB8 << 96) + (i << 64) + 1) for i in range(2 * cap)],
    }
    for family, addresses in families.items():
        t0 = 1_700_000_000.0
        figures = []
        for name in ("history", "escalation", "book"):
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            if name == "history":
                history = BanHistory(600.0, 2.0, 7 * 86400.0, 30 * 86400.0, cap)
                for i, addr in enumerate(addresses):
                    history.ban(host_key(addr), t0 + i, t0 + i)
                held = cap
                keep: object = history
            elif name == "escalation":
                escalation = SubnetOffenders(3, 3600.0, 24, 64, cap)
                for i, addr in enumerate(addresses):
                    escalation.count(addr, t0 + i * 1e-3, t0 + i * 1e-3)
                held = cap
                keep = escalation
            else:
                book = BanBook(cap)
                for i, addr in enumerate(addresses):
                    book.ban_host(key_of(addr), t0 + i * 1e-3 + 600.0, t0 + i * 1e-3)
                held = len(book.hosts)
                keep = book
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            del keep
            figures.append(f"{name} {used / held:.0f} B ({held:,} held)")
        print(f"  {family}: " + ", ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
