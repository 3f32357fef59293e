"""Remote events waiting to be applied, at most `rate` a second. PURE (time passed in).

Events arrive in batches, each entry with the cursor just after it. take() hands out what the
budget allows, with the cursor to save alongside them: a restart then resumes exactly after
the last event applied. An event seen before (same id: a peer that republished after a crash,
or a snapshot that overlaps the stream) is passed over.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from blocker.fleet.events import FleetEvent

SEEN_IDS = 200_000  # recent event ids remembered against duplicates
TAKE_AT_MOST = 2000  # events per take(): the daemon serves its sockets between two takes


@dataclass
class Taken:
    events: list[FleetEvent]
    cursor: str | None  # None: no entry consumed
    duplicates: int = 0


class Inbox:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = 0.0
        self.queue: deque[tuple[str, FleetEvent | None]] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, entries: list[tuple[str, FleetEvent | None]]) -> None:
        """(cursor, event) in log order; None for an entry dropped already (moves the cursor)."""
        self.queue.extend(entries)

    def add_snapshot(self, events: list[FleetEvent], cursor: str) -> None:
        """A snapshot, before the log entries after `cursor`. Its events move no cursor (""):
        only its end does, so a restart halfway loads the snapshot again."""
        self.queue.extend(("", event) for event in events)
        self.queue.append((cursor, None))

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def due(self, now: float) -> float | None:
        """When take() can hand out something: `now`, a later time, or None (empty)."""
        if not self.queue:
            return None
        self._refill(now)
        return now if self.tokens >= 1 else now + (1 - self.tokens) / self.rate

    def take(self, now: float, most: int = TAKE_AT_MOST) -> Taken:
        self._refill(now)
        taken = Taken([], None)
        while (
            self.queue
            and (self.tokens >= 1 or self.queue[0][1] is None)
            and len(taken.events) < most
        ):
            cursor, event = self.queue.popleft()
            if cursor:
                taken.cursor = cursor
            if event is None:
                continue
            if event.id in self._seen:
                taken.duplicates += 1
                continue
            self._remember(event.id)
            taken.events.append(event)
            self.tokens -= 1
        return taken

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
