"""Why did (or didn't) this line count? Per-line verdicts for `blockerctl test --show`. Pure.

The slow, readable path: each line goes alone through the parser, Matcher.match() and
Scorer.feed() (what Pipeline's compiled plans do per record, by name), and says what
happened to it. `blockerctl test` without --show never comes here.

Verdicts, one or more per line:
  hit        a jail's filter matched: the fields, the filter, the offender, its score after
  ban        the hit made a ban (right after the hit that caused it)
  ignored    a LOG record no filter matched, or a hit the scorer dropped (allowlisted, this
             host's own or a special address, already banned, older than the window)
  malformed  it starts a LOG record but was refused: the reason
  not_log    no LOG record in it
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blocker.commands import iso_time
from blocker.config import Config
from blocker.netfilter import KernelLogParser, LogFields, Record, is_trace
from blocker.pipeline import Pipeline
from blocker.records import Decision, Packet, Signature
from blocker.replay import ReplayResult, decision_json, read_text_chunks

SHOW_CHOICES = ("hits", "bans", "unparsed", "malformed", "all")
# Which verdicts each --show choice prints.
SHOWN: dict[str, frozenset[str]] = {
    "hits": frozenset({"hit", "ban"}),
    "bans": frozenset({"ban"}),
    "unparsed": frozenset({"malformed", "not_log"}),
    "malformed": frozenset({"malformed"}),
    "all": frozenset({"hit", "ban", "ignored", "malformed", "not_log"}),
}
_SCORER_DROPS = (  # Scorer.stats() counter -> why the hit earned nothing
    ("ignored", "never banned ({refusal})"),
    ("while_banned", "already banned"),
    ("stale", "older than the jail's window"),
)


class LineJudge:
    """Judges lines one by one, counting them in the pipeline's own LineStats and hit counts
    (so the summary reads the same as the fast path's) and keeping the decisions."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.stats = pipeline.stats
        self.decisions: list[Decision] = []

    def judge(self, number: int, line: str, now: float) -> list[dict[str, Any]]:
        """The verdicts of one line (no newline), numbered from 1; `now` anchors year-less
        timestamps as in replay_file()."""
        self.stats.lines += 1
        parser = self.pipeline.parser
        parser.take_rejected()
        records = parser.scan(line, now)
        if parser.take_rejected():
            return [
                self._malformed(
                    number,
                    "the syslog header is not the kernel's (a user "
                    "process can write that) or cannot be read",
                )
            ]
        if not records:
            return [{"line": number, "verdict": "not_log"}]
        record = records[0]
        if is_trace(record[1]):
            return [
                {
                    "line": number,
                    "verdict": "not_log",
                    "reason": "kernel TRACE output: a traced packet, not a logged one",
                }
            ]
        packet = parser.packet(record)
        if packet is None:
            return [self._malformed(number, malformed_reason(parser, record))]
        self.stats.parsed += 1
        return self._through_jails(number, packet)

    def _malformed(self, number: int, reason: str) -> dict[str, Any]:
        self.stats.malformed += 1
        return {"line": number, "verdict": "malformed", "reason": reason}

    def _through_jails(self, number: int, packet: Packet) -> list[dict[str, Any]]:
        fields = packet_fields(packet)
        signature = Signature.of(packet)
        out: list[dict[str, Any]] = []
        for runner in self.pipeline.runners:
            jail = runner.jail.name
            hit = runner.matcher.match(packet, signature)
            if hit is None:
                continue
            before = runner.scorer.stats()
            decisions = runner.scorer.feed(hit)
            after = runner.scorer.stats()
            base = {
                "line": number,
                "jail": jail,
                "filter": hit.filter,
                "offender": str(hit.offender),
                "fields": fields,
            }
            dropped = next(
                (
                    why
                    for counter, why in _SCORER_DROPS
                    if after.get(counter, 0) > before.get(counter, 0)
                ),
                None,
            )
            if dropped is not None:
                refusal = runner.scorer.refusal(hit.offender) or "refused"
                out.append(
                    {**base, "verdict": "ignored", "reason": dropped.format(refusal=refusal)}
                )
                continue
            if decisions:  # a ban empties the window: the score is the one that banned
                score = max(d.score for d in decisions)
            else:
                score = float(runner.scorer.explain(hit.offender, hit.time)["score"])  # type: ignore[arg-type]
            out.append(
                {
                    **base,
                    "verdict": "hit",
                    "weight": hit.weight,
                    "score": round(score, 3),
                    "threshold": runner.scorer.policy.threshold,
                }
            )
            for decision in decisions:
                self.decisions.append(decision)
                out.append({"line": number, "verdict": "ban", **decision_json(decision)})
        if not out:
            out.append(
                {
                    "line": number,
                    "verdict": "ignored",
                    "fields": fields,
                    "reason": "no filter of any jail matches this packet",
                }
            )
        return out


def replay_file_verdicts(
    path: Path, config: Config, emit: Callable[[list[dict[str, Any]]], None]
) -> ReplayResult:
    """replay_file() through the reference path, one line at a time: `emit` gets each line's
    verdicts. The same result as replay_file(); raises OSError like it."""
    with path.open("rb") as stream:
        reference = os.fstat(stream.fileno()).st_mtime  # as replay_file()
        judge = LineJudge(Pipeline(config))
        number = 0
        for text in read_text_chunks(stream):
            for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
                number += 1
                emit(judge.judge(number, line, reference))
    return ReplayResult(judge.stats, judge.decisions, judge.pipeline.hit_counts())


def malformed_reason(parser: KernelLogParser, record: Record) -> str:
    """Why the parser refuses a scanned record's fields, in words."""
    _, prefix, fields = record
    named = LogFields._make(fields)
    proto, flags, dpt = named.proto, named.flags, named.dpt
    if parser.signature(prefix, fields) is None:
        if proto is None:
            return "a LOG record cut or mangled before PROTO="
        if proto in ("ICMP", "ICMPv6"):
            return f"PROTO={proto} without TYPE= and CODE= (cut short)"
        if proto == "TCP" and flags is None:
            return "a TCP record whose flags are missing or mangled (cut short?)"
        if proto == "TCP" and flags is not None:
            return f"unknown TCP flags {flags.strip()!r}"
        return f"unknown protocol PROTO={proto} (cut inside the name?)"
    if dpt is None:
        return f"PROTO={proto} without SPT= and DPT= (cut short)"
    for name, text in (("SRC", named.src), ("DST", named.dst)):
        if text is None or parser.address(text) is None:
            return f"{name}={text} is not an IP address"
    return "SRC= and DST= are of different IP versions"


def packet_fields(packet: Packet) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": iso_time(packet.time),
        "prefix": packet.prefix,
        "in": packet.iface_in,
        "out": packet.iface_out,
        "src": str(packet.src),
        "dst": str(packet.dst),
        "proto": packet.proto,
    }
    if packet.dpt is not None:
        fields.update(spt=packet.spt, dpt=packet.dpt)
    if packet.proto == "TCP":
        fields["flags"] = sorted(packet.flags)
    if packet.icmp_type is not None:
        fields.update(icmp_type=packet.icmp_type, icmp_code=packet.icmp_code)
    return fields
