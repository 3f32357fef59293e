"""What blockerd does, without its loop: lines in, kernel bans out, admin commands answered.

The daemon shell (daemon.py) owns sockets, signals and the clock; it hands this class the lines
it read and the time it read them at. Tests drive it directly with a fake backend.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any, Protocol

from blocker.addresses import is_special_network
from blocker.config import Config, ConfigError, Jail, duration
from blocker.control import Handler, RequestError, Streamed
from blocker.firewall.base import Backend, Bans, FirewallError, InvalidBan
from blocker.fleet.events import FleetEvent
from blocker.live_peers import ConntrackError, LiveConnection
from blocker.netfilter import Record
from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Address, Decision, Network, network_text
from blocker.replay import iso_time
from blocker.sources.base import SourceLine
from blocker.state import State

LIST_SLICE = 128  # rows of a streamed `list` made per loop turn (~2 ms)
log = logging.getLogger("blocker")

SourceKey = tuple[str, str]  # (kind, path)


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
class ActiveBan:
    target: Network
    jail: str
    expires: float  # wall-clock epoch; math.inf = permanent
    reason: str
    origin: str = "auto"  # "auto", "manual" or "fleet:HOST"


@dataclass(frozen=True)
class FleetRole:
    """This host in the fleet: its name, the jails it shares, whether it takes others' bans."""

    host_id: str
    publish: frozenset[str]
    accept: bool


class Service:
    def __init__(self, config: Config, state: State, backend: Backend, *,
                 own_addresses: Sequence[Address] = (), log_override: str | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 live_peers: PeerCheck | None = None) -> None:
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
        self.active: dict[Network, ActiveBan] = {}
        self.started = 0.0
        self.source_health: Callable[[], list[dict[str, object]]] = list
        self.fleet: FleetRole | None = None
        self.fleet_health: Callable[[], dict[str, object]] | None = None
        # Remote bans an admin lifted here: target -> until when the fleet may not re-ban it.
        self.held: dict[Network, float] = {}
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
        self._load_history(now)
        self.active.clear()
        entries: list[tuple[Network, float]] = []
        self.held = dict(self.state.held(now))
        for row in self.state.active(now):
            self.active[row.target] = ActiveBan(row.target, row.jail, row.expires, row.reason,
                                                row.origin)
            self._mark_everywhere(row.target, row.expires)
            entries.append((row.target, row.expires - now))
        if entries:
            self._kernel_ban(entries)
            log.info("restored %d active ban(s)", len(entries))

    def _mark_everywhere(self, target: Network, until: float) -> None:
        for runner in self.pipeline.runners:
            runner.scorer.mark_banned(target, until)

    # -- the hot path ----------------------------------------------------------------------
    def handle_lines(self, key: SourceKey, lines: Sequence[SourceLine], now: float
                     ) -> list[Decision]:
        runners = self.groups.get(key)
        if not runners or not lines:
            return []
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

    def handle_records(self, key: SourceKey, records: Sequence[Record], now: float
                       ) -> list[Decision]:
        """Records from a packet source (NFLOG) for the jails that read `key`."""
        runners = self.groups.get(key)
        if not runners or not records:
            return []
        decisions = self.pipeline.feed_records(records, runners)
        if decisions:
            decisions = self.apply(decisions, now)
        return decisions

    def apply(self, decisions: Sequence[Decision], now: float, origin: str = "auto"
              ) -> list[Decision]:
        """Bans into the kernel (one batch) and into the state (same transaction as the
        caller's position update). Returns the decisions left after spare_live_peers."""
        if origin == "auto" and self.live_peers is not None:
            decisions = self._spare_live_peers(decisions, now)
        entries: list[tuple[Network, float]] = []
        recorded: list[Decision] = []
        lines: list[str] = []
        texts: list[str] = []
        for decision in decisions:
            end = decision.at + decision.duration
            # A decision on an old line (a backlog) keeps only the time its ban has left.
            remaining = min(decision.duration, end - now)
            if remaining <= 0:
                log.info("not banning %s: its %gs ban ended before the line was read",
                         decision.target_text, decision.duration)
                continue
            expires = now + remaining
            current = self.active.get(decision.target)
            if current is not None and current.expires >= expires:
                continue
            self.active[decision.target] = ActiveBan(decision.target, decision.jail, expires,
                                                     decision.reason, origin)
            entries.append((decision.target, remaining))
            recorded.append(decision)
            text = decision.target_text
            texts.append(text)
            span = "permanently" if math.isinf(remaining) else f"for {remaining:.0f}s"
            lines.append(f"ban {text} ({decision.jail}) {span}: {decision.reason}")
        if lines:
            # One record for the batch, one line per ban (the daemon's formatter prefixes
            # each line): a burst of thousands of bans costs one write, not thousands.
            log.warning("%s", "\n".join(lines))
        if entries:
            self._kernel_ban(entries)
            self.state.begin()
            self.state.record_bans(recorded, origin, texts)
            self._publish([(d, self.active[d.target].expires) for d in recorded], now)
        return list(decisions)

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
        return any(filters[name].spoofable if name in filters else True
                   for name in decision.filters) or not decision.filters

    def _spare(self, decision: Decision, live: LiveConnection, runner: JailRunner,
               window: float, now: float) -> None:
        target = decision.target
        reason = (f"not banned: {live.describe()}, and the evidence "
                  f"({', '.join(decision.filters)}) can be forged in its name "
                  f"(spare_live_peers {window:g}s)")
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
                self._spare_logged = {t: at for t, at in self._spare_logged.items()
                                      if now - at < window}
            log.warning("spare %s (%s): %s", decision.target_text, decision.jail, reason)

    # -- the fleet -------------------------------------------------------------------------
    def _publish(self, bans: Sequence[tuple[Decision, float]], now: float) -> None:
        """Queue this host's bans of shared jails in the outbox (the caller's transaction)."""
        fleet = self.fleet
        if fleet is None or not fleet.publish:
            return
        self.state.queue_outbox(
            FleetEvent("ban", uuid.uuid4().hex, fleet.host_id, d.target, d.jail, now, expires,
                       d.reason).payload()
            for d, expires in bans if d.jail in fleet.publish)

    def apply_remote(self, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
        """Other hosts' bans and unbans, through this host's own gate; returns counts."""
        counts = dict.fromkeys(("applied", "refused", "held", "expired", "unbans", "spared"), 0)
        fleet = self.fleet
        if fleet is None or not fleet.accept:
            return counts
        by_origin: dict[str, list[Decision]] = {}
        entries: list[tuple[Network, float]] = []
        candidates: list[tuple[FleetEvent, Decision]] = []
        for event in events:
            target = event.target
            if event.kind == "unban":
                counts["unbans"] += self._remote_unban(event, now)
                continue
            remaining = event.expires - now
            current = self.active.get(target)
            if remaining <= 0 or (current is not None and current.expires >= event.expires):
                counts["expired"] += 1  # over, or already banned at least as long
                continue
            if self.held.get(target, 0.0) > now:
                counts["held"] += 1
                continue
            problem = self.refusal(target)
            if problem:
                counts["refused"] += 1
                log.info("fleet: not banning %s from %s: %s", network_text(target),
                         event.origin, problem)
                continue
            candidates.append((event, Decision(
                target=target, jail=event.jail, at=now, duration=remaining, score=0.0,
                filters=(), reason=event.reason)))
        if candidates and self.live_peers is not None:
            # The spoof-safety check of this host's jail of the same name: no remote ban cuts
            # a live connection of this host (the evidence is not ours to judge: spoofable).
            kept = {id(d) for d in self._spare_live_peers([d for _, d in candidates], now)}
            counts["spared"] = len(candidates) - len(kept)
            candidates = [(e, d) for e, d in candidates if id(d) in kept]
        for event, decision in candidates:
            origin = f"fleet:{event.origin}"
            self.active[decision.target] = ActiveBan(decision.target, event.jail,
                                                     event.expires, event.reason, origin)
            entries.append((decision.target, decision.duration))
            by_origin.setdefault(origin, []).append(decision)
            self._mark_everywhere(decision.target, event.expires)
        if entries:
            self._kernel_ban(entries)
            self.state.begin()
            for origin, decisions in by_origin.items():
                self.state.record_bans(decisions, origin)
            counts["applied"] = len(entries)
            log.warning("fleet: %d ban(s) from other hosts applied", len(entries))
        return counts

    def _remote_unban(self, event: FleetEvent, now: float) -> int:
        """An admin's `blockerctl unban --fleet` on another host: lift the target here too."""
        if event.target not in self.active:
            return 0
        try:
            self.backend.unban([event.target])
        except (FirewallError, InvalidBan) as exc:
            log.error("fleet: cannot unban %s: %s", network_text(event.target), exc)
            return 0
        self.active.pop(event.target, None)
        self.state.begin()
        self.state.forget_remote(event.target)
        self.state.lift(event.target, now)
        for runner in self.pipeline.runners:
            runner.scorer.forget(event.target)
        log.warning("unban %s (fleet, from %s)", network_text(event.target), event.origin)
        return 1

    def _kernel_ban(self, entries: list[tuple[Network, float]]) -> None:
        try:
            self.backend.ban(entries)
        except (FirewallError, InvalidBan) as exc:
            log.error("firewall refused %d ban(s): %s", len(entries), exc)

    def tick(self, now: float) -> None:
        """Periodic: rules and sets in place (re-adding bans to a recreated set), old bans gone."""
        try:
            repair = self.backend.ensure()
        except FirewallError as exc:
            log.error("firewall check failed: %s", exc)
            return
        if repair:
            log.warning("firewall repaired: %s", repair)
        if repair.sets_recreated:
            entries = [(b.target, b.expires - now) for b in self.active.values()
                       if b.target.version in repair.sets_recreated and b.expires > now]
            if entries:
                self._kernel_ban(entries)
        for target in [t for t, b in self.active.items() if b.expires <= now]:
            del self.active[target]
        if self.held:
            self.held = {t: until for t, until in self.held.items() if until > now}

    def _history_horizon(self, now: float) -> float:
        """Bans older than this matter to no jail's ban-time growth."""
        return now - max((r.jail.policy.history_window for r in self.pipeline.runners),
                         default=0.0)

    def _load_history(self, now: float) -> None:
        history = self.state.history(self._history_horizon(now))
        for runner in self.pipeline.runners:
            runner.scorer.restore_history(history)

    def prune(self, now: float) -> None:
        self.state.begin()
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
        jails: dict[str, object] = {}
        for runner in self.pipeline.runners:
            name = runner.jail.name
            jails[name] = {
                "filters": [flt.name for flt, _ in runner.jail.filters],
                "source": source_label(self.source_key(runner.jail)),
                "hits": {key.split("/", 1)[1]: count for key, count in counts.items()
                         if key.startswith(name + "/") and count},
                "tracked": runner.scorer.tracked_count(),
                "active_bans": sum(1 for b in self.active.values()
                                   if b.jail == name and b.expires > now),
                "scorer": runner.scorer.stats(),
            }
        return {
            "uptime": round(now - self.started, 1),
            "lines": stats.lines,
            "parsed": stats.parsed,
            "unparsed": stats.unparsed,
            "malformed": stats.malformed,
            "active_bans": sum(1 for b in self.active.values() if b.expires > now),
            "spared_live_peers": self.spared_count,
            "conntrack": ("off" if self.live_peers is None
                          else self.conntrack_error or "ok"),
            "jails": jails,
            "sources": self.source_health(),
            "firewall": _describe(self.backend),
            **({"fleet": self.fleet_health()} if self.fleet_health is not None else {}),
        }

    def cmd_list(self, _message: dict[str, Any], now: float) -> list[dict[str, object]]:
        """The kernel's sets are the truth; the state adds which jail and why."""
        try:
            kernel = self.backend.list()
        except FirewallError as exc:
            raise RequestError(f"cannot read the kernel sets: {exc}") from exc
        return [self._list_row(target, remaining, now)
                for target, remaining in sorted(kernel, key=lambda e: (e[0].version, e[0]))]

    def cmd_list_streamed(self, _message: dict[str, Any], now: float) -> Streamed:
        """`list` for the control socket: the rows of one kernel dump message at a time, in
        the kernel's order (blockerctl sorts), so a million bans never hold the loop."""
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
                        yield [self._list_row(target, remaining, now)
                               for target, remaining in batch[start : start + LIST_SLICE]]
            finally:
                batches.close()

        return Streamed(rows())

    def _list_row(self, target: Network, remaining: float, now: float) -> dict[str, object]:
        ban = self.active.get(target)
        return {
            "target": network_text(target),
            "jail": ban.jail if ban else "(not blocker's)",
            "origin": ban.origin if ban else "",
            "expires": None if math.isinf(remaining) else iso_time(now + remaining),
            "remaining": None if math.isinf(remaining) else round(remaining),
            "reason": ban.reason if ban else "",
        }

    def cmd_ban(self, message: dict[str, Any], now: float) -> str:
        target = _target(message.get("target"))
        runner = self._jail_runner(message.get("jail"))
        problem = self.refusal(target)
        if problem:
            raise RequestError(f"refusing to ban {network_text(target)}: {problem}")
        raw = message.get("duration")
        if raw is None:
            seconds = runner.jail.policy.ban_time
        else:
            try:
                seconds = duration(raw, "ban", "duration", permanent_ok=True)
            except ConfigError as exc:
                raise RequestError(f"duration: {exc.reason}") from exc
            if seconds <= 0:
                raise RequestError("duration must be longer than 0 s")
        decision = Decision(target=target, jail=runner.jail.name, at=now, duration=seconds,
                            score=0.0, filters=(), reason="manual ban (blockerctl)")
        try:
            self.backend.ban([(target, seconds)])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"the firewall refused {network_text(target)}: {exc}") from exc
        # An admin's ban replaces any earlier one, shorter or longer: lift those rows first.
        self.active[target] = ActiveBan(target, runner.jail.name, now + seconds, decision.reason,
                                        "manual")
        self.state.begin()
        self.state.lift(target, now)
        self.state.record_bans([decision], origin="manual")
        self._publish([(decision, now + seconds)], now)
        self.state.commit()
        span = "permanently" if math.isinf(seconds) else f"for {seconds:g}s"
        log.warning("ban %s (%s) %s: %s", decision.target_text, decision.jail, span,
                    decision.reason)
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
        ban = self.active.pop(target, None)
        if ban is not None and ban.origin.startswith("fleet:"):
            self.held[target] = ban.expires  # the fleet may not ban it here again until then
        self.state.begin()
        lifted = self.state.lift(target, now)
        if fleet_wide and self.fleet is not None:
            self.state.queue_outbox([FleetEvent(
                "unban", uuid.uuid4().hex, self.fleet.host_id, target,
                ban.jail if ban else self.pipeline.runners[0].jail.name, now, math.inf,
                "admin unban (blockerctl unban --fleet)").payload()])
        self.state.commit()
        for runner in self.pipeline.runners:
            runner.scorer.forget(target)
        log.warning("unban %s (admin)", network_text(target))
        covering = [network_text(t) for t in self.active
                    if t != target and t.version == target.version and target.subnet_of(t)]  # type: ignore[arg-type]
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
            raise RequestError(f"reload refused, keeping the running configuration: {exc}"
                               ) from exc
        self.state.commit()
        self._install(config)
        self._load_history(now)
        for ban in self.active.values():
            self._mark_everywhere(ban.target, ban.expires)
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
        covering = [
            {"target": network_text(b.target), "jail": b.jail, "reason": b.reason,
             "origin": b.origin,
             "expires": None if math.isinf(b.expires) else iso_time(b.expires)}
            for b in self.active.values() if address in b.target and b.expires > now
        ]
        spared = [
            {"target": network_text(s.target), "jail": s.jail, "at": iso_time(s.at),
             "reason": s.reason}
            for s in self.spared.values() if address in s.target
        ]
        return {
            "address": str(address),
            "banned_by": covering,
            "spared": spared,
            "refusal": self.refusal(ip_network(address)),
            "jails": {r.jail.name: r.scorer.explain(address, now) for r in self.pipeline.runners},
        }

    def refusal(self, target: Network) -> str | None:
        """Why `target` must never be banned, or None."""
        if target.prefixlen == 0:
            return "that is every address"
        if is_special_network(target):
            return ("loopback, link-local, multicast, unspecified and reserved addresses"
                    " are never banned")
        for runner in self.pipeline.runners:
            policy = runner.scorer.policy  # the jail's, with the host's addresses merged in
            for own in policy.own_addresses:
                if own in target:
                    return f"it holds this host's own address {own}"
            for allowed in policy.allow:
                if allowed.version == target.version and allowed.overlaps(target):
                    return f"it is allowlisted ({network_text(allowed)} in jail {runner.jail.name})"
        return None

    def _jail_runner(self, name: object) -> JailRunner:
        if name is None:
            return self.pipeline.runners[0]
        runner = self.pipeline.runner(name) if isinstance(name, str) else None
        if runner is None:
            names = ", ".join(r.jail.name for r in self.pipeline.runners)
            raise RequestError(f"no jail {name!r} (jails: {names})")
        return runner


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
