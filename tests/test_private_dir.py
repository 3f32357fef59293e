"""State and socket directories another user could control are refused; nothing in the state
is opened or chmod-ed through a symlink (issue 10, part 4). Real files, real sqlite."""

from __future__ import annotations

import os
import selectors
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocker.control import ControlServer
from blocker.private_dir import UnsafePathError
from blocker.state import State

NOBODY = 65534


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A copy of a precious file (as /etc/passwd was in the review), mode 0644."""
    path = tmp_path / "passwd-copy"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="blk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_new_state_dir_and_file_are_private(tmp_path: Path) -> None:
    state = State(tmp_path / "state")
    state.close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "state.sqlite").stat().st_mode & 0o777 == 0o600


def test_an_existing_state_file_is_made_0600_and_reopened(tmp_path: Path) -> None:
    State(tmp_path / "state").close()
    (tmp_path / "state" / "state.sqlite").chmod(0o644)
    State(tmp_path / "state").close()
    assert (tmp_path / "state" / "state.sqlite").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_a_state_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(mode)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        State(state_dir)
    assert not (state_dir / "state.sqlite").exists()


@pytest.mark.root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}, not root"):
        State(state_dir)


def test_a_state_dir_under_a_parent_others_may_write_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # another user could rename state/ away and put their own in place
    with pytest.raises(UnsafePathError, match=r"writable by group or others .* not sticky"):
        State(parent / "state")
    parent.chmod(0o1777)  # sticky, as /tmp: only the owner may rename its entries
    State(parent / "state").close()


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        State(tmp_path / "state")
    assert list(real.iterdir()) == []


def test_a_planted_state_file_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "state.sqlite").symlink_to(victim)
    before = (victim.read_bytes(), victim.stat().st_mode)
    with pytest.raises(UnsafePathError, match=r"state\.sqlite is a symlink"):
        State(state_dir)
    assert (victim.read_bytes(), victim.stat().st_mode) == before


def test_a_dangling_state_file_symlink_is_refused_and_nothing_created(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    target = tmp_path / "created-by-blockerd"
    (state_dir / "state.sqlite").symlink_to(target)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        State(state_dir)
    assert not target.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_planted_sqlite_side_file_symlink_is_refused(
    tmp_path: Path, victim: Path, suffix: str
) -> None:
    state_dir = tmp_path / "state"
    State(state_dir).close()
    (state_dir / f"state.sqlite{suffix}").symlink_to(victim)
    before = victim.read_bytes()
    with pytest.raises(UnsafePathError, match="is a symlink"):
        State(state_dir)
    assert victim.read_bytes() == before


def test_a_state_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.mkfifo(state_dir / "state.sqlite")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        State(state_dir)


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_socket_dir_writable_by_others_is_refused(short_dir: Path, mode: int) -> None:
    short_dir.chmod(mode)
    selector = selectors.DefaultSelector()
    with pytest.raises(UnsafePathError, match=r"socket dir .* writable by group or others"):
        ControlServer(str(short_dir / "ctl.sock"), selector, dict)
    assert not (short_dir / "ctl.sock").exists()
    selector.close()


@pytest.mark.root
def test_a_socket_dir_owned_by_another_user_is_refused(short_dir: Path) -> None:
    os.chown(short_dir, NOBODY, NOBODY)
    selector = selectors.DefaultSelector()
    with pytest.raises(UnsafePathError, match="owned by uid"):
        ControlServer(str(short_dir / "ctl.sock"), selector, dict)
    selector.close()


def test_a_missing_socket_dir_is_created_private(short_dir: Path) -> None:
    selector = selectors.DefaultSelector()
    server = ControlServer(str(short_dir / "run" / "ctl.sock"), selector, dict)
    try:
        assert (short_dir / "run").stat().st_mode & 0o777 == 0o700
        assert (short_dir / "run" / "ctl.sock").lstat().st_mode & 0o777 == 0o600
    finally:
        server.close()
        selector.close()
