"""Bytes per source in the scorer's tiers, IPv4 against IPv6 (issue 9 (d)). Figures only.

    .venv/bin/python bench/bench_tier_bytes.py [--sources 200000]

Feeds --sources distinct sources one SYN/ACK hit each, then a second each (so each climbs),
to one Scorer of the shipped defaults (max_tracked raised so nothing is pushed out), once
with IPv4 sources and once with IPv6 ones (one per /64, as bench_storm_daemon.py's
reflectors), and prints the Python memory (tracemalloc) the scorer holds after each round,
per source: after the first, per one-hit source (admission), after the second, per
climbing one. Both are records of a packed table (blocker/packed_table.py: 24-byte slots
for IPv4, 40-byte ones for IPv6, at most 3/4 full, so the figure moves with where the
count falls between two doublings) plus, after the first round, the admission ring's
entry (8 or 24 bytes).
"""

from __future__ import annotations

import argparse
import tracemalloc
from ipaddress import IPv4Address, IPv6Address, ip_address

from blocker.records import Address, Hit
from blocker.scoring import JailPolicy, Scorer

T0 = 1_700_000_000.0


def sources(family: str, count: int) -> list[Address]:
    if family == "ipv4":  # 100.64.0.0/10 would be refused: public-looking, not routed here
        base = int(IPv4Address("11.0.0.0"))
        return [IPv4Address(base + i) for i in range(count)]
    base = int(IPv6Address("2001:db8::1"))
    return [ip_address(base + (i << 64)) for i in range(count)]


def bytes_per_source(family: str, count: int) -> tuple[int, float, int, float]:
    """(one-hit sources, bytes each, climbing sources, bytes each)."""
    scorer = Scorer(JailPolicy(name="probes", max_tracked=count))
    addrs = sources(family, count)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    figures: list[float] = []
    for round_, tier in enumerate(("tracked_admission", "tracked_climbing")):
        for addr in addrs:
            scorer.feed(Hit(T0 + round_, "probes", "unsolicited_synack", addr, 1.0, None))
        held = tracemalloc.get_traced_memory()[0] - before
        sources_there = int(scorer.stats()[tier])
        figures += [sources_there, held / max(1, sources_there)]
    tracemalloc.stop()
    return int(figures[0]), figures[1], int(figures[2]), figures[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=200_000)
    args = parser.parse_args()
    for family in ("ipv4", "ipv6"):
        once, once_each, climbing, climbing_each = bytes_per_source(family, args.sources)
        print(
            f"{family}  {once:,} one-hit sources, {once_each:.1f} bytes each; "
            f"{climbing:,} climbing, {climbing_each:.1f} bytes each (tracemalloc)"
        )


if __name__ == "__main__":
    main()
