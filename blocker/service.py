"""What blockerd does, without its loop: lines in, kernel bans out, admin commands answered.

The daemon shell (daemon.py) owns sockets, signals and the clock; it hands this class the lines
it read and the time it read them at. Tests drive it directly with a fake backend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import TypeVar

from blocker.addresses import is_special_network
from blocker.commands import (
    BanRequest,
    CoveringBan,
    ExplainReply,
    ExplainRequest,
    Handler,
    JailStatus,
    ListedBan,
    ListRequest,
    Message,
    ReloadRequest,
    RequestError,
    StatusReply,
    StatusRequest,
    UnbanRequest,
    iso_time,
)
from blocker.config import Config, ConfigError, Jail
from blocker.firewall.base import Backend, FirewallError, InvalidBan
from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Address, Decision, Network, network_text
from blocker.sources.base import SourceLine
from blocker.state import State

log = logging.getLogger("blocker")

SourceKey = tuple[str, str]  # (kind, path)
SourceHealth = Callable[[], list[dict[str, object]]]  # one dict per source the daemon follows
R = TypeVar("R")


def source_label(key: SourceKey) -> str:
    """'kernlog:/var/log/kern.log': how a source is named in logs, status and the state."""
    return f"{key[0]}:{key[1]}"


@dataclass
class ActiveBan:
    target: Network
    jail: str
    expires: float  # wall-clock epoch; math.inf = permanent
    reason: str


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
        source_health: SourceHealth = list,
    ) -> None:
        self.state = state
        self.backend = backend
        self.own_addresses = tuple(own_addresses)
        self.log_override = log_override
        self.reload_config = reload_config
        self.active: dict[Network, ActiveBan] = {}
        self.started = 0.0
        self.source_health = source_health
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
        for row in self.state.active(now):
            self.active[row.target] = ActiveBan(row.target, row.jail, row.expires, row.reason)
            self._mark_everywhere(row.target, row.expires)
            entries.append((row.target, row.expires - now))
        if entries:
            self._kernel_ban(entries)
            log.info("restored %d active ban(s)", len(entries))

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
            self.apply(decisions, now)
        return decisions

    def apply(self, decisions: Sequence[Decision], now: float, origin: str = "auto") -> None:
        """Bans into the kernel (one batch) and into the state (in the caller's transaction,
        with the position of the lines behind them, when the caller opened one)."""
        entries: list[tuple[Network, float]] = []
        recorded: list[Decision] = []
        lines: list[str] = []
        texts: list[str] = []
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
            expires = now + remaining
            current = self.active.get(decision.target)
            if current is not None and current.expires >= expires:
                continue
            self.active[decision.target] = ActiveBan(
                decision.target, decision.jail, expires, decision.reason
            )
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
            with self.state.transaction():
                self.state.record_bans(recorded, origin, texts)

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
            entries = [
                (b.target, b.expires - now)
                for b in self.active.values()
                if b.target.version in repair.sets_recreated and b.expires > now
            ]
            if entries:
                self._kernel_ban(entries)
        for target in [t for t, b in self.active.items() if b.expires <= now]:
            del self.active[target]

    def _history_horizon(self, now: float) -> float:
        """Bans older than this matter to no jail's ban-time growth."""
        return now - max((r.jail.policy.history_window for r in self.pipeline.runners), default=0.0)

    def _load_history(self, now: float) -> None:
        history = self.state.history(self._history_horizon(now))
        for runner in self.pipeline.runners:
            runner.scorer.restore_history(history)

    def prune(self, now: float) -> None:
        with self.state.transaction():
            self.state.prune(self._history_horizon(now))

    # -- admin commands --------------------------------------------------------------------
    def handlers(self, clock: Callable[[], float]) -> dict[str, Handler]:
        """The control table: each message becomes its typed request, or a RequestError."""

        def bind(parse: Callable[[Message], R], method: Callable[[R, float], object]) -> Handler:
            return lambda message: method(parse(message), clock())

        return {
            StatusRequest.command: bind(StatusRequest.from_message, self.cmd_status),
            ListRequest.command: bind(ListRequest.from_message, self.cmd_list),
            BanRequest.command: bind(BanRequest.from_message, self.cmd_ban),
            UnbanRequest.command: bind(UnbanRequest.from_message, self.cmd_unban),
            ReloadRequest.command: bind(ReloadRequest.from_message, self.cmd_reload),
            ExplainRequest.command: bind(ExplainRequest.from_message, self.cmd_explain),
        }

    def cmd_status(self, _request: StatusRequest, now: float) -> StatusReply:
        stats = self.pipeline.stats
        counts = self.pipeline.hit_counts()
        jails: dict[str, JailStatus] = {}
        for runner in self.pipeline.runners:
            name = runner.jail.name
            jails[name] = {
                "filters": [flt.name for flt, _ in runner.jail.filters],
                "source": source_label(self.source_key(runner.jail)),
                "hits": {
                    key.split("/", 1)[1]: count
                    for key, count in counts.items()
                    if key.startswith(name + "/") and count
                },
                "tracked": runner.scorer.tracked_count(),
                "active_bans": sum(
                    1 for b in self.active.values() if b.jail == name and b.expires > now
                ),
                "scorer": runner.scorer.stats(),
            }
        return {
            "uptime": round(now - self.started, 1),
            "lines": stats.lines,
            "parsed": stats.parsed,
            "unparsed": stats.unparsed,
            "malformed": stats.malformed,
            "active_bans": sum(1 for b in self.active.values() if b.expires > now),
            "jails": jails,
            "sources": self.source_health(),
            "firewall": _describe(self.backend),
        }

    def cmd_list(self, _request: ListRequest, now: float) -> list[ListedBan]:
        """The kernel's sets are the truth; the state adds which jail and why."""
        try:
            kernel = self.backend.list()
        except FirewallError as exc:
            raise RequestError(f"cannot read the kernel sets: {exc}") from exc
        rows: list[ListedBan] = []
        for target, remaining in sorted(kernel, key=lambda e: (e[0].version, e[0])):
            ban = self.active.get(target)
            expires = None if math.isinf(remaining) else iso_time(now + remaining)
            rows.append(
                {
                    "target": network_text(target),
                    "jail": ban.jail if ban else "(not blocker's)",
                    "expires": expires,
                    "remaining": None if math.isinf(remaining) else round(remaining),
                    "reason": ban.reason if ban else "",
                }
            )
        return rows

    def cmd_ban(self, request: BanRequest, now: float) -> str:
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
            self.backend.ban([(target, seconds)])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"the firewall refused {network_text(target)}: {exc}") from exc
        # An admin's ban replaces any earlier one, shorter or longer: lift those rows first.
        self.active[target] = ActiveBan(target, runner.jail.name, now + seconds, decision.reason)
        with self.state.transaction():
            self.state.lift(target, now)
            self.state.record_bans([decision], origin="manual")
        span = "permanently" if math.isinf(seconds) else f"for {seconds:g}s"
        log.warning(
            "ban %s (%s) %s: %s", decision.target_text, decision.jail, span, decision.reason
        )
        self._mark_everywhere(target, now + seconds)
        return f"banned {network_text(target)} {span} (jail {runner.jail.name})"

    def cmd_unban(self, request: UnbanRequest, now: float) -> str:
        target = _target(request.target)
        try:
            self.backend.unban([target])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"cannot unban {network_text(target)}: {exc}") from exc
        self.active.pop(target, None)
        with self.state.transaction():
            lifted = self.state.lift(target, now)
        for runner in self.pipeline.runners:
            runner.scorer.forget(target)
        log.warning("unban %s (admin)", network_text(target))
        covering = [
            network_text(t)
            for t in self.active
            if t != target and target.network_address in t and target.broadcast_address in t
        ]
        text = f"unbanned {network_text(target)}" + ("" if lifted else " (it was not banned)")
        if covering:
            text += f"; still covered by the ban of {', '.join(covering)}"
        return text

    def cmd_reload(self, _request: ReloadRequest, now: float) -> str:
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
        for ban in self.active.values():
            self._mark_everywhere(ban.target, ban.expires)
        log.warning("configuration reloaded: %d jail(s)", len(config.jails))
        return f"reloaded {config.path}: {', '.join(j.name for j in config.jails)}"

    def cmd_explain(self, request: ExplainRequest, now: float) -> ExplainReply:
        text = request.address
        try:
            address = ip_address(text.strip())
        except ValueError:
            raise RequestError(f"{text!r} is not an IP address") from None
        covering: list[CoveringBan] = [
            {
                "target": network_text(b.target),
                "jail": b.jail,
                "reason": b.reason,
                "expires": None if math.isinf(b.expires) else iso_time(b.expires),
            }
            for b in self.active.values()
            if address in b.target and b.expires > now
        ]
        return {
            "address": str(address),
            "banned_by": covering,
            "refusal": self.refusal(ip_network(address)),
            "jails": {r.jail.name: r.scorer.explain(address, now) for r in self.pipeline.runners},
        }

    def refusal(self, target: Network) -> str | None:
        """Why `target` must never be banned, or None."""
        if target.prefixlen == 0:
            return "that is every address"
        if is_special_network(target):
            return (
                "loopback, link-local, multicast, unspecified and reserved addresses"
                " are never banned"
            )
        for runner in self.pipeline.runners:
            policy = runner.scorer.policy  # the jail's, with the host's addresses merged in
            for own in policy.own_addresses:
                if own in target:
                    return f"it holds this host's own address {own}"
            for allowed in policy.allow:
                if allowed.version == target.version and allowed.overlaps(target):
                    return f"it is allowlisted ({network_text(allowed)} in jail {runner.jail.name})"
        return None

    def _jail_runner(self, name: str | None) -> JailRunner:
        if name is None:
            return self.pipeline.runners[0]
        runner = self.pipeline.runner(name)
        if runner is None:
            names = ", ".join(r.jail.name for r in self.pipeline.runners)
            raise RequestError(f"no jail {name!r} (jails: {names})")
        return runner


def _target(value: str) -> Network:
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
