"""Where a decision becomes a kernel entry: bans into the firewall, then into ActiveBans and
the state, and the kernel kept in line with them (restore at start, repair at each tick).

A ban is active only once the kernel holds it. When the kernel refuses one (its set is full,
see the README's "A full kernel set"), the ban is not recorded, the jail's scorer forgets the
target (so its next offence is a new decision), a counter grows, and one log line per
REFUSAL_LOG_EVERY seconds says how many were refused. Bans already in the set stay, and a
present entry can still be refreshed: only new entries are refused.

Nothing here costs in proportion to the number of active bans except what must (a restart
restores them all, in batches of RESTORE_BATCH): see blocker/active.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from blocker.active import ActiveBans
from blocker.activity import Activity
from blocker.firewall.base import Backend, FirewallError, InvalidBan
from blocker.journal import ban_events
from blocker.records import Decision, Network, network_text
from blocker.running_jails import RunningJails
from blocker.state import State

log = logging.getLogger("blocker")

# Bans handed to the kernel at a time on restore: each is a Network object and its netlink
# entry while the batch lasts (~700 bytes a ban: at 50,000, 36 MB on top of a restart's peak).
# The backend sends ENTRIES_PER_MESSAGE a message whatever the batch.
RESTORE_BATCH = 5_000
REFUSAL_LOG_EVERY = 60.0  # seconds between two log lines about bans the kernel refused

# (decision, until when) -> queued for the fleet in the caller's transaction
Publish = Callable[[Sequence[tuple[Decision, float]], float], None]
# (when the lines were read, bans the kernel took): line-read -> kernel-ack latency
AfterBan = Callable[[float, int], None]


def _publish_nothing(_bans: Sequence[tuple[Decision, float]], _now: float) -> None:
    pass


def _ignore_latency(_read_at: float, _bans: int) -> None:
    pass


@dataclass
class Refusals:
    """Bans the kernel refused, counted since start, and reported once per interval."""

    total: int = 0
    by_jail: dict[str, int] = field(default_factory=dict)
    unreported: int = 0
    examples: list[str] = field(default_factory=list)
    next_report: float = -math.inf


class BanLedger:
    def __init__(
        self,
        state: State,
        backend: Backend,
        jails: RunningJails,
        activity: Activity,
        *,
        publish: Publish = _publish_nothing,
        after_ban: AfterBan = _ignore_latency,
    ) -> None:
        self.state = state
        self.backend = backend
        self.jails = jails
        self.activity = activity
        self.publish = publish
        self.after_ban = after_ban
        self.active = ActiveBans()
        self.refusals = Refusals()
        self._resync = False  # the kernel may lack active bans: re-add them all at the next tick

    # -- decisions in ----------------------------------------------------------------------
    def apply(self, decisions: Sequence[Decision], now: float, origin: str = "auto") -> None:
        """Bans into the kernel (one batch), then into ActiveBans and the state (same
        transaction as the caller's position update) for those the kernel took."""
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
            return
        refused = self.kernel_ban([(d.target, remaining) for d, remaining in wanted])
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
                self.drop_refused(target, now, jails[target])
            self.note_refused(refused, now, jails=jails)
        if recorded:
            with self.state.transaction():  # joins the caller's, with the lines' position
                self.state.record_bans(recorded, origin, texts)
                if origin == "auto":
                    self.publish(
                        [(d, now + min(d.duration, d.at + d.duration - now)) for d in recorded], now
                    )

    def kernel_ban(self, entries: list[tuple[Network, float]]) -> dict[Network, str] | None:
        """-> the entries the kernel refused, or None when it could not be asked at all."""
        try:
            return self.backend.ban(entries)
        except (FirewallError, InvalidBan) as exc:
            log.error("firewall refused %d ban(s): %s", len(entries), exc)
            return None

    def drop_refused(self, target: Network, now: float, jail: str | None = None) -> None:
        """A ban the kernel does not hold is not active: the scorers forget it, so a later
        decision bans it again. An earlier ban of it that the kernel still holds stays."""
        expires = self.active.expires(target)
        if jail is None:  # restored: the state said it was active
            self.active.remove(target)
            expires = None
        runners = (
            self.jails.runners
            if jail is None
            else [r for r in self.jails.runners if r.jail.name == jail]
        )
        for runner in runners:
            if expires is not None and expires > now:
                runner.scorer.mark_banned(target, expires)
            else:
                runner.scorer.forget(target)

    def note_refused(
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

    # -- the kernel in line with the ledger ------------------------------------------------
    def restore(self, now: float) -> None:
        """Read the state's active bans into ActiveBans (ints, no objects per ban), hand them
        to the kernel RESTORE_BATCH at a time, then those it holds to the scorers in bulk.
        An existing kernel entry only gets its timeout refreshed: no unban gap."""
        self.active.clear()
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
            self.drop_refused(target, now)
        # The rest into every scorer at once: only what the kernel holds is active.
        self.jails.mark_active(self.active.keyed())
        if refused:
            self.note_refused(refused, now, origin="restored")
            with self.state.transaction():
                for target in refused:  # not in the kernel, so not active: say so in the state
                    self.state.lift(target, now)
        if self.active:
            log.info("restored %d active ban(s)", len(self.active))
        for runner in self.jails.runners:
            restored = self.active.count(runner.jail.name)
            if restored:
                self.activity.bans[runner.jail.name, "restore"] += restored

    def _restore_batch(self, batch: list[tuple[Network, float]], now: float) -> dict[Network, str]:
        refused = self.kernel_ban([(target, expires - now) for target, expires in batch])
        if refused is None:  # the kernel could not be asked: keep them, re-add at the tick
            self._resync = True
            refused = {}
        return refused

    def expire(self, now: float) -> None:
        gone = self.active.expire(now)
        if gone:
            self.activity.unbans["*", "expired"] += gone

    def check_firewall(self, now: float) -> None:
        """Rules and sets in place, re-adding the bans of a recreated (or unreachable) set."""
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

    def _readd(self, families: set[int], now: float) -> None:
        """Put the active bans of these families back into the kernel, in batches."""
        refused: dict[Network, str] = {}
        batch: list[tuple[Network, float]] = []
        for family in sorted(families):
            for target, expires in self.active.entries(family):
                batch.append((target, expires - now))
                if len(batch) >= RESTORE_BATCH:
                    refused.update(self.kernel_ban(batch) or {})
                    batch = []
        if batch:
            refused.update(self.kernel_ban(batch) or {})
        for target in refused:
            self.drop_refused(target, now)
        if refused:
            self.note_refused(refused, now, origin="re-added")
            with self.state.transaction():
                for target in refused:
                    self.state.lift(target, now)
