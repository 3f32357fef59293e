"""Kernel log text -> decisions, through every jail. Pure: time comes with the lines.

Both `blockerctl test` (replaying a file) and blockerd (following a live log) feed this.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from socket import AF_INET, inet_pton

from blocker.config import Config, Jail
from blocker.filters import DST_DPORT, FastCandidate, Matcher
from blocker.netfilter import (
    Fields,
    KernelLogParser,
    Record,
    is_trace,
    kernel_address_types,
)
from blocker.records import Address, Decision
from blocker.scoring import Scorer
from blocker.tiers import key_of as source_key

# Longer lines are cut before parsing: a LOG record is < 1 KiB, so nothing real is lost,
# and the parser's worst case on adversarial text stays small.
MAX_LINE = 4096
# Compiled plans kept per set of jails: kinds of record are few (prefixes x interfaces x
# protocols x flags), the bound is for adversarial variety.
_PLAN_LIMIT = 16384
_JailPlan = tuple[Callable[..., "list[Decision] | None"], dict[str, int], tuple[FastCandidate, ...]]
# (ports required, ICMP type, per jail with candidates); () for a kind never valid
_Plan = tuple[bool, "int | None", tuple[_JailPlan, ...]] | tuple[()]
# The type of a source key's address, by its tag (key >> 128): what a DST must be too.
_FAMILY = kernel_address_types()


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


@dataclass(eq=False)  # hashed by identity: plans are cached per set of runners
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
        self._plans: dict[tuple[JailRunner, ...], dict[object, _Plan]] = {}

    def runner(self, name: str) -> JailRunner | None:
        return next((r for r in self.runners if r.jail.name == name), None)

    def hit_counts(self) -> dict[str, int]:
        """'jail/filter' -> hits so far (filters without hits included, at 0)."""
        return {
            f"{runner.jail.name}/{name}": count
            for runner in self.runners
            for name, count in runner.matcher.counts.items()
        }

    def feed_line(
        self,
        line: str,
        now: float,
        source_time: float | None = None,
        jails: Sequence[JailRunner] | None = None,
    ) -> list[Decision]:
        """One line from a live source; `now` is the reader's clock (the daemon's edge)."""
        self.stats.lines += 1
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE]
        # One line is one record at most, even if a journal message holds a newline.
        records = islice(self.parser.scan(line, now, source_time), 1)
        return self._feed_records(records, jails)

    def feed_lines(
        self, lines: Sequence[str], now: float, jails: Sequence[JailRunner] | None = None
    ) -> list[Decision]:
        """Many lines that carry their own time (kern.log): bounded like feed_line's, then
        parsed as one text."""
        if lines and max(map(len, lines)) > MAX_LINE:  # rare: checked in C, cut in Python
            lines = [line[:MAX_LINE] for line in lines]
        return self.feed_text("\n".join(lines) + "\n", now, jails, headerless=False)

    def feed_text(
        self,
        text: str,
        now: float,
        jails: Sequence[JailRunner] | None = None,
        headerless: bool = True,
    ) -> list[Decision]:
        """Many complete lines at once, each already within MAX_LINE (replay cuts them while
        reading): the fast path. `headerless=False` for a live file: only lines with a
        `kernel:` syslog header count (see KernelLogParser.scan)."""
        records = self.parser.scan(text, now, headerless=headerless)
        self.stats.lines += self.parser.lines
        return self._feed_records(records, jails)

    def feed_records(
        self, records: Sequence[Record], jails: Sequence[JailRunner] | None = None
    ) -> list[Decision]:
        """Records that did not come from text (NFLOG: packet_decode.record()), each one a
        LOG line's worth: the same validation, filters and scores as a parsed line."""
        self.stats.lines += len(records)
        return self._feed_records(records, jails)

    def _feed_records(  # noqa: PLR0915 - one flat loop is the hot path
        self, records: Iterable[Record], jails: Sequence[JailRunner] | None
    ) -> list[Decision]:
        """Scanned records -> hits -> decisions, through plans compiled per kind of record.

        Does what Matcher.match() and Scorer.feed() do per parsed Packet (the reference,
        tests/reference_pipeline.py), without building a Packet or a Hit: per kind of record
        (its Signature) each jail's Matcher.fast_plan() is compiled once; per record only
        the addresses, ports and scores are left. `fields` unpacks in LogFields' order.
        """
        plans = self._plans_for(jails)
        addresses = self.parser.addresses
        keys = self.parser.keys
        from_bytes = int.from_bytes
        decisions: list[Decision] = []
        parsed = malformed = 0
        last_kind: object = None
        plan: _Plan | None = ()
        for t, prefix, fields in records:
            (
                iface_in,
                iface_out,
                _,
                src_text,
                dst_text,
                _,
                _,
                _,
                _,
                proto,
                spt,
                dpt,
                flags,
                icmp_type,
                icmp_code,
                incomplete,
            ) = fields
            kind = (prefix, iface_in, iface_out, proto, flags, icmp_type, icmp_code, incomplete)
            # Records come in runs of one kind (a storm's are all alike): comparing with the
            # last kind costs less than hashing the fields anew for the lookup.
            if kind != last_kind:
                last_kind = kind
                plan = plans.get(kind)
                if plan is None:
                    plan = self._plan(plans, kind, prefix, fields, jails)
            if not plan or (plan[0] and dpt is None):
                if not is_trace(prefix):  # TRACE output is no packet, and no error either
                    malformed += 1  # a kind of record that is never valid, or one cut short
                continue
            # The source as a key (an int: see KeyTable), the destination as an address.
            # An IPv4 text is parsed on every line, in C: cheaper than a cache, which a
            # storm's sources miss (a miss and a store cost ~200 ns, the parse ~110). IPv6
            # text (parsed and salted once, kept: KeyTable) and bad text take the table.
            if ":" in src_text:  # type: ignore[operator]  # SRC= and DST= always match
                src = keys[src_text]  # type: ignore[index]
            else:
                try:
                    src = from_bytes(inet_pton(AF_INET, src_text))  # type: ignore[arg-type]
                except (OSError, ValueError):
                    src = keys[src_text]  # type: ignore[index]  # not an address: None
            dst = addresses[dst_text]  # type: ignore[index]
            if src is None or dst is None or type(dst) is not _FAMILY[src >> 128]:
                malformed += 1
                continue
            parsed += 1
            for add, counts, candidates in plan[2]:
                for name, weight, ports, unicast, from_src, key_of in candidates:
                    if unicast is not None and not unicast[dst]:
                        continue
                    if ports is not None and not ports.port_match(
                        None if dpt is None else int(dpt), None if spt is None else int(spt)
                    ):
                        continue
                    counts[name] += 1
                    key: tuple[object, ...] | None
                    if key_of is None:
                        key = None
                    elif key_of is DST_DPORT:
                        key = (dst, int(dpt))  # type: ignore[arg-type]  # ports: plan[0]
                    else:  # proto: these kinds of record all have a PROTO=
                        sport = None if spt is None else int(spt)
                        dport = None if dpt is None else int(dpt)
                        key = key_of(addresses[src_text], dst, sport, dport, proto, plan[1])  # type: ignore[arg-type,index]
                    if from_src:
                        found = add(t, name, src, weight, key)
                    else:
                        found = add(t, name, source_key(dst), weight, key, addr=dst)
                    if found:
                        decisions += found
                    break
        self.stats.parsed += parsed
        self.stats.malformed += malformed + self.parser.take_rejected()
        return decisions

    def _plans_for(self, jails: Sequence[JailRunner] | None) -> dict[object, _Plan]:
        runners = tuple(self.runners if jails is None else jails)
        plans = self._plans.get(runners)
        if plans is None:
            plans = self._plans[runners] = {}
        return plans

    def _plan(
        self,
        plans: dict[object, _Plan],
        kind: object,
        prefix: str,
        fields: Fields,
        jails: Sequence[JailRunner] | None,
    ) -> _Plan:
        signature = self.parser.signature(prefix, fields)
        plan: _Plan = ()
        if signature is not None:
            per_jail = []
            for runner in self.runners if jails is None else jails:
                candidates = runner.matcher.fast_plan(signature)
                if candidates:
                    per_jail.append((runner.scorer.add_key, runner.matcher.counts, candidates))
            plan = (signature.ports, signature.icmp_type, tuple(per_jail))
        if len(plans) >= _PLAN_LIMIT:
            plans.clear()
        plans[kind] = plan
        return plan


def tune_gc() -> None:
    """Process-wide, for whoever runs a Pipeline at volume (replay, blockerd): it allocates
    many short-lived acyclic tuples, so with the default thresholds the cyclic collector runs
    thousands of times per second for nothing (~10% of the time). Objects alive now (config,
    compiled filters) are moved out of its sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
