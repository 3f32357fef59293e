"""Refusals logged once per cause and window, with a count of the ones held back.

A refused peer, a forged kernel record: each is worth a line in the log, but an attacker
repeating it must not flood the log (or the disk under it). The first refusal of a cause in a
window is logged; the others are counted and reported when the cause comes up again after the
window, or by flush() once it has passed.
"""

from __future__ import annotations

import logging
import math

WINDOW = 60.0  # seconds


class RefusalLog:
    def __init__(self, log: logging.Logger, prefix: str = "", window: float = WINDOW) -> None:
        self.log = log
        self.prefix = prefix
        self.window = window
        self._until: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def note(self, cause: str, message: str, now: float) -> None:
        """One refusal of `cause` at monotonic time `now`."""
        if now < self._until.get(cause, -math.inf):
            self._held[cause] = self._held.get(cause, 0) + 1
            return
        held = self._held.pop(cause, 0)
        more = f" ({held} more since the last such message)" if held else ""
        self.log.warning("%s%s%s", self.prefix, message, more)
        self._until[cause] = now + self.window

    def flush(self, now: float) -> None:
        """Report the refusals held back in windows that have ended."""
        for cause, until in list(self._until.items()):
            if now >= until:
                held = self._held.pop(cause, 0)
                if held:
                    self.log.warning(
                        "%s%d more refusal(s) (%s) in the last %gs",
                        self.prefix,
                        held,
                        cause,
                        self.window,
                    )
                del self._until[cause]
