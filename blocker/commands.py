"""The admin commands as types: what blockerctl asks and what blockerd answers.

blockerctl builds a request and sends `request.to_message()`; blockerd turns the message back
into the same type with `from_message()`, which refuses a malformed field with RequestError
before any command runs. The replies are TypedDicts, the JSON shapes both sides read. How the
bytes travel (a Unix socket, JSON lines) is control.py's business, not this module's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, NotRequired, Protocol, Self, TypedDict, TypeVar

from blocker.config import ConfigError, duration

Message = dict[str, Any]  # one decoded JSON request: {"cmd": name, ...fields}
Handler = Callable[[Message], object]


class RequestError(ValueError):
    """A request the daemon refuses: the message goes back to the client."""


def iso_time(epoch: float) -> str:
    """How replies and reports write a wall-clock time: UTC, ISO 8601, to the second."""
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "invalid-time"


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRequest:
    command: ClassVar[str] = "status"

    def to_message(self) -> Message:
        return {"cmd": self.command}

    @classmethod
    def from_message(cls, _message: Message) -> StatusRequest:
        return cls()


@dataclass(frozen=True)
class ListRequest:
    command: ClassVar[str] = "list"
    jail: str | None = None  # only this jail's bans

    def to_message(self) -> Message:
        message: Message = {"cmd": self.command}
        if self.jail is not None:
            message["jail"] = self.jail
        return message

    @classmethod
    def from_message(cls, message: Message) -> ListRequest:
        jail = message.get("jail")
        if jail is not None and not isinstance(jail, str):
            raise RequestError("jail must be a string")
        return cls(jail)


@dataclass(frozen=True)
class ReloadRequest:
    command: ClassVar[str] = "reload"

    def to_message(self) -> Message:
        return {"cmd": self.command}

    @classmethod
    def from_message(cls, _message: Message) -> ReloadRequest:
        return cls()


@dataclass(frozen=True)
class BanRequest:
    """`target` as the admin typed it (the daemon decides whether it may be banned);
    `duration` in seconds, math.inf = permanent, None = the jail's ban_time."""

    command: ClassVar[str] = "ban"
    target: str
    duration: float | None = None
    jail: str | None = None

    def to_message(self) -> Message:
        message: Message = {"cmd": self.command, "target": self.target}
        if self.duration is not None:  # JSON has no infinity
            message["duration"] = "permanent" if math.isinf(self.duration) else self.duration
        if self.jail is not None:
            message["jail"] = self.jail
        return message

    @classmethod
    def from_message(cls, message: Message) -> BanRequest:
        jail = message.get("jail")
        if jail is not None and not isinstance(jail, str):
            raise RequestError(f"no jail {jail!r}")
        return cls(
            target=_target_text(message), duration=_duration(message.get("duration")), jail=jail
        )


@dataclass(frozen=True)
class UnbanRequest:
    command: ClassVar[str] = "unban"
    target: str
    fleet: bool = False  # also publish the unban to the fleet (blockerctl unban --fleet)

    def to_message(self) -> Message:
        message: Message = {"cmd": self.command, "target": self.target}
        if self.fleet:
            message["fleet"] = True
        return message

    @classmethod
    def from_message(cls, message: Message) -> UnbanRequest:
        fleet = message.get("fleet", False)
        if not isinstance(fleet, bool):
            raise RequestError("fleet must be true or false")
        return cls(target=_target_text(message), fleet=fleet)


@dataclass(frozen=True)
class ExplainRequest:
    command: ClassVar[str] = "explain"
    address: str

    def to_message(self) -> Message:
        return {"cmd": self.command, "address": self.address}

    @classmethod
    def from_message(cls, message: Message) -> ExplainRequest:
        address = message.get("address")
        if not isinstance(address, str):
            raise RequestError("explain needs an address")
        return cls(address=address)


Request = StatusRequest | ListRequest | ReloadRequest | BanRequest | UnbanRequest | ExplainRequest


def _target_text(message: Message) -> str:
    target = message.get("target")
    if not isinstance(target, str) or not target.strip():
        raise RequestError("give an address or a network, e.g. 203.0.113.7 or 203.0.113.0/24")
    return target


def _duration(raw: object) -> float | None:
    if raw is None:
        return None
    try:
        seconds = duration(raw, "ban", "duration", permanent_ok=True)
    except ConfigError as exc:
        raise RequestError(f"duration: {exc.reason}") from exc
    if seconds <= 0:
        raise RequestError("duration must be longer than 0 s")
    return seconds


# -- replies ----------------------------------------------------------------------------------
# `ban`, `unban` and `reload` answer one sentence (a str).


class JailStatus(TypedDict):
    filters: list[str]
    source: str  # 'kind:path', see running_jails.source_label
    hits: dict[str, int]  # per filter, only those with hits
    tracked: int
    active_bans: int
    refused_bans: int  # bans the kernel refused since start
    last_ban: str | None  # iso_time
    scorer: dict[str, int | bool]  # the scorer's counters


class SetStatus(TypedDict):
    name: str
    entries: int
    capacity: int | None  # the kernel set's maxelem, when the backend has one


class FirewallChecks(TypedDict):
    ok: bool  # the last rule and set check succeeded
    failures: int
    repairs: dict[str, int]  # set, rule, duplicate_rule


class StatusReply(TypedDict):
    version: str
    uptime: float
    lines: int
    parsed: int
    unparsed: int
    malformed: int
    active_bans: int
    refused_bans: int
    spared_live_peers: int
    conntrack: str  # "off", "ok", or why conntrack cannot be asked
    jails: dict[str, JailStatus]
    sources: list[dict[str, object]]  # one per source: its own health fields
    firewall: object  # the backend's own status, or {"error": why}
    sets: dict[str, SetStatus]  # "ipv4", "ipv6"
    firewall_checks: FirewallChecks
    fleet: NotRequired[dict[str, object]]  # the fleet link's report, on a host in a fleet


class ListedBan(TypedDict):
    """One row of `list`: the kernel's entry, with the jail and reason blockerd knows."""

    target: str
    jail: str
    origin: str  # auto, manual, fleet:HOST; "" when the state does not know the entry
    expires: str | None  # iso_time; None = permanent
    remaining: int | None  # seconds; None = permanent
    reason: str


class CoveringBan(TypedDict):
    target: str
    jail: str
    reason: str
    origin: str
    expires: str | None


class SparedBan(TypedDict):
    """A ban spare_live_peers refused: the target held a live connection."""

    target: str
    jail: str
    at: str  # iso_time
    reason: str


class ExplainReply(TypedDict):
    address: str
    banned_by: list[CoveringBan]
    spared: list[SparedBan]
    refusal: str | None  # why it may never be banned, or None
    jails: dict[str, dict[str, object]]  # per jail: the scorer's account of the address


class Streamed:
    """A reply result too large to build at once (`list` of a million bans): JSON values
    made a batch at a time, each batch when the client has read the last. The reply on the
    wire is the same one JSON line a list would give."""

    def __init__(self, batches: Iterator[Sequence[object]]) -> None:
        self.batches = batches


# -- the dispatch table -----------------------------------------------------------------------


class Parsed(Protocol):
    """A request type: its command name, and how a raw message becomes one."""

    command: ClassVar[str]

    @classmethod
    def from_message(cls, message: Message) -> Self: ...


R = TypeVar("R", bound=Parsed)


def route(
    kind: type[R], run: Callable[[R, float], object], clock: Callable[[], float]
) -> tuple[str, Handler]:
    """One entry of a dispatch table: command name -> a handler that parses the raw message
    into `kind` (a malformed one is a RequestError before any command runs), then calls
    `run` with the request and the time of the call."""
    return kind.command, lambda message: run(kind.from_message(message), clock())
