"""The readable reference for Pipeline's compiled fast path: each parsed Packet goes through
every jail's Matcher.match() and Scorer.feed(), by name. Tests only (the differential tests
in test_replay.py compare Pipeline.feed_text() with it); not part of the package."""

from __future__ import annotations

from collections.abc import Sequence

from blocker.pipeline import JailRunner, Pipeline
from blocker.records import Decision, Packet, Signature


def feed_packet(
    pipeline: Pipeline, packet: Packet, jails: Sequence[JailRunner] | None = None
) -> list[Decision]:
    """One parsed packet through `pipeline`'s Matchers and Scorers (its runners' state and
    hit counts move as the fast path's would)."""
    decisions: list[Decision] = []
    signature = Signature.of(packet)
    for runner in pipeline.runners if jails is None else jails:
        hit = runner.matcher.match(packet, signature)
        if hit is not None:
            decisions += runner.scorer.feed(hit)
    return decisions
