"""Replay a log file offline through the configured jails (`blockerctl test`)."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from blocker.config import Config
from blocker.pipeline import MAX_LINE, LineStats, Pipeline
from blocker.records import Decision

CHUNK = 1 << 20


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


def iso_time(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "invalid-time"


def replay_file(path: Path, config: Config) -> ReplayResult:
    """Raises OSError when the file cannot be read; bad content never raises."""
    tune_gc()
    with path.open("rb") as stream:
        # Year-less syslog timestamps are placed relative to when the file was last written.
        reference = os.fstat(stream.fileno()).st_mtime
        pipeline = Pipeline(config)
        decisions: list[Decision] = []
        for text in read_text_chunks(stream):
            decisions.extend(pipeline.feed_text(text, reference))
    return ReplayResult(pipeline.stats, decisions, pipeline.hit_counts())


def _cut_long_lines(data: bytes) -> bytes:
    """`data` (whole lines) with every line longer than MAX_LINE cut to MAX_LINE."""
    pos = 0
    size = len(data)
    pieces: list[bytes] = []
    start = 0
    while pos < size:
        # Some newline within the next MAX_LINE + 1 bytes means no overlong line starts here:
        # jump past the last one, so normal text costs one search per ~MAX_LINE bytes.
        window_end = min(size, pos + MAX_LINE + 1)
        newline = data.rfind(b"\n", pos, window_end)
        if newline >= 0:
            pos = newline + 1
            continue
        end = data.find(b"\n", pos)
        end = size if end < 0 else end
        pieces += [data[start : pos + MAX_LINE]]
        start = pos = end
    if not pieces:
        return data
    pieces.append(data[start:])
    return b"".join(pieces)


def tune_gc() -> None:
    """The pipeline allocates many short-lived acyclic tuples: with the default thresholds
    the cyclic collector runs thousands of times per second for nothing (~10% of the time).
    Objects alive now (config, compiled filters) are moved out of its sight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def read_text_chunks(stream: BinaryIO, chunk_size: int = CHUNK) -> Iterator[str]:
    """Complete lines, decoded leniently, in ~chunk_size pieces; overlong lines are cut.

    Memory stays bounded by chunk_size + MAX_LINE whatever the input holds.
    """
    pending = b""
    skipping = False  # inside a line already cut at MAX_LINE: drop bytes up to its newline
    while block := stream.read(chunk_size):
        if skipping:
            newline = block.find(b"\n")
            if newline < 0:
                continue
            block = block[newline + 1 :]
            skipping = False
        data = pending + block
        cut = data.rfind(b"\n")
        if cut >= 0:
            pending = data[cut + 1 :]
            yield _cut_long_lines(data[: cut + 1]).decode("utf-8", "replace")
        else:
            pending = data
        if len(pending) > MAX_LINE:
            yield pending[:MAX_LINE].decode("utf-8", "replace") + "\n"
            pending = b""
            skipping = True
    if pending:
        yield pending.decode("utf-8", "replace")
