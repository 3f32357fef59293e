"""The one schema of jails.toml: each key's kind, default, bounds and help, per section. PURE.

Everything else asks these tables: config.py takes its defaults and validation from them,
JailPolicy (scoring.py) its defaults and problems(), filters.py the same validators, and
scripts/config-docs writes the key tables of README.md and docs/jails.toml.5 from them
(tests/test_schema.py fails when those tables and this file disagree).

The validators (blocker/validators.py) accept their own output, so defaults are kept parsed
(60.0, not "60s") and JailPolicy's fields are checked by the very validators that read the file.

Adding a section, for example [metrics] (validators from blocker/validators.py):
  1. here: METRICS = Section("metrics", "what it is for", (
         Key("listen", OrNone(HostPort()), None, "where to serve /metrics; none: off"),
         Key("textfile_interval", Duration(high=3600), 15.0, "how often the file is written"),
     )) and add it to SECTIONS (config.py then accepts the table, the docs list it);
  2. config.py: a frozen dataclass whose fields read their defaults from the section,
     `listen: tuple[str, int] | None = METRICS.default("listen")`, a field of that type on
     Config, and in parse_config `metrics=MetricsConfig(**_section(METRICS, data, where))`;
  3. `./scripts/config-docs`, and one tests/configs/invalid/ fixture per new error kind.
Adding a jail key (log_level, spare_live_peers): one Key in JAIL, and a field of the same name
with `= jail_default("name")` on JailPolicy (if scoring uses it) or on config.Jail; config._jail
hands every parsed key to whichever of the two has the field (a test checks each key lands).
A rule tying two keys together goes in the section's `checks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from blocker.validators import (
    AbsolutePath,
    Addresses,
    Bool,
    Choice,
    ConfigError,
    Duration,
    HostPort,
    Integer,
    Integers,
    Invalid,
    Networks,
    Number,
    OrNone,
    Regex,
    Strings,
    SyslogLevel,
    Table,
    Text,
    Validator,
    check,
    join_key,
)

REQUIRED: Final = object()  # the default of a key that must be given


@dataclass(frozen=True)
class Key:
    name: str
    check: Validator[Any]
    default: Any  # parsed; REQUIRED when the key must be given
    help: str  # one line; `backticks` mark code
    jail_only: bool = False  # [jails.NAME] only, not [defaults]


# A rule on several keys of one section: parsed values -> (key, reason) when broken.
Check = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Section:
    name: str  # the TOML table; "" = top level, "jails" = [defaults] and [jails.NAME]
    help: str
    keys: tuple[Key, ...]
    checks: tuple[Check, ...] = ()
    by_name: dict[str, Key] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {key.name: key for key in self.keys})

    def default(self, name: str) -> Any:
        return self.by_name[name].default

    def defaults(self) -> dict[str, Any]:
        return {key.name: key.default for key in self.keys if key.default is not REQUIRED}

    def refuse_unknown(
        self,
        data: Mapping[str, Any],
        where: str,
        scope: str,
        jail_only_ok: bool = True,
        error: type[ConfigError] = ConfigError,
    ) -> None:
        for name in data:
            key = self.by_name.get(name)
            if key is None or (key.jail_only and not jail_only_ok):
                raise error(where, scope + name, "unknown key")

    def parse(
        self,
        data: Mapping[str, Any],
        where: str,
        scope: str = "",
        error: type[ConfigError] = ConfigError,
    ) -> dict[str, Any]:
        """Every key of the section, parsed, from `data` over the defaults. Raises `error`
        (where, scope + key, reason) for an unknown key, a bad value or a broken check."""
        self.refuse_unknown(data, where, scope, error=error)
        parsed: dict[str, Any] = {}
        for key in self.keys:
            value = data.get(key.name, None if key.default is REQUIRED else key.default)
            parsed[key.name] = check(key.check, value, where, scope + key.name, error)
        for rule in self.checks:
            broken = rule(parsed)
            if broken is not None:
                raise error(where, scope + broken[0], broken[1])
        return parsed

    def problems(self, values: Mapping[str, Any]) -> list[str]:
        """'key reason' for each key of `values` its validator refuses (no cross-key checks)."""
        out: list[str] = []
        for name, value in values.items():
            try:
                self.by_name[name].check(value)
            except Invalid as exc:
                out.append(f"{join_key(name, exc.subkey)} {exc.reason}, got {value!r}")
        return out


# ---- the sections ------------------------------------------------------------------------

SOURCES: Final = ("auto", "kernlog", "journald", "kmsg", "nflog")
BACKENDS: Final = ("ipset", "dry-run")

TOP: Final = Section(
    "",
    "where the filters are",
    (
        Key(
            "filters_dir",
            Text(refusal="must be a path string", kind="path"),
            "filters",
            "directory of the filter files, relative to the configuration file",
        ),
    ),
)


def _distinct_sets(values: Mapping[str, Any]) -> tuple[str, str] | None:
    return ("set_v6", "must differ from set_v4") if values["set_v4"] == values["set_v6"] else None


_SET_NAME = Text(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}",
    "ipset names are 1-31 letters, digits, '_', '.', '-'",
    "ipset name",
)

FIREWALL: Final = Section(
    "firewall",
    "how bans reach the kernel",
    (
        Key(
            "backend",
            Choice(BACKENDS),
            "ipset",
            "`ipset`: kernel sets and one early INPUT rule per family; `dry-run`: decisions are "
            "logged only",
        ),
        Key("set_v4", _SET_NAME, "blocker4", "name of the IPv4 kernel set"),
        Key("set_v6", _SET_NAME, "blocker6", "name of the IPv6 kernel set"),
        Key(
            "rule_check_interval",
            Duration(low=0.1, high=5),
            2.0,
            "how often the INPUT rules and the sets are checked and restored; a firewall reload "
            "that flushed them is undone within it",
        ),
        Key(
            "maxelem",
            Integer(1, 2**32 - 1),
            1_048_576,
            "entries each kernel set holds, fixed when blockerd creates the set (an existing set "
            "keeps its own); when a set is full new bans are refused, counted and logged, and the "
            "bans in it stay",
        ),
    ),
    checks=(_distinct_sets,),
)


def _ban_time_within_max(values: Mapping[str, Any]) -> tuple[str, str] | None:
    ban_time, max_ban_time = values["ban_time"], values["max_ban_time"]
    if math.isfinite(ban_time) and ban_time > max_ban_time:
        return ("ban_time", "is longer than max_ban_time")
    return None


def _nflog_groups_given(values: Mapping[str, Any]) -> tuple[str, str] | None:
    groups = values["nflog_groups"]
    if values["source"] == "nflog" and not groups:
        return ("nflog_groups", "must name at least one group when source is nflog")
    if len(set(groups)) != len(groups):
        return ("nflog_groups", "names a group twice")
    return None


JAIL_NAME: Final = Text(
    r"[a-z0-9][a-z0-9_-]{0,31}", "jail names are lowercase letters, digits, '_' or '-' (max 32)"
)

JAIL: Final = Section(
    "jails",
    (
        "every key may be set in `[defaults]`, inherited by every jail, or in one jail; a jail "
        "name is 1 to 32 of a-z, 0-9, `_` and `-`, starting with a letter or digit"
    ),
    (
        Key(
            "filters",
            Strings(
                "must be a non-empty list of filter names",
                nonempty=True,
                kind="list of filter names",
            ),
            REQUIRED,
            "the jail's filters in order, the first that matches a packet wins; a name "
            "is a file `filters_dir/NAME.toml` without the suffix",
            jail_only=True,
        ),
        Key("enabled", Bool(), True, "whether the jail runs"),
        Key(
            "source",
            Choice(SOURCES),
            "auto",
            "where kernel log lines come from; `auto`: kern.log if it exists, else the journal, "
            "else /dev/kmsg; `nflog`: packets straight from the kernel over netlink (the NFLOG "
            "groups in `nflog_groups`), the recommended source",
        ),
        Key("log_path", AbsolutePath(), "/var/log/kern.log", "the kern.log to follow"),
        Key(
            "nflog_groups",
            Integers(0, 65535, single_ok=True),
            (5,),
            'the NFLOG groups read with `source = "nflog"` (`-j NFLOG --nflog-group 5`, nft '
            "`log group 5`); jails with the same groups share one socket",
        ),
        Key(
            "log_level",
            SyslogLevel(),
            4,
            "syslog level of your LOG rules (iptables' `--log-level`, nftables' `log level`): "
            "kmsg and journald drop kernel records at other levels; jails reading one source "
            "must agree on it",
        ),
        Key("prefix", Regex(), None, "only LOG lines whose prefix matches count in this jail"),
        Key(
            "weights",
            Table(Number(low=0, low_open=True)),
            {},
            "per-filter weights in this jail, e.g. `{ udp_probe = 0.5 }`; a filter not named "
            "here keeps its own weight",
        ),
        Key(
            "threshold",
            Number(low=0, low_open=True),
            5.0,
            "ban when the score within `window` reaches this",
        ),
        Key("window", Duration(), 60.0, "how long a hit counts"),
        Key(
            "repeat_factor",
            Number(0, 1),
            0.25,
            "weight of a scan hit on an already-seen (destination, port)",
        ),
        Key("ban_time", Duration(permanent=True), 600.0, "first ban"),
        Key(
            "ban_factor",
            Number(low=1),
            2.0,
            "each earlier ban of the same target within `history_window` multiplies the ban time "
            "by this (bans never shrink)",
        ),
        Key(
            "max_ban_time",
            Duration(),
            7 * 86400.0,
            "cap on the grown ban time; ipset entries are clamped to 24.8 days",
        ),
        Key("history_window", Duration(), 30 * 86400.0, "how long earlier bans are remembered"),
        Key(
            "subnet_min_offenders",
            Integer(0, 65536),
            3,
            "ban the subnet once this many of its hosts were banned within `subnet_window`; "
            "0 disables",
        ),
        Key("subnet_window", Duration(), 3600.0, "see `subnet_min_offenders`"),
        Key("subnet_v4_prefix", Integer(8, 31), 24, "prefix length of an escalated IPv4 subnet"),
        Key("subnet_v6_prefix", Integer(16, 127), 64, "prefix length of an escalated IPv6 subnet"),
        Key(
            "allow",
            Networks(),
            (),
            'addresses and networks never banned, e.g. `["192.0.2.10", "2001:db8::/48"]`; '
            "special ranges (loopback, link-local, multicast, ...) never are either",
        ),
        Key(
            "own_addresses",
            Addresses(),
            (),
            "extra addresses of this host, never banned; its interface addresses are read at start",
        ),
        Key(
            "max_tracked",
            Integer(1, 10_000_000),
            100_000,
            "cap on addresses with a live score, per jail",
        ),
        Key(
            "spare_live_peers",
            Duration(positive=False, high=30 * 86400),
            600.0,
            "before a ban on spoofable evidence (every shipped filter), ask conntrack: an address "
            "with an assured connection that carried traffic within this window is not banned "
            "(nor a subnet holding one); 0 disables",
        ),
    ),
    checks=(_ban_time_within_max, _nflog_groups_given),
)


def _fleet_needs_key(values: Mapping[str, Any]) -> tuple[str, str] | None:
    if values["url"] is not None and values["key_file"] is None:
        return ("key_file", "is required with url: every fleet event is signed")
    return None


def _fleet_ca_needs_tls(values: Mapping[str, Any]) -> tuple[str, str] | None:
    url = values["url"]
    if values["ca_file"] is not None and not (url or "").startswith("rediss://"):
        return ("ca_file", "is only used with a rediss:// (TLS) url")
    return None


FLEET: Final = Section(
    "fleet",
    ("hosts share their bans through one Redis (see README, Fleet); absent `url`: off"),
    (
        Key(
            "url",
            OrNone(
                Text(
                    r"(redis|rediss|unix)://\S+",
                    "must be a redis://, rediss:// (TLS) or unix:// URL",
                    "URL",
                )
            ),
            None,
            "the Redis to share bans through, e.g. `rediss://redis.example:6379/0`, "
            "`unix:///run/redis/redis.sock`; none: the fleet is off",
        ),
        Key(
            "username",
            OrNone(Text(r"[!-~]{1,128}", "must be an ACL user name", "string")),
            None,
            "Redis ACL user; none: the default user",
        ),
        Key(
            "password_file",
            OrNone(AbsolutePath()),
            None,
            "file holding the Redis ACL password (first line); none: no password",
        ),
        Key(
            "ca_file",
            OrNone(AbsolutePath()),
            None,
            "PEM file of the CA(s) that signed the Redis server's certificate, for a "
            "`rediss://` url (its host name is checked too); none: the system's CA store",
        ),
        Key(
            "host_id",
            OrNone(
                Text(
                    r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}",
                    "must be 1-63 letters, digits, '_', '.', ':', '-'",
                    "string",
                )
            ),
            None,
            "this host's name in the fleet's events; none: the hostname",
        ),
        Key(
            "publish",
            Strings("must be a list of jail names", kind="list of jail names"),
            (),
            "the jails whose bans this host shares; empty: it shares none",
        ),
        Key("accept", Bool(), True, "whether this host applies the other hosts' bans"),
        Key(
            "max_remote_bans_per_second",
            Integer(1, 1_000_000),
            50_000,
            "remote bans applied per second at most; more wait in Redis, none is lost",
        ),
        Key(
            "key_file",
            OrNone(AbsolutePath()),
            None,
            "file holding the fleet's shared HMAC key (at least 16 bytes); required with `url`: "
            "unsigned or badly signed events are dropped and counted",
        ),
        Key(
            "key_prefix",
            Text(r"[A-Za-z0-9_.:-]{1,64}", "must be 1-64 letters, digits, '_.:-'", "string"),
            "blocker",
            "prefix of the Redis keys (`PREFIX:events`, `PREFIX:bans`, `PREFIX:expiry`)",
        ),
        Key(
            "retention",
            Duration(low=60),
            86400.0,
            "events older than this are trimmed from the stream (MINID); a host away longer "
            "starts from the snapshot",
        ),
    ),
    checks=(_fleet_needs_key, _fleet_ca_needs_tls),
)

METRICS: Final = Section(
    "metrics",
    (
        "Prometheus metrics, off unless `listen` or `textfile` is set; names start with "
        "`blocker_`, no label holds an address"
    ),
    (
        Key(
            "listen",
            OrNone(HostPort()),
            None,
            'serve `/metrics` over HTTP here, e.g. `"127.0.0.1:9645"` or `"[::1]:9645"`; '
            "none: no HTTP server",
        ),
        Key(
            "textfile",
            OrNone(AbsolutePath()),
            None,
            "write the metrics to this file (replaced atomically) for node-exporter's textfile "
            "collector; none: no file",
        ),
        Key(
            "textfile_interval", Duration(low=1, high=3600), 15.0, "how often `textfile` is written"
        ),
    ),
)

# Every section, in the order the docs list them.
SECTIONS: Final = (TOP, FIREWALL, METRICS, JAIL, FLEET)


def jail_default(name: str) -> Any:
    return JAIL.default(name)
