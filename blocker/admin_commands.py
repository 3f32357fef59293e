"""The admin commands blockerctl sends: status, list, ban, unban, explain (reload is the
service's own, as it touches every part). Each takes its typed request (commands.py, parsed
once at the edge by the service's dispatch table) and the time, and answers a typed reply
from the ban ledger, the kernel and the state; a refusal is a RequestError, whose message
goes back to the client."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Iterator, Sequence
from ipaddress import ip_address, ip_network

from blocker.activity import Activity
from blocker.ban_ledger import BanLedger
from blocker.commands import (
    BanRequest,
    CoveringBan,
    ExplainReply,
    ExplainRequest,
    JailStatus,
    ListedBan,
    ListRequest,
    RequestError,
    SetStatus,
    SparedBan,
    StatusReply,
    StatusRequest,
    Streamed,
    UnbanRequest,
    iso_time,
)
from blocker.firewall.base import Backend, Bans, FirewallError, InvalidBan
from blocker.fleet_role import FleetPublisher, RemoteBans
from blocker.journal import ban_events
from blocker.live_peer_sparing import LivePeerSparing
from blocker.pipeline import JailRunner
from blocker.records import Decision, Network, network_text
from blocker.running_jails import RunningJails, source_label
from blocker.version import version

LIST_SLICE = 128  # rows of a streamed `list` made per loop turn (~2 ms)
log = logging.getLogger("blocker")

SourceHealth = Callable[[], list[dict[str, object]]]  # one dict per source the daemon follows
FleetHealth = Callable[[], dict[str, object]]  # the fleet link's own report


class AdminCommands:
    def __init__(
        self,
        jails: RunningJails,
        ledger: BanLedger,
        sparing: LivePeerSparing,
        publisher: FleetPublisher,
        remote: RemoteBans,
        *,
        source_health: SourceHealth = list,
        fleet_health: FleetHealth | None = None,
    ) -> None:
        self.jails = jails
        self.ledger = ledger
        self.sparing = sparing
        self.publisher = publisher
        self.remote = remote
        self.source_health = source_health
        self.fleet_health = fleet_health
        self.started = 0.0

    @property
    def activity(self) -> Activity:
        return self.ledger.activity

    @property
    def backend(self) -> Backend:
        return self.ledger.backend

    def status(self, _request: StatusRequest, now: float) -> StatusReply:
        jails, ledger = self.jails, self.ledger
        stats = jails.pipeline.stats
        counts = jails.pipeline.hit_counts()
        ledger.expire(now)
        activity = self.activity
        per_jail: dict[str, JailStatus] = {}
        for runner in jails.runners:
            name = runner.jail.name
            last_ban = activity.last_ban.get(name)
            per_jail[name] = {
                "filters": [flt.name for flt, _ in runner.jail.filters],
                "source": source_label(jails.source_key(runner.jail)),
                "hits": {
                    key.split("/", 1)[1]: count
                    for key, count in counts.items()
                    if key.startswith(name + "/") and count
                },
                "tracked": runner.scorer.tracked_count(),
                "active_bans": ledger.active.count(name),
                "refused_bans": ledger.refusals.by_jail.get(name, 0),
                "last_ban": None if last_ban is None else iso_time(last_ban),
                "scorer": runner.scorer.stats(),
            }
        per_family = ledger.active.family_counts()
        firewall = jails.config.firewall
        maxelem = getattr(self.backend, "maxelem", None)
        sets: dict[str, SetStatus] = {
            f"ipv{family}": {
                "name": name,
                "entries": per_family[family],
                "capacity": maxelem if isinstance(maxelem, int) else None,
            }
            for family, name in ((4, firewall.set_v4), (6, firewall.set_v6))
        }
        reply: StatusReply = {
            "version": version(),
            "uptime": round(now - self.started, 1),
            "lines": stats.lines,
            "parsed": stats.parsed,
            "unparsed": stats.unparsed,
            "malformed": stats.malformed,
            "active_bans": len(ledger.active),
            "refused_bans": ledger.refusals.total,
            "spared_live_peers": self.sparing.spared_count,
            "conntrack": self.sparing.health(),
            "jails": per_jail,
            "sources": self.source_health(),
            "firewall": _describe(self.backend),
            "sets": sets,
            "firewall_checks": {
                "ok": activity.firewall_ok,
                "failures": activity.firewall_failures,
                "repairs": dict(activity.repairs),
            },
        }
        if self.fleet_health is not None:
            reply["fleet"] = self.fleet_health()
        return reply

    def list_bans(self, request: ListRequest, now: float) -> Streamed:
        """The kernel's sets are the truth; the state adds which jail and why. The rows of
        one kernel dump message at a time, in the kernel's order (blockerctl sorts), so a
        million bans never hold the loop. `jail`: only that jail's bans."""
        jail = request.jail
        if jail is not None and self.jails.runner(jail) is None:
            names = ", ".join(r.jail.name for r in self.jails.runners)
            raise RequestError(f"no jail {jail!r} (jails: {names})")
        batches = kernel_batches(self.backend)
        try:
            first = next(batches, [])  # a failure now is still an error reply
        except FirewallError as exc:
            raise RequestError(f"cannot read the kernel sets: {exc}") from exc

        def rows() -> Iterator[list[ListedBan]]:
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

    def _list_rows(self, entries: Sequence[tuple[Network, float]], now: float) -> list[ListedBan]:
        """Rows for kernel entries; jail and reason come from the state (one query)."""
        texts = [network_text(target) for target, _ in entries]
        known = self.ledger.state.reasons(texts, now)
        rows: list[ListedBan] = []
        for (target, remaining), text in zip(entries, texts, strict=True):
            jail, reason, origin = known.get(text, ("(not blocker's)", "", ""))
            ban = self.ledger.active.get(target)
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

    def ban(self, request: BanRequest, now: float) -> str:
        target = _target(request.target)
        runner = self._jail_runner(request.jail)
        problem = self.jails.refusal(target)
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
        self.ledger.active.set(target, runner.jail.name, now + seconds)
        self.activity.bans[runner.jail.name, "admin"] += 1
        self.activity.last_ban[runner.jail.name] = now
        state = self.ledger.state
        with state.transaction():
            state.lift(target, now)
            state.record_bans([decision], origin="manual")
            self.publisher.publish([(decision, now + seconds)], now)
        span = "permanently" if math.isinf(seconds) else f"for {seconds:g}s"
        log.warning(
            "ban %s (%s) %s: %s",
            decision.target_text,
            decision.jail,
            span,
            decision.reason,
            extra={"bans": ban_events([decision], [seconds], "admin")},
        )
        self.jails.mark_everywhere(target, now + seconds)
        return f"banned {network_text(target)} {span} (jail {runner.jail.name})"

    def unban(self, request: UnbanRequest, now: float) -> str:
        target = _target(request.target)
        fleet_wide = request.fleet
        if fleet_wide and self.publisher.role is None:
            raise RequestError("--fleet: this host is in no fleet ([fleet] url is not set)")
        try:
            self.backend.unban([target])
        except (FirewallError, InvalidBan) as exc:
            raise RequestError(f"cannot unban {network_text(target)}: {exc}") from exc
        active, state = self.ledger.active, self.ledger.state
        expires = active.expires(target)
        jail, _reason, origin = state.reasons([network_text(target)], now).get(
            network_text(target), (self.jails.runners[0].jail.name, "", "")
        )
        if expires is not None and origin.startswith("fleet:"):
            self.remote.hold(target, expires)
        lifted_jail = next(
            (b.jail for b in active.covering(target.network_address) if b.target == target), ""
        )
        if active.remove(target):
            self.activity.unbans[lifted_jail, "admin"] += 1
        with state.transaction():
            lifted = state.lift(target, now)
            if fleet_wide:
                self.publisher.publish_unban(target, jail, now)
        self.jails.forget_everywhere(target)
        event = ("unban", target, lifted_jail, None, "", "admin")
        log.warning("unban %s (admin)", network_text(target), extra={"bans": [event]})
        covering = [
            network_text(b.target)
            for b in active.covering(target.network_address)
            if b.target.prefixlen < target.prefixlen and b.expires > now
        ]
        text = f"unbanned {network_text(target)}" + ("" if lifted else " (it was not banned)")
        if fleet_wide:
            text += "; the unban goes to every host of the fleet"
        if covering:
            text += f"; still covered by the ban of {', '.join(covering)}"
        return text

    def explain(self, request: ExplainRequest, now: float) -> ExplainReply:
        text = request.address
        try:
            address = ip_address(text.strip())
        except ValueError:
            raise RequestError(f"{text!r} is not an IP address") from None
        bans = [b for b in self.ledger.active.covering(address) if b.expires > now]
        reasons = self.ledger.state.reasons([network_text(b.target) for b in bans], now)
        covering: list[CoveringBan] = [
            {
                "target": network_text(b.target),
                "jail": b.jail,
                "reason": reasons.get(network_text(b.target), ("", "", ""))[1],
                "origin": reasons.get(network_text(b.target), ("", "", ""))[2],
                "expires": None if math.isinf(b.expires) else iso_time(b.expires),
            }
            for b in bans
        ]
        spared: list[SparedBan] = [
            {
                "target": network_text(s.target),
                "jail": s.jail,
                "at": iso_time(s.at),
                "reason": s.reason,
            }
            for s in self.sparing.spared.values()
            if address in s.target
        ]
        return {
            "address": str(address),
            "banned_by": covering,
            "spared": spared,
            "refusal": self.jails.refusal(ip_network(address)),
            "jails": {r.jail.name: r.scorer.explain(address, now) for r in self.jails.runners},
        }

    def _jail_runner(self, name: str | None) -> JailRunner:
        if name is None:
            return self.jails.runners[0]
        runner = self.jails.runner(name)
        if runner is None:
            names = ", ".join(r.jail.name for r in self.jails.runners)
            raise RequestError(f"no jail {name!r} (jails: {names})")
        return runner


def _of_jail(rows: list[ListedBan], jail: str | None) -> list[ListedBan]:
    return rows if jail is None else [row for row in rows if row["jail"] == jail]


def _target(value: str) -> Network:
    """The request's target (a non-empty string, commands.py checked) as a network."""
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
