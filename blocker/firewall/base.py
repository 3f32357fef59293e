"""The ban backend protocol, its repair report, and the checks every backend runs on its input.

Backends run privileged, so each one validates what it is asked to ban before touching the
kernel: `check_bans` and `check_targets` turn a batch into clean (network, kernel timeout)
pairs or raise InvalidBan naming every bad item, applying nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from blocker.addresses import network_refusal
from blocker.records import Network, network_text

# ipset's largest entry timeout in seconds (~24.8 days); longer finite bans are clamped to it.
MAX_TIMEOUT = 2_147_483

Bans = list[tuple[Network, float]]  # (target, remaining seconds; math.inf = permanent)


class FirewallError(RuntimeError):
    """The kernel or a firewall command refused an operation (message says which and why)."""


class InvalidBan(ValueError):
    """A ban or unban request holds items that are not valid targets; nothing was applied."""


@dataclass(frozen=True, slots=True)
class Repair:
    """What ensure() had to fix. Families are IP versions (4, 6)."""

    sets_recreated: tuple[int, ...] = ()  # these sets were missing: re-add their active bans
    rules_reinserted: tuple[int, ...] = ()  # the rule was missing, not first, or altered
    rules_removed: int = 0  # misplaced or duplicate copies of our rules deleted

    def __bool__(self) -> bool:
        return bool(self.sets_recreated or self.rules_reinserted or self.rules_removed)


class Backend(Protocol):
    """Where bans end up. Every verb is idempotent."""

    def setup(self) -> None:
        """Create both sets and insert the rules (no-op when already in place)."""

    def ban(self, entries: Sequence[tuple[Network, float]]) -> dict[Network, str]:
        """Ban (target, seconds) pairs; math.inf = permanent; a present target gets the new time.
        Returns the targets the kernel refused (its set is full), each with its reason: those
        are not banned. FirewallError when the batch could not be sent at all."""

    def unban(self, targets: Sequence[Network]) -> None:
        """Lift these bans; absent targets are fine."""

    def list(self) -> Bans:
        """Active bans as (target, remaining seconds; math.inf for permanent)."""

    def ensure(self) -> Repair:
        """Check sets and rules, put back what is missing, and say what was repaired."""

    def teardown(self) -> None:
        """Remove our rules, then our sets."""


def check_target(target: object) -> Network:
    """Return `target` if it is a bannable network, else raise InvalidBan saying why."""
    if not isinstance(target, IPv4Network | IPv6Network):
        raise InvalidBan(f"not an IPv4Network/IPv6Network: {target!r}")
    # One rule for every layer (addresses.py); dropping loopback ORIGINAL packets, say,
    # would cut the host off from itself.
    problem = network_refusal(target)
    if problem is not None:
        raise InvalidBan(f"refusing to ban {network_text(target)}: {problem}")
    return target


def kernel_timeout(seconds: object) -> int:
    """Seconds -> ipset entry timeout: whole seconds rounded up, clamped; 0 = permanent."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidBan(f"ban duration is not a number: {seconds!r}")
    if math.isnan(seconds) or seconds <= 0:
        raise InvalidBan(f"ban duration must be > 0 seconds (math.inf = permanent): {seconds!r}")
    if math.isinf(seconds):
        return 0
    return min(math.ceil(seconds), MAX_TIMEOUT)


def check_bans(entries: Sequence[tuple[Network, float]]) -> dict[Network, int]:
    """Validate a ban batch -> {target: kernel timeout} (a repeated target keeps its last value)."""
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise InvalidBan(f"ban expects a sequence of (network, seconds) pairs: {entries!r}")
    clean: dict[Network, int] = {}
    problems: list[str] = []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise InvalidBan(f"not a (network, seconds) pair: {entry!r}")
            target, seconds = entry
            clean[check_target(target)] = kernel_timeout(seconds)
        except InvalidBan as err:
            problems.append(f"#{index}: {err}")
    if problems:
        raise InvalidBan(_summary("ban", problems))
    return clean


def check_targets(targets: Sequence[Network]) -> list[Network]:
    """Validate an unban batch -> distinct targets in order."""
    if isinstance(targets, str | bytes) or not isinstance(targets, Sequence):
        raise InvalidBan(f"unban expects a sequence of networks: {targets!r}")
    clean: dict[Network, None] = {}
    problems: list[str] = []
    for index, target in enumerate(targets):
        try:
            clean[check_target(target)] = None
        except InvalidBan as err:
            problems.append(f"#{index}: {err}")
    if problems:
        raise InvalidBan(_summary("unban", problems))
    return list(clean)


def _summary(verb: str, problems: list[str], shown: int = 5) -> str:
    more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
    return f"{verb} rejected, nothing applied: " + "; ".join(problems[:shown]) + more
