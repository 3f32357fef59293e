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
from blocker.fleet import remote_bans
from blocker.fleet.events import FleetEvent
from blocker.live_peer_sparing import LivePeerSparing
from blocker.records import Decision, Network, network_text
from blocker.running_jails import RunningJails
from blocker.state import State

log = logging.getLogger("blocker")


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
        spare_live_peers), into the ledger with origin fleet:HOST, in bulk (the fleet's
        remote_bans.py); returns counts."""
        return remote_bans.apply_remote(self, events, now)

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
