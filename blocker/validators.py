"""Validators for configuration values, and the errors they raise. PURE.

A validator is called with a TOML value and returns the parsed value, or raises
Invalid(reason). It also accepts its own output, so defaults are kept parsed (60.0, not "60s")
and already parsed values (JailPolicy's fields) are checked by the very validators that read
the file. `kind` is what the docs' type column says; `show` writes a parsed value as TOML.
check() turns a refusal into ConfigError(path, key, reason) (or a subclass, e.g. FilterError).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, Final, Generic, TypeVar

from blocker.records import Address, Network

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid configuration: which file, which key, and why."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


class Invalid(ValueError):
    """A validator's refusal: the reason, and the sub-key it concerns (e.g. a table's entry)."""

    def __init__(self, reason: str, subkey: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.subkey = subkey


class Validator(Generic[T]):
    """TOML value (or an already parsed one) -> parsed value, or raise Invalid."""

    kind = "value"  # what the docs' type column says

    def __call__(self, value: object) -> T:
        raise NotImplementedError

    def show(self, value: object) -> str:
        """`value` (a parsed default) as one would write it in TOML."""
        return _toml(value)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return (
            "{}"
            if not value
            else "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
        )
    return str(value)


def _bounds(low: float | None, high: float | None, low_open: bool, unit: str = "") -> str:
    """'greater than 0', '>= 1', 'between 0 and 1', '> 0 and <= 1000' ('' if unbounded)."""
    lo, hi = _num(low) + unit, _num(high) + unit
    if low is not None and high is not None:
        return f"> {lo} and <= {hi}" if low_open else f"between {lo} and {hi}"
    if low is not None:
        return f"greater than {lo}" if low_open else f">= {lo}"
    if high is not None:
        return f"<= {hi}"
    return ""


def _num(value: float | None) -> str:
    return "" if value is None else _toml(float(value))


def _as_float(value: int | float) -> float | None:
    """float(value), or None for integers beyond float range (TOML allows 400 digits)."""
    try:
        return float(value)
    except OverflowError:
        return None


@dataclass(frozen=True)
class Number(Validator[float]):
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused

    @property
    def kind(self) -> str:  # type: ignore[override]
        rule = _bounds(self.low, self.high, self.low_open).replace("greater than", ">")
        return f"number {rule}".rstrip()

    def __call__(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("must be a number")
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            raise Invalid("must be a finite number of sensible size")
        too_low = self.low is not None and (
            number <= self.low if self.low_open else number < self.low
        )
        if too_low or (self.high is not None and number > self.high):
            raise Invalid("must be " + _bounds(self.low, self.high, self.low_open))
        return number


@dataclass(frozen=True)
class Integer(Validator[int]):
    low: int
    high: int

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"integer {self.low}-{self.high}"

    def __call__(self, value: object) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (self.low <= value <= self.high)
        ):
            raise Invalid(f"must be an integer from {self.low} to {self.high}")
        return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Duration(Validator[float]):
    """Seconds from a number or text like '90s', '10m', '1h', '7d', '2w'."""

    positive: bool = True  # 0 s refused
    low: float | None = None  # with high: an inclusive range
    high: float | None = None
    permanent: bool = False  # "permanent" (and inf) allowed: no expiry

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.high is not None and self.low is None and self.positive:
            return f"duration > 0, <= {_num(self.high)}s"
        if self.high is not None:
            return f"duration {_num(self.low or 0)}s-{_num(self.high)}s"
        rule = "duration > 0" if self.positive else "duration"
        return rule + ' or "permanent"' if self.permanent else rule

    def show(self, value: object) -> str:
        if value == math.inf:
            return '"permanent"'
        if not isinstance(value, int | float):
            return _toml(value)
        for unit in "dhm":  # "7d" reads better than "1w"
            if value >= _UNITS[unit] and value % _UNITS[unit] == 0:
                return f'"{int(value // _UNITS[unit])}{unit}"'
        return f'"{_num(value)}s"'

    def __call__(self, value: object) -> float:
        hint = " or 'permanent'" if self.permanent else ""
        seconds: float | None
        if isinstance(value, bool):
            seconds = None
        elif isinstance(value, int | float):
            if self.permanent and value == math.inf:
                return math.inf
            seconds = _as_float(value)
            if seconds is None:
                raise Invalid("is far too large")
        elif isinstance(value, str) and value.strip() == "permanent" and self.permanent:
            return math.inf
        elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            seconds = None
        if seconds is None:
            raise Invalid(f"must be a duration like 60, '90s', '10m', '1h', '7d'{hint}")
        if not math.isfinite(seconds) or seconds < 0:
            raise Invalid("must be a finite, non-negative duration")
        if self.high is not None and not (self.low or 0) <= seconds <= self.high:
            raise Invalid(f"must be between {_num(self.low or 0)} s and {_num(self.high)} s")
        if self.positive and seconds <= 0:
            raise Invalid("must be longer than 0 s" + (" (or 'permanent')" if hint else ""))
        return seconds


@dataclass(frozen=True)
class Bool(Validator[bool]):
    kind = "boolean"

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise Invalid("must be true or false")
        return value


@dataclass(frozen=True)
class Choice(Validator[str]):
    options: tuple[str, ...]
    refusal: str = ""  # default: "must be one of a, b"

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(f'"{o}"' for o in self.options)

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise Invalid(self.refusal or f"must be one of {', '.join(self.options)}")
        return value


@dataclass(frozen=True)
class Text(Validator[str]):
    """A string, matching `pattern` in full when one is given; `refusal` says what is wanted."""

    pattern: str | None = None
    refusal: str = "must be a string"
    kind: str = "string"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or (
            self.pattern is not None and re.fullmatch(self.pattern, value) is None
        ):
            raise Invalid(self.refusal)
        return value


@dataclass(frozen=True)
class AbsolutePath(Validator[str]):
    kind = "absolute path"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise Invalid("must be an absolute path")
        return value


@dataclass(frozen=True)
class Regex(Validator["re.Pattern[str] | None"]):
    """A regular expression; "" (and None) mean none."""

    kind = "regular expression"

    def show(self, value: object) -> str:
        return '""' if value is None else _toml(getattr(value, "pattern", value))

    def __call__(self, value: object) -> re.Pattern[str] | None:
        if value is None or value == "":
            return None
        if isinstance(value, re.Pattern):
            return value
        if not isinstance(value, str):
            raise Invalid("must be a regular expression string")
        try:
            return re.compile(value)
        except re.error as exc:
            raise Invalid(f"bad regular expression: {exc}") from exc


@dataclass(frozen=True)
class Strings(Validator[tuple[str, ...]]):
    """A list of strings (or one string, when `single_ok`), each one of `options` if given."""

    refusal: str = "must be a list of strings"
    nonempty: bool = False
    single_ok: bool = False
    options: tuple[str, ...] | None = None
    unknown: str = "unknown {item!r}; choose from {options}"  # refusal of an item not in options
    kind: str = "list of strings"

    def __call__(self, value: object) -> tuple[str, ...]:
        if self.single_ok and isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list | tuple)
            or not all(isinstance(v, str) for v in value)
            or (self.nonempty and not value)
        ):
            raise Invalid(self.refusal)
        for item in value:
            if self.options is not None and item not in self.options:
                raise Invalid(self.unknown.format(item=item, options=", ".join(self.options)))
        return tuple(value)


@dataclass(frozen=True)
class Integers(Validator[tuple[int, ...]]):
    """A list of integers from low to high (or one integer, when `single_ok`)."""

    low: int
    high: int
    single_ok: bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"list of integers {self.low}-{self.high}"

    def __call__(self, value: object) -> tuple[int, ...]:
        if self.single_ok and isinstance(value, int):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and self.low <= v <= self.high
            for v in value
        ):
            raise Invalid(f"must be integers {self.low}-{self.high}")
        return tuple(value)


_HOST_PORT = re.compile(r"\[([^]]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})")


@dataclass(frozen=True)
class HostPort(Validator[tuple[str, int]]):
    """'host:port' or '[v6 address]:port' -> (host, port); port 1-65535."""

    kind = "host:port"

    def show(self, value: object) -> str:
        if isinstance(value, tuple):
            host, port = value
            return f'"[{host}]:{port}"' if ":" in host else f'"{host}:{port}"'
        return _toml(value)

    def __call__(self, value: object) -> tuple[str, int]:
        if isinstance(value, tuple) and len(value) == 2:
            host, port = value
            value = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        refusal = "must be HOST:PORT, an IPv6 address in brackets: '[2001:db8::1]:9100'"
        m = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise Invalid(refusal)
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if m.group(1):
            try:
                IPv6Address(host)
            except ValueError:
                raise Invalid(f"{host!r} is not an IPv6 address") from None
        if not 1 <= int(port) <= 65535:
            raise Invalid("the port must be from 1 to 65535")
        return host, int(port)


_ADDRESS_TYPES = (str, IPv4Address, IPv6Address)
_NETWORK_TYPES = (*_ADDRESS_TYPES, IPv4Network, IPv6Network)


@dataclass(frozen=True)
class Networks(Validator[tuple[Network, ...]]):
    kind = "list of addresses or CIDRs"

    def show(self, value: object) -> str:
        return _toml([str(v) for v in value]) if isinstance(value, tuple) else _toml(value)

    def __call__(self, value: object) -> tuple[Network, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, _NETWORK_TYPES) for v in value
        ):
            raise Invalid("must be a list of addresses or CIDR networks")
        networks: list[Network] = []
        for item in value:
            try:
                networks.append(ip_network(item, strict=False))
            except ValueError:
                raise Invalid(f"{item!r} is not an address or network") from None
        return tuple(networks)


@dataclass(frozen=True)
class Addresses(Validator[tuple[Address, ...]]):
    kind = "list of addresses"

    def show(self, value: object) -> str:
        return _toml([str(v) for v in value]) if isinstance(value, tuple) else _toml(value)

    def __call__(self, value: object) -> tuple[Address, ...]:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, _ADDRESS_TYPES) for v in value
        ):
            raise Invalid("must be a list of addresses")
        addresses: list[Address] = []
        for item in value:
            try:
                addresses.append(ip_address(item))
            except ValueError:
                raise Invalid(f"{item!r} is not an IP address") from None
        return tuple(addresses)


@dataclass(frozen=True)
class Table(Validator[dict[str, T]]):
    """A table of name = value, each value checked by `values`; errors name the entry."""

    values: Validator[T]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"table of name = {self.values.kind}"

    def __call__(self, value: object) -> dict[str, T]:
        parsed: dict[str, T] = {}
        for name, item in ANY_TABLE(value).items():
            try:
                parsed[name] = self.values(item)
            except Invalid as exc:
                raise Invalid(exc.reason, join_key(name, exc.subkey)) from None
        return parsed


@dataclass(frozen=True)
class OrNone(Validator["T | None"]):
    """`inner`, or None: for a key whose absence means "off" (TOML itself has no null)."""

    inner: Validator[T]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.inner.kind

    def show(self, value: object) -> str:
        return "(none)" if value is None else self.inner.show(value)

    def __call__(self, value: object) -> T | None:
        return None if value is None else self.inner(value)


@dataclass(frozen=True)
class AnyTable(Validator[dict[str, Any]]):
    """A TOML table, its entries unchecked (the caller checks them)."""

    kind = "table"

    def __call__(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid("must be a table" if value is not None else "is missing")
        return value


ANY_TABLE: Final = AnyTable()


def join_key(*parts: str) -> str:
    """'a.b' from 'a', 'b', leaving out empty parts."""
    return ".".join(part for part in parts if part)


def check(
    validator: Validator[T],
    value: object,
    where: str,
    key: str,
    error: type[ConfigError] = ConfigError,
) -> T:
    """validator(value), or `error`(where, key, reason)."""
    try:
        return validator(value)
    except Invalid as exc:
        raise error(where, join_key(key, exc.subkey), exc.reason) from None


# syslog levels by name, as iptables' --log-level and nftables' `log level` take them.
SYSLOG_LEVELS: Final = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


@dataclass(frozen=True)
class SyslogLevel(Validator[int]):
    """A syslog level by name ("warning") or number (0-7) -> the number."""

    kind = "syslog level: name or 0-7"

    def __call__(self, value: object) -> int:
        if isinstance(value, str) and value in SYSLOG_LEVELS:
            return SYSLOG_LEVELS[value]
        if type(value) is int and 0 <= value <= 7:
            return value
        raise Invalid(f"must be a syslog level 0-7 or one of {', '.join(SYSLOG_LEVELS)}")

    def show(self, value: object) -> str:
        names = {number: name for name, number in SYSLOG_LEVELS.items()}
        return f'"{names[value]}"' if isinstance(value, int) and value in names else str(value)
