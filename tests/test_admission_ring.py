"""admission_ring.py: a FIFO of (key, seq) that a model list agrees with, through lazy
skips of dead entries, cutting of the consumed front, compaction and numbers that wrap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blocker.admission_ring import AdmissionRing

M32 = (1 << 32) - 1


def keys_of(wide: bool) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << 128) - 1) if wide else st.integers(0, M32)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), wide=st.booleans(), first_seq=st.sampled_from([0, M32 - 5, 1 << 31]))
def test_it_is_a_fifo_with_lazy_skips_and_compaction(
    data: st.DataObject, wide: bool, first_seq: int
) -> None:
    # The owner's view: key -> its live admission number (a key can come back with a new
    # one; its old entries are then dead); the ring must give back the live ones in order.
    ring = AdmissionRing(wide)
    model: list[tuple[int, int]] = []  # every pushed entry, oldest first, not yet popped
    live: dict[int, int] = {}
    seq = first_seq
    for op in data.draw(st.lists(st.sampled_from(["push", "push", "leave", "evict", "compact"]))):
        if op == "push":
            key = data.draw(keys_of(wide) | st.sampled_from(sorted(live) or [1]))
            ring.push(key, seq)
            model.append((key, seq))
            live[key] = seq
            seq = (seq + 1) & M32  # numbers wrap
        elif op == "leave" and live:
            del live[data.draw(st.sampled_from(sorted(live)))]
        elif op == "evict":
            # lazily skip dead heads, then take the oldest live one
            while (head := ring.head()) is not None and live.get(head[0]) != head[1]:
                assert head == model.pop(0)
                ring.pop()
            if head is not None:
                assert head == model.pop(0)
                ring.pop()
                del live[head[0]]
        elif op == "compact":
            ring.compact(lambda key, number: live.get(key) == number)
            model = [(k, n) for k, n in model if live.get(k) == n]
        assert len(ring) == len(model)
        assert ring.head() == (model[0] if model else None)
    alive = [entry for entry in model if live.get(entry[0]) == entry[1]]
    assert sorted(alive) == sorted(live.items())


def test_the_consumed_front_is_cut_and_an_emptied_ring_holds_nothing() -> None:
    ring = AdmissionRing(wide=True)
    for i in range(10_000):
        ring.push(i << 64 | i, i)
    for _ in range(9_000):
        ring.pop()
    assert len(ring) == 1000
    assert len(ring.words) < 3 * 5000  # the front was cut, not kept
    assert ring.head() == (9000 << 64 | 9000, 9000)
    for _ in range(1000):
        ring.pop()
    assert (len(ring), ring.head(), len(ring.words)) == (0, None, 0)
