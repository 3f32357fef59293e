"""Other hosts' bans applied in bulk: one gate pass, one kernel batch, one state write.

A host catching up after downtime takes 100,000 remote bans in slices of 2,000 (inbox.py);
each slice goes through here. Every ban still passes this host's whole gate, one by one:
expired or already banned as long, held after a local unban, the refusals (special ranges,
the allowlist, the host's own addresses) and spare_live_peers for jails that have it. What
is done once per slice rather than once per ban: the kernel batch (the ipset backend's batch
path), the log record, the state's INSERT (executemany per origin), the counters; and the
checks that only depend on the slice (is anything held, which jails spare live peers).

Order is kept: an unban splits the slice, so a ban before it is lifted and one after it
stands. Within a run of bans, a target's longest ban wins and the others count as expired
(what applying them one by one would leave).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from blocker.fleet.events import FleetEvent
from blocker.journal import BanEvent
from blocker.live_peers import ConntrackError
from blocker.records import Decision, Network, network_text

if TYPE_CHECKING:  # fleet_role imports this module
    from blocker.fleet_role import RemoteBans

log = logging.getLogger("blocker")

REMOTE_COUNTS = ("applied", "refused", "held", "expired", "unbans", "spared")


def apply_remote(remote: RemoteBans, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
    """Other hosts' bans and unbans, in order, through this host's gate, into the kernel,
    ActiveBans, the scorers and the state (the caller's transaction); returns counts."""
    counts = dict.fromkeys(REMOTE_COUNTS, 0)
    role = remote.publisher.role
    if role is None or not role.accept:
        return counts
    run: list[FleetEvent] = []
    for event in events:
        if event.kind == "ban":
            run.append(event)
            continue
        if run:
            _bans(remote, run, now, counts)
            run = []
        counts["unbans"] += remote.unban(event, now)
    if run:
        _bans(remote, run, now, counts)
    return counts


def _bans(
    remote: RemoteBans, events: Sequence[FleetEvent], now: float, counts: dict[str, int]
) -> None:
    chosen = _gate(remote, events, now, counts)
    if not chosen:
        return
    decisions = [
        Decision(
            target=event.target,
            jail=event.jail,
            at=now,
            duration=event.expires - now,
            score=0.0,
            filters=(),
            reason=event.reason,
        )
        for event in chosen.values()
    ]
    decisions = _spare(remote, decisions, now, counts)
    if not decisions:
        return
    ledger = remote.ledger
    refused = ledger.kernel_ban([(d.target, d.duration) for d in decisions])
    if refused is None:
        refused = {d.target: "the firewall failed" for d in decisions}
    ledger.after_ban(now, len(decisions) - len(refused))
    counts["applied"] += _record(remote, decisions, chosen, refused, now)


def _gate(
    remote: RemoteBans, events: Sequence[FleetEvent], now: float, counts: dict[str, int]
) -> dict[Network, FleetEvent]:
    """The bans that pass this host's gate, one per target (its longest), in order."""
    active = remote.ledger.active
    held = remote.held
    refusal = remote.jails.refusal
    chosen: dict[Network, FleetEvent] = {}
    refused: list[str] = []
    for event in events:
        target = event.target
        expires = event.expires
        if expires <= now:
            counts["expired"] += 1
            continue
        earlier = chosen.get(target)
        if earlier is not None:  # passed the gate already: the longer of the two stays
            counts["expired"] += 1
            if expires > earlier.expires:
                chosen[target] = event
            continue
        current = active.expires(target)
        if current is not None and expires <= current:
            counts["expired"] += 1  # already banned at least as long
            continue
        if held and held.get(target, 0.0) > now:
            counts["held"] += 1
            continue
        problem = refusal(target)
        if problem:
            counts["refused"] += 1
            refused.append(
                f"fleet: not banning {network_text(target)} from {event.origin}: {problem}"
            )
            continue
        chosen[target] = event
    if refused:  # one record for the slice, one line per ban, as for the bans themselves
        log.info("%s", "\n".join(refused))
    return chosen


@runtime_checkable
class LiveAddresses(Protocol):
    """A conntrack view that lists its live peers at once (live_peers.LivePeers does)."""

    def live_addresses(self, version: int, window: float) -> set[int]: ...


def _spare(
    remote: RemoteBans, decisions: list[Decision], now: float, counts: dict[str, int]
) -> list[Decision]:
    """The spoof-safety check of this host's jail of the same name: no remote ban cuts a live
    connection of this host (the evidence is not ours to judge: spoofable). Only the bans of
    jails that spare live peers are looked at, and of those only the ones holding a live
    address (one pass over the conntrack table for the slice) go to the per-ban check."""
    peers = remote.sparing.live_peers
    if peers is None:
        return decisions
    windows = {
        runner.jail.name: runner.jail.spare_live_peers
        for runner in remote.jails.runners
        if runner.jail.spare_live_peers > 0
    }
    asked = [d for d in decisions if d.jail in windows]
    if asked and isinstance(peers, LiveAddresses):
        window = max(windows[d.jail] for d in asked)
        try:
            live = {
                version: peers.live_addresses(version, window)
                for version in {d.target.version for d in asked}
            }
        except ConntrackError:
            pass  # the per-ban check below meets the same error and says so
        else:
            asked = [d for d in asked if holds_any(d.target, live[d.target.version])]
    if not asked:
        return decisions
    kept = remote.sparing.spare(asked, now)
    if len(kept) == len(asked):
        return decisions
    counts["spared"] += len(asked) - len(kept)
    spared = {d.target for d in asked} - {d.target for d in kept}
    return [d for d in decisions if d.target not in spared]


def holds_any(target: Network, addresses: set[int]) -> bool:
    """Whether `target` (a host or a network) holds any of `addresses` (ints, its family)."""
    low = int(target.network_address)
    if target.prefixlen == target.max_prefixlen:
        return low in addresses
    high = low | ((1 << (target.max_prefixlen - target.prefixlen)) - 1)
    return any(low <= address <= high for address in addresses)


def _record(
    remote: RemoteBans,
    decisions: list[Decision],
    chosen: dict[Network, FleetEvent],
    refused: dict[Network, str],
    now: float,
) -> int:
    """What the kernel took into ActiveBans, every scorer, the log and the state -> how
    many bans that was."""
    ledger = remote.ledger
    active = ledger.active
    scorers = [runner.scorer for runner in remote.jails.runners]
    by_origin: dict[str, tuple[list[Decision], list[str]]] = {}
    lines: list[str] = []
    events: list[BanEvent] = []
    per_jail: dict[str, int] = {}
    for decision in decisions:
        target = decision.target
        if refused and target in refused:
            continue
        until = now + decision.duration
        active.set(target, decision.jail, until)
        for scorer in scorers:
            scorer.mark_banned(target, until)
        origin = f"fleet:{chosen[target].origin}"
        text = network_text(target)
        group = by_origin.get(origin)
        if group is None:
            group = by_origin[origin] = ([], [])
        group[0].append(decision)
        group[1].append(text)
        per_jail[decision.jail] = per_jail.get(decision.jail, 0) + 1
        span = "permanently" if math.isinf(decision.duration) else f"for {decision.duration:.0f}s"
        lines.append(f"ban {text} ({decision.jail}) {span}: {decision.reason}")
        events.append(("ban", target, decision.jail, decision.duration, decision.reason, origin))
    activity = ledger.activity
    for jail, count in per_jail.items():
        activity.bans[jail, "fleet"] += count  # a fixed word as the label, not each peer
        activity.last_ban[jail] = now
    if lines:
        # One record for the slice, one line per ban, as for local bans (BanLedger.apply).
        log.warning("%s", "\n".join(lines), extra={"bans": events})
        with ledger.state.transaction():  # joins the caller's, with the cursor
            for origin, (recorded, texts) in by_origin.items():
                ledger.state.record_bans(recorded, origin, texts)
    if refused:
        jails = {d.target: d.jail for d in decisions}
        for target in refused:
            ledger.drop_refused(target, now, jails[target])
        ledger.note_refused(refused, now, jails=jails)
    return len(lines)
