"""Micro-figures for the climbing tier's store: a dict of int -> int vs PackedTable.

    .venv/bin/python bench/bench_packed_table.py [--keys 1000000]

For `--keys` random IPv4 keys: ns per insert, per lookup-and-update (what a climbing hit
does: find, then rewrite the slot's words / the dict's value), per miss (a new source
asks first), and the bytes each store holds per key (the dict with its int keys and
4-hit-sized int values, measured by tracemalloc).  Not a test: figures only.  Timings
on a shared machine vary 20-30%: compare in one run.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blocker.packed_table import PackedTable

VALUE = (1 << 100) | 12345  # a 4-hit record's size, as a dict value


def timed(label: str, count: int, work: Callable[[], None]) -> None:
    began = time.perf_counter()
    work()
    print(f"  {label:34} {(time.perf_counter() - began) / count * 1e9:7.0f} ns/op")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    rng = random.Random(9)
    keys = list({rng.getrandbits(32) | 1 for _ in range(args.keys)})
    misses = [key ^ 1 for key in keys]  # even: never inserted
    count = len(keys)
    print(f"{count:,} keys")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    plain: dict[int, int] = {}
    for key in keys:
        plain[int(str(key))] = VALUE + key  # own key and value objects, as the tier's
    dict_bytes = tracemalloc.get_traced_memory()[0] - before
    del plain
    before = tracemalloc.get_traced_memory()[0]
    table = PackedTable(max_slots=count * 4 // 3 + 1)
    for key in keys:
        table.put(key, VALUE)
    table_bytes = tracemalloc.get_traced_memory()[0] - before
    del table
    tracemalloc.stop()
    print(f"  dict:  {dict_bytes / count:5.0f} B/key   table: {table_bytes / count:5.0f} B/key")

    plain = {}
    table = PackedTable(max_slots=count * 4 // 3 + 1)

    def dict_insert() -> None:
        for key in keys:
            plain[key] = VALUE

    def table_insert() -> None:
        put = table.put
        for key in keys:
            put(key, VALUE)

    def dict_update() -> None:
        get = plain.get
        for key in keys:
            value = get(key)
            if value is not None:
                plain[key] = value + (1 << 40)

    def table_update() -> None:
        find, words = table.find, table.words
        for key in keys:
            j = find(key)
            if j >= 0:
                words[j + 1] = words[j + 1] ^ (1 << 40)

    def dict_miss() -> None:
        get = plain.get
        for key in misses:
            get(key)

    def table_miss() -> None:
        find = table.find
        for key in misses:
            find(key)

    timed("dict insert", count, dict_insert)
    timed("table insert (grows)", count, table_insert)
    timed("dict get + set (a climbing hit)", count, dict_update)
    timed("table find + word write", count, table_update)
    timed("dict miss", count, dict_miss)
    timed(f"table miss (load {len(table) / table.slots:.2f})", count, table_miss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
