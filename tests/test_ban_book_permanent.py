"""ban_book.py: a permanent ban the cap drops from the marks stays a ban, through gate
rebuilds, restarts and status, until an unban (issue 9, found in review)."""

from __future__ import annotations

import math
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocker import ban_book
from blocker.active import key_of
from blocker.ban_book import GATE_CACHE_SIZE, BanBook, subnet_key
from blocker.records import Decision, Hit
from blocker.scoring import JailPolicy, Scorer

T0 = 1_700_000_000.0
SMALL_GATE = 16  # refusals cached before a rebuild, in the scorer tests (monkeypatched)


@pytest.fixture
def small_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ban_book, "GATE_CACHE_SIZE", SMALL_GATE)


def scorer(**kw: object) -> Scorer:
    """A jail with room for 10 marks, no subnet escalation (the tests ban many /24s)."""
    policy = {"name": "test", "max_tracked": 10, "subnet_min_offenders": 0, **kw}
    return Scorer(JailPolicy(**policy))  # type: ignore[arg-type]


def burst(s: Scorer, text: str, t: float, count: int = 5) -> list[Decision]:
    """`count` hits of `text` 1 s apart from T0 + t: 5 reach the default threshold."""
    out: list[Decision] = []
    for i in range(count):
        out += s.feed(Hit(T0 + t + i, "test", "probe", ip_address(text), 1.0))
    return out


def refusals(s: Scorer, count: int, t: float) -> None:
    """`count` hits from distinct loopback sources: each a new refusal in the gate."""
    for i in range(count):
        s.feed(Hit(T0 + t, "test", "probe", ip_address(0x7F000000 + 1 + i), 1.0))


def forever_then_pushed_out(s: Scorer) -> str:
    """Ban 203.0.113.7 for good, then mark 12 others: the cap of 10 drops its mark."""
    s.mark_banned(ip_network("203.0.113.7/32"), math.inf)
    for i in range(1, 13):
        s.mark_banned(ip_network(f"198.51.100.{i}/32"), T0 + 3600)
    assert s.book.hosts.get(int(ip_address("203.0.113.7"))) is None  # the cap did bite
    return "203.0.113.7"


# -- the engine: scoring, counters, explain --------------------------------------------


def test_a_permanent_ban_the_cap_dropped_is_counted_while_banned_not_ignored() -> None:
    s = scorer()
    host = forever_then_pushed_out(s)
    assert burst(s, host, 10) == []
    stats = s.stats()
    assert (stats["while_banned"], stats["ignored"]) == (5, 0)


def test_a_permanent_ban_the_cap_dropped_survives_a_gate_rebuild(small_gate: None) -> None:
    s = scorer()
    host = forever_then_pushed_out(s)
    refusals(s, 3 * SMALL_GATE, 5)
    assert s.stats()["gate_copies"] > 0  # the gate was rebuilt
    assert burst(s, host, 10) == []
    stats = s.stats()
    assert (stats["while_banned"], stats["ignored"]) == (5, 3 * SMALL_GATE)
    assert s.explain(ip_address(host), T0 + 20)["banned_until"] == "permanent"


def test_a_permanent_jail_keeps_every_ban_through_a_storm_and_rebuilds(small_gate: None) -> None:
    """ban_time = permanent: 30 hosts banned by their score, 10 marks kept, then refusals."""
    s = scorer(ban_time=math.inf)
    hosts = [f"198.51.100.{i}" for i in range(1, 31)]
    for number, host in enumerate(hosts):
        [decision] = burst(s, host, number)
        assert decision.duration == math.inf
    assert len(s.book.hosts) <= 10
    refusals(s, 3 * SMALL_GATE, 40)
    for host in hosts:
        assert burst(s, host, 50) == [], host
    assert s.stats()["while_banned"] == 5 * len(hosts)
    assert s.stats()["bans"] == len(hosts)


def test_explain_says_permanent_for_a_ban_the_cap_dropped() -> None:
    s = scorer()
    host = forever_then_pushed_out(s)
    assert s.explain(ip_address(host), T0 + 1)["banned_until"] == "permanent"


def test_an_unban_after_the_drop_lets_the_host_be_scored_and_banned_again(
    small_gate: None,
) -> None:
    s = scorer()
    host = forever_then_pushed_out(s)
    s.forget(ip_network(f"{host}/32"))
    assert s.explain(ip_address(host), T0 + 1)["banned_until"] is None
    refusals(s, 3 * SMALL_GATE, 5)  # a rebuild must not bring the ban back
    [decision] = burst(s, host, 10)
    assert decision.target_text == host
    assert decision.duration == 600  # the jail's ban_time: a new ban, not the old one


def test_a_new_ban_of_a_host_banned_for_good_before_replaces_it(small_gate: None) -> None:
    """A manual 60 s ban of a host whose permanent mark the cap dropped: the new ban decides
    (the kernel gives a present entry the new time), and neither the cap dropping its mark
    nor a rebuild brings the permanent one back."""
    s = scorer()
    host = forever_then_pushed_out(s)
    s.mark_banned(ip_network(f"{host}/32"), T0 + 60)
    for i in range(1, 13):
        s.mark_banned(ip_network(f"192.0.2.{i}/32"), T0 + 3600)
    assert s.book.host_until(int(ip_address(host))) is None  # dropped again: scored again
    refusals(s, 3 * SMALL_GATE, 5)
    assert len(burst(s, host, 100)) == 1


def test_the_real_cache_size_rebuild_keeps_the_dropped_permanent_ban() -> None:
    """The same at the shipped GATE_CACHE_SIZE (a refusal is cheap: 65,537 of them)."""
    book = BanBook(cap=3)
    forever = int(ip_address("203.0.113.7"))
    book.ban_host(forever, math.inf, T0)
    for i in range(1, 5):
        book.ban_host(int(ip_address(f"198.51.100.{i}")), T0 + 600, T0)
    assert forever not in book.hosts
    for i in range(GATE_CACHE_SIZE + 1):
        book.refuse(-1 - i)
    assert book.gate_copies > 0
    assert book.gate[forever] == math.inf
    assert not book.is_refusal(forever)
    assert book.is_refusal(-1 - GATE_CACHE_SIZE)
    assert -1 not in book.gate  # the rebuild did forget refusals


def test_a_permanent_subnet_ban_the_cap_dropped_is_not_escalated_again() -> None:
    """ban_time = permanent, 2 offenders ban a /24: a third host of it banned after the
    cap dropped the subnet's mark must not ban the subnet again (the kernel holds it)."""
    s = scorer(ban_time=math.inf, subnet_min_offenders=2)
    first = burst(s, "203.0.113.1", 0) + burst(s, "203.0.113.2", 10)
    assert [d.target_text for d in first] == ["203.0.113.1", "203.0.113.2", "203.0.113.0/24"]
    for i in range(1, 13):
        s.mark_banned(ip_network(f"198.51.{i}.0/24"), T0 + 3600)
    assert subnet_key(ip_network("203.0.113.0/24")) not in s.book.subnets  # the cap did bite
    assert s.explain(ip_address("203.0.113.3"), T0 + 20)["subnet_banned_until"] == "inf"
    assert [d.target_text for d in burst(s, "203.0.113.3", 20)] == ["203.0.113.3"]
    s.forget(ip_network("203.0.113.0/24"))  # unbanned (its offenders too): escalates again
    assert s.explain(ip_address("203.0.113.4"), T0 + 30)["subnet_banned_until"] is None
    again = burst(s, "203.0.113.4", 30) + burst(s, "203.0.113.5", 40)
    assert [d.target_text for d in again] == ["203.0.113.4", "203.0.113.5", "203.0.113.0/24"]


def test_a_new_subnet_ban_replaces_a_permanent_one_the_cap_dropped() -> None:
    book = BanBook(cap=3)
    subnet = ip_network("203.0.113.0/24")
    book.ban_subnet(subnet, math.inf, T0)
    for i in range(1, 5):
        book.ban_subnet(ip_network(f"198.51.{i}.0/24"), T0 + 600, T0)
    assert book.subnet_until(subnet) == math.inf
    book.ban_subnet(subnet, T0 + 60, T0)
    for i in range(5, 9):
        book.ban_subnet(ip_network(f"198.51.{i}.0/24"), T0 + 600, T0)
    assert subnet_key(subnet) not in book.subnets
    assert book.subnet_until(subnet) is None


# -- the restart path: ban_hosts() -----------------------------------------------------


def restored(cap: int, bans: dict[int, float]) -> Scorer:
    s = scorer(max_tracked=cap)
    s.restore_bans(bans)
    return s


def test_a_restart_keeps_a_permanent_ban_the_cap_drops_through_rebuilds(small_gate: None) -> None:
    bans = {key_of(ip_network("203.0.113.7/32")): math.inf}
    bans |= {key_of(ip_network(f"198.51.100.{i}/32")): T0 + 3600 for i in range(1, 31)}
    s = restored(10, bans)
    assert int(ip_address("203.0.113.7")) not in s.book.hosts  # the cap did bite
    refusals(s, 3 * SMALL_GATE, 5)
    assert burst(s, "203.0.113.7", 10) == []
    stats = s.stats()
    assert (stats["while_banned"], stats["ignored"]) == (5, 3 * SMALL_GATE)
    assert s.explain(ip_address("203.0.113.7"), T0 + 20)["banned_until"] == "permanent"
    s.forget(ip_network("203.0.113.7/32"))
    refusals(s, 3 * SMALL_GATE, 20)
    assert len(burst(s, "203.0.113.7", 30)) == 1


def test_a_restart_and_bans_one_by_one_leave_the_same_book() -> None:
    bans = {key_of(ip_network(f"198.51.100.{i}/32")): T0 + 3600 + i for i in range(1, 31)}
    for i in (2, 5, 29):
        bans[key_of(ip_network(f"198.51.100.{i}/32"))] = math.inf
    bulk = restored(10, bans)
    alone = scorer()
    for key, until in bans.items():
        alone.mark_banned(ip_network((key >> 9, 32)), until)
    for s in (bulk, alone):
        assert s.book.dropped_permanent_hosts == {
            int(ip_address(f"198.51.100.{i}")) for i in (2, 5)
        }
    assert list(bulk.book.hosts.items()) == list(alone.book.hosts.items())
    assert bulk.book.gate == alone.book.gate


# -- the book against a model: every ban ever and every refusal ------------------------

KEYS = 24  # small, so keys come back: re-bans, unbans, refusals of banned keys
_STEP = st.tuples(
    # Refusals thrice as often: enough of them to rebuild the gate, often.
    st.sampled_from(["ban", "ban_forever", "refuse", "refuse", "refuse", "forget", "tick"]),
    st.integers(0, KEYS - 1),
    st.integers(1, 100),  # seconds: the ban's length, or the clock's step
)


@settings(max_examples=300, deadline=None)
@given(
    cap=st.integers(1, 6),
    cache=st.integers(1, 4),
    restart=st.lists(st.tuples(st.integers(0, KEYS - 1), st.booleans()), max_size=12),
    steps=st.lists(_STEP, min_size=20, max_size=80),
)
def test_the_gate_decides_as_a_model_of_every_ban_and_refusal(
    cap: int,
    cache: int,
    restart: list[tuple[int, bool]],
    steps: list[tuple[str, int, int]],
) -> None:
    """The model: the newest ban of every key ever banned, until unbanned, and the keys
    refused.  The book may forget a finite ban the cap drops (it is scored again) and a
    cached refusal (the engine refuses it again when it comes back), nothing else: it never
    drops a hit the model lets through, it drops every hit of a key banned for good, and it
    tells a permanent ban from a refusal as the model does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ban_book, "GATE_CACHE_SIZE", cache)
        book = BanBook(cap)
        now = T0
        bans: dict[int, float] = {}  # the model: key -> its newest ban's end
        refused: set[int] = set()
        distinct = dict.fromkeys(key for key, _ in restart)  # a restart names each ban once
        at_start = [(key, math.inf if ever else T0 + 50 + key) for key, ever in distinct.items()]
        book.ban_hosts(at_start, len(at_start), T0 + 50, lambda key: key, now)
        bans.update(at_start)
        refusals_made = 0
        for what, key, seconds in steps:
            if what == "tick":
                now += seconds
            elif what == "refuse":
                if key in book.gate and now < book.gate[key]:
                    continue  # the engine refuses only a source the gate let through
                book.refuse(key)
                refused.add(key)
                refusals_made += 1
            elif what == "forget":
                book.forget_host(key)
                bans.pop(key, None)
                refused.discard(key)  # unbanned: its next hit settles it again
            else:
                until = math.inf if what == "ban_forever" else now + seconds
                book.ban_host(key, until, now)
                bans[key] = until
            for each in range(KEYS):
                gated = now < book.gate.get(each, -math.inf)
                banned = now < bans.get(each, -math.inf)
                if gated:
                    assert banned or each in refused, (each, "dropped a hit it may not")
                if bans.get(each) == math.inf:
                    assert gated, (each, "let a host banned for good through")
                    assert not book.is_refusal(each), (each, "counted as refused")
                    assert book.host_until(each) == math.inf
                elif gated and book.gate[each] == math.inf and each not in book.hosts:
                    assert book.is_refusal(each)
                    assert each in refused
            assert book.dropped_permanent_hosts <= {k for k, u in bans.items() if u == math.inf}
            assert not book.dropped_permanent_hosts & book.hosts.keys()
            assert book.gate_copies <= refusals_made  # a rebuild is paid by as many


def test_a_storm_of_permanent_bans_copies_at_most_one_entry_a_refusal() -> None:
    """Counts work, not time: 300k permanent bans past a cap of 10k (so 290k kept only as
    dropped permanent bans), two refusals a ban: the rebuilds copy the marks and the
    dropped bans only after as many new refusals: at most one entry per refusal."""
    book = BanBook(cap=10_000)
    for i in range(300_000):
        book.ban_host(i, math.inf, T0)
        book.refuse(-2 * i - 1)
        book.refuse(-2 * i - 2)
    assert len(book.hosts) <= 10_000
    assert len(book.dropped_permanent_hosts) + len(book.hosts) == 300_000
    assert 0 < book.gate_copies <= 2 * 300_000  # at most one entry copied per refusal
    assert all(book.gate[i] == math.inf for i in range(0, 300_000, 997))
    assert not any(book.is_refusal(i) for i in range(0, 300_000, 997))
