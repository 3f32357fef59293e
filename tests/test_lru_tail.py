"""lru_tail.tail_decides: when it says the newest keys decide an LRU table, touching only
those leaves the table as touching the whole stream does."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from hypothesis import example, given
from hypothesis import strategies as st

from blocker.lru_tail import tail_decides


def touched(stream: Sequence[tuple[int, int]], cap: int) -> list[tuple[int, list[int]]]:
    """An LRU of `cap` keys, each with the stamps it was touched at since it was stored
    (what a ban history keeps), after touching every (key, stamp) in order."""
    table: OrderedDict[int, list[int]] = OrderedDict()
    for key, stamp in stream:
        table.setdefault(key, []).append(stamp)
        table.move_to_end(key)
        if len(table) > cap:
            table.popitem(last=False)
    return list(table.items())


@given(
    keys=st.lists(st.integers(0, 40), max_size=120),
    cap=st.integers(1, 12),
    given_back=st.integers(0, 120),
)
@example(keys=[1, 2, 2, 1, 3], cap=2, given_back=4)  # 1 was held all along: not decided
@example(keys=[1, 2, 3, 1, 4], cap=2, given_back=4)  # 1 was pushed out by 2, 3: decided
def test_when_the_tail_decides_it_leaves_the_table_as_the_whole_stream(
    keys: list[int], cap: int, given_back: int
) -> None:
    stream = list(zip(keys, range(len(keys)), strict=True))
    tail = keys[max(0, len(keys) - given_back) :]
    if tail_decides(tail, cap):
        assert touched(stream[-cap:], cap) == touched(stream, cap)


@given(
    before=st.lists(st.integers(0, 1000), max_size=60),
    cap=st.integers(1, 20),
)
def test_a_storm_of_distinct_keys_is_decided_by_its_tail(before: list[int], cap: int) -> None:
    """Whatever came before, 2 * cap distinct keys not seen in it decide the table."""
    storm = list(range(2000, 2000 + 2 * cap))
    keys = before + storm
    assert tail_decides(keys[-2 * cap :], cap)
    stream = list(zip(keys, range(len(keys)), strict=True))
    assert touched(stream[-cap:], cap) == touched(stream, cap)


def test_it_refuses_what_it_cannot_know() -> None:
    storm = list(range(10))
    assert tail_decides(storm, 5)
    assert not tail_decides(storm[1:], 5)  # fewer than 2 * cap keys
    assert not tail_decides([*storm[:5], 3, *storm[6:]], 5)  # one of the newest seen before
    assert not tail_decides([*storm[:9], 7], 5)  # a key twice among the newest
    assert not tail_decides([0, 0, *storm[2:]], 5)  # too few distinct keys before them
    assert tail_decides([*storm[:5], 3, *storm[5:]], 5)  # a repeat before them is fine
    assert not tail_decides(storm, 0)
