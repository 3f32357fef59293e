"""spare_live_peers: no ban on spoofable evidence cuts a live connection of this host.

A decision whose evidence can be forged in its target's name (a spoofable filter) is
refused when conntrack shows that target holding a connection with this host; its scorer
is told the ban never was. The spared are remembered for `explain`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from blocker.live_peers import ConntrackError, LiveConnection
from blocker.pipeline import JailRunner
from blocker.records import Decision, Network
from blocker.running_jails import RunningJails

log = logging.getLogger("blocker")

# Spared bans remembered for `explain`, most recent last.
SPARED_REMEMBERED = 10_000


class PeerCheck(Protocol):
    """conntrack's answer to "does `target` hold a live connection?" (live_peers.LivePeers;
    unit tests fake it)."""

    def find(self, target: Network, window: float) -> LiveConnection | None: ...


@dataclass(frozen=True)
class Spared:
    """A ban refused because the target holds a live connection with this host."""

    target: Network
    jail: str
    at: float
    reason: str


class LivePeerSparing:
    def __init__(self, jails: RunningJails, live_peers: PeerCheck | None) -> None:
        self.jails = jails
        self.live_peers = live_peers  # None: conntrack is unavailable, the check is off
        self.spared: OrderedDict[tuple[Network, str], Spared] = OrderedDict()
        self.spared_count = 0
        self.conntrack_error: str | None = None
        self._spare_logged: dict[Network, float] = {}

    def health(self) -> str:
        """`status`'s word for the check: off, ok, or why conntrack cannot be asked."""
        return "off" if self.live_peers is None else self.conntrack_error or "ok"

    def spare(self, decisions: Sequence[Decision], now: float) -> list[Decision]:
        """The decisions left once those on spoofable evidence against a target holding a
        live connection (conntrack) are refused; their scorers are told the ban never was."""
        if self.live_peers is None:
            return list(decisions)
        kept: list[Decision] = []
        for decision in decisions:
            runner = self.jails.runner(decision.jail)
            window = runner.jail.spare_live_peers if runner is not None else 0.0
            if runner is None or window <= 0 or not self._spoofable(decision):
                kept.append(decision)
                continue
            try:
                live = self.live_peers.find(decision.target, window)
            except ConntrackError as exc:
                # Unable to ask: ban as if the check were off (a blocker that stops banning
                # when conntrack misbehaves would be worse); said once per cause.
                if self.conntrack_error != str(exc):
                    log.error("cannot check live connections, banning without: %s", exc)
                self.conntrack_error = str(exc)
                kept.append(decision)
                continue
            self.conntrack_error = None
            if live is None:
                kept.append(decision)
                continue
            self._spare(decision, live, runner, window, now)
        return kept

    def _spoofable(self, decision: Decision) -> bool:
        filters = self.jails.config.filters
        return (
            any(filters[name].spoofable if name in filters else True for name in decision.filters)
            or not decision.filters
        )

    def _spare(
        self,
        decision: Decision,
        live: LiveConnection,
        runner: JailRunner,
        window: float,
        now: float,
    ) -> None:
        target = decision.target
        reason = (
            f"not banned: {live.describe()}, and the evidence "
            f"({', '.join(decision.filters)}) can be forged in its name "
            f"(spare_live_peers {window:g}s)"
        )
        runner.scorer.retract(target, decision.at)
        self.spared_count += 1
        key = (target, decision.jail)
        self.spared[key] = Spared(target, decision.jail, now, reason)
        self.spared.move_to_end(key)
        while len(self.spared) > SPARED_REMEMBERED:
            self.spared.popitem(last=False)
        last = self._spare_logged.get(target)
        if last is None or now - last >= window:
            self._spare_logged[target] = now
            if len(self._spare_logged) > SPARED_REMEMBERED:
                self._spare_logged = {
                    t: at for t, at in self._spare_logged.items() if now - at < window
                }
            log.warning("spare %s (%s): %s", decision.target_text, decision.jail, reason)
