"""The sqlite state's tables, versioned by `PRAGMA user_version`, and their ordered migrations.

MIGRATIONS[i] takes a database from version i to i + 1. migrate() runs the missing ones at
open, all inside one write transaction: a step that fails leaves the file as it was, and a
file from a newer blocker (a version this list does not reach) is refused, never guessed at.

Version 0 is a file from before versions existed (the tables of step 1, user_version 0) or a
new, empty file. Step 1 creates its tables where they are missing, so both reach version 1.

Adding a migration (the fleet outbox, for example): append one step, never edit a released one,

    MIGRATIONS = (_V1, sql(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY, ...)",
        "CREATE INDEX outbox_sent ON outbox(sent)",
    ))

and in tests/test_state_schema.py copy the exact CREATE statements of the version it upgrades
from into a fixture and migrate a file built from them (as V0_SCHEMA there does for version 0).
A step may be any function of the connection, for data that SQL alone cannot move.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


class StateError(Exception):
    """The state file cannot be used (written by a newer blocker, or a migration failed)."""


def sql(*statements: str) -> Migration:
    """A step of plain SQL statements (one each: executescript would commit mid-migration)."""

    def step(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return step


_V1 = sql(
    """CREATE TABLE IF NOT EXISTS bans (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        jail TEXT NOT NULL,
        at REAL NOT NULL,
        expires REAL,              -- NULL = permanent
        score REAL NOT NULL DEFAULT 0,
        filters TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL DEFAULT 'auto',   -- 'auto' (scoring) or 'manual' (blockerctl ban)
        lifted REAL                -- set by an unban before expiry
    )""",
    "CREATE INDEX IF NOT EXISTS bans_target ON bans(target)",
    "CREATE INDEX IF NOT EXISTS bans_expires ON bans(expires)",
    """CREATE TABLE IF NOT EXISTS positions (
        source TEXT PRIMARY KEY,
        data TEXT NOT NULL
    )""",
)

# Version 2: the fleet's outbox, bans to publish, in order, committed with the bans themselves.
_V2 = sql(
    """CREATE TABLE outbox (
        -- publish order; AUTOINCREMENT: an id is never reused once its row is sent and gone
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        payload BLOB NOT NULL     -- the event's JSON (blocker/fleet/events.py), signed when sent
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2)


def version(db: sqlite3.Connection) -> int:
    row = db.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(
    db: sqlite3.Connection, where: str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring `db` (opened with isolation_level=None) to len(migrations); returns the version
    it had. Raises StateError for a newer file or a failed step, with nothing changed."""
    db.execute("BEGIN IMMEDIATE")  # the write lock first: two openers cannot both migrate
    try:
        found = version(db)
        if not 0 <= found <= len(migrations):
            raise StateError(
                f"{where}: state schema version {found} is not one this blocker knows (0 to "
                f"{len(migrations)}); a newer blocker wrote it: upgrade blocker, or move the "
                "file away to start with an empty state (bans in the kernel stay)"
            )
        for number in range(found, len(migrations)):
            try:
                migrations[number](db)
            except sqlite3.Error as exc:
                raise StateError(
                    f"{where}: migrating the state schema from version {number} "
                    f"to {number + 1} failed: {exc}"
                ) from exc
            db.execute(f"PRAGMA user_version = {number + 1:d}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found
