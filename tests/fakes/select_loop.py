"""A one-source stand-in for blockerd's selectors loop, bounded by a timeout."""

from __future__ import annotations

import select
import time

from blocker.sources.base import Source, SourceLine


def collect(source: Source, count: int, timeout: float = 5.0) -> list[SourceLine]:
    """Read until `count` lines arrived or `timeout` seconds passed."""
    got: list[SourceLine] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([source.fileno()], [], [], remaining)
        if ready:
            got += source.read()
    return got


def settle(source: Source, quiet: float = 0.2) -> list[SourceLine]:
    """Whatever else the source delivers until it stays unreadable for `quiet` seconds."""
    got: list[SourceLine] = []
    while select.select([source.fileno()], [], [], quiet)[0]:
        got += source.read()
    return got
