"""LineSplitter: the line cutter every source shares, and open_source's choice of source."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocker.sources
from blocker.sources import choose_kind, open_source
from blocker.sources.base import LineSplitter, SourceError


def test_lines_pending_and_consumed() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == [b"one"]
    assert (splitter.consumed, splitter.pending) == (4, 2)
    assert splitter.feed(b"o\n\nthree") == [b"two", b""]
    assert (splitter.consumed, splitter.pending) == (9, 5)
    assert splitter.flush() == b"three"
    assert (splitter.consumed, splitter.pending) == (14, 0)
    assert splitter.flush() is None


def test_long_line_keeps_its_head_and_counts_every_byte() -> None:
    splitter = LineSplitter(limit=4)
    assert splitter.feed(b"abcdefgh") == []
    assert splitter.pending == 8
    assert splitter.feed(b"ij\nok\n") == [b"abcd", b"ok"]
    assert splitter.cut_lines == 1
    assert splitter.consumed == len(b"abcdefghij\nok\n")


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_chunking_never_changes_the_lines(data: bytes, cuts: list[int]) -> None:
    whole = LineSplitter(limit=16)
    expected = whole.feed(data)
    pieces = LineSplitter(limit=16)
    got: list[bytes] = []
    start = 0
    for size in cuts:
        got += pieces.feed(data[start : start + size])
        start += size
    got += pieces.feed(data[start:])
    assert got == expected
    assert (pieces.consumed, pieces.pending) == (whole.consumed, whole.pending)
    assert pieces.consumed + pieces.pending == len(data)
    assert all(len(line) <= 16 for line in got)


_lines_text = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from([b"a", b"\xff", b" "])).map(
        lambda item: item[1] * item[0]
    ),
    max_size=30,
).map(b"\n".join)


@given(
    _lines_text | st.binary(max_size=300),
    st.lists(st.integers(min_value=1, max_value=60), max_size=30),
)
def test_feed_block_gives_what_feed_gives(data: bytes, cuts: list[int]) -> None:
    lines = LineSplitter(limit=16)
    blocks = LineSplitter(limit=16)
    expected: list[bytes] = []
    got = b""
    start = 0
    for size in [*cuts, len(data)]:
        piece = data[start : start + size]
        start += size
        expected += lines.feed(piece)
        got += blocks.feed_block(piece)
    assert got == b"".join(line + b"\n" for line in expected)
    assert (blocks.consumed, blocks.pending, blocks.cut_lines) == (
        lines.consumed,
        lines.pending,
        lines.cut_lines,
    )
    assert blocks.flush() == lines.flush()


def test_feed_block_slices_when_no_line_can_be_too_long() -> None:
    data = b"".join(b"x" * n + b"\n" for n in (0, 7, 8, 3)) + b"tail"
    splitter = LineSplitter(limit=8)
    assert splitter.feed_block(data) == data[: data.rindex(b"\n") + 1]
    assert (splitter.pending, splitter.cut_lines) == (4, 0)
    assert splitter.feed_block(b"x" * 9 + b"\n") == b"tailxxxx\n"
    assert splitter.cut_lines == 1


def test_auto_prefers_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text("")
    assert choose_kind(str(log)) == "kernlog"


def test_auto_without_file_takes_the_journal_then_kmsg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "kern.log")
    monkeypatch.setattr(blocker.sources, "journal_usable", lambda: True)
    assert choose_kind(missing) == "journald"
    monkeypatch.setattr(blocker.sources, "journal_usable", lambda: False)
    assert choose_kind(missing) == "kmsg"


def test_unknown_kind_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown source kind 'syslog'"):
        open_source("syslog", str(tmp_path / "kern.log"), None)
