"""state_schema.py: PRAGMA user_version and ordered migrations, from files older blockers wrote."""

from __future__ import annotations

import json
import sqlite3
from ipaddress import ip_network
from pathlib import Path

import pytest
from daemon_fixture import running_blockerd

from blocker.state import State
from blocker.state_schema import MIGRATIONS, StateError, migrate, sql, version

T0 = 1_800_000_000.0

# The exact schema of state.sqlite before it had a version (blocker/state.py up to 7b02ffe),
# copied here on purpose: it must not follow later edits of the migrations.
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
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
);
CREATE INDEX IF NOT EXISTS bans_target ON bans(target);
CREATE INDEX IF NOT EXISTS bans_expires ON bans(expires);
CREATE TABLE IF NOT EXISTS positions (
    source TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""


def v0_state(state_dir: Path) -> Path:
    """A state directory as blocker wrote it before versions: WAL, one ban, one position."""
    state_dir.mkdir(mode=0o700)
    path = state_dir / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_SCHEMA)
    db.execute(
        "INSERT INTO bans (target, jail, at, expires, score, filters, reason, origin) "
        "VALUES ('203.0.113.7/32', 'probes', ?, ?, 5.5, 'unsolicited_synack', "
        "'old ban', 'auto')",
        (T0, T0 + 600),
    )
    db.execute(
        "INSERT INTO positions (source, data) VALUES ('kernlog', ?)",
        (json.dumps({"inode": 7, "offset": 1234}),),
    )
    db.commit()
    db.close()
    return path


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return version(db)
    finally:
        db.close()


def tables(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT type, name FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        db.close()


def test_a_state_file_from_before_versions_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = v0_state(tmp_path / "state")
    assert user_version(path) == 0
    state = State(tmp_path / "state")
    try:
        [row] = state.active(T0 + 1)
        assert (row.target, row.jail, row.reason) == (
            ip_network("203.0.113.7/32"),
            "probes",
            "old ban",
        )
        assert state.position("kernlog") == {"inode": 7, "offset": 1234}
    finally:
        state.close()
    assert user_version(path) == len(MIGRATIONS)


def test_a_migrated_file_has_the_tables_of_a_new_one(tmp_path: Path) -> None:
    old = v0_state(tmp_path / "old")
    State(tmp_path / "old").close()
    State(tmp_path / "new").close()
    new = tmp_path / "new" / "state.sqlite"
    assert tables(old) == tables(new)
    assert user_version(old) == user_version(new) == len(MIGRATIONS)


def test_a_version_1_file_gets_the_fleet_outbox_and_keeps_its_bans(tmp_path: Path) -> None:
    path = v0_state(tmp_path / "state")  # version 1 has exactly version 0's tables
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    state = State(tmp_path / "state")
    try:
        assert [row.reason for row in state.active(T0)] == ["old ban"]
        assert state.outbox(0) == []
        with state.transaction():
            state.queue_outbox([b'{"a":1}', b'{"b":2}'])
        assert [payload for _, payload in state.outbox(0)] == [b'{"a":1}', b'{"b":2}']
        state.sent_outbox(state.outbox(0)[-1][0])
        state.queue_outbox([b'{"c":3}'])
        assert [row_id for row_id, _ in state.outbox(0)] == [3], "ids are never reused"
    finally:
        state.close()
    assert user_version(path) == len(MIGRATIONS) == 2


def test_opening_again_changes_nothing(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    assert migrate(db, "s") == 0
    assert migrate(db, "s") == len(MIGRATIONS)
    db.close()


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = v0_state(tmp_path / "state")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    before = path.read_bytes()
    newer, known = len(MIGRATIONS) + 1, len(MIGRATIONS)
    with pytest.raises(
        StateError,
        match=rf"state schema version {newer} is not one this "
        rf"blocker knows \(0 to {known}\); a newer blocker "
        "wrote it",
    ):
        State(tmp_path / "state")
    assert path.read_bytes() == before
    assert user_version(path) == len(MIGRATIONS) + 1


def test_blockerd_refuses_a_newer_state_file_with_a_clear_error() -> None:
    with running_blockerd(start=False) as daemon:
        daemon.state.mkdir(mode=0o700)
        db = sqlite3.connect(daemon.state / "state.sqlite")
        db.execute("PRAGMA user_version = 99")
        db.close()
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=30) == 1
        daemon.stop()
        assert "cannot start: " in daemon.stderr()
        assert "state schema version 99 is not one this blocker knows" in daemon.stderr()
        assert "Traceback" not in daemon.stderr()


def test_a_failing_step_rolls_back_every_step_before_it(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    steps = (sql("CREATE TABLE a (x)"), sql("CREATE TABLE b (x)", "INSERT INTO nowhere VALUES (1)"))
    with pytest.raises(StateError, match="from version 1 to 2 failed: no such table: nowhere"):
        migrate(db, "s", steps)
    assert version(db) == 0
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert not db.in_transaction
    db.close()


def test_steps_run_in_order_from_the_file_s_version(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    ran: list[int] = []
    steps = [lambda _db, i=i: ran.append(i) for i in range(3)]
    db.execute("PRAGMA user_version = 1")
    assert migrate(db, "s", steps) == 1
    assert ran == [1, 2]
    assert version(db) == 3
    db.close()
