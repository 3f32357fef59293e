"""A restart with many active bans (issue 9): Service.start, with a fake backend, leaves every
jail's engine as restoring each earlier ban and marking each active one, one by one, would;
and with a million bans, the bulk paths build only what the caps keep. Counted, not timed
(bench/bench_restore.py times the real daemon with the real ipset backend)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from ipaddress import ip_network
from pathlib import Path

import pytest
from fakes.backend import FakeBackend
from test_restore_bulk import internals
from test_service import CONFIG, NOW, Harness, ask

from blocker.active import key_of, target_of
from blocker.ban_book import BanBook, _survivors, subnet_key
from blocker.ban_history import target_key
from blocker.records import Network
from blocker.scoring import Scorer
from blocker.tiers import key_of as source_key


class CountingBackend(FakeBackend):
    """Counts the bans it is handed and sums their keys: a million Network objects held in
    a table would weigh ~500 MB."""

    def __init__(self) -> None:
        super().__init__()
        self.banned = 0
        self.key_sum = 0

    def ban(self, entries: Sequence[tuple[Network, float]]) -> dict[Network, str]:
        self._check()
        self.banned += len(entries)
        self.key_sum += sum(key_of(target) for target, _ in entries)
        return {}


def harness_with(
    tmp_path: Path, config: str, rows: Iterator[tuple[str, float, float | None]]
) -> Harness:
    harness = Harness(tmp_path, config)
    with harness.state.transaction():
        harness.state.db.executemany(
            "INSERT INTO bans (target, jail, at, expires, reason) VALUES (?, 'probes', ?, ?, 'r')",
            rows,
        )
    return harness


def one_by_one(harness: Harness, scorer: Scorer) -> Scorer:
    """A new engine of `scorer`'s jail, given the state's history and the service's active
    bans one at a time."""
    alone = Scorer(scorer.policy)
    alone.restore_history(
        (ip_network(text), at) for text, at in harness.state.history_rows(-math.inf)
    )
    for key, until in harness.service.active.keyed().items():
        alone.mark_banned(target_of(key), until)
    return alone


def flood(
    count: int, again: int | None = None, v4: bool = False
) -> Iterator[tuple[str, float, float | None]]:
    """`count` host bans, one per /64, oldest first, ending over the next hour (every
    99,991st permanent), two subnets among them; `again`: the host of that ban banned a
    second time as the newest; `v4`: then three hosts of one /24."""
    for i in range(count):
        text = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"
        yield text, NOW - 3000 + i / 1000, None if i % 99_991 == 7 else NOW + 3600 + i % 3600
        if i in (3, count - 5):
            yield f"2001:db8:ffff:{i % 3:x}::/64", NOW - 3000 + i / 1000, NOW + 600
    if again is not None:
        yield f"2001:db8:{again >> 16:x}:{again & 0xFFFF:x}::1", NOW - 1, NOW + 7200
    if v4:
        for k in range(1, 4):
            yield f"203.0.113.{k}", NOW - 1 + k / 10, NOW + 7200


@pytest.mark.parametrize(
    ("again", "v4", "read"),
    [
        (None, False, []),
        (-3, False, [(303, True, True)]),
        (-70, False, [(303, True, True)]),
        (-150, False, []),
        (None, True, [(305, False, True)]),
    ],
)
def test_a_restart_restores_each_engine_as_one_ban_at_a_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    again: int | None,
    v4: bool,
    read: list[tuple[int, bool, bool]],
) -> None:
    """300 bans into caps of 50 (max_tracked in every jail): the newest 112 decide the
    history and escalation tables, unless a host among them was banned before too (then the
    whole history is read for both), or two of them share a subnet (then for escalation);
    either way they end as one by one."""
    config = CONFIG.replace("[jails.probes]", "max_tracked = 50\n[jails.probes]").replace(
        "[jails.scans]", "[jails.scans]\nmax_tracked = 50"
    )
    rows = flood(300, None if again is None else 300 + again, v4)
    harness = harness_with(tmp_path, config, rows)
    whole: list[tuple[int, bool, bool]] = []
    restore = Scorer.restore_history_keys

    def counted(scorer: Scorer, keys: Sequence[int], ats: Sequence[float], **parts: bool) -> None:
        whole.append((len(keys), parts["history"], parts["escalation"]))
        restore(scorer, keys, ats, **parts)

    monkeypatch.setattr(Scorer, "restore_history_keys", counted)
    service = harness.restart(NOW)
    monkeypatch.undo()
    # Banned again as the newest ban, the host of the 297th is among the newest 50 too, the
    # 230th among the 62 before them: the whole history is read. The 150th came before the
    # newest 112, and more than 50 others since have pushed it out: decided.
    assert whole == read * len(service.pipeline.runners)
    for runner in service.pipeline.runners:
        assert internals(runner.scorer) == internals(one_by_one(harness, runner.scorer))
    harness.state.close()


def test_a_million_active_bans_restore_as_one_by_one_and_build_only_what_the_caps_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million host bans after a flood (and two subnets) into two jails of the default
    max_tracked (100,000): every ban reaches the backend and the ledger; each engine holds
    the marks, gate, history and subnet counts marking them one by one leaves (checked
    against the expected newest ones, not a one-by-one run: that alone takes a minute);
    no ban is marked one by one and no history row restored one by one on the way."""
    count = 1_000_000
    harness = harness_with(tmp_path, CONFIG, flood(count))
    backend = CountingBackend()
    harness.backend = backend
    harness.service = service = harness.make_service(harness.state, backend)

    def refuse(*_args: object) -> None:
        raise AssertionError("a ban or an earlier ban went one at a time")

    monkeypatch.setattr(BanBook, "ban_host", refuse)
    monkeypatch.setattr(Scorer, "restore_history_keys", refuse)
    service.start(NOW)
    monkeypatch.undo()
    bans = list(service.active.keyed().items())
    assert len(bans) == count + 2
    assert backend.banned == count + 2
    assert backend.key_sum == sum(key for key, _ in bans)
    assert ask(service, "status", {}, NOW)["active_bans"] == count + 2
    hosts = [(key, until) for key, until in bans if key & 0xFF == 128]
    history = list(harness.state.history_rows(-math.inf))
    for runner in service.pipeline.runners:
        scorer = runner.scorer
        cap = scorer.policy.max_tracked
        kept = _survivors(len(hosts), cap)
        marks = [
            (source_key(target_of(key).network_address), until) for key, until in hosts[-kept:]
        ]
        assert list(scorer.book.hosts.items()) == marks
        permanent = {
            source_key(target_of(key).network_address): until
            for key, until in hosts[:-kept]
            if until == math.inf
        }
        assert len(permanent) == 10  # dropped from the marks, kept by the gate
        assert scorer.book.gate == {**permanent, **dict(marks)}
        assert scorer.book.dropped_permanent_hosts == set(permanent)
        assert [s for s, _ in scorer.book.subnets.items()] == [
            subnet_key(ip_network("2001:db8:ffff::/64")),
            subnet_key(ip_network(f"2001:db8:ffff:{(count - 5) % 3:x}::/64")),
        ]
        newest = [(ip_network(text), at) for text, at in history[-cap:]]
        assert scorer.history.items() == [(target_key(t), at) for t, at in newest]
        host_rows = [
            (t, at)
            for t, at in ((ip_network(text), at) for text, at in history[-cap - 2 :])
            if t.prefixlen == 128
        ][-cap:]
        escalation = scorer.escalation
        assert escalation.items() == [
            (escalation.key(t.network_address), {int(t.network_address): at}) for t, at in host_rows
        ]
        first, last = (target_of(key).network_address for key, _ in (hosts[0], hosts[-1]))
        assert scorer.explain(last, NOW)["banned_until"] == hosts[-1][1]
        assert scorer.explain(first, NOW)["banned_until"] is None  # the cap dropped it
    explained = ask(service, "explain", {"address": str(first)}, NOW)
    assert [b["target"] for b in explained["banned_by"]] == [str(first)]  # still in the kernel
    harness.state.close()
