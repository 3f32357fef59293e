"""This host's part in a fleet: its shared bans queued for the others, theirs applied here.

Other hosts' bans pass this host's own gate (the refusals, then spare_live_peers) before the
ban ledger takes them with origin fleet:HOST. How events travel (Redis, signatures, the
cursor) is blocker/fleet/'s business, not this module's.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from blocker.ban_ledger import BanLedger
from blocker.firewall.base import FirewallError, InvalidBan
from blocker.fleet.events import FleetEvent
from blocker.live_peer_sparing import LivePeerSparing
from blocker.records import Decision, Network, network_text
from blocker.running_jails import RunningJails
from blocker.state import State

log = logging.getLogger("blocker")

REMOTE_COUNTS = ("applied", "refused", "held", "expired", "unbans", "spared")


@dataclass(frozen=True)
class FleetRole:
    """This host in the fleet: its name, the jails it shares, whether it takes others' bans."""

    host_id: str
    publish: frozenset[str]
    accept: bool


class FleetPublisher:
    """Queues this host's bans of shared jails, and fleet-wide unbans, in the state's outbox,
    in the caller's transaction (blocker/fleet/ sends committed rows)."""

    def __init__(self, state: State, role: FleetRole | None) -> None:
        self.state = state
        self.role = role  # None: this host is in no fleet

    def reconfigure(self, publish: Sequence[str], accept: bool) -> None:
        """A reload: the jails shared and `accept` change; the host's name does not."""
        if self.role is not None:
            self.role = FleetRole(self.role.host_id, frozenset(publish), accept)

    def publish(self, bans: Sequence[tuple[Decision, float]], now: float) -> None:
        role = self.role
        if role is None or not role.publish:
            return
        self.state.queue_outbox(
            FleetEvent(
                "ban", uuid.uuid4().hex, role.host_id, d.target, d.jail, now, expires, d.reason
            ).payload()
            for d, expires in bans
            if d.jail in role.publish
        )

    def publish_unban(self, target: Network, jail: str, now: float) -> None:
        assert self.role is not None
        self.state.queue_outbox(
            [
                FleetEvent(
                    "unban",
                    uuid.uuid4().hex,
                    self.role.host_id,
                    target,
                    jail,
                    now,
                    math.inf,
                    "admin unban (blockerctl unban --fleet)",
                ).payload()
            ]
        )


class RemoteBans:
    """Other hosts' bans and unbans, through this host's gate, into the ban ledger."""

    def __init__(
        self,
        publisher: FleetPublisher,
        ledger: BanLedger,
        jails: RunningJails,
        sparing: LivePeerSparing,
    ) -> None:
        self.publisher = publisher
        self.ledger = ledger
        self.jails = jails
        self.sparing = sparing
        # Remote bans an admin lifted here: target -> until when the fleet may not re-ban it.
        self.held: dict[Network, float] = {}

    def restore_holds(self, now: float) -> None:
        self.held = dict(self.ledger.state.held(now))

    def drop_old_holds(self, now: float) -> None:
        if self.held:
            self.held = {t: until for t, until in self.held.items() if until > now}

    def hold(self, target: Network, until: float) -> None:
        """An admin lifted a remote ban: the fleet may not ban `target` here again until then."""
        self.held[target] = until

    def apply(self, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
        """Other hosts' bans and unbans, through this host's own gate (the refusals, then
        spare_live_peers), into the ledger with origin fleet:HOST; returns counts."""
        counts = dict.fromkeys(REMOTE_COUNTS, 0)
        role = self.publisher.role
        if role is None or not role.accept:
            return counts
        active = self.ledger.active
        candidates: list[Decision] = []
        origins: dict[Network, str] = {}
        for event in events:
            target = event.target
            if event.kind == "unban":
                counts["unbans"] += self.unban(event, now)
                continue
            remaining = event.expires - now
            if remaining <= 0 or not active.longer(target, event.expires):
                counts["expired"] += 1  # over, or already banned at least as long
                continue
            if self.held.get(target, 0.0) > now:
                counts["held"] += 1
                continue
            problem = self.jails.refusal(target)
            if problem:
                counts["refused"] += 1
                log.info(
                    "fleet: not banning %s from %s: %s", network_text(target), event.origin, problem
                )
                continue
            origins[target] = f"fleet:{event.origin}"
            candidates.append(
                Decision(
                    target=target,
                    jail=event.jail,
                    at=now,
                    duration=remaining,
                    score=0.0,
                    filters=(),
                    reason=event.reason,
                )
            )
        if candidates:
            # The spoof-safety check of this host's jail of the same name: no remote ban cuts
            # a live connection of this host (the evidence is not ours to judge: spoofable).
            kept = self.sparing.spare(candidates, now)
            counts["spared"] = len(candidates) - len(kept)
            candidates = kept
        by_origin: dict[str, list[Decision]] = {}
        for decision in candidates:
            by_origin.setdefault(origins[decision.target], []).append(decision)
        for origin, decisions in by_origin.items():
            self.ledger.apply(decisions, now, origin)
        for decision in candidates:
            expires = active.expires(decision.target)
            if expires is not None and expires >= now + decision.duration:
                counts["applied"] += 1
                self.jails.mark_everywhere(decision.target, expires)
        return counts

    def unban(self, event: FleetEvent, now: float) -> int:
        """An admin's `blockerctl unban --fleet` on another host: lift the target here too."""
        ledger = self.ledger
        if ledger.active.expires(event.target) is None:
            return 0
        try:
            ledger.backend.unban([event.target])
        except (FirewallError, InvalidBan) as exc:
            log.error("fleet: cannot unban %s: %s", network_text(event.target), exc)
            return 0
        ledger.active.remove(event.target)
        with ledger.state.transaction():
            ledger.state.forget_remote(event.target)
            ledger.state.lift(event.target, now)
        self.jails.forget_everywhere(event.target)
        log.warning("unban %s (fleet, from %s)", network_text(event.target), event.origin)
        return 1
