"""Fleet events: what one host tells the others, signed. PURE (no I/O, time passed in).

An event is a JSON object; a stream entry holds a JSON array of up to 500 events of one host,
signed with HMAC-SHA256 under the fleet's shared key:

    {"v": 1, "kind": "ban", "id": "<32 hex>", "origin": "web-7", "target": "203.0.113.7/32",
     "jail": "probes", "at": 1764450000.0, "expires": 1764450600.0, "reason": "..."}

`expires` is absolute (seconds since the epoch, UTC; null = permanent), so a late reader
applies only the time left. An unban carries the same fields; its `expires` is null.

decode() checks everything a stranger could get wrong on purpose: size, signature, JSON shape,
each field's type and range. It returns the events, or the name of the counter the drop goes
to. The snapshot holds one event per target, each signed on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from socket import AF_INET, AF_INET6, inet_pton
from typing import Final, Literal

from blocker.records import Network, network_text

VERSION: Final = 1
MAX_PAYLOAD: Final = 2048  # bytes of one event's JSON; a real one is about 250
MAX_EVENTS_PER_ENTRY: Final = 500
MAX_ENTRY_BYTES: Final = MAX_EVENTS_PER_ENTRY * MAX_PAYLOAD
MAX_REASON: Final = 400
SIGNATURE_HEX: Final = 64  # HMAC-SHA256, hex
MIN_KEY_BYTES: Final = 16
HOST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")
_JAIL: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_EVENT_ID: Final = re.compile(r"[0-9a-f]{32}")
# Fields of a stream entry: the payload and its signature.
PAYLOAD_FIELD: Final = b"e"
SIGNATURE_FIELD: Final = b"s"

Kind = Literal["ban", "unban"]
# Why an entry (or one event of it) was dropped: each is a counter in `blockerctl status`.
# "echo": this host's own event, passed over unchecked (it ignores its own echoes anyway).
Drop = Literal["unsigned", "bad_signature", "oversized", "malformed", "echo"]


@dataclass(frozen=True)
class FleetEvent:
    kind: Kind
    id: str
    origin: str  # the host_id of the host that published it
    target: Network
    jail: str
    at: float  # when the origin decided, epoch seconds
    expires: float  # epoch seconds (UTC); math.inf = permanent; unbans: math.inf
    reason: str

    def payload(self) -> bytes:
        return self._payload

    @cached_property
    def _payload(self) -> bytes:
        """The JSON, written out by hand (a publisher writes 100,000 in a burst, each for the
        stream and the snapshot): sorted keys, strings through json.dumps, finite floats by
        repr, which JSON reads back exactly."""
        expires = "null" if math.isinf(self.expires) else repr(float(self.expires))
        return (
            f'{{"at":{float(self.at)!r},"expires":{expires},"id":{_json(self.id)},'
            f'"jail":{_json(self.jail)},"kind":{_json(self.kind)},'
            f'"origin":{_json(self.origin)},"reason":{_json(self.reason[:MAX_REASON])},'
            f'"target":"{network_text(self.target)}","v":{VERSION}}}'
        ).encode()


_json = json.dumps


def sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).hexdigest().encode()


def entry(key: bytes, events: Sequence[FleetEvent]) -> dict[bytes, bytes]:
    """The stream entry's fields for up to MAX_EVENTS_PER_ENTRY events of one host: a JSON
    array of their payloads, signed once (a burst of 100,000 bans is 200 XADDs, not 100,000)."""
    assert 0 < len(events) <= MAX_EVENTS_PER_ENTRY
    payload = b"[" + b",".join(event.payload() for event in events) + b"]"
    return {PAYLOAD_FIELD: payload, SIGNATURE_FIELD: sign(key, payload)}


def snapshot_value(key: bytes, event: FleetEvent) -> bytes:
    """The snapshot hash's value for `event`: signature, a space, the payload."""
    payload = event.payload()
    return sign(key, payload) + b" " + payload


def decode_snapshot(key: bytes, value: object) -> FleetEvent | Drop:
    if not isinstance(value, bytes):
        return "malformed"
    signature, space, payload = value.partition(b" ")
    if not space or len(signature) != SIGNATURE_HEX:
        return "unsigned"
    if len(payload) > MAX_PAYLOAD:
        return "oversized"
    if not _signed(key, payload, signature):
        return "bad_signature"
    try:
        return _event(json.loads(payload)) or "malformed"
    except (ValueError, RecursionError):
        return "malformed"


def decode(key: bytes, fields: object, own: str | None = None) -> list[FleetEvent | Drop] | Drop:
    """The events of one stream entry ({field: value} as read), each an event, "malformed" or
    "echo" (its origin is `own`); or why the whole entry is dropped."""
    if not isinstance(fields, dict):
        return "malformed"
    payload = fields.get(PAYLOAD_FIELD)
    signature = fields.get(SIGNATURE_FIELD)
    if not isinstance(payload, bytes):
        return "malformed"
    if len(payload) > MAX_ENTRY_BYTES or len(fields) > 2:
        return "oversized"
    if not isinstance(signature, bytes) or not signature:
        return "unsigned"
    if not _signed(key, payload, signature):
        return "bad_signature"
    # Signed by a holder of the key: still checked field by field (a bug on a peer must not
    # crash this host either).
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return "malformed"
    if not isinstance(data, list) or not 0 < len(data) <= MAX_EVENTS_PER_ENTRY:
        return "malformed"
    return [
        (
            "echo"
            if isinstance(item, dict) and item.get("origin") == own and own
            else _event(item) or "malformed"
        )
        for item in data
    ]


def _signed(key: bytes, payload: bytes, signature: bytes) -> bool:
    return len(signature) == SIGNATURE_HEX and hmac.compare_digest(sign(key, payload), signature)


def from_payload(payload: bytes) -> FleetEvent | None:
    """An event this host wrote itself (its outbox); None if the row is damaged."""
    try:
        return _event(json.loads(payload))
    except (ValueError, RecursionError):
        return None


def _event(data: object) -> FleetEvent | None:
    if not isinstance(data, dict) or data.get("v") != VERSION:
        return None
    kind, event_id, origin = data.get("kind"), data.get("id"), data.get("origin")
    target_text, jail, reason = data.get("target"), data.get("jail"), data.get("reason")
    at, expires = data.get("at"), data.get("expires")
    if (
        kind not in ("ban", "unban")
        or not _text(event_id, _EVENT_ID)
        or not _text(origin, HOST_ID)
        or not _text(jail, _JAIL)
    ):
        return None
    if (
        not isinstance(reason, str)
        or len(reason) > MAX_REASON
        or not isinstance(target_text, str)
        or len(target_text) > 50
    ):
        return None
    if not _time(at) or not (expires is None or _time(expires)):
        return None
    target = _network(target_text)
    if target is None:
        return None
    assert isinstance(at, int | float) and isinstance(event_id, str) and isinstance(origin, str)
    assert isinstance(jail, str)
    return FleetEvent(
        kind=kind,
        id=event_id,
        origin=origin,
        target=target,
        jail=jail,
        at=float(at),
        expires=math.inf if expires is None else float(expires),
        reason=reason,
    )


def _network(text: str) -> Network | None:
    """ip_network(text, strict=True), about five times faster for a single address (a burst
    of 100,000 remote bans parses 100,000 of them)."""
    try:
        if "/" in text:
            return ip_network(text, strict=True)
        if ":" in text:
            return IPv6Network((int.from_bytes(inet_pton(AF_INET6, text), "big"), 128))
        return IPv4Network((int.from_bytes(inet_pton(AF_INET, text), "big"), 32))
    except (ValueError, OSError):  # inet_pton raises OSError for text it cannot read
        return None


def _text(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _time(value: object) -> bool:
    """An epoch time between 2000 and 2200 (bool is an int in Python: refused)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 946684800 <= value <= 7258118400
    )
