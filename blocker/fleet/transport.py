"""The small interface a fleet transport offers. Redis is the one built (redis_transport.py);
a NATS JetStream or PostgreSQL transport would implement the same four calls.

A cursor is the transport's opaque position in the event log ("<ms>-<seq>" for Redis): the
daemon saves it in the sqlite state with the bans it applied, and hands it back at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from blocker.fleet.events import FleetEvent

START: str = "0-0"  # before the first event


class TransportError(Exception):
    """The transport is unreachable or refused a command: retry later, with backoff."""


@dataclass(frozen=True)
class Snapshot:
    """Every active ban (as stored: signed values, checked by the caller) and the cursor
    the log had when it was read: reading on from there misses nothing and repeats nothing."""

    values: list[object]
    cursor: str


class Transport(Protocol):
    def publish(self, events: Sequence[FleetEvent], now: float) -> None:
        """Append `events` in order to the log and update the snapshot, all or nothing."""

    def resume(self, cursor: str | None) -> Snapshot | None:
        """None when reading on from `cursor` is complete; a snapshot to load first when the
        host has no cursor (a cold start) or the log was trimmed past it."""

    def read(self, cursor: str, block: float, count: int) -> list[tuple[str, object]]:
        """Up to `count` entries (cursor, fields) after `cursor`, waiting up to `block` s."""

    def close(self) -> None: ...
