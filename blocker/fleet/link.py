"""The daemon's side of the fleet: one thread writes the outbox to the log, one reads the log.

Why threads and not the daemon's selector: redis-py is blocking (connect, TLS handshake, DNS,
XREAD BLOCK), and a non-blocking client would mean a RESP parser of our own. Each thread owns
its own connection and only does transport I/O; the sqlite state, the kernel and the scorers
stay in the daemon's one thread. The threads talk to it through queues and wake its selector
with a byte on a socketpair, so local banning never waits for Redis.

    daemon --send(outbox rows)--> writer --publish--> Redis
    daemon <--take()-- inbound queue <-- reader <--XREAD BLOCK-- Redis

Faults: any transport error closes that thread's connection and retries with backoff
(0.5 s doubling to 10 s); the writer keeps its unsent rows in order, the reader its cursor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from blocker.fleet.events import FleetEvent, decode, decode_snapshot
from blocker.fleet.transport import START, Transport

log = logging.getLogger("blocker.fleet")
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
READ_BLOCK = 1.0  # seconds an XREAD waits (also how long stop() may wait for the reader)
READ_COUNT = 20  # entries per XREAD: up to 10,000 events
PUBLISH_BATCH = 1000
INBOUND_BATCHES = 64  # the reader waits when the daemon is this many batches behind


@dataclass
class Inbound:
    kind: Literal["entries", "snapshot"]
    entries: list[tuple[str, FleetEvent | None]] = field(default_factory=list)
    cursor: str = START


class Counters:
    """Counts the threads bump and `status` reads (ints under the GIL: no lock needed)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(
            (
                "published",
                "received",
                "echoes",
                "unsigned",
                "bad_signature",
                "oversized",
                "malformed",
                "snapshot_loads",
                "reconnects",
            ),
            0,
        )

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount


class FleetLink:
    def __init__(
        self,
        make_transport: Callable[[], Transport],
        *,
        key: bytes,
        host_id: str,
        cursor: str | None,
        wake: Callable[[], None],
    ) -> None:
        self.make_transport = make_transport
        self.key = key
        self.host_id = host_id
        self.cursor = cursor
        self.wake = wake
        self.counters = Counters()
        self.inbound: queue.Queue[Inbound] = queue.Queue(INBOUND_BATCHES)
        self.sent: queue.Queue[int] = queue.Queue()  # outbox ids the writer has published
        self.outbox: deque[tuple[int, FleetEvent]] = deque()
        self.handed = 0  # highest outbox id handed to the writer
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.state: dict[str, str] = {"reader": "starting", "writer": "starting"}
        self.errors: dict[str, str] = {}
        self.threads = [
            threading.Thread(target=self._read_loop, name="fleet-reader", daemon=True),
            threading.Thread(target=self._write_loop, name="fleet-writer", daemon=True),
        ]

    # -- the daemon's thread ---------------------------------------------------------------
    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(timeout=READ_BLOCK + 5)

    def send(self, rows: list[tuple[int, FleetEvent]]) -> None:
        """Outbox rows (id, event), ids ascending, to publish in this order."""
        rows = [row for row in rows if row[0] > self.handed]
        if not rows:
            return
        self.handed = rows[-1][0]
        with self.cond:
            self.outbox.extend(rows)
            self.cond.notify_all()

    def take(self) -> Inbound | None:
        """The next batch the reader found, if any (take one at a time: the bounded queue
        is what makes the reader wait when the daemon falls behind)."""
        try:
            return self.inbound.get_nowait()
        except queue.Empty:
            return None

    def take_sent(self) -> int | None:
        """The highest outbox id published since the last call, or None."""
        upto = None
        while True:
            try:
                upto = self.sent.get_nowait()
            except queue.Empty:
                return upto

    def health(self) -> dict[str, object]:
        return {
            "host_id": self.host_id,
            **self.state,
            "unsent": len(self.outbox),
            "errors": dict(self.errors),
            "counters": dict(self.counters.values),
        }

    # -- threads ---------------------------------------------------------------------------
    def _post(self, item: Inbound) -> bool:
        while not self.stopping.is_set():
            try:
                self.inbound.put(item, timeout=0.5)
            except queue.Full:
                continue
            self.wake()
            return True
        return False

    def _failed(
        self, role: str, exc: Exception, backoff: float, transport: Transport | None
    ) -> float:
        if self.state[role] != "down":
            log.error(
                "fleet %s: transport failed (retrying with backoff up to %gs; local "
                "banning goes on): %s",
                role,
                BACKOFF_MAX,
                exc,
            )
        self.state[role] = "down"
        self.errors[role] = str(exc)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        self.stopping.wait(backoff)
        return min(backoff * 2, BACKOFF_MAX)

    def _up(self, role: str) -> None:
        if self.state[role] == "down":
            log.warning("fleet %s: transport back", role)
            self.counters.add("reconnects")
        self.state[role] = "up"
        self.errors.pop(role, None)

    def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST
        transport: Transport | None = None
        resumed = False
        cursor = self.cursor
        while not self.stopping.is_set():
            try:
                if transport is None:
                    transport = self.make_transport()
                if not resumed:
                    snapshot = transport.resume(cursor)
                    if snapshot is not None:
                        self.counters.add("snapshot_loads")
                        events = [
                            self._check(decode_snapshot(self.key, v)) for v in snapshot.values
                        ]
                        found = [e for e in events if e is not None]
                        if not self._post(
                            Inbound("snapshot", [("", e) for e in found], snapshot.cursor)
                        ):
                            break
                        cursor = snapshot.cursor
                    resumed = True
                entries = transport.read(cursor or START, READ_BLOCK, READ_COUNT)
                self._up("reader")
                backoff = BACKOFF_FIRST
            except Exception as exc:  # TransportError, or a client bug: never let the thread die
                backoff = self._failed("reader", exc, backoff, transport)
                transport, resumed = None, False
                continue
            if not entries:
                continue
            self.counters.add("received", len(entries))
            batch: list[tuple[str, FleetEvent | None]] = []
            for entry_id, fields in entries:
                batch += self._entry(entry_id, fields)
            if not self._post(Inbound("entries", batch, entries[-1][0])):
                break
            cursor = entries[-1][0]
        if transport is not None:
            transport.close()

    def _entry(self, entry_id: str, fields: object) -> list[tuple[str, FleetEvent | None]]:
        """(cursor, event) items of one entry: only its last item moves the cursor, so a
        restart halfway through an entry reads all of it again (the rest are duplicates)."""
        decoded = decode(self.key, fields, self.host_id)
        if isinstance(decoded, str):
            self._check(decoded)
            return [(entry_id, None)]
        events = [e for e in map(self._check, decoded) if e is not None]
        return [("", e) for e in events] + [(entry_id, None)]

    def _check(self, decoded: FleetEvent | str) -> FleetEvent | None:
        if isinstance(decoded, str):
            self.counters.add("echoes" if decoded == "echo" else decoded)
            if decoded in ("unsigned", "bad_signature"):
                log.debug("fleet: dropped an entry (%s)", decoded)
            return None
        if decoded.origin == self.host_id:
            self.counters.add("echoes")
            return None
        return decoded

    def _write_loop(self) -> None:
        backoff = BACKOFF_FIRST
        transport: Transport | None = None
        while not self.stopping.is_set():
            with self.cond:
                while not self.outbox and not self.stopping.is_set():
                    self.cond.wait()
                batch = [self.outbox[i] for i in range(min(PUBLISH_BATCH, len(self.outbox)))]
            if not batch:
                break
            try:
                if transport is None:
                    transport = self.make_transport()
                transport.publish([event for _, event in batch], time.time())
                self._up("writer")
                backoff = BACKOFF_FIRST
            except Exception as exc:  # TransportError, or a client bug: never let the thread die
                backoff = self._failed("writer", exc, backoff, transport)
                transport = None
                continue
            with self.cond:
                for _ in batch:
                    self.outbox.popleft()
            self.counters.add("published", len(batch))
            self.sent.put(batch[-1][0])
            self.wake()
        if transport is not None:
            transport.close()


def read_secret(path: str, what: str, minimum: int = 1) -> bytes:
    """The first line of a secret file (key or password), refusing one others may read."""
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read(4096).split(b"\n", 1)[0].strip()
    except OSError as exc:
        raise OSError(f"fleet {what} {path}: {exc.strerror or exc}") from None
    if info.st_mode & 0o004:
        raise OSError(f"fleet {what} {path}: readable by every user; chmod o-r it")
    if len(data) < minimum:
        raise OSError(f"fleet {what} {path}: needs at least {minimum} bytes on its first line")
    return data
