"""Log formats beyond rsyslog's (tests/samples/formats/*.log, annotated line by line):
OpenWrt's logread, `dmesg -T`, and kernel TRACE output, which must never count.

Each sample is checked twice: through KernelLogParser.parse() (the reference) and through
Pipeline.feed_text() (the fast path, whose counts must tell the same story)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from loglines import BASE

from blocker.config import load_config
from blocker.netfilter import KernelLogParser
from blocker.pipeline import Pipeline
from blocker.verdicts import LineJudge

REPO = Path(__file__).resolve().parents[1]
FORMATS = Path(__file__).resolve().parent / "samples" / "formats"
NOW = BASE + 3600


class Sample(NamedTuple):
    file: str
    lineno: int
    line: str
    expect: dict[str, Any]


def samples() -> list[Sample]:
    out: list[Sample] = []
    for path in sorted(FORMATS.glob("*.log")):
        expect: dict[str, Any] | None = None
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.startswith("# expect:"):
                expect = json.loads(line.removeprefix("# expect:"))
            elif line and not line.startswith("#"):
                assert expect is not None, f"{path.name}:{lineno} has no '# expect:' line"
                out.append(Sample(path.name, lineno, line, expect))
                expect = None
    return out


SAMPLES = samples()


def test_every_format_file_has_samples() -> None:
    assert {s.file for s in SAMPLES} == {"openwrt_logread.log", "dmesg_T.log", "trace.log"}


def local(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{s.file}:{s.lineno}" for s in SAMPLES])
def test_sample(sample: Sample) -> None:
    parser = KernelLogParser()
    packet = parser.parse(sample.line, NOW)
    rejected = parser.take_rejected()
    expect = sample.expect
    pipeline = Pipeline(load_config(REPO / "jails.toml"))
    pipeline.feed_text(sample.line + "\n", NOW)
    stats = pipeline.stats
    if expect.get("trace"):
        assert packet is None
        assert rejected == 0  # not malformed either
        assert (stats.parsed, stats.malformed) == (0, 0)
        assert sum(pipeline.hit_counts().values()) == 0
        return
    if expect.get("refused"):
        assert packet is None
        assert rejected == 1
        assert (stats.parsed, stats.malformed) == (0, 1)
        return
    assert packet is not None, sample.line
    assert packet.time == local(expect["local"])
    assert (packet.prefix, packet.iface_in, str(packet.src), str(packet.dst), packet.proto) == (
        expect["prefix"],
        expect["in"],
        expect["src"],
        expect["dst"],
        expect["proto"],
    )
    if "dpt" in expect:
        assert packet.dpt == expect["dpt"]
    if "flags" in expect:
        assert packet.flags == frozenset(expect["flags"])
    assert (stats.parsed, stats.malformed) == (1, 0)


def test_logread_time_comes_from_the_line_not_now() -> None:
    line = next(s.line for s in SAMPLES if s.file == "openwrt_logread.log")
    packet = KernelLogParser().parse(line, NOW, source_time=NOW)
    assert packet is not None
    assert packet.time == local("2017-12-25 13:31:15")


def test_dmesg_t_time_yields_to_a_source_time() -> None:
    line = next(s.line for s in SAMPLES if s.file == "dmesg_T.log")
    packet = KernelLogParser().parse(line, NOW, source_time=NOW - 5)
    assert packet is not None
    assert packet.time == NOW - 5  # journald/kmsg know when the kernel printed it
    assert packet.prefix == "[UFW BLOCK]"


def test_trace_lines_never_hit_even_in_a_burst() -> None:
    """The issue's case: one traced SYN gave 2 scan hits. A hundred give none."""
    lines = [s.line for s in SAMPLES if s.file == "trace.log"] * 100
    pipeline = Pipeline(load_config(REPO / "jails.toml"))
    assert pipeline.feed_text("\n".join(lines) + "\n", NOW) == []
    assert sum(pipeline.hit_counts().values()) == 0
    assert (pipeline.stats.lines, pipeline.stats.parsed, pipeline.stats.malformed) == (300, 0, 0)


def test_show_calls_trace_lines_not_log_records() -> None:
    judge = LineJudge(Pipeline(load_config(REPO / "jails.toml")))
    line = next(s.line for s in SAMPLES if s.file == "trace.log")
    verdicts = judge.judge(1, line, NOW)
    assert [v["verdict"] for v in verdicts] == ["not_log"]
    assert "TRACE" in verdicts[0]["reason"]
