"""packed_table.py: both tables (32-bit and 128-bit keys) behave as a dict of int -> int,
through collisions, wraparound, deletions (backward shift), growth and bulk removal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocker.packed_table import SLOT6_WORDS, SLOT_WORDS, PackedTable, PackedTable6

VALUE_MAX = (1 << 160) - 1


def same_as(table: PackedTable | PackedTable6, model: dict[int, int]) -> None:
    assert len(table) == len(model)
    assert dict(table.items()) == model
    for key, value in model.items():
        assert table.get(key) == value
        assert table.find(key) >= 0


def keys_homed_at_the_end(table: PackedTable, count: int) -> list[int]:
    last = (table.slots - 1) * SLOT_WORDS
    keys = [key for key in range(1, 200_000) if table.home(key) == last]
    assert len(keys) >= count
    return keys[:count]


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "pop", "get"]),
        st.integers(1, 40),  # few keys, small tables: long probe runs
        st.integers(0, VALUE_MAX),
    ),
    max_size=300,
)


def answers_as_a_dict(
    table: PackedTable | PackedTable6, ops: list[tuple[str, int, int]], shrink: bool = False
) -> None:
    """Run `ops` on `table` and on a dict; every answer, and the end, the same."""
    model: dict[int, int] = {}
    for op, key, value in ops:
        if op == "put":
            table.put(key, value)
            model[key] = value
        elif op == "pop":
            assert table.pop(key) == model.pop(key, None)
        else:
            assert table.get(key) == model.get(key)
        assert len(table) == len(model)
        if shrink:
            table.shrink_if_sparse()
    same_as(table, model)


@settings(max_examples=300, deadline=None)
@given(ops=ops, start=st.integers(2, 8), spare=st.integers(0, 40))
def test_it_answers_as_a_dict_does(ops: list[tuple[str, int, int]], start: int, spare: int) -> None:
    answers_as_a_dict(PackedTable(max_slots=start + spare, slots=start), ops)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(1, 60), unique=True, max_size=50),
    dropped=st.sets(st.integers(1, 60)),
)
def test_remove_if_drops_exactly_what_it_is_asked(keys: list[int], dropped: set[int]) -> None:
    table = PackedTable(max_slots=64, slots=4)
    for key in keys:
        table.put(key, key * 7)
    asked: list[int] = []

    def drop(key: int, value: int) -> bool:
        assert value == key * 7
        asked.append(key)
        return key in dropped

    removed = table.remove_if(drop)
    assert removed == len(set(keys) & dropped)
    assert set(asked) == set(keys)
    same_as(table, {key: key * 7 for key in keys if key not in dropped})


def test_a_probe_run_wraps_from_the_last_slot_to_the_first() -> None:
    table = PackedTable(max_slots=16, slots=16)
    keys = keys_homed_at_the_end(table, 4)
    for i, key in enumerate(keys):
        table.put(key, i)
    # One at the end, the others wrapped to the front slots.
    assert sorted(table.find(key) for key in keys) == [0, 3, 6, 15 * SLOT_WORDS]
    assert table.pop(keys[0]) == 0  # the one at the end goes: a wrapped one moves back
    assert table.find(keys[1]) == 15 * SLOT_WORDS
    same_as(table, {key: i for i, key in enumerate(keys) if i})
    table.remove_if(lambda key, _: key == keys[2])
    same_as(table, {keys[1]: 1, keys[3]: 3})


def test_deleting_never_leaves_a_key_unreachable_behind_a_hole() -> None:
    table = PackedTable(max_slots=8, slots=8)
    model = {key: key for key in range(1, 7)}  # 6 of 8 slots: long runs
    for key in model:
        table.put(key, key)
    for key in list(model):
        table.pop(key)
        del model[key]
        same_as(table, model)
    assert table.words.tolist() == [0] * 8 * SLOT_WORDS


def test_it_grows_by_four_but_not_past_max_slots_while_three_quarters_do() -> None:
    table = PackedTable(max_slots=100, slots=4)
    sizes = set()
    for key in range(1, 76):
        table.put(key, key)
        sizes.add(table.slots)
    assert sorted(sizes) == [4, 16, 64, 100]  # then 100 (not 256)
    assert table.nbytes == 100 * SLOT_WORDS * 8
    for key in range(76, 101):  # full: it grows past max_slots rather than lose a key
        table.put(key, key)
    assert table.slots > 100
    same_as(table, {key: key for key in range(1, 101)})


def test_values_and_keys_out_of_range_are_refused() -> None:
    table = PackedTable(max_slots=8)
    for key, value in [(0, 1), (1 << 32, 1), (-1, 1), (1, -1), (1, VALUE_MAX + 1)]:
        with pytest.raises(ValueError, match="out of range"):
            table.put(key, value)
    assert len(table) == 0
    assert table.get(0) is None
    assert table.pop(0) is None
    table.put(1, VALUE_MAX)
    assert table.get(1) == VALUE_MAX


def test_clear_empties_it() -> None:
    table = PackedTable(max_slots=4096, slots=16)
    for key in range(1, 1001):
        table.put(key, key)
    table.clear()
    assert (len(table), table.get(5), list(table.items())) == (0, None, [])


def test_a_table_that_emptied_gives_its_room_back() -> None:
    table = PackedTable(max_slots=1 << 16, slots=16)
    for key in range(1, 20_001):
        table.put(key, key)
    grown = table.slots
    for key in range(1, 19_901):
        table.pop(key)
        table.shrink_if_sparse()
    assert table.slots * 8 < grown
    same_as(table, {key: key for key in range(19_901, 20_001)})


# -- PackedTable6: 128-bit keys ------------------------------------------------------------

# Keys that differ in one word only, in the other only, in both, and the extremes: the
# home slot mixes both words, and a match must compare both.
keys6 = st.builds(
    lambda hi, lo: hi << 64 | lo,
    st.sampled_from([0, 1, 0x20010DB8 << 32, (1 << 64) - 1]),
    st.sampled_from([0, 1, 2, 0xFFFF, (1 << 64) - 1]),
)
ops6 = st.lists(
    st.tuples(st.sampled_from(["put", "put", "pop", "get"]), keys6, st.integers(0, VALUE_MAX)),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops6, start=st.integers(2, 8), spare=st.integers(0, 30))
def test_the_ipv6_table_answers_as_a_dict_does(
    ops: list[tuple[str, int, int]], start: int, spare: int
) -> None:
    answers_as_a_dict(PackedTable6(max_slots=start + spare, slots=start), ops, shrink=True)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(keys6, unique=True, max_size=20), dropped=st.sets(keys6))
def test_the_ipv6_table_removes_exactly_what_it_is_asked(
    keys: list[int], dropped: set[int]
) -> None:
    table = PackedTable6(max_slots=32, slots=2)
    for key in keys:
        table.put(key, key % 1000)
    removed = table.remove_if(lambda key, value: key in dropped and value == key % 1000)
    assert removed == len(set(keys) & dropped)
    same_as(table, {key: key % 1000 for key in keys if key not in dropped})


def test_the_ipv6_table_wraps_and_empties_to_zero_words() -> None:
    table = PackedTable6(max_slots=8, slots=8)
    last = 7 * SLOT6_WORDS
    keys = [key for key in range(1, 1 << 16) if table.home(key, 0) == last][:4]
    for i, key in enumerate(keys):
        table.put(key, i)  # value 0 too: an entry is told from an empty slot by its flag
    assert sorted(table.find(key) for key in keys) == [0, 5, 10, last]
    for key in keys:
        table.pop(key)
    assert table.words.tolist() == [0] * 8 * SLOT6_WORDS
    for key, value in [(-1, 1), (1 << 128, 1), (1, -1), (1, VALUE_MAX + 1)]:
        with pytest.raises(ValueError, match="out of range"):
            table.put(key, value)


def test_the_ipv6_table_grows_and_gives_its_room_back() -> None:
    table = PackedTable6(max_slots=1 << 16, slots=16)
    keys = [(0x20010DB8 << 96) | i << 64 | 1 for i in range(20_000)]  # one per /64
    for key in keys:
        table.put(key, key & 0xFFFF)
    grown = table.slots
    assert table.nbytes == grown * SLOT6_WORDS * 8
    for key in keys[:-100]:
        table.pop(key)
        table.shrink_if_sparse()
    assert table.slots * 8 < grown
    same_as(table, {key: key & 0xFFFF for key in keys[-100:]})
    table.clear()
    assert (len(table), list(table.items())) == (0, [])


# The fixed multiplier (2**64 / golden ratio) these tables hashed with before they hashed
# the key's bytes: what an attacker could compute homes with.
FIBONACCI = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def longest_displacement(table: PackedTable | PackedTable6, keys: list[int]) -> int:
    """The most slots any of `keys` sits past its home slot (wrapping)."""
    size = table._slot_words
    longest = 0
    for key in keys:
        home = table.home(key) if isinstance(table, PackedTable) else table.home(key, 0)
        longest = max(longest, (table.find(key) - home) // size % table.slots)
    return longest


@pytest.mark.parametrize("kind", [PackedTable, PackedTable6])
def test_keys_computed_to_share_a_home_slot_spread_out(
    kind: type[PackedTable] | type[PackedTable6],
) -> None:
    """With a known hash anyone can compute keys (spoofed sources) that share one home slot:
    a flood of them is one probe run as long as the flood, walked by every lookup that
    lands in it. These 400 keys all had the home slot 0 under the old fixed multiplier;
    hashed by their bytes (keyed per process) they spread as any 400 keys would."""
    slots = 1024
    keys = [key for key in range(1, 1 << 20) if ((key * FIBONACCI) & M64) * slots >> 64 == 0]
    keys = keys[:400]
    assert len(keys) == 400
    table = kind(max_slots=slots, slots=slots)
    for key in keys:
        table.put(key, key)
    assert longest_displacement(table, keys) < 100  # 399 with the old multiplier; ~15 now


def test_home_slots_differ_from_one_process_to_the_next() -> None:
    """The hash is keyed per process (unless an admin sets PYTHONHASHSEED): no one outside
    can know which keys share a slot."""
    code = (
        "from blocker.packed_table import PackedTable, PackedTable6\n"
        "a, b = PackedTable(1 << 20, 1 << 20), PackedTable6(1 << 20, 1 << 20)\n"
        "print([a.home(k) for k in range(1, 9)], [b.home(k, k) for k in range(1, 9)])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] != runs[1]
