"""Persistent state in sqlite: ban history, active bans, log positions.

WAL journaling: a `kill -9` at any moment leaves the last committed transaction intact. The
daemon commits bans together with the log position of the lines that caused them (one
`with state.transaction():` around both), so a restart neither replays those lines nor loses
them. Writes outside a transaction block commit at once.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

from blocker.records import Decision, Network, network_text
from blocker.state_schema import StateError as StateError  # noqa: PLC0414 (for callers)
from blocker.state_schema import migrate


@dataclass(frozen=True)
class BanRow:
    target: Network
    jail: str
    at: float
    expires: float  # math.inf = permanent
    score: float
    filters: tuple[str, ...]
    reason: str
    origin: str

    @property
    def target_text(self) -> str:
        return network_text(self.target)


class State:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / "state.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is crash-safe for process death (kill -9); only power loss may drop the
        # newest transaction, never corrupt the file.
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            migrate(self.db, str(self.path))  # the tables and their versions: state_schema.py
        except BaseException:
            self.db.close()
            raise
        self._in_tx = False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One sqlite transaction around the block: committed when the block ends, rolled back
        when it raises. A block inside another joins it: the outermost one commits."""
        if self._in_tx:
            yield
            return
        self.db.execute("BEGIN")
        self._in_tx = True
        try:
            yield
        except BaseException:
            self._in_tx = False
            self.db.execute("ROLLBACK")
            raise
        self._in_tx = False
        self.db.execute("COMMIT")

    def record_bans(
        self,
        decisions: Iterable[Decision],
        origin: str = "auto",
        texts: Sequence[str] | None = None,
    ) -> None:
        """`texts`: the decisions' target_text when the caller already has it (bursts)."""
        decisions = list(decisions)
        names = texts if texts is not None else [d.target_text for d in decisions]
        rows = [
            (
                name,
                d.jail,
                d.at,
                None if math.isinf(d.duration) else d.at + d.duration,
                d.score,
                ",".join(d.filters),
                d.reason,
                origin,
            )
            for name, d in zip(names, decisions, strict=True)
        ]
        self.db.executemany(
            "INSERT INTO bans (target, jail, at, expires, score, filters, reason, origin) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def lift(self, target: Network, now: float) -> int:
        """Mark active bans of `target` lifted; returns how many were active."""
        cursor = self.db.execute(
            "UPDATE bans SET lifted = ? WHERE target = ? AND lifted IS NULL "
            "AND (expires IS NULL OR expires > ?)",
            (now, network_text(target), now),
        )
        return cursor.rowcount

    def active(self, now: float) -> list[BanRow]:
        """The longest-lasting unlifted, unexpired ban of every target. An admin's ban that
        replaces earlier ones lifts them first (Service.cmd_ban), so it decides even if shorter."""
        rows = self.db.execute(
            "SELECT target, jail, at, expires, score, filters, reason, origin FROM bans "
            "WHERE lifted IS NULL AND (expires IS NULL OR expires > ?) ORDER BY at, id",
            (now,),
        )
        longest: dict[str, BanRow] = {}
        for row in rows:
            ban = _row(row)
            current = longest.get(row[0])
            if current is None or ban.expires >= current.expires:
                longest[row[0]] = ban
        return list(longest.values())

    def history(self, since: float) -> list[tuple[Network, float]]:
        """(target, at) of every automatic or manual ban since `since` (for ban-time growth)."""
        rows = self.db.execute("SELECT target, at FROM bans WHERE at >= ? ORDER BY at", (since,))
        return [(ip_network(target, strict=False), at) for target, at in rows]

    def prune(self, before: float) -> None:
        """Forget bans that ended before `before` (older than every history window)."""
        self.db.execute("DELETE FROM bans WHERE COALESCE(lifted, expires) < ?", (before,))

    def save_position(self, source: str, data: dict[str, object]) -> None:
        self.db.execute(
            "INSERT INTO positions (source, data) VALUES (?, ?) "
            "ON CONFLICT(source) DO UPDATE SET data = excluded.data",
            (source, json.dumps(data)),
        )

    def position(self, source: str) -> dict[str, object] | None:
        row = self.db.execute("SELECT data FROM positions WHERE source = ?", (source,)).fetchone()
        if row is None:
            return None
        try:
            data = json.loads(row[0])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def close(self) -> None:
        self.db.close()


def _row(row: tuple[str, str, float, float | None, float, str, str, str]) -> BanRow:
    target, jail, at, expires, score, filters, reason, origin = row
    return BanRow(
        target=ip_network(target, strict=False),
        jail=jail,
        at=at,
        expires=math.inf if expires is None else expires,
        score=score,
        filters=tuple(f for f in filters.split(",") if f),
        reason=reason,
        origin=origin,
    )
