"""The fleet inside blockerd's loop: outbox rows out to the link, remote bans in, cursor saved.

Everything here runs in the daemon's one thread; the link's threads only move bytes.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import time
from collections.abc import Callable, Sequence

from blocker.config import Config
from blocker.fleet.events import HOST_ID, MIN_KEY_BYTES, FleetEvent, from_payload
from blocker.fleet.inbox import Inbox
from blocker.fleet.link import FleetLink, read_secret
from blocker.fleet.transport import Transport
from blocker.fleet_role import FleetRole
from blocker.state import State

log = logging.getLogger("blocker.fleet")
# Other hosts' events into this host's ban ledger (Service.apply_remote) -> counts by outcome
ApplyRemote = Callable[[Sequence[FleetEvent], float], dict[str, int]]
INBOX_ROOM = 5000  # remote events waiting in the daemon before it takes the next batch


def host_name() -> str:
    """The hostname as a host_id: its first label when the full name does not fit."""
    name = socket.gethostname()
    if HOST_ID.fullmatch(name):
        return name
    short = name.split(".", 1)[0]
    if HOST_ID.fullmatch(short):
        return short
    raise OSError(f"hostname {name!r} cannot be a fleet host_id: set [fleet] host_id")


class FleetWiring:
    def __init__(
        self,
        config: Config,
        state: State,
        apply_remote: ApplyRemote,
        link: FleetLink,
        position: str,
        *,
        role: FleetRole,
    ) -> None:
        self.state = state
        self.apply_remote = apply_remote
        self.role = role  # handed to the Service, which applies and publishes bans
        self.link = link
        self.position = position
        self.url = config.fleet.url
        self.inbox = Inbox(config.fleet.max_remote_bans_per_second)
        self.applied: dict[str, int] = {}
        self.damaged = 0

    @classmethod
    def open(
        cls, config: Config, state: State, apply_remote: ApplyRemote, wake: Callable[[], None]
    ) -> FleetWiring:
        """Raises OSError for an unreadable key or password file or an unusable hostname."""
        fleet = config.fleet
        assert fleet.url is not None and fleet.key_file is not None
        if importlib.util.find_spec("redis") is None:  # else the link would retry forever
            raise OSError(
                "[fleet] url is set, but redis-py is not installed (Debian: python3-redis)"
            )
        key = read_secret(fleet.key_file, "key_file", MIN_KEY_BYTES)
        password = (
            read_secret(fleet.password_file, "password_file").decode()
            if fleet.password_file
            else None
        )
        host_id = fleet.host_id or host_name()
        url = fleet.url
        ca_file = fleet.ca_file
        if ca_file is not None:
            check_ca_file(ca_file)

        def transport() -> Transport:
            # Imported here: only a host in a fleet needs redis-py.
            from blocker.fleet.redis_transport import RedisTransport  # noqa: PLC0415

            return RedisTransport(
                url,
                key=key,
                username=fleet.username,
                password=password,
                prefix=fleet.key_prefix,
                retention=fleet.retention,
                ca_file=ca_file,
            )

        position = f"fleet:{fleet.key_prefix}"
        saved = state.position(position)
        cursor = saved.get("cursor") if saved else None
        link = FleetLink(
            transport,
            key=key,
            host_id=host_id,
            cursor=cursor if isinstance(cursor, str) else None,
            wake=wake,
        )
        log.info(
            "fleet: host %s on %s, sharing jails: %s; %s other hosts' bans",
            host_id,
            _redacted(url),
            ", ".join(fleet.publish) or "none",
            "applying" if fleet.accept else "not applying",
        )
        role = FleetRole(host_id, frozenset(fleet.publish), fleet.accept)
        return cls(config, state, apply_remote, link, position, role=role)

    def start(self) -> None:
        self.hand_outbox()
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    def reconfigure(self, config: Config) -> None:
        """A reload (the Service takes the new jails shared and `accept` itself): the rate
        changes at once; the connection does not."""
        fleet = config.fleet
        self.inbox.rate = fleet.max_remote_bans_per_second
        if fleet.url != self.url:
            log.warning("fleet: url changed in the configuration; restart blockerd to use it")

    def due(self) -> float:
        """The monotonic time the loop must wake up by for waiting remote bans."""
        if len(self.inbox) < INBOX_ROOM and not self.link.inbound.empty():
            return time.monotonic()
        due = self.inbox.due(time.monotonic())
        return float("inf") if due is None else due

    def turn(self) -> None:
        upto = self.link.take_sent()
        if upto is not None:  # in the daemon's transaction for this turn
            self.state.sent_outbox(upto)
        while len(self.inbox) < INBOX_ROOM:
            batch = self.link.take()
            if batch is None:
                break
            if batch.kind == "snapshot":
                self.inbox.add_snapshot(
                    [e for _, e in batch.entries if e is not None], batch.cursor
                )
            else:
                self.inbox.add(batch.entries)
        taken = self.inbox.take(time.monotonic())
        if taken.cursor is None:
            return
        counts = self.apply_remote(taken.events, time.time())
        counts["duplicates"] = taken.duplicates
        for name, count in counts.items():
            self.applied[name] = self.applied.get(name, 0) + count
        self.state.save_position(self.position, {"cursor": taken.cursor})

    def hand_outbox(self) -> None:
        """Committed outbox rows the writer has not had yet, in order."""
        rows = self.state.outbox(self.link.handed)
        if not rows:
            return
        events = []
        for row_id, payload in rows:
            event = from_payload(payload)
            if event is None:  # cannot happen short of a damaged file: skip, never stall
                self.damaged += 1
                log.error("fleet: outbox row %d is damaged; skipped", row_id)
                continue
            events.append((row_id, event))
        if events:
            self.link.send(events)
        self.link.handed = rows[-1][0]

    def health(self) -> dict[str, object]:
        return {
            **self.link.health(),
            "waiting": len(self.inbox),
            "remote": dict(self.applied),
            "damaged_outbox_rows": self.damaged,
        }


def check_ca_file(path: str) -> None:
    """Raises OSError when `path` holds no PEM certificate to verify the Redis server with
    (else every connection would fail later, and only in the log)."""
    try:
        with open(path, "rb") as handle:
            pem = handle.read(1 << 20)
    except OSError as exc:
        raise OSError(f"fleet ca_file {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise OSError(f"fleet ca_file {path}: no PEM certificate in it")


def _redacted(url: str) -> str:
    """The URL without a password someone put in it."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
