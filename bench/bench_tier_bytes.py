"""Bytes per climbing source in the scorer, IPv4 against IPv6 (issue 9 (d)). Figures only.

    .venv/bin/python bench/bench_tier_bytes.py [--sources 200000]

Feeds --sources distinct sources two SYN/ACK hits each (so each climbs) to one Scorer of
the shipped defaults, once with IPv4 sources and once with IPv6 ones (one per /64, as
bench_storm_daemon.py's reflectors), and prints the Python memory (tracemalloc) the scorer
still holds afterwards, per climbing source: the climbing store plus what the other tiers
kept from the first round (the same for both families). IPv4 sources live in the packed table
(blocker/packed_table.py); IPv6 ones, whose key does not fit it, in the dict of packed ints:
the gap between the two lines is what a 128-bit-key table would save per IPv6 reflector.
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


def bytes_per_source(family: str, count: int) -> tuple[int, float]:
    scorer = Scorer(JailPolicy(name="probes", max_tracked=count * 2))
    addrs = sources(family, count)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for round_ in range(2):
        for addr in addrs:
            scorer.feed(Hit(T0 + round_, "probes", "unsolicited_synack", addr, 1.0, None))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    climbing = int(scorer.stats()["tracked_climbing"])
    return climbing, held / max(1, climbing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=200_000)
    args = parser.parse_args()
    for family in ("ipv4", "ipv6"):
        climbing, per = bytes_per_source(family, args.sources)
        print(f"{family}  {climbing:,} climbing sources, {per:.1f} bytes each (tracemalloc)")


if __name__ == "__main__":
    main()
