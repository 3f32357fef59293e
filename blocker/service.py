"""What blockerd does, without its loop: lines in, kernel bans out, admin commands answered.

The daemon shell (daemon.py) owns sockets, signals and the clock; it hands this class the lines
it read and the time it read them at. Tests drive it directly with a fake backend.

A ban is active only once the kernel holds it. When the kernel refuses one (its set is full,
see the README's "A full kernel set"), the ban is not recorded, the jail's scorer forgets the
target (so its next offence is a new decision), a counter grows, and one log line per
REFUSAL_LOG_EVERY seconds says how many were refused. Bans already in the set stay, and a
present entry can still be refreshed: only new entries are refused.

Nothing here costs in proportion to the number of active bans except what must (a restart
restores them all, in batches of RESTORE_BATCH; `list` lists them): see blocker/active.py.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any, Protocol

from blocker.active import ActiveBans, key_of_text
from blocker.addresses import network_refusal
from blocker.commands import BanRequest, Handler, RequestError, Streamed, iso_time
from blocker.config import Config, ConfigError, Jail
from blocker.firewall.base import Backend, Bans, FirewallError, InvalidBan
from blocker.fleet import remote_bans
from blocker.fleet.events import FleetEvent
from blocker.journal import ban_events
from blocker.live_peers import ConntrackError, LiveConnection
from blocker.netfilter import Record
from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Address, Decision, Network, network_text
from blocker.sources.base import SourceLine
from blocker.state import State
from blocker.version import version

LIST_SLICE = 128  # rows of a streamed `list` made per loop turn (~2 ms)
log = logging.getLogger("blocker")

SourceKey = tuple[str, str]  # (kind, path)
SourceHealth = Callable[[], list[dict[str, object]]]  # one dict per source the daemon follows
RESTORE_BATCH = 50_000  # bans handed to the kernel and the scorers at a time on restore
REFUSAL_LOG_EVERY = 60.0  # seconds between two log lines about bans the kernel refused


def source_label(key: SourceKey) -> str:
    """'kernlog:/var/log/kern.log', 'nflog:5,6': how a source is named in logs, status and
    the state."""
    return f"{key[0]}:{key[1]}"


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


# Spared bans remembered for `explain`, most recent last.
SPARED_REMEMBERED = 10_000


@dataclass
class Refusals:
    """Bans the kernel refused, counted since start, and reported once per interval."""

    total: int = 0
    by_jail: dict[str, int] = field(default_factory=dict)
    unreported: int = 0
    examples: list[str] = field(default_factory=list)
    next_report: float = -math.inf


@dataclass(frozen=True)
class FleetRole:
    """This host in the fleet: its name, the jails it shares, whether it takes others' bans."""

    host_id: str
    publish: frozenset[str]
    accept: bool


@dataclass
class Activity:
    """What the service did since it started, for the metrics and the status: counted per
    batch or per ban, never per line. Keys come from the configuration (jails, sources) or
    fixed words (origins, repair kinds): no address is ever a key."""

    lines: Counter[SourceKey] = field(default_factory=Counter)
    last_line: dict[SourceKey, float] = field(default_factory=dict)  # when read, epoch
    bans: Counter[tuple[str, str]] = field(default_factory=Counter)  # (jail, origin)
    # (jail, origin); expiries are counted for all jails at once, under jail "*"
    unbans: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_ban: dict[str, float] = field(default_factory=dict)  # jail -> epoch
    repairs: Counter[str] = field(default_factory=Counter)  # set, rule, duplicate_rule
    firewall_ok: bool = True  # the last rule and set check succeeded
    firewall_failures: int = 0


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
    ) -> None:
        self.state = state
        self.live_peers = live_peers
        self.spared: OrderedDict[tuple[Network, str], Spared] = OrderedDict()
        self.spared_count = 0
        self.conntrack_error: str | None = None
        self._spare_logged: dict[Network, float] = {}
        self.backend = backend
        self.own_addresses = tuple(own_addresses)
        self.log_override = log_override
        self.reload_config = reload_config
        self.active = ActiveBans()
        self.refusals = Refusals()
        self._resync = False  # the kernel may lack active bans: re-add them all at the next tick
        self.started = 0.0
        self.source_health = source_health
        self.fleet: FleetRole | None = None
        self.fleet_health: Callable[[], dict[str, object]] | None = None
        # Remote bans an admin lifted here: target -> until when the fleet may not re-ban it.
        self.held: dict[Network, float] = {}
        self.activity = Activity()
        # Called after the kernel acknowledged a batch of bans with the time its lines were
        # read and the batch's size (the daemon measures line-read -> kernel-ack latency).
        self.after_ban: Callable[[float, int], None] = _ignore_latency
        self._install(config)

    # -- configuration -------------------------------------------------------------------
    def _install(self, config: Config) -> None:
        self.config = config
        self.pipeline = Pipeline(config, self.own_addresses)
        self.groups: dict[SourceKey, list[JailRunner]] = {}
        for runner in self.pipeline.runners:
            self.groups.setdefault(self.source_key(runner.jail), []).append(runner)

    def source_key(self, jail: Jail) -> SourceKey:
        if self.log_override is not None:
            return ("kernlog", self.log_override)
        if jail.source == "nflog":
            return ("nflog", ",".join(map(str, jail.nflog_groups)))
        return (jail.source, jail.log_path)

    def start(self, now: float) -> None:
        """Put the kernel in line with the saved state: active bans go back with their
        remaining time (an existing entry only gets its timeout refreshed: no unban gap)."""
        self.started = now
        self.backend.setup()
        self._restore(now)

    def _restore(self, now: float) -> None:
        """Read the state's active bans into ActiveBans (ints, no objects per ban), hand them
        to the kernel RESTORE_BATCH at a time, then those it holds to the scorers in bulk."""
        self._load_history(now)
        self.active.clear()
        self.held = dict(self.state.held(now))
        unreadable = self.active.restore(self.state.active_rows(now))
        if unreadable:
            log.error(
                "ignored %d active ban(s) in the state whose target is not an address or a network",
                unreadable,
            )
        refused: dict[Network, str] = {}
        batch: list[tuple[Network, float]] = []
        for entry in self.active.entries():
            batch.append(entry)
            if len(batch) >= RESTORE_BATCH:
                refused.update(self._restore_batch(batch, now))
                batch = []
        if batch:
            refused.update(self._restore_batch(batch, now))
        for target in refused:
            self._drop_refused(target, now)
        # The rest into every scorer at once: only what the kernel holds is active.
        self._mark_active()
        if refused:
            self._note_refused(refused, now, origin="restored")
            with self.state.transaction():
                for target in refused:  # not in the kernel, so not active: say so in the state
                    self.state.lift(target, now)
        if self.active:
            log.info("restored %d active ban(s)", len(self.active))
        for runner in self.pipeline.runners:
            restored = self.active.count(runner.jail.name)
            if restored:
                self.activity.bans[runner.jail.name, "restore"] += restored

    def _restore_batch(self, batch: list[tuple[Network, float]], now: float) -> dict[Network, str]:
        refused = self._kernel_ban([(target, expires - now) for target, expires in batch])
        if refused is None:  # the kernel could not be asked: keep them, re-add at the tick
            self._resync = True
            refused = {}
        return refused

    def _mark_active(self) -> None:
        """Every active ban into every scorer, in bulk (Scorer.restore_bans)."""
        keyed = self.active.keyed()
        for runner in self.pipeline.runners:
            runner.scorer.restore_bans(keyed)

    def _mark_everywhere(self, target: Network, until: float) -> None:
        for runner in self.pipeline.runners:
            runner.scorer.mark_banned(target, until)

    # -- the hot path ----------------------------------------------------------------------
    def handle_lines(
        self, key: SourceKey, lines: Sequence[SourceLine], now: float
    ) -> list[Decision]:
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
        if decisions:
            decisions = self.apply(decisions, now)
        return decisions

    def handle_records(
        self, key: SourceKey, records: Sequence[Record], now: float
    ) -> list[Decision]:
        """Records from a packet source (NFLOG) for the jails that read `key`."""
        runners = self.groups.get(key)
        if not runners or not records:
            return []
        self.activity.lines[key] += len(records)  # a packet source's "lines" are records
        self.activity.last_line[key] = now
        decisions = self.pipeline.feed_records(records, runners)
        if decisions:
            decisions = self.apply(decisions, now)
        return decisions

    def apply(
        self, decisions: Sequence[Decision], now: float, origin: str = "auto"
    ) -> list[Decision]:
        """Bans into the kernel (one batch), then into ActiveBans and the state (same
        transaction as the caller's position update) for those the kernel took. Returns the
        decisions left after spare_live_peers (a ban the kernel refused is still one)."""
        if origin == "auto" and self.live_peers is not None:
            decisions = self._spare_live_peers(decisions, now)
        wanted: list[tuple[Decision, float]] = []
        for decision in decisions:
            end = decision.at + decision.duration
            # A decision on an old line (a backlog) keeps only the time its ban has left.
            remaining = min(decision.duration, end - now)
            if remaining <= 0:
                log.info(
                    "not banning %s: its %gs ban ended before the line was read",
                    decision.target_text,
                    decision.duration,
                )
                continue
            if self.active.longer(decision.target, now + remaining):
                wanted.append((decision, remaining))
        if not wanted:
            return list(decisions)
        refused = self._kernel_ban([(d.target, remaining) for d, remaining in wanted])
        if refused is None:
            refused = {d.target: "the firewall failed" for d, _ in wanted}
        self.after_ban(now, len(wanted) - len(refused))
        recorded: list[Decision] = []
        spans: list[float] = []
        lines: list[str] = []
        texts: list[str] = []
        for decision, remaining in wanted:
            if decision.target in refused:
                continue
            self.active.set(decision.target, decision.jail, now + remaining)
            recorded.append(decision)
            spans.append(remaining)
            # A fixed word as the metrics label: "fleet", not each peer's fleet:HOST.
            self.activity.bans[
                decision.jail, "fleet" if origin.startswith("fleet:") else origin
            ] += 1
            self.activity.last_ban[decision.jail] = now
            text = decision.target_text
            texts.append(text)
            span = "permanently" if math.isinf(remaining) else f"for {remaining:.0f}s"
            lines.append(f"ban {text} ({decision.jail}) {span}: {decision.reason}")
        if lines:
            # One record for the batch, one line per ban (the daemon's formatter prefixes
            # each line): a burst of thousands of bans costs one write, not thousands. Under
            # systemd each line becomes a journal entry with its ban's fields (journal.py).
            log.warning("%s", "\n".join(lines), extra={"bans": ban_events(recorded, spans, origin)})
        if refused:
            jails = {d.target: d.jail for d, _ in wanted}
            for target in refused:
                self._drop_refused(target, now, jails[target])
            self._note_refused(refused, now, jails=jails)
        if recorded:
            with self.state.transaction():  # joins the caller's, with the lines' position
                self.state.record_bans(recorded, origin, texts)
                if origin == "auto":
                    self._publish(
                        [(d, now + min(d.duration, d.at + d.duration - now)) for d in recorded], now
                    )
        return list(decisions)

    # -- the fleet -------------------------------------------------------------------------
    def _publish(self, bans: Sequence[tuple[Decision, float]], now: float) -> None:
        """Queue this host's bans of shared jails in the outbox (the caller's transaction)."""
        fleet = self.fleet
        if fleet is None or not fleet.publish:
            return
        self.state.queue_outbox(
            FleetEvent(
                "ban", uuid.uuid4().hex, fleet.host_id, d.target, d.jail, now, expires, d.reason
            ).payload()
            for d, expires in bans
            if d.jail in fleet.publish
        )

    def apply_remote(self, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
        """Other hosts' bans and unbans, through this host's own gate, in bulk (the fleet's
        remote_bans.py); returns counts."""
        return remote_bans.apply_remote(self, events, now)

    # The steps of apply() that the fleet's bulk apply (remote_bans.py) takes one by one.
    def kernel_ban(self, entries: list[tuple[Network, float]]) -> dict[Network, str] | None:
        return self._kernel_ban(entries)

    def spare_live_peers(self, decisions: Sequence[Decision], now: float) -> list[Decision]:
        return self._spare_live_peers(decisions, now)

    def remote_unban(self, event: FleetEvent, now: float) -> int:
        return self._remote_unban(event, now)

    def drop_refused(self, target: Network, now: float, jail: str) -> None:
        self._drop_refused(target, now, jail)

    def note_refused(
        self, refused: dict[Network, str], now: float, jails: dict[Network, str]
    ) -> None:
        self._note_refused(refused, now, jails=jails)

    def _remote_unban(self, event: FleetEvent, now: float) -> int:
        """An admin's `blockerctl unban --fleet` on another host: lift the target here too."""
        if self.active.expires(event.target) is None:
            return 0
        try:
            self.backend.unban([event.target])
        except (FirewallError, InvalidBan) as exc:
            log.error("fleet: cannot unban %s: %s", network_text(event.target), exc)
            return 0
        self.active.remove(event.target)
        with self.state.transaction():
            self.state.forget_remote(event.target)
            self.state.lift(event.target, now)
        for runner in self.pipeline.runners:
            runner.scorer.forget(event.target)
        log.warning("unban %s (fleet, from %s)", network_text(event.target), event.origin)
        return 1

    def _spare_live_peers(self, decisions: Sequence[Decision], now: float) -> list[Decision]:
        """The decisions left once those on spoofable evidence against a target holding a
        live connection (conntrack) are refused; their scorers are told the ban never was."""
        assert self.live_peers is not None
        kept: list[Decision] = []
        for decision in decisions:
            runner = self.pipeline.runner(decision.jail)
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
        filters = self.config.filters
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

    def _kernel_ban(self, entries: list[tuple[Network, float]]) -> dict[Network, str] | None:
        """-> the entries the kernel refused, or None when it could not be asked at all."""
        try:
            return self.backend.ban(entries)
        except (FirewallError, InvalidBan) as exc:
            log.error("firewall refused %d ban(s): %s", len(entries), exc)
            return None

    def _drop_refused(self, target: Network, now: float, jail: str | None = None) -> None:
        """A ban the kernel does not hold is not active: the scorers forget it, so a later
        decision bans it again. An earlier ban of it that the kernel still holds stays."""
        expires = self.active.expires(target)
        if jail is None:  # restored: the state said it was active
            self.active.remove(target)
            expires = None
        runners = (
            self.pipeline.runners
            if jail is None
            else [r for r in self.pipeline.runners if r.jail.name == jail]
        )
        for runner in runners:
            if expires is not None and expires > now:
                runner.scorer.mark_banned(target, expires)
            else:
                runner.scorer.forget(target)

    def _note_refused(
        self,
        refused: dict[Network, str],
        now: float,
        origin: str = "new",
        jails: dict[Network, str] | None = None,
    ) -> None:
        """Count refused bans; one log line per REFUSAL_LOG_EVERY seconds, whatever the flood."""
        counts = self.refusals
        counts.total += len(refused)
        counts.unreported += len(refused)
        for target in refused:
            jail = jails[target] if jails else "(restored)"
            counts.by_jail[jail] = counts.by_jail.get(jail, 0) + 1
            if len(counts.examples) < 3:
                counts.examples.append(network_text(target))
        if now < counts.next_report:
            return
        reasons = sorted(set(refused.values()))
        log.error(
            "the firewall refused %d %s ban(s) since the last report (%d since start), "
            "e.g. %s: %s; they are not banned, and their next offence is a new decision",
            counts.unreported,
            origin,
            counts.total,
            ", ".join(counts.examples),
            "; ".join(reasons),
        )
        counts.unreported = 0
        counts.examples = []
        counts.next_report = now + REFUSAL_LOG_EVERY

    def tick(self, now: float) -> None:
        """Periodic: rules and sets in place (re-adding bans to a recreated set), old bans gone."""
        self._expire(now)
        if self.held:
            self.held = {t: until for t, until in self.held.items() if until > now}
        try:
            repair = self.backend.ensure()
        except FirewallError as exc:
            log.error("firewall check failed: %s", exc)
            self.activity.firewall_ok = False
            self.activity.firewall_failures += 1
            return
        self.activity.firewall_ok = True
        if repair:
            log.warning("firewall repaired: %s", repair)
            repairs = self.activity.repairs
            repairs["set"] += len(repair.sets_recreated)
            repairs["rule"] += len(repair.rules_reinserted)
            repairs["duplicate_rule"] += repair.rules_removed
        families = set(repair.sets_recreated)
        if self._resync:
            self._resync = False
            families = {4, 6}
        if families:
            self._readd(families, now)

    def _expire(self, now: float) -> None:
        gone = self.active.expire(now)
        if gone:
            self.activity.unbans["*", "expired"] += gone

    def _readd(self, families: set[int], now: float) -> None:
        """Put the active bans of these families back into the kernel, in batches."""
        refused: dict[Network, str] = {}
        batch: list[tuple[Network, float]] = []
        for family in sorted(families):
            for target, expires in self.active.entries(family):
                batch.append((target, expires - now))
                if len(batch) >= RESTORE_BATCH:
                    refused.update(self._kernel_ban(batch) or {})
                    batch = []
        if batch:
            refused.update(self._kernel_ban(batch) or {})
        for target in refused:
            self._drop_refused(target, now)
        if refused:
            self._note_refused(refused, now, origin="re-added")
            with self.state.transaction():
                for target in refused:
                    self.state.lift(target, now)

    def _history_horizon(self, now: float) -> float:
        """Bans older than this matter to no jail's ban-time growth."""
        return now - max((r.jail.policy.history_window for r in self.pipeline.runners), default=0.0)

    def _load_history(self, now: float) -> None:
        """Earlier bans into every scorer, RESTORE_BATCH at a time (a flood leaves millions)."""
        keys: list[int] = []
        ats: list[float] = []
        for text, at in self.state.history_rows(self._history_horizon(now)):
            key = key_of_text(text)
            if key is not None:
                keys.append(key)
                ats.append(at)
            if len(keys) >= RESTORE_BATCH:
                for runner in self.pipeline.runners:
                    runner.scorer.restore_history_keys(keys, ats)
                keys, ats = [], []
        for runner in self.pipeline.runners:
            runner.scorer.restore_history_keys(keys, ats)

    def prune(self, now: float) -> None:
        with self.state.transaction():
            self.state.prune(self._history_horizon(now))

    # -- admin commands --------------------------------------------------------------------
    def handlers(self, clock: Callable[[], float]) -> dict[str, Handler]:
        def bind(method: Callable[[dict[str, Any], float], object]) -> Handler:
            return lambda message: method(message, clock())

        return {
            "status": bind(self.cmd_status),
            "list": bind(self.cmd_list_streamed),
            "ban": bind(self.cmd_ban),
            "unban": bind(self.cmd_unban),
            "reload": bind(self.cmd_reload),
            "explain": bind(self.cmd_explain),
        }

    def cmd_status(self, _message: dict[str, Any], now: float) -> dict[str, object]:
        stats = self.pipeline.stats
        counts = self.pipeline.hit_counts()
        self._expire(now)
        activity = self.activity
        jails: dict[str, object] = {}
        for runner in self.pipeline.runners:
            name = runner.jail.name
            last_ban = activity.last_ban.get(name)
            jails[name] = {
                "filters": [flt.name for flt, _ in runner.jail.filters],
                "source": source_label(self.source_key(runner.jail)),
                "hits": {
                    key.split("/", 1)[1]: count
                    for key, count in counts.items()
                    if key.startswith(name + "/") and count
                },
                "tracked": runner.scorer.tracked_count(),
                "active_bans": self.active.count(name),
                "refused_bans": self.refusals.by_jail.get(name, 0),
                "last_ban": None if last_ban is None else iso_time(last_ban),
                "scorer": runner.scorer.stats(),
            }
        per_family = self.active.family_counts()
        firewall = self.config.firewall
        maxelem = getattr(self.backend, "maxelem", None)
        return {
            "version": version(),
            "uptime": round(now - self.started, 1),
            "lines": stats.lines,
            "parsed": stats.parsed,
            "unparsed": stats.unparsed,
            "malformed": stats.malformed,
            "active_bans": len(self.active),
            "refused_bans": self.refusals.total,
            "spared_live_peers": self.spared_count,
            "conntrack": ("off" if self.live_peers is None else self.conntrack_error or "ok"),
            "jails": jails,
            "sources": self.source_health(),
            "firewall": _describe(self.backend),
            **({"fleet": self.fleet_health()} if self.fleet_health is not None else {}),
            "sets": {
                f"ipv{family}": {
                    "name": name,
                    "entries": per_family[family],
                    "capacity": maxelem if isinstance(maxelem, int) else None,
                }
                for family, name in ((4, firewall.set_v4), (6, firewall.set_v6))
            },
            "firewall_checks": {
                "ok": activity.firewall_ok,
                "failures": activity.firewall_failures,
                "repairs": dict(activity.repairs),
            },
        }

    def cmd_list(self, message: dict[str, Any], now: float) -> list[dict[str, object]]:
        """The kernel's sets are the truth; the state adds which jail and why. `jail`: only
        that jail's bans; `sort`: "target" (the default) or "expiry" (soonest first)."""
        jail, order = self._list_jail(message), message.get("sort", "target")
        if order not in ("target", "expiry"):
            raise RequestError("sort must be 'target' or 'expiry'")
        try:
            kernel = self.backend.list()
        except FirewallError as exc:
            raise RequestError(f"cannot read the kernel sets: {exc}") from exc
        key = _by_expiry if order == "expiry" else (lambda e: (e[0].version, e[0]))
        return _of_jail(self._list_rows(sorted(kernel, key=key), now), jail)

    def _list_jail(self, message: dict[str, Any]) -> str | None:
        jail = message.get("jail")
        if jail is not None and (not isinstance(jail, str) or self.pipeline.runner(jail) is None):
            names = ", ".join(r.jail.name for r in self.pipeline.runners)
            raise RequestError(f"no jail {jail!r} (jails: {names})")
        return jail

    def cmd_list_streamed(self, message: dict[str, Any], now: float) -> Streamed:
        """`list` for the control socket: the rows of one kernel dump message at a time, in
        the kernel's order (blockerctl sorts), so a million bans never hold the loop.
        `jail`: only that jail's bans."""
        jail = self._list_jail(message)
        batches = kernel_batches(self.backend)
        try:
            first = next(batches, [])  # a failure now is still an error reply
        except FirewallError as exc:
            raise RequestError(f"cannot read the kernel sets: {exc}") from exc

        def rows() -> Iterator[list[dict[str, object]]]:
            try:
                for batch in itertools.chain([first], batches):
                    # A backend's batch may be its whole list: a few ms of rows per loop turn.
                    for start in range(0, len(batch), LIST_SLICE):
                        yield _of_jail(
                            self._list_rows(batch[start : start + LIST_SLICE], now), jail
                        )
            finally:
                batches.close()

        return Streamed(rows())

    def _list_rows(
        self, entries: Sequence[tuple[Network, float]], now: float
    ) -> list[dict[str, object]]:
        """Rows for kernel entries; jail and reason come from the state (one query)."""
        texts = [network_text(target) for target, _ in entries]
        known = self.state.reasons(texts, now)
        rows: list[dict[str, object]] = []
        for (target, remaining), text in zip(entries, texts, strict=True):
            jail, reason, origin = known.get(text, ("(not blocker's)", "", ""))
            ban = self.active.get(target)
            rows.append(
                {
                    "target": text,
                    "jail": ban.jail if ban else jail,
                    "origin": origin,
                    "expires": None if math.isinf(remaining) else iso_time(now + remaining),
                    "remaining": None if math.isinf(remaining) else round(remaining),
                    "reason": reason,
                }
            )
        return rows

    def cmd_ban(self, message: dict[str, Any], now: float) -> str:
        request = BanRequest.from_message(message)  # the CLI's own request type
        target = _target(request.target)
        runner = self._jail_runner(request.jail)
        problem = self.refusal(target)
        if problem:
            raise RequestError(f"refusing to ban {network_text(target)}: {problem}")
        seconds = runner.jail.policy.ban_time if request.duration is None else request.duration
        decision = Decision(
            target=target,
            jail=runner.jail.name,
            at=now,
            duration=seconds,
            score=0.0,
            filters=(),
            reason="manual ban (blockerctl)",
        )
        try:
            refused = self.backend.ban([(target, seconds)])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"the firewall refused {network_text(target)}: {exc}") from exc
        if refused:
            raise RequestError(
                f"the firewall refused {network_text(target)}: "
                f"{refused[target]}; nothing was banned"
            )
        # An admin's ban replaces any earlier one, shorter or longer: lift those rows first.
        self.active.set(target, runner.jail.name, now + seconds)
        self.activity.bans[runner.jail.name, "admin"] += 1
        self.activity.last_ban[runner.jail.name] = now
        with self.state.transaction():
            self.state.lift(target, now)
            self.state.record_bans([decision], origin="manual")
            self._publish([(decision, now + seconds)], now)
        span = "permanently" if math.isinf(seconds) else f"for {seconds:g}s"
        log.warning(
            "ban %s (%s) %s: %s",
            decision.target_text,
            decision.jail,
            span,
            decision.reason,
            extra={"bans": ban_events([decision], [seconds], "admin")},
        )
        self._mark_everywhere(target, now + seconds)
        return f"banned {network_text(target)} {span} (jail {runner.jail.name})"

    def cmd_unban(self, message: dict[str, Any], now: float) -> str:
        target = _target(message.get("target"))
        fleet_wide = message.get("fleet") is True
        if fleet_wide and self.fleet is None:
            raise RequestError("--fleet: this host is in no fleet ([fleet] url is not set)")
        try:
            self.backend.unban([target])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"cannot unban {network_text(target)}: {exc}") from exc
        expires = self.active.expires(target)
        jail, _reason, origin = self.state.reasons([network_text(target)], now).get(
            network_text(target), (self.pipeline.runners[0].jail.name, "", "")
        )
        if expires is not None and origin.startswith("fleet:"):
            self.held[target] = expires  # the fleet may not ban it here again until then
        lifted_jail = next(
            (b.jail for b in self.active.covering(target.network_address) if b.target == target), ""
        )
        if self.active.remove(target):
            self.activity.unbans[lifted_jail, "admin"] += 1
        with self.state.transaction():
            lifted = self.state.lift(target, now)
            if fleet_wide and self.fleet is not None:
                self.state.queue_outbox(
                    [
                        FleetEvent(
                            "unban",
                            uuid.uuid4().hex,
                            self.fleet.host_id,
                            target,
                            jail,
                            now,
                            math.inf,
                            "admin unban (blockerctl unban --fleet)",
                        ).payload()
                    ]
                )
        for runner in self.pipeline.runners:
            runner.scorer.forget(target)
        event = ("unban", target, lifted_jail, None, "", "admin")
        log.warning("unban %s (admin)", network_text(target), extra={"bans": [event]})
        covering = [
            network_text(b.target)
            for b in self.active.covering(target.network_address)
            if b.target.prefixlen < target.prefixlen and b.expires > now
        ]
        text = f"unbanned {network_text(target)}" + ("" if lifted else " (it was not banned)")
        if fleet_wide:
            text += "; the unban goes to every host of the fleet"
        if covering:
            text += f"; still covered by the ban of {', '.join(covering)}"
        return text

    def cmd_reload(self, _message: dict[str, Any], now: float) -> str:
        return self.reload(now)

    def reload(self, now: float) -> str:
        if self.reload_config is None:
            raise RequestError("this daemon has no configuration file to reload")
        try:
            config = self.reload_config()
        except ConfigError as exc:
            raise RequestError(f"reload refused, keeping the running configuration: {exc}") from exc
        self._install(config)
        self._load_history(now)
        self._mark_active()
        log.warning("configuration reloaded: %d jail(s)", len(config.jails))
        return f"reloaded {config.path}: {', '.join(j.name for j in config.jails)}"

    def cmd_explain(self, message: dict[str, Any], now: float) -> dict[str, object]:
        text = message.get("address")
        if not isinstance(text, str):
            raise RequestError("explain needs an address")
        try:
            address = ip_address(text.strip())
        except ValueError:
            raise RequestError(f"{text!r} is not an IP address") from None
        bans = [b for b in self.active.covering(address) if b.expires > now]
        reasons = self.state.reasons([network_text(b.target) for b in bans], now)
        covering = [
            {
                "target": network_text(b.target),
                "jail": b.jail,
                "reason": reasons.get(network_text(b.target), ("", "", ""))[1],
                "origin": reasons.get(network_text(b.target), ("", "", ""))[2],
                "expires": None if math.isinf(b.expires) else iso_time(b.expires),
            }
            for b in bans
        ]
        spared = [
            {
                "target": network_text(s.target),
                "jail": s.jail,
                "at": iso_time(s.at),
                "reason": s.reason,
            }
            for s in self.spared.values()
            if address in s.target
        ]
        return {
            "address": str(address),
            "banned_by": covering,
            "spared": spared,
            "refusal": self.refusal(ip_network(address)),
            "jails": {r.jail.name: r.scorer.explain(address, now) for r in self.pipeline.runners},
        }

    def refusal(self, target: Network) -> str | None:
        """Why `target` must never be banned, or None (addresses.py decides)."""
        fixed = network_refusal(target)
        if fixed is not None:
            return fixed
        for runner in self.pipeline.runners:  # each jail's, with the host's addresses merged in
            problem = runner.scorer.rules.network_refusal(target)
            if problem is not None:
                return problem
        return None

    def _jail_runner(self, name: object) -> JailRunner:
        if name is None:
            return self.pipeline.runners[0]
        runner = self.pipeline.runner(name) if isinstance(name, str) else None
        if runner is None:
            names = ", ".join(r.jail.name for r in self.pipeline.runners)
            raise RequestError(f"no jail {name!r} (jails: {names})")
        return runner


def _by_expiry(entry: tuple[Network, float]) -> tuple[float, int, Network]:
    """Soonest expiry first, permanent (inf) last, then by address."""
    return (entry[1], entry[0].version, entry[0])


def _of_jail(rows: list[dict[str, object]], jail: str | None) -> list[dict[str, object]]:
    return rows if jail is None else [row for row in rows if row["jail"] == jail]


def _target(value: object) -> Network:
    if not isinstance(value, str) or not value.strip():
        raise RequestError("give an address or a network, e.g. 203.0.113.7 or 203.0.113.0/24")
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ip_network(value.strip(), strict=False)
            raise RequestError(f"{value!r} has host bits set; did you mean {loose}?") from None
        raise RequestError(f"{value!r} is not an address or network") from None


def _describe(backend: Backend) -> object:
    """The backend's own status (sets, rules, iptables variant) when it offers one."""
    status = getattr(backend, "status", None)
    if callable(status):
        try:
            return status()
        except FirewallError as exc:
            return {"error": str(exc)}
    return {"backend": type(backend).__name__}


def kernel_batches(backend: Backend) -> Generator[Bans, None, None]:
    """The backend's bans a batch at a time: list_batches() where it has it (ipset),
    else list() as one batch."""
    batches = getattr(backend, "list_batches", None)
    if batches is None:
        yield backend.list()
    else:
        yield from batches()
