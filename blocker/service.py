"""What blockerd does, without its loop: lines in, kernel bans out, admin commands answered.

The daemon shell (daemon.py) owns sockets, signals and the clock; it hands this class the lines
it read and the time it read them at. Tests drive it directly with a fake backend. Service only
composes the parts, each in its own module:

  running_jails.py      the jails as configured: a source's lines -> the decisions of its jails
  live_peer_sparing.py  spare_live_peers: no spoofable ban cuts a live connection
  ban_ledger.py         a decision -> a kernel entry, ActiveBans and the state; restore, repair
  fleet_role.py         this host's bans out to the fleet, other hosts' bans in
  admin_commands.py     status, list, ban, unban, explain (blockerctl)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from blocker.active import ActiveBans
from blocker.activity import Activity, SourceKey
from blocker.admin_commands import AdminCommands, FleetHealth, SourceHealth
from blocker.ban_ledger import AfterBan, BanLedger, Refusals
from blocker.commands import (
    BanRequest,
    ExplainRequest,
    Handler,
    ListRequest,
    ReloadRequest,
    RequestError,
    StatusRequest,
    UnbanRequest,
    route,
)
from blocker.config import Config, ConfigError
from blocker.firewall.base import Backend
from blocker.fleet.events import FleetEvent
from blocker.fleet_role import FleetPublisher, FleetRole, RemoteBans
from blocker.live_peer_sparing import LivePeerSparing, PeerCheck
from blocker.netfilter import Record
from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Address, Decision
from blocker.running_jails import RunningJails
from blocker.sources.base import SourceLine
from blocker.state import State

log = logging.getLogger("blocker")


def _ignore_latency(_read_at: float, _bans: int) -> None:
    pass


class Service:
    def __init__(
        self,
        config: Config,
        state: State,
        backend: Backend,
        *,
        own_addresses: Sequence[Address] = (),
        log_override: str | None = None,
        reload_config: Callable[[], Config] | None = None,
        live_peers: PeerCheck | None = None,
        source_health: SourceHealth = list,
        fleet: FleetRole | None = None,
        fleet_health: FleetHealth | None = None,
        after_ban: AfterBan = _ignore_latency,
    ) -> None:
        """`fleet`: this host's role when [fleet] url is set; `fleet_health`: the link's
        report for `status`; `after_ban`: told (read_at, bans) once the kernel took a batch."""
        self.state = state
        self.backend = backend
        self.reload_config = reload_config
        self.activity = Activity()
        self.jails = RunningJails(
            config, self.activity, own_addresses=own_addresses, log_override=log_override
        )
        self.sparing = LivePeerSparing(self.jails, live_peers)
        self.publisher = FleetPublisher(state, fleet)
        self.ledger = BanLedger(
            state,
            backend,
            self.jails,
            self.activity,
            publish=self.publisher.publish,
            after_ban=after_ban,
        )
        self.remote = RemoteBans(self.publisher, self.ledger, self.jails, self.sparing)
        self.admin = AdminCommands(
            self.jails,
            self.ledger,
            self.sparing,
            self.publisher,
            self.remote,
            source_health=source_health,
            fleet_health=fleet_health,
        )

    # -- what the daemon and the metrics read ----------------------------------------------
    @property
    def config(self) -> Config:
        return self.jails.config

    @property
    def pipeline(self) -> Pipeline:
        return self.jails.pipeline

    @property
    def groups(self) -> dict[SourceKey, list[JailRunner]]:
        return self.jails.groups

    @property
    def active(self) -> ActiveBans:
        return self.ledger.active

    @property
    def refusals(self) -> Refusals:
        return self.ledger.refusals

    @property
    def started(self) -> float:
        return self.admin.started

    @property
    def fleet(self) -> FleetRole | None:
        return self.publisher.role

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Put the kernel in line with the saved state: active bans go back with their
        remaining time (an existing entry only gets its timeout refreshed: no unban gap)."""
        self.admin.started = now
        self.backend.setup()
        self.jails.load_history(self.state, now)
        self.remote.restore_holds(now)
        self.ledger.restore(now)

    def tick(self, now: float) -> None:
        """Periodic: rules and sets in place (re-adding bans to a recreated set), old bans gone."""
        self.ledger.expire(now)
        self.remote.drop_old_holds(now)
        self.ledger.check_firewall(now)

    def prune(self, now: float) -> None:
        with self.state.transaction():
            self.state.prune(self.jails.history_horizon(now))

    def reload(self, now: float) -> str:
        if self.reload_config is None:
            raise RequestError("this daemon has no configuration file to reload")
        try:
            config = self.reload_config()
        except ConfigError as exc:
            raise RequestError(f"reload refused, keeping the running configuration: {exc}") from exc
        self.jails.install(config)
        self.jails.load_history(self.state, now)
        self.jails.mark_active(self.ledger.active.keyed())
        self.publisher.reconfigure(config.fleet.publish, config.fleet.accept)
        log.warning("configuration reloaded: %d jail(s)", len(config.jails))
        return f"reloaded {config.path}: {', '.join(j.name for j in config.jails)}"

    # -- the hot path ----------------------------------------------------------------------
    def handle_lines(
        self, key: SourceKey, lines: Sequence[SourceLine], now: float
    ) -> list[Decision]:
        decisions = self.jails.route_lines(key, lines, now)
        return self.apply(decisions, now) if decisions else decisions

    def handle_records(
        self, key: SourceKey, records: Sequence[Record], now: float
    ) -> list[Decision]:
        """Records from a packet source (NFLOG) for the jails that read `key`."""
        decisions = self.jails.route_records(key, records, now)
        return self.apply(decisions, now) if decisions else decisions

    def apply(
        self, decisions: Sequence[Decision], now: float, origin: str = "auto"
    ) -> list[Decision]:
        """This host's decisions through spare_live_peers, then into the ban ledger. Returns
        the decisions left (a ban the kernel refused is still one)."""
        if origin == "auto":
            decisions = self.sparing.spare(decisions, now)
        self.ledger.apply(decisions, now, origin)
        return list(decisions)

    def apply_remote(self, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
        """Other hosts' bans and unbans (fleet_role.RemoteBans); returns counts."""
        return self.remote.apply(events, now)

    # -- admin commands --------------------------------------------------------------------
    def handlers(self, clock: Callable[[], float]) -> dict[str, Handler]:
        """The dispatch table: command name -> request type -> handler. A raw message is
        parsed into its request type here, once; the handlers only see typed requests."""
        admin = self.admin
        return dict(
            (
                route(StatusRequest, admin.status, clock),
                route(ListRequest, admin.list_bans, clock),
                route(BanRequest, admin.ban, clock),
                route(UnbanRequest, admin.unban, clock),
                route(ReloadRequest, lambda _request, now: self.reload(now), clock),
                route(ExplainRequest, admin.explain, clock),
            )
        )
