"""The configured jails as they run: which source feeds which jails, lines in, decisions out.

A line becomes a packet, a hit and a decision in pipeline.py; this module only routes each
source's batch to the jails that read that source, and tells every jail's scorer what the
ban ledger knows (bans made, lifted, or remembered from before a restart). A reload swaps
the whole pipeline at once: every part of the service holds this object, never the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from blocker.active import key_of_text
from blocker.activity import Activity, SourceKey
from blocker.addresses import network_refusal
from blocker.config import Config, Jail
from blocker.netfilter import Record
from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Address, Decision, Network
from blocker.sources.base import SourceLine
from blocker.state import State

HISTORY_BATCH = 50_000  # earlier bans handed to the scorers at a time (a flood leaves millions)
# A restart reads only the newest 2 * max_tracked earlier host bans when they decide what
# the scorers' caps keep (Scorer.restore_history_tail), and a quarter more for subnet bans
# among them (escalation counts only hosts); at most this many (their ints are held at once).
HISTORY_TAIL_MAX = 500_000


def source_label(key: SourceKey) -> str:
    """'kernlog:/var/log/kern.log', 'nflog:5,6': how a source is named in logs, status and
    the state."""
    return f"{key[0]}:{key[1]}"


class RunningJails:
    def __init__(
        self,
        config: Config,
        activity: Activity,
        *,
        own_addresses: Sequence[Address] = (),
        log_override: str | None = None,
    ) -> None:
        self.activity = activity
        self.own_addresses = tuple(own_addresses)
        self.log_override = log_override
        self.install(config)

    def install(self, config: Config) -> None:
        """A new configuration: new scorers (the caller tells them the bans and history)."""
        self.config = config
        self.pipeline = Pipeline(config, self.own_addresses)
        self.groups: dict[SourceKey, list[JailRunner]] = {}
        for runner in self.pipeline.runners:
            self.groups.setdefault(self.source_key(runner.jail), []).append(runner)

    @property
    def runners(self) -> list[JailRunner]:
        return self.pipeline.runners

    def runner(self, name: str) -> JailRunner | None:
        return self.pipeline.runner(name)

    def source_key(self, jail: Jail) -> SourceKey:
        if self.log_override is not None:
            return ("kernlog", self.log_override)
        if jail.source == "nflog":
            return ("nflog", ",".join(map(str, jail.nflog_groups)))
        return (jail.source, jail.log_path)

    # -- lines in, decisions out -----------------------------------------------------------
    def route_lines(
        self, key: SourceKey, lines: Sequence[SourceLine], now: float
    ) -> list[Decision]:
        """The decisions of the jails that read `key` on these lines (not yet applied)."""
        runners = self.groups.get(key)
        if not runners or not lines:
            return []
        self.activity.lines[key] += len(lines)
        self.activity.last_line[key] = now
        decisions: list[Decision] = []
        bulk: list[str] = []
        for line in lines:
            if line.time is None:
                bulk.append(line.text)  # kern.log lines carry their own time: parse in bulk
            else:
                decisions += self.pipeline.feed_line(line.text, now, line.time, runners)
        if bulk:
            decisions += self.pipeline.feed_lines(bulk, now, runners)
        return decisions

    def route_records(
        self, key: SourceKey, records: Sequence[Record], now: float
    ) -> list[Decision]:
        """Records from a packet source (NFLOG) for the jails that read `key`."""
        runners = self.groups.get(key)
        if not runners or not records:
            return []
        self.activity.lines[key] += len(records)  # a packet source's "lines" are records
        self.activity.last_line[key] = now
        return self.pipeline.feed_records(records, runners)

    # -- what every scorer is told ---------------------------------------------------------
    def mark_active(self, keyed: Mapping[int, float]) -> None:
        """Every active ban into every scorer, in order (Scorer.restore_bans: it counts them
        first and builds only the marks its cap keeps)."""
        for runner in self.runners:
            runner.scorer.restore_bans(keyed)

    def mark_everywhere(self, target: Network, until: float) -> None:
        for runner in self.runners:
            runner.scorer.mark_banned(target, until)

    def forget_everywhere(self, target: Network) -> None:
        for runner in self.runners:
            runner.scorer.forget(target)

    def history_horizon(self, now: float) -> float:
        """Bans older than this matter to no jail's ban-time growth."""
        return now - max((r.jail.policy.history_window for r in self.runners), default=0.0)

    def load_history(self, state: State, now: float) -> None:
        """Earlier bans into every scorer: when there are more than the scorers' caps keep,
        only the newest 2.25 * max_tracked, which decide ban history and subnet escalation
        unless a target was banned again lately (Scorer.restore_history_tail); else, or for
        what they do not decide, all of them, HISTORY_BATCH at a time."""
        since = self.history_horizon(now)
        left = [(runner, True, True) for runner in self.runners]  # history, escalation
        tail = 9 * max((r.jail.policy.max_tracked for r in self.runners), default=0) // 4
        total = state.history_count(since) if left and tail <= HISTORY_TAIL_MAX else 0
        if total > tail:
            keys, ats = _keyed_rows(state.history_rows(since, skip=total - tail))
            left = [(r, *r.scorer.restore_history_tail(keys, ats)) for r, _, _ in left]
            del keys, ats
        left = [
            (runner, history, escalation)
            for runner, history, escalation in left
            if history or escalation
        ]
        if not left:
            return
        keys, ats = [], []
        for text, at in state.history_rows(since):
            key = key_of_text(text)
            if key is not None:
                keys.append(key)
                ats.append(at)
            if len(keys) >= HISTORY_BATCH:
                for runner, history, escalation in left:
                    runner.scorer.restore_history_keys(
                        keys, ats, history=history, escalation=escalation
                    )
                keys, ats = [], []
        for runner, history, escalation in left:
            runner.scorer.restore_history_keys(keys, ats, history=history, escalation=escalation)

    # -- the one gate ----------------------------------------------------------------------
    def refusal(self, target: Network) -> str | None:
        """Why `target` must never be banned, or None (addresses.py decides)."""
        fixed = network_refusal(target)
        if fixed is not None:
            return fixed
        for runner in self.runners:  # each jail's, with the host's addresses merged in
            problem = runner.scorer.rules.network_refusal(target)
            if problem is not None:
                return problem
        return None


def _keyed_rows(rows: Iterable[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """The ban keys and times of the state's (target text, at) rows that name a target."""
    keys: list[int] = []
    ats: list[float] = []
    for text, at in rows:
        key = key_of_text(text)
        if key is not None:
            keys.append(key)
            ats.append(at)
    return keys, ats
