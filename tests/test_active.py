"""Many active bans (issue 9): ActiveBans, and Service costs that must not grow with them.

The work is counted, not timed: how many batches reach the backend, and that status, tick,
explain, unban and new bans never walk the whole table (ActiveBans' iteration is made to fail
while they run). A ban the backend refuses (a full set) is never recorded as active.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any, cast

import pytest
from fakes.backend import FakeBackend
from hypothesis import given
from hypothesis import strategies as st
from test_service import ATTACKER, CONFIG, NOW, Harness, ask, decision, n, synacks

from blocker import ban_ledger
from blocker.active import BUCKET, ActiveBan, ActiveBans, key_of, key_of_text, target_of
from blocker.ban_book import BanBook, _survivors
from blocker.control import RequestError
from blocker.records import Network, network_text
from blocker.scoring import Scorer

# -- ActiveBans -----------------------------------------------------------------------------

networks = st.one_of(
    st.builds(
        lambda a, p: IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(1, 32),
    ),
    st.builds(
        lambda a, p: IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(1, 128),
    ),
)


@given(networks)
def test_keys_round_trip_through_ints_and_text(target: Network) -> None:
    assert target_of(key_of(target)) == target
    assert key_of_text(network_text(target)) == key_of(target)
    assert key_of_text(str(target)) == key_of(target)


@given(networks, networks)
def test_keys_of_different_targets_differ(a: Network, b: Network) -> None:
    assert (key_of(a) == key_of(b)) == (a == b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "198.51.100.7/33",
        "2001:db8::/129",
        "1.2.3.4/-1",
        "1.2.3.4/ 8",
        "1.2.3.4/8/8",
        "::ffff:/x",
    ],
)
def test_text_that_is_no_target_has_no_key(text: str) -> None:
    assert key_of_text(text) is None


def test_host_bits_are_cleared_as_the_state_reader_always_did() -> None:
    assert key_of_text("203.0.113.9/24") == key_of(n("203.0.113.0/24"))


def test_a_target_is_in_one_jail_and_restore_keeps_the_longest() -> None:
    bans = ActiveBans()
    assert (
        bans.restore(
            [
                ("198.51.100.7", "probes", 100.0),
                ("198.51.100.7", "scans", 50.0),
                ("203.0.113.0/24", "scans", math.inf),
                ("junk", "probes", 9.0),
            ]
        )
        == 1
    )
    assert bans[n("198.51.100.7")].jail == "probes"
    assert bans.count("probes") == 1
    assert bans.count("scans") == 1
    bans.set(n("198.51.100.7"), "scans", 10.0)  # an admin's ban replaces, shorter or not
    assert (bans.count("probes"), bans.count("scans")) == (0, 2)
    assert dict(bans.entries()) == {n("198.51.100.7"): 10.0, n("203.0.113.0/24"): math.inf}


def test_covering_finds_the_host_and_every_wider_ban() -> None:
    bans = ActiveBans()
    bans.set(n("203.0.113.66"), "probes", 10.0)
    bans.set(n("203.0.113.0/24"), "probes", 20.0)
    bans.set(n("2001:db8::/32"), "scans", 30.0)
    found = [b.target for b in bans.covering(ip_address("203.0.113.66"))]
    assert found == [n("203.0.113.66"), n("203.0.113.0/24")]
    assert [b.target for b in bans.covering(ip_address("2001:db8::5"))] == [n("2001:db8::/32")]
    assert bans.covering(ip_address("198.51.100.1")) == []


def test_expire_drops_what_ended_and_keeps_extended_and_permanent_bans() -> None:
    bans = ActiveBans()
    bans.set(n("198.51.100.1"), "probes", 105.0)
    bans.set(n("198.51.100.2"), "probes", 107.0)
    bans.set(n("198.51.100.3"), "probes", 105.0)
    bans.set(n("198.51.100.3"), "probes", 500.0)  # extended: filed in a later bucket too
    bans.set(n("198.51.100.4"), "probes", math.inf)
    assert bans.expire(106.0) == 1  # .1 ended; .2 is due in this bucket but not yet
    assert set(bans) == {n("198.51.100.2"), n("198.51.100.3"), n("198.51.100.4")}
    assert bans.expire(107.0) == 1
    assert bans.expire(499.0) == 0
    assert bans.expire(1e12) == 1
    assert set(bans) == {n("198.51.100.4")}


def test_expire_touches_only_the_buckets_due() -> None:
    bans = ActiveBans()
    for i in range(20_000):
        bans.set(IPv6Network((0x20010DB8 << 96 | i, 128)), "probes", 1000.0 + i)
    assert bans.expire(1000.0 + 99) == 100  # those ending at 1000..1099
    assert bans.expiry_checks <= 100 + BUCKET  # the due buckets, not 20,000 bans
    before = bans.expiry_checks
    assert bans.expire(1000.0 + 99) == 0
    assert bans.expiry_checks - before <= BUCKET


def test_a_ban_made_permanent_after_it_was_filed_does_not_break_expire() -> None:
    bans = ActiveBans()
    bans.set(n("198.51.100.1"), "probes", 105.0)
    bans.set(n("198.51.100.1"), "probes", math.inf)  # filed in bucket 10, now permanent
    assert bans.expire(200.0) == 0
    assert bans.expires(n("198.51.100.1")) == math.inf


def test_bulk_restore_keeps_each_targets_longest_ban_and_counts_right() -> None:
    rows = [(f"2001:db8:{i:x}::1", "probes", 1000.0 + i) for i in range(3000)]
    rows += [(f"2001:db8:{i:x}::1", "scans", 500.0) for i in range(0, 3000, 3)]  # shorter
    rows += [(f"2001:db8:{i:x}::1", "scans", 9000.0) for i in range(1, 3000, 3)]  # longer
    rows += [(f"198.51.100.{i}", "scans", math.inf) for i in range(100)]
    bans = ActiveBans()
    assert bans.restore(rows) == 0
    assert len(bans) == 3100
    assert bans.count("probes") == 2000
    assert bans.count("scans") == 1100
    assert bans.family_counts() == {4: 100, 6: 3000}
    assert bans[n("2001:db8::1")] == ActiveBan(n("2001:db8::1"), "probes", 1000.0)
    assert bans[n("2001:db8:1::1")] == ActiveBan(n("2001:db8:1::1"), "scans", 9000.0)
    assert bans.expire(1000.0 + 2999) == 2000  # every probes ban; the scans ones stay
    assert len(bans) == 1100


def test_an_active_ban_costs_no_python_object() -> None:
    """About 43 bytes a ban in flat arrays, expiry filing included (a dict of int keys and
    float expiries with their filing cost 120 at 30k, 118 at 1M)."""
    import tracemalloc  # noqa: PLC0415

    count = 30_000
    tracemalloc.start()
    try:
        bans = ActiveBans()
        for i in range(count):
            bans.set(IPv6Network((0x20010DB8 << 96 | i << 64 | 1, 128)), "probes", 1e9 + i % 600)
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bans) == count
    assert used / count < 60


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "remove", "expire", "restore"]),
        st.integers(0, 40),  # which target
        st.sampled_from(["probes", "scans", "ssh"]),
        st.one_of(st.floats(0, 400), st.just(math.inf)),
    ),
    max_size=120,
)
POOL = [n(f"198.51.100.{i}") for i in range(20)] + [
    n(f"2001:db8:{i:x}::/{48 + i}") for i in range(21)
]


@given(ops)
def test_the_table_behaves_as_a_dict_of_bans(steps: list[tuple[str, int, str, float]]) -> None:
    """Against a plain dict model, through growth, rebuilds, expiry and bulk restores."""
    bans = ActiveBans()
    model: dict[Network, tuple[str, float]] = {}
    for verb, which, jail, when in steps:
        target = POOL[which]
        if verb == "set":
            bans.set(target, jail, when)
            model[target] = (jail, when)
        elif verb == "remove":
            assert bans.remove(target) == (target in model)
            model.pop(target, None)
        elif verb == "expire":
            clock = min(when, 1e9)  # the daemon's clock: never infinite
            gone = {t for t, (_, e) in model.items() if e <= clock}
            assert bans.expire(clock) == len(gone)
            model = {t: v for t, v in model.items() if t not in gone}
        else:
            bans.clear()
            rows = [(str(t), j, e) for t, (j, e) in model.items()]
            rows += [(str(target), jail, when)]
            assert bans.restore(rows) == 0
            if target not in model or when >= model[target][1]:
                model[target] = (jail, when)
        assert dict(bans.entries()) == {t: e for t, (_, e) in model.items()}
        assert {t: bans[t].jail for t in bans} == {t: j for t, (j, _) in model.items()}
        assert len(bans) == len(model)
        for name in ("probes", "scans", "ssh"):
            assert bans.count(name) == sum(1 for j, _ in model.values() if j == name)
        fours = sum(1 for t in model if t.version == 4)
        assert bans.family_counts() == {4: fours, 6: len(model) - fours}
        assert dict(bans.keyed().items()) == {key_of(t): e for t, (_, e) in model.items()}


# -- the Service at many bans -------------------------------------------------------------


def fill_state(harness: Harness, count: int, expires: float) -> list[Network]:
    targets: list[Network] = [
        IPv6Network((0x20010DB8 << 96 | (i << 64) | 1, 128)) for i in range(count)
    ]
    with harness.state.transaction():
        harness.state.db.executemany(
            "INSERT INTO bans (target, jail, at, expires, reason) VALUES (?, 'probes', ?, ?, 'r')",
            [(network_text(t), NOW - 60, expires) for t in targets],
        )
    return targets


def test_restart_with_many_bans_restores_them_in_few_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = 1000  # RESTORE_BATCH at a size that runs in a second
    monkeypatch.setattr(ban_ledger, "RESTORE_BATCH", batch)
    count = 2 * batch + 123
    harness = Harness(tmp_path)
    targets = fill_state(harness, count, NOW + 3600)
    harness.service.start(NOW)
    batches = harness.backend.ban_batches
    assert [len(b) for b in batches] == [batch, batch, 123]
    assert set(harness.backend.table) == set(targets)
    assert len(harness.service.active) == count
    assert harness.service.active.count("probes") == count
    # every scorer knows them: their lines make no decision
    scorer = harness.service.pipeline.runners[0].scorer
    assert scorer.explain(targets[-1].network_address, NOW)["banned_until"] == NOW + 3600
    harness.state.close()


def test_restart_builds_only_the_marks_the_cap_keeps_and_marks_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scorer gets every active ban in one call, counts them first and builds an
    address only for the marks its ban book's cap (max_tracked 25 here) keeps, and for the
    permanent ones the cap drops (the gate keeps them), never for the others; the scorers
    end as marking each ban one by one: the same marks, gate and order."""
    built: list[int] = []
    bulk = BanBook.ban_hosts

    def counted(book: BanBook, *args: Any) -> None:
        hosts, count, earliest, address, now = args

        def counting(key: int) -> int:
            built.append(key)
            return cast(int, address(key))

        bulk(book, hosts, count, earliest, counting, now)

    monkeypatch.setattr(BanBook, "ban_hosts", counted)
    config = CONFIG.replace("[jails.probes]", "max_tracked = 25\n[jails.probes]")
    harness = Harness(tmp_path, config)
    texts = [f"2001:db8:{i:x}::1" for i in range(60)] + ["198.51.100.0/24"]
    with harness.state.transaction():
        harness.state.db.executemany(
            "INSERT INTO bans (target, jail, at, expires, reason) VALUES (?, 'probes', ?, ?, 'r')",
            [(t, NOW - 60, None if i % 9 == 3 else NOW + 600 + i % 7) for i, t in enumerate(texts)],
        )
    service = harness.restart(NOW)
    bans = list(service.active.keyed().items())
    hosts = [(key, until) for key, until in bans if key & 0xFF == 128]
    kept = _survivors(len(hosts), 25)
    wanted = [key for key, until in hosts[:-kept] if until == math.inf] + [
        key for key, _ in hosts[-kept:]
    ]
    runners = service.pipeline.runners
    assert built == wanted * len(runners)  # every jail: the survivors and dropped permanent
    monkeypatch.undo()
    for runner in runners:
        alone = Scorer(runner.jail.policy)
        for key, until in bans:
            alone.mark_banned(target_of(key), until)
        mine = runner.scorer
        assert list(mine.book.hosts.items()) == list(alone.book.hosts.items())
        assert mine.book.gate == alone.book.gate
        assert mine.book.dropped_permanent_hosts == alone.book.dropped_permanent_hosts
        assert list(mine.book.subnets.items()) == list(alone.book.subnets.items())
    assert len(service.pipeline.runners[0].scorer.book.hosts) < 60  # the cap did bite
    harness.state.close()


def test_with_many_bans_nothing_else_walks_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(tmp_path)
    targets = fill_state(harness, 5000, NOW + 3600)
    service = harness.service
    service.start(NOW)

    def refuse(*_args: object, **_kwargs: object) -> Iterator[Network]:
        raise AssertionError("walked every active ban")

    monkeypatch.setattr(ActiveBans, "__iter__", refuse)
    monkeypatch.setattr(ActiveBans, "entries", refuse)
    harness.feed(synacks(ATTACKER, NOW))  # a new ban
    assert service.active[n(ATTACKER)].jail == "probes"
    service.tick(NOW + 1)
    status = ask(service, "status", {}, NOW + 1)
    assert status["active_bans"] == 5001
    victim = targets[7]
    explained = ask(service, "explain", {"address": str(victim.network_address)}, NOW + 1)
    banned_by = cast(list[dict[str, str]], explained["banned_by"])
    assert [b["target"] for b in banned_by] == [network_text(victim)]
    ask(service, "unban", {"target": network_text(victim)}, NOW + 1)
    assert victim not in service.active
    service.prune(NOW + 1)
    harness.state.close()


def test_bans_the_kernel_refused_at_restart_are_not_active(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    targets = fill_state(harness, 10, NOW + 3600)
    state, backend = harness.state, FakeBackend(capacity=6)
    service = harness.make_service(state, backend)
    service.start(NOW)
    assert len(backend.table) == 6
    assert set(service.active) == set(backend.table)
    refused = set(targets) - set(backend.table)
    assert {r.target for r in state.active(NOW)} == set(backend.table)
    assert service.refusals.total == 4
    scorer = service.pipeline.runners[0].scorer
    for target in refused:
        assert scorer.explain(target.network_address, NOW)["banned_until"] is None
    state.close()


# -- a full set, live -----------------------------------------------------------------------


def full_harness(tmp_path: Path, capacity: int) -> Harness:
    harness = Harness(tmp_path)
    harness.backend = FakeBackend(capacity=capacity)
    harness.service = harness.make_service(harness.state, harness.backend)
    harness.service.start(NOW)
    return harness


def test_a_refused_ban_is_not_active_and_a_later_decision_bans_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = full_harness(tmp_path, capacity=1)
    h.feed(synacks("198.51.100.7", NOW))
    decisions = h.feed(synacks(ATTACKER, NOW))
    assert [d.target for d in decisions] == [n(ATTACKER)]  # decided, but the set is full
    assert n(ATTACKER) not in h.service.active
    assert n(ATTACKER) not in h.backend.table
    assert [r.target for r in h.state.active(NOW)] == [n("198.51.100.7")]
    explained = ask(h.service, "explain", {"address": ATTACKER}, NOW)
    assert explained["banned_by"] == []
    assert explained["jails"]["probes"]["banned_until"] is None
    # its next lines count again (not "while banned") and ban it once there is room
    h.backend.capacity = 2
    again = h.feed(synacks(ATTACKER, NOW + 10), now=NOW + 10)
    assert [d.target for d in again] == [n(ATTACKER)]
    assert n(ATTACKER) in h.backend.table
    assert h.service.active[n(ATTACKER)].jail == "probes"
    status = ask(h.service, "status", {}, NOW + 10)
    assert status["refused_bans"] == 1
    assert status["jails"]["probes"]["refused_bans"] == 1
    h.state.close()


def test_refusals_are_logged_once_per_interval_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = full_harness(tmp_path, capacity=0)
    for i in range(1, 40):
        h.feed(synacks(f"203.0.113.{i}", NOW + i), now=NOW + i)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert "1 new ban(s)" in lines[0].getMessage()
    assert h.service.refusals.total == 39
    h.feed(synacks("203.0.113.200", NOW + 61), now=NOW + 61)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 2
    assert "39 new ban(s) since the last report (40 since start)" in lines[1].getMessage()
    assert h.service.active.count("probes") == 0
    h.state.close()


def test_a_refused_refresh_keeps_the_ban_the_kernel_still_holds(tmp_path: Path) -> None:
    h = full_harness(tmp_path, capacity=10)
    ask(h.service, "ban", {"target": ATTACKER, "duration": 60}, NOW)
    h.backend.fail = "netlink socket timed out"  # the whole batch fails
    h.service.apply([decision(ATTACKER, NOW, 3600)], NOW)
    h.backend.fail = None
    assert h.service.active[n(ATTACKER)].expires == NOW + 60
    scorer = h.service.pipeline.runners[0].scorer
    assert scorer.explain(ip_address(ATTACKER), NOW)["banned_until"] == NOW + 60
    h.state.close()


def test_an_admin_ban_into_a_full_set_is_refused_with_the_reason(tmp_path: Path) -> None:
    h = full_harness(tmp_path, capacity=0)
    with pytest.raises(RequestError, match="set is full"):
        ask(h.service, "ban", {"target": ATTACKER}, NOW)
    assert n(ATTACKER) not in h.service.active
    assert h.state.active(NOW) == []
    h.state.close()


def test_sources_whose_ints_hash_alike_do_not_pile_into_one_slot() -> None:
    """An attacker picks spoofed sources: 2,000 whose keys are equal mod 2**61 - 1 (so equal
    as Python int hashes) still spread over the index instead of making one probe chain."""
    step = (1 << 61) - 1
    targets = [IPv6Network((0x20010DB8 << 96 | k * step, 128)) for k in range(2000)]
    assert len({hash(key_of(t)) for t in targets}) == 1
    bans = ActiveBans()
    for target in targets:
        bans.set(target, "probes", 1e9)
    taken = "".join("x" if pos >= 0 else "." for pos in bans._index)
    longest = max(len(run) for run in (taken + "." + taken).split("."))  # wraps around
    assert longest < 200
    assert all(bans.expires(t) == 1e9 for t in targets)


def test_jail_names_past_the_table_reuse_those_holding_no_ban(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from blocker import active  # noqa: PLC0415

    monkeypatch.setattr(active, "_MAX_JAILS", 2)
    bans = ActiveBans()
    bans.set(n("198.51.100.1"), "probes", 100.0)
    bans.set(n("198.51.100.2"), "scans", 100.0)
    bans.remove(n("198.51.100.2"))  # "scans" holds nothing now
    bans.set(n("198.51.100.3"), "fleet-only", 100.0)
    assert bans[n("198.51.100.3")].jail == "fleet-only"
    assert bans[n("198.51.100.1")].jail == "probes"
    assert (bans.count("probes"), bans.count("scans"), bans.count("fleet-only")) == (1, 0, 1)
    with pytest.raises(ValueError, match="jail names hold bans"):
        bans.set(n("198.51.100.4"), "another", 100.0)
