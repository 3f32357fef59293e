"""state.py: ban rows, positions, and crash safety under SIGKILL."""

from __future__ import annotations

import math
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from blocker.records import Decision, Network
from blocker.state import State

T0 = 1_800_000_000.0
REPO = Path(__file__).resolve().parent.parent


def n(text: str) -> Network:
    return ip_network(text)


def ban(
    target: str,
    at: float,
    duration: float,
    jail: str = "probes",
    filters: tuple[str, ...] = ("unsolicited_synack",),
) -> Decision:
    return Decision(
        target=n(target),
        jail=jail,
        at=at,
        duration=duration,
        score=5.5,
        filters=filters,
        reason=f"test ban of {target}",
    )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    st = State(tmp_path / "state")
    yield st
    st.close()


def record(state: State, *decisions: Decision, origin: str = "auto") -> None:
    with state.transaction():
        state.record_bans(decisions, origin)


def test_files_are_private(tmp_path: Path) -> None:
    st = State(tmp_path / "deep" / "state")
    st.close()
    assert stat.S_IMODE(os.stat(tmp_path / "deep" / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "deep" / "state" / "state.sqlite").st_mode) == 0o600


def test_a_recorded_ban_is_active_until_it_expires(state: State) -> None:
    record(state, ban("203.0.113.7", T0, 600, filters=("a", "b")), origin="manual")
    (row,) = state.active(T0 + 1)
    assert row.target == n("203.0.113.7")
    assert row.target_text == "203.0.113.7"
    assert (row.jail, row.at, row.expires, row.score) == ("probes", T0, T0 + 600, 5.5)
    assert (row.filters, row.reason, row.origin) == (
        ("a", "b"),
        "test ban of 203.0.113.7",
        "manual",
    )
    assert state.active(T0 + 599.9) != []
    assert state.active(T0 + 600) == []


def test_active_gives_one_row_per_target(state: State) -> None:
    record(
        state,
        ban("203.0.113.7", T0, 600),
        ban("203.0.113.7", T0 + 300, 1200),
        ban("2001:db8::/64", T0, 6000, "scans"),
        ban("203.0.113.8", T0, 600),
    )
    rows = {r.target_text: r for r in state.active(T0 + 400)}
    assert set(rows) == {"203.0.113.7", "2001:db8::/64", "203.0.113.8"}
    assert rows["203.0.113.7"].at == T0 + 300
    assert rows["203.0.113.7"].expires == T0 + 1500
    assert {r.target_text for r in state.active(T0 + 700)} == {"203.0.113.7", "2001:db8::/64"}


def test_a_permanent_ban_never_expires(state: State) -> None:
    record(state, ban("203.0.113.0/24", T0, math.inf))
    (row,) = state.active(T0 + 1e12)
    assert row.expires == math.inf
    record(state, ban("203.0.113.0/24", T0 + 10, 600))
    (row,) = state.active(T0 + 20)
    assert row.expires == math.inf  # a later, shorter automatic ban does not end it


def test_lift_ends_active_bans_only(state: State) -> None:
    record(
        state,
        ban("203.0.113.7", T0, 600),
        ban("203.0.113.7", T0 + 100, 1200),
        ban("203.0.113.8", T0 - 1000, 600),
    )
    with state.transaction():
        assert state.lift(n("203.0.113.7"), T0 + 200) == 2
        assert state.lift(n("203.0.113.8"), T0 + 200) == 0  # long expired: nothing to lift
        assert state.lift(n("198.51.100.1"), T0 + 200) == 0
    assert state.active(T0 + 200) == []
    # Lifted bans still count as history (ban-time growth).
    assert [t for t, _ in state.history(T0 - 2000)] == [
        n("203.0.113.8"),
        n("203.0.113.7"),
        n("203.0.113.7"),
    ]
    record(state, ban("203.0.113.7", T0 + 300, 60))
    assert [r.at for r in state.active(T0 + 301)] == [T0 + 300]


def test_history_since(state: State) -> None:
    record(
        state,
        ban("203.0.113.7", T0, 600),
        ban("2001:db8::1", T0 + 10, 600),
        ban("198.51.100.0/24", T0 + 20, math.inf),
    )
    assert state.history(T0 + 10) == [(n("2001:db8::1"), T0 + 10), (n("198.51.100.0/24"), T0 + 20)]
    assert state.history(T0 + 21) == []


def test_prune_drops_bans_that_ended_before(state: State) -> None:
    record(
        state,
        ban("203.0.113.1", T0, 600),  # ends T0+600
        ban("203.0.113.2", T0, 6000),  # ends T0+6000
        ban("203.0.113.3", T0, math.inf),  # never ends
        ban("203.0.113.4", T0, math.inf),
    )  # lifted at T0+100
    with state.transaction():
        state.lift(n("203.0.113.4"), T0 + 100)
        state.prune(T0 + 1000)
    assert [t.compressed for t, _ in state.history(0)] == ["203.0.113.2/32", "203.0.113.3/32"]


def test_rows_survive_reopening(tmp_path: Path) -> None:
    st = State(tmp_path)
    record(st, ban("203.0.113.7", T0, 600))
    st.save_position("kernlog:/var/log/kern.log", {"inode": 5, "offset": 10, "fingerprint": "x"})
    st.close()
    st = State(tmp_path)
    assert [r.target_text for r in st.active(T0)] == ["203.0.113.7"]
    assert st.position("kernlog:/var/log/kern.log") == {
        "inode": 5,
        "offset": 10,
        "fingerprint": "x",
    }
    st.close()


def test_a_transaction_inside_another_joins_it_and_the_outer_one_commits(state: State) -> None:
    with state.transaction():
        with state.transaction():
            state.record_bans([ban("203.0.113.7", T0, 600)])
        state.save_position("kernlog:/var/log/kern.log", {"offset": 1})
        # Not committed yet: a second connection does not see the ban.
        other = sqlite3.connect(state.path)
        assert other.execute("SELECT COUNT(*) FROM bans").fetchone() == (0,)
    assert other.execute("SELECT COUNT(*) FROM bans").fetchone() == (1,)
    other.close()
    assert len(state.active(T0)) == 1


def test_a_transaction_that_raises_leaves_nothing_behind(state: State) -> None:
    """Bans and the log position go together or not at all."""
    with pytest.raises(RuntimeError), state.transaction():
        state.record_bans([ban("203.0.113.7", T0, 600)])
        state.save_position("kernlog:/var/log/kern.log", {"offset": 1})
        raise RuntimeError("the daemon died between the two")
    assert state.active(T0) == []
    assert state.position("kernlog:/var/log/kern.log") is None
    record(state, ban("203.0.113.8", T0, 600))  # and the next transaction works
    assert [r.target_text for r in state.active(T0)] == ["203.0.113.8"]


def test_positions_round_trip(state: State) -> None:
    assert state.position("journald") is None
    cursor = {"cursor": "s=abc;i=1f;b=0", "realtime": 1_700_000_000_000_000}
    state.save_position("journald", cursor)
    state.save_position("kmsg", {"seq": 42, "boot_id": "b"})
    assert state.position("journald") == cursor
    state.save_position("journald", {"cursor": "s=abc;i=20"})
    assert state.position("journald") == {"cursor": "s=abc;i=20"}
    assert state.position("kmsg") == {"seq": 42, "boot_id": "b"}


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]", '"text"', "null", ""])
def test_a_corrupt_position_reads_as_none(state: State, stored: str) -> None:
    state.save_position("kmsg", {"seq": 1})
    state.db.execute("UPDATE positions SET data = ? WHERE source = 'kmsg'", (stored,))
    assert state.position("kmsg") is None


# -- crash safety -------------------------------------------------------------------------

ROWS_PER_COMMIT = 25

# Writes like the daemon: a batch of bans and the log position in one transaction, then says
# on stdout how many rows are committed.
WRITER = f"""
import sys
from ipaddress import IPv6Network
from pathlib import Path
from blocker.records import Decision
from blocker.state import State

state = State(Path(sys.argv[1]))
count = state.db.execute("SELECT COUNT(*) FROM bans").fetchone()[0]
while True:
    with state.transaction():
        batch = []
        for _ in range({ROWS_PER_COMMIT}):
            count += 1
            target = IPv6Network(((0x20010DB8 << 96) + count, 128))
            batch.append(Decision(target=target, jail="probes", at=float(count), duration=600.0,
                                  score=5.0, filters=("unsolicited_synack",), reason="x" * 200))
        state.record_bans(batch)
        state.save_position("kernlog:/var/log/kern.log", {{"offset": count}})
    print(count, flush=True)
"""


def _run_writer_until_killed(state_dir: Path, rng: random.Random) -> int:
    """Start a writer, SIGKILL it after a random number of commits plus a random instant;
    return the highest row count it reported committed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state_dir)], stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    reported = 0
    commits_wanted = rng.randint(1, 40)
    commits_seen = 0
    deadline = time.monotonic() + 30
    try:
        while commits_seen < commits_wanted and time.monotonic() < deadline:
            if not select.select([proc.stdout], [], [], 1.0)[0]:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            reported = int(line)
            commits_seen += 1
        time.sleep(rng.uniform(0, 0.005))  # lands anywhere inside the next transactions
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the writer died before it was killed"
    for line in rest.split():
        reported = max(reported, int(line))
    return reported


def test_sigkill_at_random_moments_never_corrupts_or_loses_commits(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    committed = 0
    for _ in range(8):
        committed = max(committed, _run_writer_until_killed(tmp_path, rng))
        db = sqlite3.connect(tmp_path / "state.sqlite")
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            count, low, high = db.execute("SELECT COUNT(*), MIN(at), MAX(at) FROM bans").fetchone()
        finally:
            db.close()
        assert count >= committed
        assert count % ROWS_PER_COMMIT == 0, "a transaction was half applied"
        if count:
            assert (low, high) == (1.0, float(count))
        st = State(tmp_path)
        try:
            position = st.position("kernlog:/var/log/kern.log")
            assert position == ({"offset": count} if count else None)
            assert len(st.active(0)) == count
        finally:
            st.close()
        committed = count
    assert committed >= ROWS_PER_COMMIT
