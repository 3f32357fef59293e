"""Scorer.restore_history_keys / restore_bans (a restart's bulk restore) leave the engine
deciding exactly as restore_history / mark_banned of the same bans, one by one, did."""

from __future__ import annotations

import math
from dataclasses import asdict
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocker.active import key_of, target_of
from blocker.ban_book import _survivors
from blocker.records import Hit, Network
from blocker.scoring import JailPolicy, Scorer, _source_key
from blocker.tiers import key_of as source_key

T0 = 1_700_000_000.0

HOSTS = (
    [ip_network(f"203.0.113.{i}/32") for i in range(1, 13)]
    + [ip_network(f"198.51.100.{i}/32") for i in range(1, 5)]
    + [ip_network(f"2001:db8:{i % 3:x}:{i:x}::1/128") for i in range(12)]
    + [ip_network("2001:db8:7::5/128"), ip_network("2001:db8:7::6/128")]
)
SUBNETS = [
    ip_network("203.0.113.0/24"),
    ip_network("198.51.100.0/26"),
    ip_network("2001:db8:5::/64"),
    ip_network("2001:db8:6::/48"),
]
TARGETS = HOSTS + SUBNETS


def policy(cap: int) -> JailPolicy:
    return JailPolicy(
        name="t",
        threshold=2,
        window=60,
        ban_time=600,
        ban_factor=2,
        history_window=3600,
        subnet_min_offenders=2,
        subnet_window=600,
        max_tracked=cap,
    )


def one_by_one(
    scorer: Scorer, history: list[tuple[Network, float]], bans: dict[int, float]
) -> None:
    scorer.restore_history(history)
    for key, until in bans.items():
        scorer.mark_banned(target_of(key), until)


def in_bulk(scorer: Scorer, history: list[tuple[Network, float]], bans: dict[int, float]) -> None:
    scorer.restore_history_keys([key_of(t) for t, _ in history], [at for _, at in history])
    scorer.restore_bans(bans)


def internals(scorer: Scorer) -> object:
    """Everything restore touches, in order (the caps drop the oldest first)."""
    return (
        list(scorer.book.hosts.items()),
        dict(scorer.book.gate),
        scorer.book.dropped_permanent_hosts,
        scorer.book.dropped_permanent_subnets,
        list(scorer.book.subnets.items()),
        scorer.history.items(),
        [(k, dict(v)) for k, v in scorer.escalation.items()],
    )


def decisions(scorer: Scorer, at: float) -> list[object]:
    """Two rounds of hits from every host, then explain for each: what the engine decides."""
    out: list[object] = []
    for step in range(3):
        for target in HOSTS:
            hit = Hit(at + step, "t", "probe", target.network_address, 1.0)
            out.extend((d.target, d.at, d.duration, d.reason) for d in scorer.feed(hit))
    for target in HOSTS:
        explained = scorer.explain(target.network_address, at + 5)
        explained.pop("tier")  # the hits' tier is the tiers' business, not restore's
        out.append(explained)
    return out


rows = st.lists(st.tuples(st.sampled_from(TARGETS), st.floats(T0 - 7200, T0)), max_size=60)
bans = st.dictionaries(
    st.sampled_from(TARGETS).map(key_of),
    st.one_of(st.just(math.inf), st.floats(T0 - 100, T0 + 3000)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    history=rows,
    active=bans,
    cap=st.integers(1, 12),
    fed_before=st.booleans(),
    ordered=st.booleans(),
    marked_before=bans,
    split=st.integers(0, 40),
)
def test_bulk_restore_decides_as_one_by_one(
    *,
    history: list[tuple[Network, float]],
    active: dict[int, float],
    cap: int,
    fed_before: bool,
    ordered: bool,
    marked_before: dict[int, float],
    split: int,
) -> None:
    """Also with marks already in the book (some of the same hosts), marks already ended
    (fed_before sets a clock), and the bans handed over in two calls."""
    if ordered:  # the state hands history oldest first; any order must still agree
        history = sorted(history, key=lambda row: row[1])
    old, new = Scorer(policy(cap)), Scorer(policy(cap))
    if fed_before:  # a clock and live windows already (the slow, general path)
        for scorer in (old, new):
            scorer.feed(Hit(T0 - 50, "t", "probe", ip_address("203.0.113.1"), 1.0))
            scorer.feed(Hit(T0 - 40, "t", "probe", ip_address("2001:db8::1"), 1.0))
    for scorer in (old, new):
        for key, until in marked_before.items():
            scorer.mark_banned(target_of(key), until)
    one_by_one(old, history, active)
    items = list(active.items())
    new.restore_history_keys([key_of(t) for t, _ in history], [at for _, at in history])
    new.restore_bans(dict(items[:split]))
    new.restore_bans(dict(items[split:]))
    assert internals(new) == internals(old)
    assert decisions(new, T0) == decisions(old, T0)


# A flood's history: hosts each in a /64 of their own, none of them among TARGETS.
STORM = [ip_network(f"2001:db8:99:{i:x}::1/128") for i in range(40)]


@settings(max_examples=300, deadline=None)
@given(
    before=rows,
    storm=st.lists(st.sampled_from(STORM), max_size=40, unique=True),
    after=st.lists(
        st.tuples(st.sampled_from(TARGETS + STORM), st.floats(T0 - 7200, T0)), max_size=3
    ),
    given_back=st.integers(0, 110),
    cap=st.integers(1, 12),
    escalating=st.booleans(),
)
def test_the_newest_bans_restore_history_as_all_of_them_or_change_nothing(
    *,
    before: list[tuple[Network, float]],
    storm: list[Network],
    after: list[tuple[Network, float]],
    given_back: int,
    cap: int,
    escalating: bool,
) -> None:
    """restore_history_tail() of the newest `given_back` bans of a history: what it takes
    (ban history, subnet escalation, each on its own) is as after restoring every ban one by
    one; what it does not is untouched, and restoring it from every ban ends as one by one."""
    history = [*before, *((t, T0 - 100 + i) for i, t in enumerate(storm)), *after]
    tail = history[max(0, len(history) - given_back) :]
    rules = policy(cap)
    if not escalating:
        rules = JailPolicy(**{**asdict(rules), "subnet_min_offenders": 0})
    old, new = Scorer(rules), Scorer(rules)
    old.restore_history(history)
    left = new.restore_history_tail([key_of(t) for t, _ in tail], [at for _, at in tail])
    history_left, escalation_left = left
    fresh = Scorer(rules)
    assert new.history.items() == (fresh if history_left else old).history.items()
    assert new.escalation.items() == (fresh if escalation_left else old).escalation.items()
    keys = [key_of(t) for t, _ in history]
    ats = [at for _, at in history]
    new.restore_history_keys(keys, ats, history=history_left, escalation=escalation_left)
    assert internals(new) == internals(old)
    assert decisions(new, T0) == decisions(old, T0)


def test_a_storms_newest_bans_restore_its_history() -> None:
    """What the tail is for: 2 * cap distinct hosts, one per /64, after anything."""
    cap = 10
    history = [(t, T0 - 3000 + i) for i, t in enumerate(HOSTS)]
    history += [(t, T0 - 100 + i) for i, t in enumerate(STORM[: 2 * cap])]
    old, new = Scorer(policy(cap)), Scorer(policy(cap))
    old.restore_history(history)
    tail = history[-2 * cap :]
    left = new.restore_history_tail([key_of(t) for t, _ in tail], [at for _, at in tail])
    assert left == (False, False)  # both decided: nothing left to restore
    assert internals(new) == internals(old)
    assert len(new.history) == len(new.escalation) == cap
    # A host banned again among them: its earlier ban may count, so the tail does not decide.
    again = Scorer(policy(cap))
    tail[-1] = tail[0]
    left = again.restore_history_tail([key_of(t) for t, _ in tail], [at for _, at in tail])
    assert left == (True, True)
    assert len(again.history) == len(again.escalation) == 0


def test_a_storm_of_distinct_bans_takes_the_fast_path_and_agrees() -> None:
    """300 hosts each banned once (one per /64) into caps of 100: what the bulk path is for."""
    targets = [ip_network(f"2001:db8:{i >> 8:x}:{i & 0xFF:x}::1/128") for i in range(300)]
    history = [(t, T0 - 300 + i) for i, t in enumerate(targets)]
    active = {key_of(t): T0 + 600 + i for i, t in enumerate(targets)}
    active[key_of(targets[3])] = math.inf  # permanent, dropped by the cap: the book keeps it
    old, new = Scorer(policy(100)), Scorer(policy(100))
    one_by_one(old, history, active)
    in_bulk(new, history, active)
    assert len(new.book.hosts) == _survivors(300, 100) < 300
    assert new.book.gate[source_key(targets[3].network_address)] == math.inf
    assert new.book.dropped_permanent_hosts == {source_key(targets[3].network_address)}
    assert internals(new) == internals(old)
    assert decisions(new, T0) == decisions(old, T0)


def test_survivors_follows_the_cap_one_mark_at_a_time() -> None:
    for cap in (1, 2, 3, 10, 11, 100):
        held = 0
        for added in range(1, 5 * cap + 3):
            held += 1
            if held > cap:
                held = cap * 9 // 10
            assert _survivors(added, cap) == held, (cap, added)


def test_marks_already_ended_are_swept_as_one_by_one() -> None:
    """With a clock past some of the bans' ends, the cap sweeps those first: the bulk path
    must not build the newest marks blindly."""
    hosts = [key_of(t) for t in STORM[:30]]
    active = {key: T0 + (-10 if i % 4 == 0 else 600 + i) for i, key in enumerate(hosts)}
    old, new = Scorer(policy(10)), Scorer(policy(10))
    for scorer in (old, new):
        scorer.feed(Hit(T0, "t", "probe", ip_address("203.0.113.1"), 1.0))
    for key, until in active.items():
        old.mark_banned(target_of(key), until)
    new.restore_bans(active)
    assert internals(new) == internals(old)


def test_subnet_escalation_decides_the_tail_by_subnet_not_by_host() -> None:
    """Hosts of one /24 among the newest bans: each is a new host, but not a new subnet:
    the history is decided, escalation is left to the caller."""
    cap = 3
    history = [(t, T0 - 100 + i) for i, t in enumerate(STORM[: 2 * cap])]
    history += [(ip_network(f"203.0.113.{i}/32"), T0 - 50 + i) for i in range(1, 3)]
    tail = history[-2 * cap :]
    keys, ats = [key_of(t) for t, _ in tail], [at for _, at in tail]
    scorer = Scorer(policy(cap))
    assert scorer.restore_history_tail(keys, ats) == (False, True)  # history decided only
    assert len(scorer.history) == cap
    assert len(scorer.escalation) == 0
    alone = JailPolicy(**{**asdict(policy(cap)), "subnet_min_offenders": 0})
    assert Scorer(alone).restore_history_tail(keys, ats) == (False, False)


def test_the_book_is_told_the_count_it_is_given() -> None:
    book = Scorer(policy(3)).book
    with pytest.raises(ValueError, match="told of 5 hosts"):
        book.ban_hosts(((key_of(t), T0) for t in STORM[:4]), 5, T0, _source_key, T0 - 1)
