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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

from blocker.private_dir import create_private_file, open_private_dir, regular_or_missing
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
    def __init__(self, state_dir: Path, on_commit: Callable[[float], None] | None = None) -> None:
        """UnsafePathError (an OSError) when the state dir or a file sqlite would open in it
        could be controlled by another user (see blocker.private_dir). `on_commit`, when
        given, is told how long each COMMIT took (the metrics' sqlite commit histogram)."""
        self.path = state_dir / "state.sqlite"
        dir_fd = open_private_dir(state_dir, "state dir")
        try:
            create_private_file(dir_fd, self.path.name, state_dir)
            for suffix in ("-wal", "-shm", "-journal"):
                regular_or_missing(dir_fd, self.path.name + suffix, state_dir)
        finally:
            os.close(dir_fd)
        # By path (sqlite has no descriptor API): the checked directory is private, so what
        # was checked above is what sqlite opens.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
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
        self.on_commit = on_commit

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
        if self.on_commit is None:
            self.db.execute("COMMIT")
        else:
            started = time.perf_counter()
            self.db.execute("COMMIT")
            self.on_commit(time.perf_counter() - started)

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

    def active_rows(self, now: float) -> Iterator[tuple[str, str, float]]:
        """(target text, jail, expiry; math.inf = permanent) of every unlifted, unexpired ban,
        in no order and unparsed: a restart reads a million of them (ActiveBans keeps the
        longest of each target). One pass over the table: after a flood most rows are active,
        and walking them in expiry-index order costs 5x more."""
        rows = self.db.execute(
            "SELECT target, jail, expires FROM bans NOT INDEXED "
            "WHERE lifted IS NULL AND (expires IS NULL OR expires > ?)",
            (now,),
        )
        for target, jail, expires in rows:
            yield target, jail, math.inf if expires is None else expires

    def reasons(self, targets: Sequence[str], now: float) -> dict[str, tuple[str, str, str]]:
        """target text -> (jail, reason, origin) of its longest active ban, for the given
        targets."""
        found: dict[str, tuple[str, str, str, float]] = {}
        for start in range(0, len(targets), 500):  # SQLite's bound-parameter limit is 999+
            chunk = targets[start : start + 500]
            marks = ",".join("?" * len(chunk))  # only "?" marks are formatted into the SQL
            rows = self.db.execute(
                "SELECT target, jail, reason, origin, COALESCE(expires, 9e999) FROM bans "
                f"WHERE target IN ({marks}) AND lifted IS NULL "
                "AND (expires IS NULL OR expires > ?)",
                (*chunk, now),
            )
            for target, jail, reason, origin, expires in rows:
                if target not in found or expires >= found[target][3]:
                    found[target] = (jail, reason, origin, expires)
        return {
            target: (jail, reason, origin) for target, (jail, reason, origin, _) in found.items()
        }

    def history(self, since: float) -> list[tuple[Network, float]]:
        """(target, at) of every automatic or manual ban since `since` (for ban-time growth);
        other hosts' bans (origin fleet:HOST) never make this host's bans longer."""
        rows = self.db.execute(
            "SELECT target, at FROM bans WHERE at >= ? AND origin NOT LIKE 'fleet:%' ORDER BY at",
            (since,),
        )
        return [(ip_network(target, strict=False), at) for target, at in rows]

    def history_rows(self, since: float, skip: int = 0) -> Iterator[tuple[str, float]]:
        """(target text, at) of every ban since `since`, oldest first (equal times in the order
        they were recorded), unparsed, but the `skip` oldest; other hosts' bans (origin
        fleet:HOST) never make this host's bans longer."""
        yield from self.db.execute(
            "SELECT target, at FROM bans WHERE at >= ? AND origin NOT LIKE 'fleet:%' "
            "ORDER BY at, rowid LIMIT -1 OFFSET ?",
            (since, max(0, skip)),
        )

    def history_count(self, since: float) -> int:
        """How many rows history_rows(since) yields (one pass, no sort)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM bans WHERE at >= ? AND origin NOT LIKE 'fleet:%'", (since,)
        ).fetchone()
        return int(row[0])

    def prune(self, before: float) -> None:
        """Forget bans that ended before `before` (older than every history window)."""
        self.db.execute("DELETE FROM bans WHERE COALESCE(lifted, expires) < ?", (before,))

    def held(self, now: float) -> list[tuple[Network, float]]:
        """(target, expires) of remote bans an admin lifted here that have not yet expired:
        the fleet does not ban these targets on this host again until then."""
        rows = self.db.execute(
            "SELECT target, MAX(COALESCE(expires, 1e308)) FROM bans WHERE origin LIKE 'fleet:%' "
            "AND lifted IS NOT NULL AND (expires IS NULL OR expires > ?) GROUP BY target",
            (now,),
        )
        return [
            (ip_network(target, strict=False), math.inf if expires >= 1e308 else expires)
            for target, expires in rows
        ]

    def forget_remote(self, target: Network) -> None:
        """A fleet-wide unban: other hosts' bans of `target` go (they never count for ban-time
        growth, and a lifted one would read as a local admin's hold)."""
        self.db.execute(
            "DELETE FROM bans WHERE target = ? AND origin LIKE 'fleet:%'", (network_text(target),)
        )

    # -- the fleet's outbox: events to publish, in order ------------------------------------
    def queue_outbox(self, payloads: Iterable[bytes]) -> None:
        self.db.executemany(
            "INSERT INTO outbox (payload) VALUES (?)", [(payload,) for payload in payloads]
        )

    def outbox(self, after: int, limit: int = 100_000) -> list[tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT id, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [(int(row_id), bytes(payload)) for row_id, payload in rows]

    def sent_outbox(self, upto: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id <= ?", (upto,))

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
