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
(full - no subnets) / bans the escalation, (+ spool - full) / bans the JSON spool.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sources", type=int, default=200_000)
    parser.add_argument("--spread", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--only", choices=("nobans", "nosubnets", "full", "spool"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.tree.resolve()))
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
    if len(figures) == len(variants):
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


if __name__ == "__main__":
    sys.exit(main())
