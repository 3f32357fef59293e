"""jails.toml -> Config, or ConfigError(path, key, reason). Pure apart from reading the files.

    filters_dir = "filters"            # relative to this file
    [firewall]  backend, set_v4, set_v6, rule_check_interval, maxelem
    [defaults]  any jail key, inherited by every jail
    [jails.NAME] filters = [...], plus any jail key

Durations are seconds (a number) or text: "90s", "10m", "1h", "7d", "2w"; ban_time may be
"permanent". Unknown keys are errors: a typo must not silently weaken a security tool.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from blocker.filters import Filter, FilterError, Matcher, load_filters
from blocker.records import Address, Network
from blocker.scoring import JailPolicy

SOURCES = ("auto", "kernlog", "journald", "kmsg")
BACKENDS = ("ipset", "dry-run")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_JAIL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}")

# Every jail key with its default; [defaults] and [jails.X] accept exactly these (+ filters).
JAIL_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "source": "auto",
    "log_path": "/var/log/kern.log",
    "prefix": "",
    "weights": {},
    "threshold": 5.0,
    "window": 60.0,
    "repeat_factor": 0.25,
    "ban_time": 600.0,
    "ban_factor": 2.0,
    "max_ban_time": 7 * 86400.0,
    "history_window": 30 * 86400.0,
    "subnet_min_offenders": 3,
    "subnet_window": 3600.0,
    "subnet_v4_prefix": 24,
    "subnet_v6_prefix": 64,
    "allow": [],
    "own_addresses": [],
    "max_tracked": 100_000,
}
_DURATION_KEYS = ("window", "ban_time", "max_ban_time", "history_window", "subnet_window")
_FIREWALL_DEFAULTS: dict[str, Any] = {
    "backend": "ipset",
    "set_v4": "blocker4",
    "set_v6": "blocker6",
    "rule_check_interval": 2.0,
    "maxelem": 1_048_576,
}


class ConfigError(ValueError):
    """Invalid configuration: which file, which key, and why."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Jail:
    name: str
    source: str
    log_path: str
    filters: tuple[tuple[Filter, float], ...]  # ordered chain: (filter, weight in this jail)
    policy: JailPolicy
    prefix: re.Pattern[str] | None = None

    def matcher(self) -> Matcher:
        return Matcher(self.name, self.filters, self.prefix)


@dataclass(frozen=True)
class FirewallConfig:
    backend: str = "ipset"
    set_v4: str = "blocker4"
    set_v6: str = "blocker6"
    rule_check_interval: float = 2.0
    maxelem: int = 1_048_576  # entries per kernel set, fixed when the set is created


@dataclass(frozen=True)
class Config:
    path: str
    jails: tuple[Jail, ...]
    filters: dict[str, Filter] = field(default_factory=dict)
    firewall: FirewallConfig = FirewallConfig()

    def jail(self, name: str) -> Jail | None:
        return next((jail for jail in self.jails if jail.name == name), None)


def load_config(path: Path) -> Config:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(where, "(file)", f"cannot read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "(syntax)", str(exc)) from exc
    return parse_config(data, where, base_dir=path.parent)


def parse_config(data: dict[str, Any], where: str, base_dir: Path) -> Config:
    _no_unknown(data, ("filters_dir", "firewall", "defaults", "jails"), where, "")
    filters_dir = data.get("filters_dir", "filters")
    if not isinstance(filters_dir, str):
        raise ConfigError(where, "filters_dir", "must be a path string")
    try:
        filters = load_filters(base_dir / filters_dir)
    except FilterError as exc:
        raise ConfigError(exc.path, exc.key, exc.reason) from exc
    firewall = _firewall(_table(data.get("firewall", {}), where, "firewall"), where)
    defaults = _table(data.get("defaults", {}), where, "defaults")
    _no_unknown(defaults, JAIL_DEFAULTS, where, "defaults.")
    jails_table = _table(data.get("jails"), where, "jails")
    if not jails_table:
        raise ConfigError(where, "jails", "define at least one jail ([jails.NAME])")
    jails: list[Jail] = []
    for name, raw in jails_table.items():
        if not _JAIL_NAME.fullmatch(name):
            raise ConfigError(where, f"jails.{name}",
                              "jail names are lowercase letters, digits, '_' or '-' (max 32)")
        table = _table(raw, where, f"jails.{name}")
        _no_unknown(table, (*JAIL_DEFAULTS, "filters"), where, f"jails.{name}.")
        merged = {**JAIL_DEFAULTS, **defaults, **table}
        jail = _jail(name, merged, filters, where)
        if merged["enabled"]:
            jails.append(jail)
    if not jails:
        raise ConfigError(where, "jails", "every jail is disabled")
    return Config(path=where, jails=tuple(jails), filters=filters, firewall=firewall)


def _jail(name: str, raw: dict[str, Any], filters: dict[str, Filter], where: str) -> Jail:
    scope = f"jails.{name}."

    def key(k: str) -> str:
        return scope + k

    if not isinstance(raw["enabled"], bool):
        raise ConfigError(where, key("enabled"), "must be true or false")
    names = raw.get("filters")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(where, key("filters"), "must be a non-empty list of filter names")
    weights = _table(raw["weights"], where, key("weights"))
    for filter_name in weights:
        if filter_name not in names:
            raise ConfigError(where, key(f"weights.{filter_name}"),
                              "not one of this jail's filters")
    chain: list[tuple[Filter, float]] = []
    for filter_name in names:
        flt = filters.get(filter_name)
        if flt is None:
            known = ", ".join(sorted(filters)) or "none"
            raise ConfigError(where, key("filters"),
                              f"unknown filter {filter_name!r} (known: {known})")
        weight = flt.weight
        if filter_name in weights:
            weight = _positive(weights[filter_name], where, key(f"weights.{filter_name}"))
        chain.append((flt, weight))
    source = raw["source"]
    if source not in SOURCES:
        raise ConfigError(where, key("source"), f"must be one of {', '.join(SOURCES)}")
    log_path = raw["log_path"]
    if not isinstance(log_path, str) or not log_path.startswith("/"):
        raise ConfigError(where, key("log_path"), "must be an absolute path")
    prefix = None
    if raw["prefix"]:
        if not isinstance(raw["prefix"], str):
            raise ConfigError(where, key("prefix"), "must be a regular expression string")
        try:
            prefix = re.compile(raw["prefix"])
        except re.error as exc:
            raise ConfigError(where, key("prefix"), f"bad regular expression: {exc}") from exc
    durations = {k: duration(raw[k], where, key(k), permanent_ok=(k == "ban_time"))
                 for k in _DURATION_KEYS}
    for k in ("window", "max_ban_time", "subnet_window", "history_window"):
        if durations[k] <= 0:
            raise ConfigError(where, key(k), "must be longer than 0 s")
    if durations["ban_time"] <= 0:
        raise ConfigError(where, key("ban_time"), "must be longer than 0 s (or 'permanent')")
    if math.isfinite(durations["ban_time"]) and durations["ban_time"] > durations["max_ban_time"]:
        raise ConfigError(where, key("ban_time"), "is longer than max_ban_time")
    ban_factor = _number(raw["ban_factor"], where, key("ban_factor"))
    if ban_factor < 1:
        raise ConfigError(where, key("ban_factor"), "must be >= 1 (bans never shrink)")
    repeat_factor = _number(raw["repeat_factor"], where, key("repeat_factor"))
    if not 0 <= repeat_factor <= 1:
        raise ConfigError(where, key("repeat_factor"), "must be between 0 and 1")
    v4 = _integer(raw["subnet_v4_prefix"], where, key("subnet_v4_prefix"), 8, 31)
    v6 = _integer(raw["subnet_v6_prefix"], where, key("subnet_v6_prefix"), 16, 127)
    policy = JailPolicy(
        name=name,
        threshold=_positive(raw["threshold"], where, key("threshold")),
        window=durations["window"],
        repeat_factor=repeat_factor,
        ban_time=durations["ban_time"],
        ban_factor=ban_factor,
        max_ban_time=durations["max_ban_time"],
        history_window=durations["history_window"],
        subnet_min_offenders=_integer(raw["subnet_min_offenders"], where,
                                      key("subnet_min_offenders"), 0, 65536),
        subnet_window=durations["subnet_window"],
        subnet_v4_prefix=v4,
        subnet_v6_prefix=v6,
        allow=tuple(_networks(raw["allow"], where, key("allow"))),
        own_addresses=tuple(_addresses(raw["own_addresses"], where, key("own_addresses"))),
        max_tracked=_integer(raw["max_tracked"], where, key("max_tracked"), 1, 10_000_000),
    )
    return Jail(name=name, source=source, log_path=log_path, filters=tuple(chain),
                policy=policy, prefix=prefix)


def _firewall(table: dict[str, Any], where: str) -> FirewallConfig:
    _no_unknown(table, _FIREWALL_DEFAULTS, where, "firewall.")
    raw = {**_FIREWALL_DEFAULTS, **table}
    if raw["backend"] not in BACKENDS:
        raise ConfigError(where, "firewall.backend", f"must be one of {', '.join(BACKENDS)}")
    for k in ("set_v4", "set_v6"):
        if not isinstance(raw[k], str) or not _SET_NAME.fullmatch(raw[k]):
            raise ConfigError(where, f"firewall.{k}",
                              "ipset names are 1-31 letters, digits, '_', '.', '-'")
    if raw["set_v4"] == raw["set_v6"]:
        raise ConfigError(where, "firewall.set_v6", "must differ from set_v4")
    interval = duration(raw["rule_check_interval"], where, "firewall.rule_check_interval")
    if not 0.1 <= interval <= 5:
        raise ConfigError(where, "firewall.rule_check_interval",
                          "must be between 0.1 s and 5 s (a flushed rule is restored within it)")
    maxelem = raw["maxelem"]
    if isinstance(maxelem, bool) or not isinstance(maxelem, int) or not 1 <= maxelem < 2**32:
        raise ConfigError(where, "firewall.maxelem", "must be a whole number in 1..4294967295")
    return FirewallConfig(backend=raw["backend"], set_v4=raw["set_v4"], set_v6=raw["set_v6"],
                          rule_check_interval=interval, maxelem=maxelem)


def duration(value: object, where: str, key: str, permanent_ok: bool = False) -> float:
    """Seconds from a number or text like '90s', '10m', '1h', '7d', '2w' ('permanent' -> inf)."""
    if isinstance(value, bool):
        raise ConfigError(where, key, "must be a duration like 60, '90s', '10m', '1h', '7d'")
    if isinstance(value, int | float):
        seconds = _as_float(value)
        if seconds is None:
            raise ConfigError(where, key, "is far too large")
    elif isinstance(value, str) and value.strip() == "permanent" and permanent_ok:
        return math.inf
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        hint = " or 'permanent'" if permanent_ok else ""
        raise ConfigError(where, key, f"must be a duration like 60, '90s', '10m', '1h', '7d'{hint}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(where, key, "must be a finite, non-negative duration")
    return seconds


def _no_unknown(table: dict[str, Any], known: Any, where: str, scope: str) -> None:
    for k in table:
        if k not in known:
            raise ConfigError(where, scope + k, "unknown key")


def _table(value: object, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, key, "must be a table" if value is not None else "is missing")
    return value


def _number(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, key, "must be a number")
    number = _as_float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(where, key, "must be a finite number of sensible size")
    return number


def _as_float(value: int | float) -> float | None:
    """float(value), or None for integers beyond float range (TOML allows 400 digits)."""
    try:
        return float(value)
    except OverflowError:
        return None


def _positive(value: object, where: str, key: str) -> float:
    number = _number(value, where, key)
    if number <= 0:
        raise ConfigError(where, key, "must be greater than 0")
    return number


def _integer(value: object, where: str, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(where, key, f"must be an integer from {lo} to {hi}")
    return value


def _networks(value: object, where: str, key: str) -> list[Network]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, key, "must be a list of addresses or CIDR networks")
    networks: list[Network] = []
    for item in value:
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(where, key, f"{item!r} is not an address or network") from exc
    return networks


def _addresses(value: object, where: str, key: str) -> list[Address]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, key, "must be a list of addresses")
    addresses: list[Address] = []
    for item in value:
        try:
            addresses.append(ip_address(item))
        except ValueError as exc:
            raise ConfigError(where, key, f"{item!r} is not an IP address") from exc
    return addresses
