"""The two-tier Scorer decides exactly as the reference (tests/reference_scorer.py, the
scorer before issue 9) whenever no tier is full: same bans, times, durations, reasons."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from loglines import PROBER4, synack
from reference_scorer import ReferenceScorer
from test_scoring_properties import KEYS, NEVER, ORDINARY, WEIGHTS, policies

from blocker.addresses import host_network
from blocker.config import load_config
from blocker.pipeline import Pipeline
from blocker.records import Address, Decision, Hit
from blocker.scoring import JailPolicy, Scorer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from gen_kernlog import generate  # noqa: E402  # bench/ is no package

T0 = 1_700_000_000.0
BASE = 1_763_800_000.0

# Gaps include negative ones: slightly late lines take the insort paths of both scorers.
GAPS = [0.0, 0.0, 0.25, 1.0, 3.0, 9.0, 10.0, 40.0, 60.0, 61.0, 200.0, -0.5, -3.0]
one_hit = st.tuples(
    st.sampled_from(ORDINARY * 3 + NEVER),
    st.sampled_from(["synack", "synack", "rst", "scan"]),
    st.sampled_from(range(len(KEYS))),
    st.sampled_from(range(len(WEIGHTS))),
    st.sampled_from(GAPS),
)
streams = st.lists(one_hit, max_size=120)


def build(stream: list[tuple[Address, str, int, int, float]]) -> list[Hit]:
    t = T0
    out = []
    for addr, name, key, weight, gap in stream:
        t += gap
        out.append(Hit(t, "ref", name, addr, WEIGHTS[weight], KEYS[key]))
    return out


def decide(scorer: Scorer | ReferenceScorer, hits: list[Hit]) -> list[Decision]:
    out: list[Decision] = []
    for h in hits:
        out.extend(scorer.feed(h))
    return out


@settings(max_examples=400, deadline=None)
@given(policy=policies, stream=streams, plain_run=st.integers(0, 30))
def test_same_decisions_as_the_reference(
    policy: JailPolicy, stream: list[tuple[Address, str, int, int, float]], plain_run: int
) -> None:
    # A run of plain hits from one source climbs through the packed tier and past it.
    hits = build(stream) + [
        Hit(T0 + 5000 + i, "ref", "synack", ORDINARY[6], 0.5, None) for i in range(plain_run)
    ]
    policy = replace(policy, threshold=policy.threshold * 2, max_tracked=10_000)
    new, old = Scorer(policy), ReferenceScorer(policy)
    assert decide(new, hits) == decide(old, hits)
    now = max((h.time for h in hits), default=T0)
    for addr in ORDINARY + NEVER:
        mine, theirs = new.explain(addr, now), old.explain(addr, now)
        assert mine.pop("tier") in {None, "admission", "climbing", "window"}
        assert mine == theirs


# Bans and unbans made outside the scorer (manual, restored, retracted), at a hit number:
# the engine asks its gate only for a source no tier holds, which is exact only because
# each of these drops the tiers' hold on the address first.
_OUTSIDE = st.lists(
    st.tuples(
        st.integers(0, 120),
        st.sampled_from(["ban", "ban_forever", "forget"]),
        st.integers(0, 120),  # the source of that hit (modulo the hits)
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, stream=streams, outside=_OUTSIDE)
def test_bans_and_unbans_from_outside_gate_hits_as_the_reference(
    policy: JailPolicy,
    stream: list[tuple[Address, str, int, int, float]],
    outside: list[tuple[int, str, int]],
) -> None:
    hits = build(stream)
    policy = replace(policy, threshold=policy.threshold * 2, max_tracked=10_000)
    new, old = Scorer(policy), ReferenceScorer(policy)
    for number, hit in enumerate(hits):
        for when, what, which in outside:
            if when % len(hits) != number:
                continue
            target = host_network(hits[which % len(hits)].offender)
            for scorer in (new, old):
                if what == "forget":
                    scorer.forget(target)
                else:
                    length = math.inf if what == "ban_forever" else 30.0
                    scorer.mark_banned(target, hit.time + length)
        assert new.feed(hit) == old.feed(hit)
    mine, theirs = new.stats(), old.stats()
    for counter in ("hits", "ignored", "while_banned", "stale", "bans", "subnet_bans"):
        assert mine[counter] == theirs[counter], counter


def _pipelines() -> tuple[Pipeline, Pipeline]:
    config = load_config(REPO / "jails.toml")
    new, old = Pipeline(config), Pipeline(config)
    for runner in old.runners:  # before the first line: plans bind the scorer's add()
        runner.scorer = ReferenceScorer(runner.scorer.policy)  # type: ignore[assignment]
    return new, old


SAMPLES = sorted(
    line
    for path in (REPO / "tests" / "samples").glob("*.log")
    for line in path.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
)


def test_shipped_samples_decide_as_the_reference() -> None:
    text = "".join(f"{line}\n" for line in SAMPLES * 6)
    new, old = _pipelines()
    found = new.feed_text(text, BASE)
    assert found == old.feed_text(text, BASE)
    assert len(found) >= 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(SAMPLES), max_size=200))
def test_sample_line_streams_decide_as_the_reference(lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in [*lines, *lines[::-1], *lines, *lines])
    new, old = _pipelines()
    assert new.feed_text(text, BASE) == old.feed_text(text, BASE)


def test_bench_mixed_log_decides_as_the_reference(tmp_path: Path) -> None:
    log = tmp_path / "mixed.log"
    generate(log, 60_000, seed=3, style="rfc3339")
    text = log.read_text(encoding="ascii")
    new, old = _pipelines()
    found = new.feed_text(text, BASE)
    assert found == old.feed_text(text, BASE)
    assert len(found) >= 20


def test_state_from_parsed_addresses_is_found_by_plain_ones() -> None:
    # The parser's address types are subclasses: explain() with ip_address() must agree.
    new, _ = _pipelines()
    new.feed_text(f"{synack(at=BASE)}\n{synack(at=BASE + 1)}\n", BASE)
    probes = new.runner("probes")
    assert probes is not None
    info = probes.scorer.explain(ip_address(PROBER4), BASE + 1)
    assert (info["tier"], info["score"]) == ("climbing", 2.0)
