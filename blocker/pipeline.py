"""Kernel log text -> decisions, through every jail. Pure: time comes with the lines.

Both `blockerctl test` (replaying a file) and blockerd (following a live log) feed this.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, replace

from blocker.config import Config, Jail
from blocker.filters import Matcher, signature_of
from blocker.netfilter import KernelLogParser
from blocker.records import Address, Decision, Packet
from blocker.scoring import Scorer

# Longer lines are cut before parsing: a LOG record is < 1 KiB, so nothing real is lost,
# and the parser's worst case on adversarial text stays small.
MAX_LINE = 4096


@dataclass
class LineStats:
    lines: int = 0
    parsed: int = 0
    # Looked like a LOG record but was refused: bad address, bad or forged syslog header,
    # truncated TCP record. Counted within `unparsed`.
    malformed: int = 0

    @property
    def unparsed(self) -> int:
        return self.lines - self.parsed


@dataclass
class JailRunner:
    jail: Jail
    matcher: Matcher
    scorer: Scorer


class Pipeline:
    def __init__(self, config: Config, own_addresses: Sequence[Address] = ()) -> None:
        """`own_addresses`: the host's addresses (found by the daemon) added to every jail's."""
        self.config = config
        self.parser = KernelLogParser()
        self.stats = LineStats()
        self.runners: list[JailRunner] = []
        for jail in config.jails:
            policy = jail.policy
            if own_addresses:
                merged = tuple(dict.fromkeys((*policy.own_addresses, *own_addresses)))
                policy = replace(policy, own_addresses=merged)
            self.runners.append(JailRunner(jail, jail.matcher(), Scorer(policy)))

    def runner(self, name: str) -> JailRunner | None:
        return next((r for r in self.runners if r.jail.name == name), None)

    def feed_packet(self, packet: Packet, jails: Sequence[JailRunner] | None = None
                    ) -> list[Decision]:
        decisions: list[Decision] = []
        signature = signature_of(packet)
        for runner in self.runners if jails is None else jails:
            hit = runner.matcher.match(packet, signature)
            if hit is not None:
                found = runner.scorer.feed(hit)
                if found:
                    decisions.extend(found)
        return decisions

    def hit_counts(self) -> dict[str, int]:
        """'jail/filter' -> hits so far (filters without hits included, at 0)."""
        return {f"{runner.jail.name}/{name}": count
                for runner in self.runners for name, count in runner.matcher.counts.items()}

    def feed_line(self, line: str, now: float, source_time: float | None = None,
                  jails: Sequence[JailRunner] | None = None) -> list[Decision]:
        """One line from a live source; `now` is the reader's clock (the daemon's edge)."""
        self.stats.lines += 1
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE]
        packet = self.parser.parse(line, now, source_time)
        if packet is None:
            self.stats.malformed += self.parser.take_rejected()
            return []
        self.stats.parsed += 1
        return self.feed_packet(packet, jails)

    def feed_lines(self, lines: Sequence[str], now: float,
                   jails: Sequence[JailRunner] | None = None) -> list[Decision]:
        """Many lines that carry their own time (kern.log): bounded like feed_line's, then
        parsed as one text."""
        if lines and max(map(len, lines)) > MAX_LINE:  # rare: checked in C, cut in Python
            lines = [line[:MAX_LINE] for line in lines]
        return self.feed_text("\n".join(lines) + "\n", now, jails)

    def feed_text(self, text: str, now: float, jails: Sequence[JailRunner] | None = None
                  ) -> list[Decision]:
        """Many complete lines at once, each already within MAX_LINE (replay cuts them while
        reading): the fast path."""
        lines = text.count("\n")
        if text and not text.endswith("\n"):
            lines += 1
        self.stats.lines += lines
        decisions: list[Decision] = []
        parsed = 0
        feed = self.feed_packet
        for packet in self.parser.parse_text(text, now):
            parsed += 1
            found = feed(packet, jails)
            if found:
                decisions.extend(found)
        self.stats.parsed += parsed
        self.stats.malformed += self.parser.take_rejected()
        return decisions


def tune_gc() -> None:
    """Process-wide, for whoever runs a Pipeline at volume (replay, blockerd): it allocates
    many short-lived acyclic tuples, so with the default thresholds the cyclic collector runs
    thousands of times per second for nothing (~10% of the time). Objects alive now (config,
    compiled filters) are moved out of its sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
