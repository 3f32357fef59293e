"""LruTable against an OrderedDict doing the same (move_to_end, popitem(last=False)), as
subnet escalation uses it too: stamped entries, a cap set from outside, and an add() that
leaves the eviction to its owner when the oldest entry's stamp is not below a limit."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from blocker.lru_table import LruTable

# (operation, key): put, put spilled, add (put unless held), add with a limit, delete,
# spill in place, evict the oldest, lower the cap to what is held
OPS = st.lists(
    st.tuples(st.sampled_from("pPalldsec"), st.integers(0, 40) | st.integers(0, 2**136)),
    max_size=400,
)
Model = OrderedDict[int, tuple[float, int, bool]]


def apply(cap: int, ops: list[tuple[str, int]]) -> tuple[LruTable, Model, list[int]]:
    """The table and the model after `ops`, and the model's stamps (the step that set each
    entry), in its order."""
    table = LruTable(cap, 18, 3, stamped=True)
    model: Model = OrderedDict()
    stamps: dict[int, int] = {}
    for step, (op, key) in enumerate(ops):
        slot = table.slot_of(key)
        assert (slot >= 0) == (key in model)
        if op in "pP":
            value, payload, spilled = float(step), (key * 7 + step) & 0xFFFFFF, op == "P"
            gone = table.put(key, slot, value, payload, spilled=spilled, stamp=step)
            model.pop(key, None)
            model[key] = (value, payload, spilled)
            stamps[key] = step
            expected = None
            if len(model) > cap:
                old, (_, _, old_spilled) = model.popitem(last=False)
                expected = old if old_spilled else None
            assert gone == expected
        elif op in "al":
            value, payload = float(step), (key * 7 + step) & 0xFFFFFF
            limit = step - key % 50 if op == "l" else -1  # the owner's oldest is that old
            added = table.add(key, value, payload, step, limit)
            oldest = next(iter(model), None)
            if key in model:  # held: its slot, nothing changed
                assert added == slot
            elif len(model) == cap and (
                oldest is None or model[oldest][2] or 0 <= limit <= stamps[oldest]
            ):
                # It would push out a spilled entry (left to put()), or one no older than
                # the owner's oldest (left to the owner), or the cap is 0.
                assert added == -2
            else:
                assert added == -1
                model[key] = (value, payload, False)
                stamps[key] = step
                if len(model) > cap:
                    model.popitem(last=False)
        elif op == "d" and slot >= 0:
            table.delete(slot)
            del model[key]
        elif op == "s" and slot >= 0:
            table.spill(slot)
            value, payload, _ = model[key]
            model[key] = (value, payload, True)
        elif op == "e" and model:
            assert table.oldest_stamp() == stamps[next(iter(model))]
            table.evict_oldest()
            model.popitem(last=False)
        elif op == "c":
            cap = len(model)
            table.set_cap(cap)
        assert len(table) == len(model)
    return table, model, [stamps[key] for key in model]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), OPS)
def test_the_table_is_an_ordered_dict_with_a_cap(cap: int, ops: list[tuple[str, int]]) -> None:
    table, model, stamps = apply(cap, ops)
    assert table.items() == [(k, *v) for k, v in model.items()]
    assert table.stamps() == stamps
    for key, (value, payload, spilled) in model.items():
        slot = table.slot_of(key)
        assert slot >= 0
        assert (table.value(slot), table.payload(slot), table.spilled(slot)) == (
            value,
            payload,
            spilled,
        )


def test_a_long_churn_cuts_packs_and_grows_without_losing_an_entry() -> None:
    # Past the slack of dead entries: the front is cut, dead-heavy tables packed, the index grown.
    ops = [("p", i) for i in range(5000)] + [("p", i % 300) for i in range(20000)]
    ops += [("a", 5000 + i % 7000) for i in range(9000)] + [("p", i % 300) for i in range(500)]
    ops += [("d", i) for i in range(0, 300, 3)] + [("P", 10**30 + i) for i in range(3000)]
    ops += [("a", i % 2500) for i in range(8000)] + [("p", 7), ("a", 7)]
    ops += [("l", i) for i in range(20000, 26000)] + [("e", 0)] * 1500
    table, model, stamps = apply(2000, ops)
    assert table.items() == [(k, *v) for k, v in model.items()]
    assert table.stamps() == stamps


def test_keys_too_wide_are_refused() -> None:
    table = LruTable(4, 2)
    try:
        table.put(1 << 16, table.slot_of(1), 0.0)
    except OverflowError:
        return
    raise AssertionError("a 17-bit key went into 2 bytes")
