"""The fleet transport on Redis: a stream for the events, a hash and a sorted set for a snapshot.

    <prefix>:events   stream; entry fields e (JSON array of up to 500 events) and s (its
                      HMAC); trimmed with MINID
    <prefix>:bans     hash   target -> "<hmac> <event JSON>" of the newest ban of each target
    <prefix>:expiry   zset   target -> expiry (epoch s; +inf permanent), to prune the hash

Every host reads the whole stream with XREAD from its own cursor (no consumer groups: those
split the messages between readers, and every host needs every event). One publish is one
MULTI/EXEC, so the stream and the snapshot never disagree, and a snapshot read in MULTI/EXEC
with the stream's last ID is a consistent place to go on reading from.

Only calls that redis-py 4.3 (Debian 12) and 6.x (Debian 13, PyPI) share are used.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import RedisError

from blocker.fleet.events import MAX_EVENTS_PER_ENTRY, FleetEvent, entry, snapshot_value
from blocker.fleet.transport import START, Snapshot, TransportError
from blocker.records import network_text

log = logging.getLogger("blocker.fleet")
PRUNE_EVERY = 60.0  # seconds between sweeps of expired bans out of the snapshot
CONNECT_TIMEOUT = 5.0


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisTransport:
    def __init__(
        self,
        url: str,
        *,
        key: bytes,
        username: str | None = None,
        password: str | None = None,
        prefix: str = "blocker",
        retention: float = 86400.0,
        read_timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        self.key = key
        self.retention = retention
        self.stream = f"{prefix}:events"
        self.bans = f"{prefix}:bans"
        self.expiry = f"{prefix}:expiry"
        options: dict[str, Any] = {"socket_timeout": read_timeout}
        if not url.startswith("unix:"):  # redis-py 4.3's Unix connections do not take it
            options["socket_connect_timeout"] = CONNECT_TIMEOUT
        if username is not None:
            options["username"] = username
        if password is not None:
            options["password"] = password
        self.tls = url.startswith("rediss://")
        if self.tls:
            # The server's certificate chain and its name in the URL, both checked (redis-py
            # 4.3 checks no host name by default); the system's CAs unless ca_file is given.
            options["ssl_cert_reqs"] = "required"
            options["ssl_check_hostname"] = True
            if ca_file is not None:
                options["ssl_ca_certs"] = ca_file
        try:
            # Any: redis-py 4.3 has no type hints and 6.x's differ; the calls are checked by
            # the tests against a real server with both.
            self.client: Any = redis.Redis.from_url(url, **options)
        except ValueError as exc:  # a URL redis-py cannot parse
            raise TransportError(f"bad fleet url: {exc}") from exc
        self._next_prune = 0.0

    def publish(self, events: Sequence[FleetEvent], now: float) -> None:
        minid = f"{max(0, int((now - self.retention) * 1000))}"
        newest: dict[str, FleetEvent] = {}  # the snapshot keeps each target's last word
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(events), MAX_EVENTS_PER_ENTRY):
            chunk = events[start : start + MAX_EVENTS_PER_ENTRY]
            pipe.xadd(self.stream, entry(self.key, chunk), minid=minid, approximate=True)
            newest.update((network_text(event.target), event) for event in chunk)
        bans = {t: e for t, e in newest.items() if e.kind == "ban"}
        unbans = [t for t, e in newest.items() if e.kind == "unban"]
        if bans:
            pipe.hset(self.bans, mapping={t: snapshot_value(self.key, e) for t, e in bans.items()})
            pipe.zadd(
                self.expiry,
                {t: "+inf" if math.isinf(e.expires) else e.expires for t, e in bans.items()},
            )
        if unbans:
            pipe.hdel(self.bans, *unbans)
            pipe.zrem(self.expiry, *unbans)
        try:
            pipe.execute()
            if now >= self._next_prune:
                self._prune(now)
                self._next_prune = now + PRUNE_EVERY
        except (RedisError, OSError) as exc:
            raise _failure(exc, self.tls) from exc

    def _prune(self, now: float) -> None:
        """Expired bans out of the snapshot; WATCH makes a concurrent new ban win."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.expiry)
            gone = pipe.zrangebyscore(self.expiry, "-inf", now, start=0, num=10000)
            if not gone:
                return
            pipe.multi()
            pipe.hdel(self.bans, *gone)
            pipe.zrem(self.expiry, *gone)
            # Another host wrote meanwhile (WatchError): the next sweep gets them.
            with contextlib.suppress(redis.WatchError):
                pipe.execute()

    def resume(self, cursor: str | None) -> Snapshot | None:
        try:
            if cursor is not None and not self._trimmed_past(cursor):
                return None
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self.bans)
            pipe.xrevrange(self.stream, "+", "-", count=1)
            values, last = pipe.execute()
        except (RedisError, OSError) as exc:
            raise _failure(exc, self.tls) from exc
        position = _text(last[0][0]) if last else START
        if cursor is not None:
            log.warning(
                "fleet: events after %s were trimmed from the stream: loading the "
                "snapshot of %d active ban(s)",
                cursor,
                len(values),
            )
        return Snapshot(list(values.values()) if isinstance(values, dict) else [], position)

    def _trimmed_past(self, cursor: str) -> bool:
        """May entries after `cursor` have been trimmed? Redis 7 counts the entries ever
        added (none deleted: no gap); else the first entry left is compared with the cursor,
        which errs towards loading the snapshot, never towards missing a ban."""
        try:
            info = self.client.xinfo_stream(self.stream)
        except redis.ResponseError:
            return False  # no stream yet: nothing was trimmed
        fields: dict[str, Any] = {_text(k): v for k, v in info.items()}
        length = int(fields.get("length") or 0)
        added = fields.get("entries-added")
        if added is not None and int(added) == length:
            return False
        if length == 0:
            last = fields.get("last-generated-id")
            return last is not None and stream_id(cursor) < stream_id(_text(last))
        first: Any = fields.get("first-entry")
        return bool(first) and stream_id(cursor) < stream_id(_text(first[0]))

    def read(self, cursor: str, block: float, count: int) -> list[tuple[str, object]]:
        try:
            reply = self.client.xread(
                {self.stream: cursor}, count=count, block=max(1, int(block * 1000))
            )
        except (RedisError, OSError) as exc:
            raise _failure(exc, self.tls) from exc
        found: list[tuple[str, object]] = []
        for _name, entries in reply or ():
            for entry_id, fields in entries:
                found.append((_text(entry_id), fields))
        return found

    def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            self.client.close()


def _failure(exc: Exception, tls: bool) -> TransportError:
    """The error to retry on, said plainly when it is TLS refusing the server."""
    text = str(exc) or type(exc).__name__
    if tls and ("CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text):
        return TransportError(
            "TLS: the Redis server's certificate was refused (not signed by [fleet] "
            f"ca_file, or by the system's CAs without it, or not for the url's host): {text}"
        )
    return TransportError(text)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
