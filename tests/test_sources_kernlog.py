"""kern.log follower: scripted directory events (fake notifier) and real inotify on tmp_path."""

from __future__ import annotations

import os
import select
import shutil
from pathlib import Path

import pytest
from fakes import select_loop
from fakes.dir_watcher import FakeDirectoryWatcher

from blocker.sources import open_source
from blocker.sources.base import MAX_LINE_BYTES, SourceError, SourceLine
from blocker.sources.dirwatch import (
    IN_CREATE,
    IN_DELETE_SELF,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
)
from blocker.sources.kernlog import READ_BUDGET, KernlogSource, file_fingerprint

# -- helpers ------------------------------------------------------------------


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def numbered(first: int, last: int, prefix: str = "line") -> bytes:
    return b"".join(f"{prefix} {n}\n".encode() for n in range(first, last))


def texts(lines: list[SourceLine]) -> list[str]:
    return [line.text for line in lines]


def collect(source: KernlogSource, count: int) -> list[str]:
    return texts(select_loop.collect(source, count))


def settle(source: KernlogSource) -> list[str]:
    return texts(select_loop.settle(source))


def fake_source(path: Path, **kwargs: object) -> tuple[KernlogSource, FakeDirectoryWatcher]:
    watchers: list[FakeDirectoryWatcher] = []

    def factory(directory: str) -> FakeDirectoryWatcher:
        watchers.append(FakeDirectoryWatcher(directory))
        return watchers[0]

    source = KernlogSource(str(path), watcher_factory=factory, **kwargs)  # type: ignore[arg-type]
    return source, watchers[0]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "kern.log"
    path.write_bytes(numbered(0, 3, "old"))
    return path


# -- unit tests with the fake notifier ----------------------------------------


def test_starts_at_end_without_replaying_history(log: Path) -> None:
    source, watcher = fake_source(log)
    append(log, b"new 1\n")
    watcher.push("kern.log")
    assert texts(source.read()) == ["new 1"]
    assert source.health()["state"] == "ok"
    assert watcher.wakes == []  # nothing was waiting at start


def test_from_start_reads_history(log: Path) -> None:
    source, watcher = fake_source(log, from_start=True)
    assert watcher.wakes == ["kern.log"]  # data waits: the loop is woken
    assert texts(source.read()) == ["old 0", "old 1", "old 2"]


def test_start_at_end_keeps_a_line_being_written(log: Path) -> None:
    append(log, b"half")
    source, watcher = fake_source(log)
    append(log, b" done\n")
    watcher.push("kern.log")
    assert texts(source.read()) == ["half done"]


def test_events_for_other_files_do_not_read(log: Path) -> None:
    source, watcher = fake_source(log)
    append(log, b"new\n")
    watcher.push("syslog")
    assert source.read() == []
    watcher.push("kern.log")
    assert texts(source.read()) == ["new"]


def test_queue_overflow_forces_a_look_and_is_counted(log: Path) -> None:
    source, watcher = fake_source(log)
    append(log, b"new\n")
    watcher.push("", IN_Q_OVERFLOW)
    assert texts(source.read()) == ["new"]
    assert source.health()["inotify_overflows"] == 1


def test_rotation_follows_old_file_until_new_one_has_data(log: Path) -> None:
    source, watcher = fake_source(log)
    with open(log, "ab", buffering=0) as writer:
        writer.write(b"a\n")
        log.rename(log.with_suffix(".log.1"))
        watcher.push("kern.log", IN_MOVED_FROM)
        assert texts(source.read()) == ["a"]
        log.touch()
        watcher.push("kern.log", IN_CREATE)
        writer.write(b"b\n")  # the writer has not reopened yet
        watcher.push("kern.log.1")
        assert texts(source.read()) == ["b"]
        assert source.health()["following_rotated_file"] is True
        writer.write(b"c\n")
    append(log, b"d\n")
    watcher.push("kern.log")
    assert texts(source.read()) == ["c", "d"]
    health = source.health()
    assert health["rotations"] == 1
    assert health["following_rotated_file"] is False
    assert health["inode"] == log.stat().st_ino


def test_unterminated_tail_of_rotated_file_still_counts(log: Path) -> None:
    source, watcher = fake_source(log)
    append(log, b"tail without newline")
    log.rename(log.with_suffix(".log.1"))
    log.write_bytes(b"fresh\n")
    watcher.push("kern.log", IN_CREATE)
    assert texts(source.read()) == ["tail without newline", "fresh"]


def test_partial_line_is_not_part_of_the_position(log: Path) -> None:
    source, watcher = fake_source(log)
    before = source.position()
    append(log, b"partial")
    watcher.push("kern.log")
    assert source.read() == []
    assert source.position() == before
    append(log, b" line\nnext")
    watcher.push("kern.log")
    assert texts(source.read()) == ["partial line"]
    position = source.position()
    assert position is not None
    assert position["offset"] == len(log.read_bytes()) - len(b"next")


def test_missing_file_waits_then_reads_it_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    source, watcher = fake_source(path)
    assert source.health()["state"] == "waiting"
    assert source.position() is None
    path.write_bytes(b"first\nsecond\n")
    watcher.push("kern.log", IN_CREATE)
    assert texts(source.read()) == ["first", "second"]
    assert source.health()["state"] == "ok"


def test_directory_removed_is_an_error(log: Path) -> None:
    source, watcher = fake_source(log)
    watcher.push("", IN_DELETE_SELF)
    source.read()
    assert source.health()["state"] == "error"


def test_unreadable_saved_position_starts_at_end(log: Path) -> None:
    source, _ = fake_source(log, start={"inode": True, "offset": "x"})
    assert source.health()["start"] == "end of file (saved position unreadable)"
    position = source.position()
    assert position is not None
    assert position["offset"] == log.stat().st_size


def test_saved_position_of_another_first_line_starts_at_end(log: Path) -> None:
    source, _ = fake_source(log)
    saved = source.position()
    source.close()
    # Same inode, different content: truncated and rewritten while we were down.
    log.write_bytes(b"something else entirely\n" * 5)
    source, watcher = fake_source(log, start=saved)
    assert "another first line" in str(source.health()["start"])
    assert watcher.wakes == []
    append(log, b"after\n")
    watcher.push("kern.log")
    assert texts(source.read()) == ["after"]


def test_budget_leaves_the_rest_for_a_woken_next_call(tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    line = b"x" * 99 + b"\n"
    count = 2 * READ_BUDGET // len(line) + 7
    path.write_bytes(line * count)
    source, watcher = fake_source(path, from_start=True)
    first = source.read()
    assert 0 < len(first) < count
    assert watcher.wakes == ["kern.log", "kern.log"]  # at start, and after the cut batch
    rest: list[SourceLine] = []
    while batch := source.read():
        rest += batch
    assert len(first) + len(rest) == count


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot watch"):
        KernlogSource(str(tmp_path / "nope" / "kern.log"))


def test_fifo_at_the_path_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    os.mkfifo(path)
    source, _ = fake_source(path)
    health = source.health()
    assert health["state"] == "error"
    assert "not a regular file" in str(health["last_error"])


# -- real inotify on tmp_path -------------------------------------------------


def test_real_append(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, numbered(0, 5))
        assert collect(source, 5) == [f"line {n}" for n in range(5)]
        assert settle(source) == []
    finally:
        source.close()


def test_real_partial_line_then_completion(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, b"first half")
        assert settle(source) == []
        append(log, b" second half\n")
        assert collect(source, 1) == ["first half second half"]
    finally:
        source.close()


def test_real_rename_create_rotation_mid_writes(log: Path) -> None:
    source = KernlogSource(str(log))
    rotated = log.with_suffix(".log.1")
    try:
        got: list[str] = []
        with open(log, "ab", buffering=0) as writer:
            writer.write(numbered(0, 10))
            got += collect(source, 4)  # read part of it
            log.rename(rotated)
            writer.write(numbered(10, 15))  # writer still on the old file
            got += collect(source, 15 - len(got))
            log.touch()
            got += settle(source)  # sees the new, still empty file
            writer.write(numbered(15, 20))
        with open(log, "ab", buffering=0) as writer:
            writer.write(numbered(20, 25))
            got += collect(source, 25 - len(got))
            writer.write(numbered(25, 30))
        got += collect(source, 30 - len(got))
        got += settle(source)
        assert got == [f"line {n}" for n in range(30)]
        assert source.health()["rotations"] == 1
    finally:
        source.close()


def test_real_copytruncate(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, numbered(0, 3))
        assert collect(source, 3) == ["line 0", "line 1", "line 2"]
        shutil.copyfile(log, log.with_suffix(".log.1"))
        os.truncate(log, 0)
        append(log, numbered(3, 5))
        assert collect(source, 2) + settle(source) == ["line 3", "line 4"]
        assert source.health()["truncations"] == 1
    finally:
        source.close()


def test_real_copytruncate_written_past_the_old_offset_before_we_look(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, numbered(0, 3))
        assert collect(source, 3) == ["line 0", "line 1", "line 2"]
        os.truncate(log, 0)
        append(log, numbered(3, 40))  # far past the old offset: its size says nothing
        assert collect(source, 37) + settle(source) == [f"line {n}" for n in range(3, 40)]
        assert source.health()["truncations"] == 1
        append(log, numbered(40, 42))  # and it goes on from there
        assert collect(source, 2) + settle(source) == ["line 40", "line 41"]
        assert source.health()["truncations"] == 1
    finally:
        source.close()


def test_real_copytruncate_of_a_file_that_started_empty(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.touch()
    source = KernlogSource(str(log))
    try:
        append(log, numbered(0, 3))
        assert collect(source, 3) == ["line 0", "line 1", "line 2"]
        os.truncate(log, 0)
        append(log, numbered(3, 40))
        assert collect(source, 37) + settle(source) == [f"line {n}" for n in range(3, 40)]
    finally:
        source.close()


def test_real_delete_and_recreate(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, numbered(0, 2))
        assert collect(source, 2) == ["line 0", "line 1"]
        log.unlink()
        log.write_bytes(numbered(2, 4))
        assert collect(source, 2) + settle(source) == ["line 2", "line 3"]
    finally:
        source.close()


def test_real_file_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "kern.log"
    source = KernlogSource(str(path))
    try:
        assert source.health()["state"] == "waiting"
        path.write_bytes(numbered(0, 3))
        assert collect(source, 3) + settle(source) == ["line 0", "line 1", "line 2"]
    finally:
        source.close()


def test_real_restart_from_saved_position(log: Path) -> None:
    source = KernlogSource(str(log))
    append(log, numbered(0, 3))
    assert collect(source, 3) == ["line 0", "line 1", "line 2"]
    append(log, b"line 3 half")
    assert settle(source) == []
    saved = source.position()
    source.close()

    append(log, b" done\n" + numbered(4, 6))  # written while we were down
    source = KernlogSource(str(log), start=saved)
    try:
        assert source.health()["start"] == f"resumed {log} at offset {saved['offset']}"  # type: ignore[index]
        # No write after the restart: the source wakes the loop itself.
        assert collect(source, 3) + settle(source) == ["line 3 half done", "line 4", "line 5"]
    finally:
        source.close()


def test_real_restart_after_rotation_while_down(log: Path) -> None:
    source = KernlogSource(str(log))
    append(log, numbered(0, 2))
    assert collect(source, 2) == ["line 0", "line 1"]
    saved = source.position()
    source.close()

    append(log, numbered(2, 4))
    log.rename(log.with_suffix(".log.1"))
    log.write_bytes(numbered(4, 6))
    source = KernlogSource(str(log), start=saved)
    try:
        assert str(source.health()["start"]).startswith(f"resumed {log}.1")
        got = collect(source, 4) + settle(source)
        assert got == ["line 2", "line 3", "line 4", "line 5"]
        assert source.health()["inode"] == log.stat().st_ino
    finally:
        source.close()


def test_real_restart_with_unknown_inode_starts_at_end(log: Path) -> None:
    saved = {"inode": log.stat().st_ino + 12345, "offset": 3, "fingerprint": "0" * 64}
    source = KernlogSource(str(log), start=saved)
    try:
        assert "is neither" in str(source.health()["start"])
        assert settle(source) == []
        append(log, b"new\n")
        assert collect(source, 1) == ["new"]
    finally:
        source.close()


def test_real_huge_line_is_cut(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, b"A" * (3 * MAX_LINE_BYTES) + b"\nnext\n")
        got = collect(source, 2) + settle(source)
        assert got == ["A" * MAX_LINE_BYTES, "next"]
        assert source.health()["cut_lines"] == 1
        position = source.position()
        assert position is not None
        assert position["offset"] == log.stat().st_size
    finally:
        source.close()


def test_real_binary_garbage_is_decoded_with_replacement(log: Path) -> None:
    source = KernlogSource(str(log))
    try:
        append(log, b"\xff\xfekernel: \xc3(bad\x01\n\x00\x00\x00after hole\n")
        got = collect(source, 2) + settle(source)
        assert got == ["\ufffd\ufffdkernel: \ufffd(bad\x01", "after hole"]
    finally:
        source.close()


def test_fingerprint_is_the_first_line_only(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"same first\nthen a\n")
    two.write_bytes(b"same first\nthen b, longer\n")
    with open(one, "rb") as a, open(two, "rb") as b:
        assert file_fingerprint(a.fileno()) == file_fingerprint(b.fileno())


def test_open_source_auto_picks_kernlog_when_the_file_exists(log: Path) -> None:
    source = open_source("auto", str(log), None)
    try:
        assert source.name == f"kernlog:{log}"
        assert source.health()["kind"] == "kernlog"
    finally:
        source.close()


def test_real_inotify_events_name_the_file(log: Path) -> None:
    # Guard for the fake: the real watch reports our file's name with IN_MODIFY.
    source = KernlogSource(str(log))
    try:
        watcher = source._watcher
        append(log, b"x\n")
        select.select([watcher.fileno()], [], [], 5)
        events = watcher.drain()
        assert any(e.name == "kern.log" and e.mask & IN_MODIFY for e in events)
    finally:
        source.close()
