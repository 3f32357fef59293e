"""replay.py / pipeline.py: a log file replayed offline; garbage never crashes it."""

from __future__ import annotations

import io
import json
import math
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loglines import BASE, PROBER4, outgoing_syn, syn, synack
from reference_pipeline import feed_packet

from blocker.config import Config, load_config
from blocker.pipeline import MAX_LINE, LineStats, Pipeline
from blocker.records import Decision
from blocker.replay import (
    ReplayResult,
    decision_json,
    decision_line,
    decision_lines,
    read_text_chunks,
    replay_file,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = load_config(REPO / "jails.toml")
BAN_KEYS = {"target", "jail", "at", "duration", "score", "filters"}


def replay(tmp_path: Path, data: bytes, config: Config = CONFIG) -> ReplayResult:
    path = tmp_path / "kern.log"
    path.write_bytes(data)
    return replay_file(path, config)


def train(count: int, start: float = BASE, step: float = 1.0) -> list[str]:
    """`count` unsolicited SYN/ACKs from 203.0.113.66, `step` seconds apart."""
    return [synack(at=start + i * step, dpt=40000 + i) for i in range(count)]


def lines_bytes(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


GARBAGE: dict[str, bytes] = {
    "binary": bytes(b for b in range(256) if b != 0x0A) * 4,
    "nul": b"\x00" * 100,
    "nul-inside": synack().replace("203.0.113.66", "203.0.113.\x0066").encode(),
    "latin-1": "Nov 22 02:04:54 host kernel: caf\xe9 \xfc\xdf".encode("latin-1"),
    "invalid-utf8": b"\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\x28",
    "truncated": synack().encode()[:150],
    "truncated-flags": synack().encode()[: synack().index("SYN URGP")],
    "bad-address": synack().replace(PROBER4, "999.1.1.1").encode(),
    "bad-v6": synack("2001:db8::42")
    .replace("2001:0db8:0000:0000:0000:0000:0000:0042", "2001:zz::")
    .encode(),
    "mixed-family": synack()
    .replace("DST=192.0.2.10", "DST=2001:0db8:0000:0000:0000:0000:0000:0010")
    .encode(),
    "forged": synack().replace(" host kernel: ", " host sshd[1]: kernel: ").encode(),
    "long": b"x" * 1_000_000,
    "crlf": synack().encode()[:40] + b"\r",
}
# Refused after the record was recognized; the others are not recognizable records at all.
# "truncated" is cut before PROTO=: it starts a LOG record, so it is malformed (issue 11).
MALFORMED = {
    "bad-address",
    "bad-v6",
    "mixed-family",
    "forged",
    "nul-inside",
    "truncated",
    "truncated-flags",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_sandwiched_train_still_bans(tmp_path: Path, kind: str) -> None:
    good = train(5)
    junk = GARBAGE[kind]
    data = b"".join(junk + b"\n" + line.encode() + b"\n" for line in good) + junk + b"\n"
    result = replay(tmp_path, data)
    stats = result.stats
    assert stats.lines == 11
    assert (stats.parsed, stats.unparsed) == (5, 6)
    assert stats.malformed == (6 if kind in MALFORMED else 0)
    assert [d.target_text for d in result.decisions] == [PROBER4]
    assert result.decisions[0].at == BASE + 4


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_alone_is_counted_unparsed(tmp_path: Path, kind: str) -> None:
    result = replay(tmp_path, GARBAGE[kind] + b"\n" + GARBAGE[kind])
    assert (result.stats.lines, result.stats.parsed, result.decisions) == (2, 0, [])


def test_empty_file(tmp_path: Path) -> None:
    result = replay(tmp_path, b"")
    assert result.to_json() == {
        "lines": 0,
        "parsed": 0,
        "unparsed": 0,
        "malformed": 0,
        "hits": 0,
        "hits_by_filter": {},
        "bans": [],
    }


def test_file_without_trailing_newline_counts_its_last_line(tmp_path: Path) -> None:
    data = lines_bytes(train(4)) + train(5)[-1].encode()
    result = replay(tmp_path, data)
    assert (result.stats.lines, result.stats.parsed) == (5, 5)
    assert [d.target_text for d in result.decisions] == [PROBER4]


@pytest.mark.parametrize("newline", [b"", b"\n"], ids=["no-newline", "newline"])
def test_megabyte_line_at_the_end(tmp_path: Path, newline: bytes) -> None:
    result = replay(tmp_path, lines_bytes(train(5)) + b"y" * (1 << 20) + newline)
    assert (result.stats.lines, result.stats.parsed) == (6, 5)
    assert len(result.decisions) == 1


def test_megabyte_lines_between_records(tmp_path: Path) -> None:
    big = b"\xff" * ((1 << 20) + 7)
    data = b"".join(line.encode() + b"\n" + big + b"\n" for line in train(5))
    result = replay(tmp_path, data)
    assert (result.stats.lines, result.stats.parsed, len(result.decisions)) == (10, 5, 1)


def test_to_json_shape(tmp_path: Path) -> None:
    out = replay(tmp_path, lines_bytes(train(5))).to_json()
    json.dumps(out)
    assert (out["lines"], out["parsed"], out["hits"]) == (5, 5, 5)
    assert out["hits_by_filter"] == {"probes/unsolicited_synack": 5}
    assert isinstance(out["bans"], list) and len(out["bans"]) == 1
    ban = out["bans"][0]
    assert set(ban) >= BAN_KEYS
    assert (
        ban["target"],
        ban["jail"],
        ban["at"],
        ban["duration"],
        ban["score"],
        ban["filters"],
    ) == (PROBER4, "probes", "2026-11-22T02:04:58+00:00", 600.0, 5.0, ["unsolicited_synack"])


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        replay_file(tmp_path / "absent.log", CONFIG)


def test_outgoing_syns_never_ban_their_destination(tmp_path: Path) -> None:
    lines = [outgoing_syn(at=BASE + i, dpt=1000 + i) for i in range(50)]
    result = replay(tmp_path, lines_bytes(lines))
    assert (result.stats.parsed, result.to_json()["hits"], result.decisions) == (50, 0, [])


# ---- read_text_chunks --------------------------------------------------------------------

_line_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))
_sample_lines = st.sampled_from([line.encode() for line in (*train(2), syn(), outgoing_syn())])


@settings(max_examples=200)
@given(st.lists(_line_bytes | _sample_lines, max_size=20), st.booleans(), st.integers(1, 700))
def test_any_chunk_size_yields_the_same_text(lines: list[bytes], trailing: bool, size: int) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    chunks = list(read_text_chunks(io.BytesIO(data), size))
    assert "".join(chunks) == data.decode("utf-8", "replace")
    assert all(chunk.endswith("\n") for chunk in chunks[:-1])
    assert all(len(chunk) <= size + MAX_LINE + 1 for chunk in chunks)


@settings(max_examples=50)
@given(st.lists(_line_bytes | _sample_lines, max_size=15), st.integers(1, 500))
def test_replay_decisions_do_not_depend_on_chunking(lines: list[bytes], size: int) -> None:
    data = b"\n".join([*lines, *(line.encode() for line in train(5))]) + b"\n"
    whole = Pipeline(CONFIG)
    expected = whole.feed_text(data.decode("utf-8", "replace"), BASE)
    chunked = Pipeline(CONFIG)
    found = [
        d
        for text in read_text_chunks(io.BytesIO(data), size)
        for d in chunked.feed_text(text, BASE)
    ]
    assert found == expected
    assert (chunked.stats.lines, chunked.stats.parsed, chunked.stats.malformed) == (
        whole.stats.lines,
        whole.stats.parsed,
        whole.stats.malformed,
    )


@settings(max_examples=50)
@given(st.lists(_line_bytes | _sample_lines, max_size=15))
def test_live_feed_line_equals_replay_feed_text(lines: list[bytes]) -> None:
    texts = [line.decode("utf-8", "replace") for line in lines] + train(5)
    replayed = Pipeline(CONFIG)
    expected = replayed.feed_text("".join(f"{t}\n" for t in texts), BASE)
    live = Pipeline(CONFIG)
    found = [d for t in texts for d in live.feed_line(t, BASE)]
    assert found == expected
    assert (live.stats.lines, live.stats.parsed) == (replayed.stats.lines, replayed.stats.parsed)


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_overlong_line_straddling_chunks_is_cut(size: int) -> None:
    data = b"z" * (MAX_LINE * 3) + b"\nok\n"
    lines = "".join(read_text_chunks(io.BytesIO(data), size)).split("\n")
    assert [len(line) for line in lines] == [MAX_LINE, 2, 0]


def test_overlong_line_is_cut_whatever_the_chunk_size() -> None:
    data = b"z" * (MAX_LINE * 3) + b"\nok\n"
    lines = "".join(read_text_chunks(io.BytesIO(data))).split("\n")
    assert [len(line) for line in lines] == [MAX_LINE, 2, 0]


def test_live_and_replay_count_malformed_lines_alike() -> None:
    text = GARBAGE["bad-v6"].decode()
    live, replayed = Pipeline(CONFIG), Pipeline(CONFIG)
    live.feed_line(text, BASE)
    replayed.feed_text(text + "\n", BASE)
    assert live.stats.malformed == replayed.stats.malformed


# ---- compiled plans agree with the reference path ------------------------------------------

SAMPLE_LINES = sorted(
    {
        line
        for path in (REPO / "tests" / "samples").glob("*.log")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
)


def _reference(lines: list[str]) -> tuple[Pipeline, list[object]]:
    """Each line parsed into a Packet and fed through the Matchers and Scorers."""
    pipeline = Pipeline(CONFIG)
    decisions: list[object] = []
    for line in lines:
        packet = pipeline.parser.parse(line[:MAX_LINE], BASE)
        if packet is not None:
            decisions += feed_packet(pipeline, packet)
    return pipeline, decisions


@settings(max_examples=100)
@given(
    st.lists(
        st.sampled_from(SAMPLE_LINES) | _line_bytes.map(lambda b: b.decode("utf-8", "replace")),
        max_size=60,
    )
)
def test_compiled_plans_decide_like_matchers_and_scorers(lines: list[str]) -> None:
    # Every annotated sample line of every filter (both syslog styles, IPv4 and IPv6, bare
    # and journald forms), mixed with garbage: same decisions, hit counts and scorer state.
    lines = [*lines, *lines[::-1], *lines]  # repeats reach thresholds and reuse plans
    reference, expected = _reference(lines)
    compiled = Pipeline(CONFIG)
    found = compiled.feed_text("".join(f"{line}\n" for line in lines), BASE)
    assert found == expected
    assert compiled.hit_counts() == reference.hit_counts()
    assert [r.scorer.stats() for r in compiled.runners] == [
        r.scorer.stats() for r in reference.runners
    ]


def test_every_sample_line_is_in_the_equivalence_test() -> None:
    assert len(SAMPLE_LINES) > 200
    _, expected = _reference(SAMPLE_LINES * 5)
    compiled = Pipeline(CONFIG)
    assert compiled.feed_text("".join(f"{x}\n" for x in SAMPLE_LINES * 5), BASE) == expected
    assert len(expected) >= 5


# -- the spool's JSON line per ban ------------------------------------------------------


def _decision(target: str, at: float, duration: float, score: float, reason: str) -> Decision:
    return Decision(
        target=ip_network(target),
        jail="probes",
        at=at,
        duration=duration,
        score=score,
        filters=("unsolicited_synack", "outgoing_rst"),
        reason=reason,
    )


@pytest.mark.parametrize(
    ("at", "duration", "score"),
    [
        (1_700_000_000.123456, 600.0, 5.0),
        (1_700_000_000.9999996, 600.0, 5.0),  # iso_time() rounds up into the next second
        (1_700_000_000.9994, 1200.0, 4.99999),
        (1_700_000_000.0, math.inf, 12.3456),  # permanent
        (1_700_000_000.0, -math.inf, 1.0),  # nonsense, but what decision_json() says
        (1_700_000_000.0, math.nan, 1.0),
        (1_700_000_000.0, 600.0, math.nan),
        (1_700_000_000.0, 600, 5),  # ints where floats belong
        (-5.5, 600.0, 5.0),
        (1e300, 600.0, 5.0),  # iso_time(): invalid-time
        (0.0, 1e-7, 1e22),
    ],
)
def test_decision_line_is_json_dumps_of_decision_json(
    at: float, duration: float, score: float
) -> None:
    for target in ("198.51.100.7/32", "203.0.113.0/24", "2001:db8::1/128", "fc00::/64"):
        decision = _decision(target, at, duration, score, 'score 5.0 >= 5: "quoted" \u00e9')
        assert decision_line(decision) == json.dumps(decision_json(decision))


@settings(max_examples=300, deadline=None)
@given(
    at=st.floats(allow_nan=True, allow_infinity=True),
    duration=st.floats(allow_nan=True, allow_infinity=True),
    score=st.floats(allow_nan=True, allow_infinity=True),
    reason=st.text(),
)
def test_decision_line_matches_on_any_values(
    at: float, duration: float, score: float, reason: str
) -> None:
    decision = _decision("198.51.100.7/32", at, duration, score, reason)
    assert decision_line(decision) == json.dumps(decision_json(decision))


def test_decision_line_uses_the_cached_second_only_within_it() -> None:
    # The same whole second, first seen at .1, then at a fraction that rounds up: the
    # cached text of the second must not be reused for it.
    early = _decision("198.51.100.7/32", 1_700_000_100.1, 600.0, 5.0, "r")
    late = _decision("198.51.100.7/32", 1_700_000_100.99999999, 600.0, 5.0, "r")
    assert decision_line(early) == json.dumps(decision_json(early))
    assert decision_line(late) == json.dumps(decision_json(late))
    assert json.loads(decision_line(late))["at"] != json.loads(decision_line(early))["at"]


def test_decision_line_shares_a_tail_only_between_the_same_values() -> None:
    # Equal is not the same: 0.0 == -0.0 but json.dumps() writes them apart, and a
    # decision with other filters or another reason must not get the first one's tail.
    made = [
        _decision("198.51.100.7/32", 1_700_000_100.5, duration, score, reason)
        for duration, score, reason in [
            (600.0, 5.0, "r"),
            (600.0, 5.0, "other"),
            (1200.0, 5.0, "r"),
            (600.0, 5.25, "r"),
            (0.0, 0.0, "r"),
            (-0.0, -0.0, "r"),
            (600.0, 5.0, "r"),
        ]
    ]
    made.append(made[0]._replace(filters=("outgoing_rst",)))
    made.append(made[0]._replace(jail="scans"))
    for decision in made:
        assert decision_line(decision) == json.dumps(decision_json(decision))


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.integers(0, 3), max_size=40),
    chunk=st.integers(1, 200),
)
def test_write_json_is_json_dumps_of_the_result_with_its_bans(picks: list[int], chunk: int) -> None:
    # The spool is copied in blocks of any size: newlines between lines, and at a block's
    # edge, become the ", " json.dumps() writes between items; the last one is dropped.
    kinds = [
        _decision("198.51.100.7/32", 1_700_000_000.5, 600.0, 5.0, "r"),
        _decision("203.0.113.0/24", 1_700_000_001.0, math.inf, 3.0, 'a "quoted" \n reason'),
        _decision("2001:db8::1/128", 1_700_000_002.25, 1200.0, 5.5, "\u00e9"),
        _decision("198.51.100.8/32", 1_700_000_003.0, 600.0, 5.0, ""),
    ]
    decisions = [kinds[pick] for pick in picks]
    stats = LineStats()
    stats.lines = 7
    expected = json.dumps(ReplayResult(stats, decisions, {"unsolicited_synack": 3}).to_json())
    spool = io.StringIO(decision_lines(decisions) if decisions else "")
    out = io.StringIO()
    write_json(ReplayResult(stats, [], {"unsolicited_synack": 3}), spool, out, chunk)
    assert out.getvalue() == expected + "\n"
