"""Replay a log file offline through the configured jails (`blockerctl test`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from blocker.commands import iso_time
from blocker.config import Config
from blocker.pipeline import MAX_LINE, LineStats, Pipeline, tune_gc
from blocker.records import Decision, network_text
from blocker.sources.base import LineSplitter

# 64 KiB, as the kern.log follower reads (sources/kernlog.py): a chunk's records (a tuple,
# its fields' strings) are made by the scan and freed after scoring, and at ~240 records
# they stay in the CPU's cache between the two; at 1 MiB (~3,800 records, ~3 MB of objects)
# they did not: the replay of a 100k-reflector storm took 5.6-6.0 s of CPU instead of 4.4.
CHUNK = 64 * 1024


@dataclass
class ReplayResult:
    stats: LineStats
    decisions: list[Decision]
    hits_by_filter: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {
            "lines": self.stats.lines,
            "parsed": self.stats.parsed,
            "unparsed": self.stats.unparsed,
            "malformed": self.stats.malformed,
            "hits": sum(self.hits_by_filter.values()),
            "hits_by_filter": {k: v for k, v in sorted(self.hits_by_filter.items()) if v},
            "bans": [decision_json(d) for d in self.decisions],
        }


def decision_json(decision: Decision) -> dict[str, object]:
    permanent = math.isinf(decision.duration)
    return {
        "target": decision.target_text,
        "jail": decision.jail,
        "at": iso_time(decision.at),
        "duration": None if permanent else decision.duration,
        "permanent": permanent,
        "score": round(decision.score, 3),
        "filters": list(decision.filters),
        "reason": decision.reason,
    }


_encode = json.encoder.encode_basestring_ascii  # json.dumps()'s own string encoder, in C
_FALSE_TRUE = ("false", "true")
_iso_seconds: dict[int, str] = {}  # whole second -> iso_time() of it (a storm's bans share a few)
# (jail, duration, score, filters, reason) -> the line's "jail" and its tail from "duration"
# on: a storm's bans share a handful (the engine shares one reason text among them)
_parts: dict[tuple[str, float, float, tuple[str, ...], str], tuple[str, str]] = {}


def decision_line(decision: Decision) -> str:
    """json.dumps(decision_json(decision)), exactly, without the dict: `blockerctl test
    --json` spools one per ban, and a storm makes a million.  Values json.dumps() would
    write in some other way than this template (a non-finite float, an int or other type
    where a float is expected) take the dict's way."""
    target, jail, at, duration, score, filters, reason = decision
    # A storm's bans share a handful of tails: found, its duration and score were floats
    # json.dumps() writes as repr() does (only such are kept), and these are equal floats.
    parts = _parts.get((jail, duration, score, filters, reason))
    if (
        parts is None
        or type(score) is not float
        or type(duration) is not float
        or type(at) is not float
        or not 0 <= at < 1e11
    ):
        parts = _new_parts(decision)
        if parts is None:
            return json.dumps(decision_json(decision))
    second = int(at)
    # iso_time() rounds to microseconds, then cuts to the second: only a fraction within
    # half a microsecond of the next second may round up into it.
    stamp = _iso_seconds.get(second) if at - second < 0.999 else None
    if stamp is None:
        stamp = _stamp(at, second)
    # A target's text is digits, hex, dots, colons and a slash: nothing JSON escapes.
    return f'{{"target": "{network_text(target)}", "jail": {parts[0]}, "at": {stamp}, {parts[1]}'


def _new_parts(decision: Decision) -> tuple[str, str] | None:
    """The "jail" text and the tail from "duration" on of a decision whose tail is not
    shared yet (kept for the next ones when they may be), or None when json.dumps() would
    write its values otherwise than the template."""
    _, jail, at, duration, score, filters, reason = decision
    permanent = duration == math.inf
    if (
        type(score) is not float
        or type(at) is not float
        or not (permanent or (type(duration) is float and math.isfinite(duration)))
        or not math.isfinite(score)
        or not 0 <= at < 1e11  # where iso_time() may say "invalid-time"
    ):
        return None
    parts = (
        _encode(jail),
        (
            f'"duration": {"null" if permanent else repr(duration)}, '
            f'"permanent": {_FALSE_TRUE[permanent]}, "score": {round(score, 3)!r}, '
            f'"filters": [{", ".join(map(_encode, filters))}], "reason": {_encode(reason)}}}'
        ),
    )
    # Only positive values are shared: 0.0 == -0.0, and their reprs differ.
    if duration > 0 and score > 0:
        if len(_parts) >= 4096:
            _parts.clear()
        _parts[(jail, duration, score, filters, reason)] = parts
    return parts


def _stamp(at: float, second: int) -> str:
    """The JSON text of iso_time(at), kept for its whole `second` unless `at` may round up
    into the next one."""
    stamp = _encode(iso_time(at))
    if at - second < 0.999:
        if len(_iso_seconds) >= 4096:
            _iso_seconds.clear()
        _iso_seconds[second] = stamp
    return stamp


def decision_lines(decisions: list[Decision]) -> str:
    """decision_line() of each, one a line (the spool's text for one batch)."""
    if len(decisions) == 1:
        return decision_line(decisions[0]) + "\n"
    return "".join([decision_line(decision) + "\n" for decision in decisions])


def replay_file(
    path: Path, config: Config, on_decisions: Callable[[list[Decision]], None] | None = None
) -> ReplayResult:
    """Raises OSError when the file cannot be read; bad content never raises.

    With `on_decisions`, decisions are handed to it as they come and not kept in the
    result: a storm's million bans need not all sit in memory at once.
    """
    tune_gc()
    with path.open("rb") as stream:
        # Year-less syslog timestamps are placed relative to when the file was last written.
        reference = os.fstat(stream.fileno()).st_mtime
        pipeline = Pipeline(config)
        decisions: list[Decision] = []
        take = decisions.extend if on_decisions is None else on_decisions
        for text in read_text_chunks(stream):
            found = pipeline.feed_text(text, reference)
            if found:
                take(found)
    return ReplayResult(pipeline.stats, decisions, pipeline.hit_counts())


def write_json(result: ReplayResult, bans: IO[str], out: IO[str], chunk_size: int = CHUNK) -> None:
    """result.to_json() as json.dumps() prints it, its bans read from `bans` (one JSON
    object a line, as spooled by replay_file's caller) instead of held in memory."""
    head = json.dumps(result.to_json())
    assert head.endswith(', "bans": []}')
    out.write(head[: -len("[]}")] + "[")
    # In blocks, not line by line: each line's newline becomes json.dumps()'s ", " between
    # items (a JSON line holds no raw newline), but the last one, held back until the end.
    held = ""
    while block := bans.read(chunk_size):
        out.write(held)
        text = block.replace("\n", ", ")
        if block.endswith("\n"):
            out.write(text[:-2])
            held = ", "
        else:  # a line goes on in the next block (or has no newline at the end)
            out.write(text)
            held = ""
    out.write("]}\n")


def read_text_chunks(stream: BinaryIO, chunk_size: int = CHUNK) -> Iterator[str]:
    """Complete lines, decoded leniently, in ~chunk_size pieces; overlong lines are cut.

    Memory stays bounded by chunk_size + MAX_LINE whatever the input holds. The lines are
    cut by the same splitter the kern.log follower uses, then parsed as one text per chunk.
    """
    splitter = LineSplitter(limit=MAX_LINE)
    while block := stream.read(chunk_size):
        lines = splitter.feed_block(block)
        if lines:
            yield lines.decode("utf-8", "replace")
    tail = splitter.flush()
    if tail is not None:
        yield tail.decode("utf-8", "replace")
