"""jails.toml -> Config, or ConfigError(path, key, reason). Pure apart from reading the files.

    filters_dir = "filters"            # relative to this file
    [firewall]  backend, set_v4, set_v6, rule_check_interval
    [fleet]     url, key_file, publish, accept, ... (sharing bans through Redis)
    [metrics]   listen, textfile, textfile_interval (off by default)
    [defaults]  any jail key, inherited by every jail
    [jails.NAME] filters = [...], plus any jail key

Every key, its default, bounds and help live in blocker/schema.py; this module only walks the
file's layout, merges [defaults] under each jail and resolves filter names. Unknown keys are
errors: a typo must not silently weaken a security tool.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from blocker.filters import Filter, FilterError, Matcher, load_filters
from blocker.schema import (
    FIREWALL,
    FLEET,
    JAIL,
    JAIL_NAME,
    METRICS,
    SECTIONS,
    TOP,
    Section,
    jail_default,
)
from blocker.scoring import JailPolicy
from blocker.validators import ANY_TABLE, Duration, check
from blocker.validators import ConfigError as ConfigError  # noqa: PLC0414 (callers import it)

# The sections that are one table each: [firewall], and those to come.
_TABLES = tuple(section.name for section in SECTIONS if section not in (TOP, JAIL))
# Every jail key with its default; [defaults] and [jails.X] accept exactly these (+ filters).
JAIL_DEFAULTS: dict[str, Any] = JAIL.defaults()


@dataclass(frozen=True)
class Jail:
    name: str
    filters: tuple[tuple[Filter, float], ...]  # ordered chain: (filter, weight in this jail)
    policy: JailPolicy
    source: str = jail_default("source")
    log_path: str = jail_default("log_path")
    nflog_groups: tuple[int, ...] = jail_default("nflog_groups")
    spare_live_peers: float = jail_default("spare_live_peers")
    log_level: int = jail_default("log_level")  # kmsg/journald drop records at other levels
    prefix: re.Pattern[str] | None = jail_default("prefix")  # noqa: RUF009 (None, immutable)

    def matcher(self) -> Matcher:
        return Matcher(self.name, self.filters, self.prefix)


@dataclass(frozen=True)
class FirewallConfig:
    backend: str = FIREWALL.default("backend")
    set_v4: str = FIREWALL.default("set_v4")
    set_v6: str = FIREWALL.default("set_v6")
    rule_check_interval: float = FIREWALL.default("rule_check_interval")
    maxelem: int = FIREWALL.default("maxelem")


@dataclass(frozen=True)
class FleetConfig:
    url: str | None = FLEET.default("url")
    username: str | None = FLEET.default("username")
    password_file: str | None = FLEET.default("password_file")
    ca_file: str | None = FLEET.default("ca_file")
    host_id: str | None = FLEET.default("host_id")
    publish: tuple[str, ...] = FLEET.default("publish")
    accept: bool = FLEET.default("accept")
    max_remote_bans_per_second: int = FLEET.default("max_remote_bans_per_second")
    key_file: str | None = FLEET.default("key_file")
    key_prefix: str = FLEET.default("key_prefix")
    retention: float = FLEET.default("retention")


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = METRICS.default("listen")
    textfile: str | None = METRICS.default("textfile")
    textfile_interval: float = METRICS.default("textfile_interval")

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.textfile is not None


@dataclass(frozen=True)
class Config:
    path: str
    jails: tuple[Jail, ...]
    filters: dict[str, Filter] = field(default_factory=dict)
    firewall: FirewallConfig = FirewallConfig()
    fleet: FleetConfig = FleetConfig()
    metrics: MetricsConfig = MetricsConfig()

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
    _no_unknown(data, (*TOP.by_name, *_TABLES, "defaults", "jails"), where)
    top = TOP.parse({k: v for k, v in data.items() if k in TOP.by_name}, where)
    try:
        filters = load_filters(base_dir / top["filters_dir"])
    except FilterError as exc:
        raise ConfigError(exc.path, exc.key, exc.reason) from exc
    firewall = FirewallConfig(**_section(FIREWALL, data, where))
    metrics = MetricsConfig(**_section(METRICS, data, where))
    defaults = check(ANY_TABLE, data.get("defaults", {}), where, "defaults")
    JAIL.refuse_unknown(defaults, where, "defaults.", jail_only_ok=False)
    jails_table = check(ANY_TABLE, data.get("jails"), where, "jails")
    if not jails_table:
        raise ConfigError(where, "jails", "define at least one jail ([jails.NAME])")
    jails: list[Jail] = []
    for name, raw in jails_table.items():
        check(JAIL_NAME, name, where, f"jails.{name}")
        table = check(ANY_TABLE, raw, where, f"jails.{name}")
        values = JAIL.parse({**defaults, **table}, where, f"jails.{name}.")
        jail = _jail(name, values, filters, where)
        if values["enabled"]:
            jails.append(jail)
    if not jails:
        raise ConfigError(where, "jails", "every jail is disabled")
    _one_level_per_source(jails, where)
    fleet = FleetConfig(**_section(FLEET, data, where))
    for name in fleet.publish:
        if name not in jails_table:
            raise ConfigError(where, "fleet.publish", f"no jail {name!r}")
    return Config(
        path=where,
        jails=tuple(jails),
        filters=filters,
        firewall=firewall,
        metrics=metrics,
        fleet=fleet,
    )


def _one_level_per_source(jails: list[Jail], where: str) -> None:
    """Jails reading one source share its level filter: they must agree on it."""
    seen: dict[tuple[str, str], Jail] = {}
    for jail in jails:
        first = seen.setdefault((jail.source, jail.log_path), jail)
        if first.log_level != jail.log_level:
            raise ConfigError(
                where,
                f"jails.{jail.name}.log_level",
                f"differs from jail {first.name!r}, which reads the same source",
            )


def _section(section: Section, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The parsed keys of [section.name] (all defaults when the table is absent)."""
    table = check(ANY_TABLE, data.get(section.name, {}), where, section.name)
    return section.parse(table, where, section.name + ".")


_POLICY_KEYS = frozenset(f.name for f in fields(JailPolicy)) - {"name"}
_JAIL_KEYS = frozenset(f.name for f in fields(Jail)) - {"name", "filters", "policy"}


def _jail(name: str, values: dict[str, Any], filters: dict[str, Filter], where: str) -> Jail:
    """The parsed keys of one jail, routed to the Jail or its JailPolicy by field name."""
    scope = f"jails.{name}."
    names = values["filters"]
    for filter_name in values["weights"]:
        if filter_name not in names:
            raise ConfigError(
                where, f"{scope}weights.{filter_name}", "not one of this jail's filters"
            )
    chain: list[tuple[Filter, float]] = []
    for filter_name in names:
        flt = filters.get(filter_name)
        if flt is None:
            known = ", ".join(sorted(filters)) or "none"
            raise ConfigError(
                where, scope + "filters", f"unknown filter {filter_name!r} (known: {known})"
            )
        chain.append((flt, values["weights"].get(filter_name, flt.weight)))
    policy = JailPolicy(name=name, **{k: v for k, v in values.items() if k in _POLICY_KEYS})
    return Jail(
        name=name,
        filters=tuple(chain),
        policy=policy,
        **{k: v for k, v in values.items() if k in _JAIL_KEYS},
    )


def duration(value: object, where: str, key: str, permanent_ok: bool = False) -> float:
    """Seconds from a number or text like '90s', '10m', '1h', '7d', '2w' ('permanent' -> inf)."""
    return check(Duration(positive=False, permanent=permanent_ok), value, where, key)


def _no_unknown(table: dict[str, Any], known: Any, where: str) -> None:
    for k in table:
        if k not in known:
            raise ConfigError(where, k, "unknown key")
