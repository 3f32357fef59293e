"""A scripted stand-in for the firewall backend: records every batch, answers list() from memory."""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence

from blocker.firewall.base import (
    Backend,
    Bans,
    FirewallError,
    Repair,
    check_bans,
    check_targets,
)
from blocker.records import Network


class FakeBackend(Backend):  # mypy checks every verb against the protocol
    """Validates like a real backend (check_bans/check_targets), then only remembers.

    `table` maps target -> remaining seconds as last banned (no clock: tests age nothing).
    `repairs` is what the next ensure() calls return, in order; `fail` makes every verb raise.
    `capacity` bounds the table like a set's maxelem: a new target beyond it is refused (a
    present one is still refreshed), as the kernel does.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.setups = 0
        self.ban_batches: list[list[tuple[Network, float]]] = []
        self.unban_batches: list[list[Network]] = []
        self.table: dict[Network, float] = {}
        self.repairs: list[Repair] = []
        self.fail: str | None = None

    def _check(self) -> None:
        if self.fail is not None:
            raise FirewallError(self.fail)

    def setup(self) -> None:
        self._check()
        self.setups += 1

    def ban(self, entries: Sequence[tuple[Network, float]]) -> dict[Network, str]:
        self._check()
        clean = check_bans(entries)
        self.ban_batches.append(list(entries))
        refused: dict[Network, str] = {}
        for target, timeout in clean.items():
            if (
                self.capacity is not None
                and target not in self.table
                and len(self.table) >= self.capacity
            ):
                refused[target] = "set is full (maxelem reached)"
                continue
            self.table[target] = math.inf if timeout == 0 else float(timeout)
        return refused

    def unban(self, targets: Sequence[Network]) -> None:
        self._check()
        clean = check_targets(targets)
        self.unban_batches.append(list(targets))
        for target in clean:
            self.table.pop(target, None)

    def list(self) -> Bans:
        self._check()
        return list(self.table.items())

    def ensure(self) -> Repair:
        self._check()
        return self.repairs.pop(0) if self.repairs else Repair()

    def teardown(self) -> None:
        self.table.clear()

    # -- what tests ask ---------------------------------------------------------------
    @property
    def banned_targets(self) -> builtins.list[Network]:
        """Every target of every ban batch, in order."""
        return [target for batch in self.ban_batches for target, _ in batch]
