"""DryRunBackend: validates and logs each ban and unban, keeps a table in memory, no I/O."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from blocker.firewall.base import Bans, Repair, check_bans, check_targets
from blocker.records import Network, network_text

log = logging.getLogger(__name__)
LOGGED_PER_BATCH = 100


class DryRunBackend:
    """A Backend that only logs (one line per ban/unban); list() answers from memory.

    `clock` (monotonic seconds) ages the table so list() shows remaining time like the kernel.
    Durations are validated and clamped exactly as IpsetBackend does.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expiry: dict[Network, float] = {}  # target -> clock time it ends (math.inf: never)

    def setup(self) -> None:
        log.info("dry-run: setup (no sets or rules created)")

    def ban(self, entries: Sequence[tuple[Network, float]]) -> dict[Network, str]:
        now = self._clock()
        clean = check_bans(entries)
        for index, (target, timeout) in enumerate(clean.items()):
            self._expiry[target] = now + timeout if timeout else math.inf
            if index < LOGGED_PER_BATCH:
                shown = f"{timeout} s" if timeout else "permanently"
                log.info("dry-run: ban %s %s", network_text(target), shown)
        if len(clean) > LOGGED_PER_BATCH:  # a restart restores up to a million at once
            log.info("dry-run: and %d more ban(s) in this batch", len(clean) - LOGGED_PER_BATCH)
        return {}

    def unban(self, targets: Sequence[Network]) -> None:
        for target in check_targets(targets):
            self._expiry.pop(target, None)
            log.info("dry-run: unban %s", network_text(target))

    def list(self) -> Bans:
        now = self._clock()
        for target in [t for t, end in self._expiry.items() if end <= now]:
            del self._expiry[target]
        return [(target, end - now) for target, end in self._expiry.items()]

    def ensure(self) -> Repair:
        return Repair()

    def teardown(self) -> None:
        self._expiry.clear()
        log.info("dry-run: teardown")
