"""Fleet events: what one host tells the others, signed. PURE (no I/O, time passed in).

An event is a JSON object, signed with HMAC-SHA256 under the fleet's shared key:

    {"v": 1, "kind": "ban", "id": "<32 hex>", "origin": "web-7", "target": "203.0.113.7/32",
     "jail": "probes", "at": 1764450000.0, "expires": 1764450600.0, "reason": "..."}

`expires` is absolute (seconds since the epoch, UTC; null = permanent), so a late reader
applies only the time left. An unban carries the same fields; its `expires` is null.

decode() checks everything a stranger could get wrong on purpose: size, signature, JSON shape,
each field's type and range. It returns the event or the name of the counter the drop goes to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Final, Literal

from blocker.records import Network, network_text

VERSION: Final = 1
MAX_PAYLOAD: Final = 2048  # bytes of JSON; a real event is about 250
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
# Why an entry was dropped: each is a counter in `blockerctl status`.
Drop = Literal["unsigned", "bad_signature", "oversized", "malformed"]


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
        return json.dumps({
            "v": VERSION, "kind": self.kind, "id": self.id, "origin": self.origin,
            "target": network_text(self.target),
            "jail": self.jail, "at": self.at,
            "expires": None if math.isinf(self.expires) else self.expires,
            "reason": self.reason,
        }, separators=(",", ":"), sort_keys=True).encode()


def sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).hexdigest().encode()


def entry(key: bytes, event: FleetEvent) -> dict[bytes, bytes]:
    """The stream entry's fields for `event`."""
    payload = event.payload()
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
    return decode(key, {PAYLOAD_FIELD: payload, SIGNATURE_FIELD: signature})


def decode(key: bytes, fields: object) -> FleetEvent | Drop:
    """The event of one stream entry ({field: value} as read), or why it is dropped."""
    if not isinstance(fields, dict):
        return "malformed"
    payload = fields.get(PAYLOAD_FIELD)
    signature = fields.get(SIGNATURE_FIELD)
    if not isinstance(payload, bytes):
        return "malformed"
    if len(payload) > MAX_PAYLOAD or len(fields) > 2:
        return "oversized"
    if not isinstance(signature, bytes) or not signature:
        return "unsigned"
    if len(signature) != SIGNATURE_HEX or not hmac.compare_digest(sign(key, payload),
                                                                  signature):
        return "bad_signature"
    # Signed by a holder of the key: still checked field by field (a bug on a peer must not
    # crash this host either).
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return "malformed"
    return _event(data) or "malformed"


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
    if kind not in ("ban", "unban") or not _text(event_id, _EVENT_ID) or not _text(
            origin, HOST_ID) or not _text(jail, _JAIL):
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not isinstance(
            target_text, str) or len(target_text) > 50:
        return None
    if not _time(at) or not (expires is None or _time(expires)):
        return None
    try:
        target = ip_network(target_text, strict=True)
    except ValueError:
        return None
    assert isinstance(at, int | float) and isinstance(event_id, str) and isinstance(origin, str)
    assert isinstance(jail, str)
    return FleetEvent(kind=kind, id=event_id, origin=origin, target=target, jail=jail,
                      at=float(at), expires=math.inf if expires is None else float(expires),
                      reason=reason)


def _text(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _time(value: object) -> bool:
    """An epoch time between 2000 and 2200 (bool is an int in Python: refused)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 946684800 <= value <= 7258118400)
