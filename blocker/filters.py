"""Filters are data: filters/*.toml, loaded, validated and compiled here. Pure.

A filter says which packets count, who the offender is and what they weigh:

    name = "unsolicited_synack"
    description = "..."
    offender = "src"             # "src", or "dst" for the host's own outgoing packets
    weight = 1.0
    distinct = []                # scan filters: e.g. ["dst", "dport"]; [] = every hit counts
    [match]                      # every given condition must hold
    direction = ["in"]           # "in" (to the host), "out" (the host's own), "forward"
    proto = ["TCP"]              # names as the kernel prints them, or protocol numbers
    not_proto = []
    flags = ["SYN", "ACK"]       # the exact set of TCP flags ([] = a NULL packet)
    flags_all = []               # flags that must be present
    flags_none = []              # flags that must be absent (true for non-TCP packets)
    dport = [22, "1000-2000"]    # ports or ranges; sport likewise
    prefix = "regex"             # searched in the LOG rule's prefix
    dst_unicast = true           # ignore packets sent to multicast/broadcast addresses
    [ignore]
    prefix = "regex"             # a packet whose prefix matches never counts
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from blocker.records import Address, Hit, Packet, Signature

_TCP_FLAGS = frozenset(("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"))
_DIRECTIONS = frozenset(("in", "out", "forward"))
# What a distinct key can be made of, in the order DistinctKey takes the values.
_DISTINCT_FIELDS = ("src", "dst", "sport", "dport", "proto", "icmp_type")
_TOP_KEYS = frozenset(("name", "description", "offender", "weight", "distinct", "match", "ignore"))
_MATCH_KEYS = frozenset(
    ("direction", "proto", "not_proto", "flags", "flags_all", "flags_none", "dport", "sport",
     "prefix", "dst_unicast", "icmp_type", "icmp_code")
)
_IGNORE_KEYS = frozenset(("prefix",))
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class FilterError(ValueError):
    """A filter file is invalid: names the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class PortSet:
    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)


@dataclass(frozen=True)
class Filter:
    name: str
    description: str
    offender: str  # "src" | "dst"
    weight: float
    distinct: tuple[str, ...]
    direction: frozenset[str] | None = None
    proto: frozenset[str] | None = None
    not_proto: frozenset[str] = frozenset()
    flags: frozenset[str] | None = None
    flags_all: frozenset[str] = frozenset()
    flags_none: frozenset[str] = frozenset()
    dport: PortSet | None = None
    sport: PortSet | None = None
    prefix: re.Pattern[str] | None = None
    ignore_prefix: re.Pattern[str] | None = None
    dst_unicast: bool = False
    icmp_type: frozenset[int] | None = None
    icmp_code: frozenset[int] | None = None
    path: str = ""

    def static_match(self, signature: Signature) -> bool:
        """Conditions that depend only on the kind of packet (decided once per Signature)."""
        direction, proto, flags, prefix = (signature.direction, signature.proto,
                                           signature.flags, signature.prefix)
        icmp_type, icmp_code = signature.icmp_type, signature.icmp_code
        if self.direction is not None and direction not in self.direction:
            return False
        if self.proto is not None and proto not in self.proto:
            return False
        if proto in self.not_proto:
            return False
        if self.flags is not None and (proto != "TCP" or flags != self.flags):
            return False
        if self.flags_all and (proto != "TCP" or not self.flags_all <= flags):
            return False
        if self.flags_none and self.flags_none & flags:  # non-TCP packets carry no flags
            return False
        if self.icmp_type is not None and icmp_type not in self.icmp_type:
            return False
        if self.icmp_code is not None and icmp_code not in self.icmp_code:
            return False
        if self.prefix is not None and self.prefix.search(prefix) is None:
            return False
        return not (self.ignore_prefix is not None and self.ignore_prefix.search(prefix))

    @property
    def has_dynamic(self) -> bool:
        return self.has_port_conditions or self.dst_unicast

    @property
    def has_port_conditions(self) -> bool:
        return self.dport is not None or self.sport is not None

    def dynamic_match(self, dport: int | None, sport: int | None, dst: Address,
                      unicast: dict[Address, bool]) -> bool:
        """Conditions on ports and addresses, checked per packet. `unicast` caches whether
        a destination is a unicast address."""
        if not self.port_match(dport, sport):
            return False
        return not self.dst_unicast or is_unicast(dst, unicast)

    def port_match(self, dport: int | None, sport: int | None) -> bool:
        if self.dport is not None and dport not in self.dport:
            return False
        return self.sport is None or sport in self.sport


def is_unicast(dst: Address, cache: dict[Address, bool]) -> bool:
    """Whether `dst` is a unicast address (not multicast, unspecified or an IPv4 x.x.x.255
    broadcast); the answer is kept in `cache`."""
    ok = cache.get(dst)
    if ok is None:
        if len(cache) > 65536:
            cache.clear()
        ok = cache[dst] = not (dst.is_multicast or dst.is_unspecified or (
            dst.version == 4 and dst.packed[3] == 255))
    return ok


# (src, dst, sport, dport, proto, icmp_type) -> the key
DistinctKey = Callable[[Address, Address, "int | None", "int | None", str, "int | None"],
                       tuple[object, ...]]


def distinct_key(fields: Sequence[str]) -> DistinctKey:
    """The function building a filter's distinct key, e.g. (dst, dport), from packet values."""
    picks = [_DISTINCT_FIELDS.index(name) for name in fields]
    if len(picks) == 1:
        (pick,) = picks
        return lambda *values: (values[pick],)
    pick_all = itemgetter(*picks)  # a tuple, picked in C

    def key(*values: object) -> tuple[object, ...]:
        return pick_all(values)  # type: ignore[no-any-return]

    return key


# What the Matcher keeps per candidate filter: everything `match` needs without lookups.
_Candidate = tuple[Filter, float, bool, bool, "DistinctKey | None"]


class Matcher:
    """One jail's ordered filter chain: the first filter that matches a packet wins."""

    def __init__(self, jail: str, chain: Sequence[tuple[Filter, float]],
                 prefix: re.Pattern[str] | None = None) -> None:
        self.jail = jail
        self.chain = tuple(chain)
        self.prefix = prefix
        self.counts: dict[str, int] = {flt.name: 0 for flt, _ in self.chain}
        self._prepared: list[_Candidate] = [
            (flt, weight, flt.has_dynamic, flt.offender == "src",
             distinct_key(flt.distinct) if flt.distinct else None)
            for flt, weight in self.chain
        ]
        self._candidates: dict[Signature, tuple[_Candidate, ...]] = {}
        self.unicast: dict[Address, bool] = {}

    def match(self, packet: Packet, signature: Signature | None = None) -> Hit | None:
        """The first filter's Hit, or None. `signature` (Signature.of(packet)) may be shared
        by the jails looking at the same packet."""
        if signature is None:
            signature = Signature.of(packet)
        candidates = self._candidates.get(signature)
        if candidates is None:
            candidates = self.candidates(signature)
            if len(self._candidates) > 16384:
                self._candidates.clear()
            self._candidates[signature] = candidates
        for flt, weight, dynamic, from_src, key_of in candidates:
            if dynamic and not flt.dynamic_match(packet.dpt, packet.spt, packet.dst,
                                                 self.unicast):
                continue
            self.counts[flt.name] += 1
            key = None if key_of is None else key_of(
                packet.src, packet.dst, packet.spt, packet.dpt, packet.proto, packet.icmp_type)
            return Hit(packet.time, self.jail, flt.name, packet.src if from_src else packet.dst,
                       weight, key)
        return None

    def candidates(self, signature: Signature) -> tuple[_Candidate, ...]:
        """The filters, in chain order, whose static conditions `signature` meets."""
        if self.prefix is not None and self.prefix.search(signature.prefix) is None:
            return ()
        return tuple(c for c in self._prepared if c[0].static_match(signature))


def load_filters(directory: Path) -> dict[str, Filter]:
    """Every *.toml in `directory`, by name. Raises FilterError on the first bad file."""
    if not directory.is_dir():
        raise FilterError(str(directory), "filters_dir", "not a directory")
    filters: dict[str, Filter] = {}
    for path in sorted(directory.glob("*.toml")):
        flt = load_filter(path)
        if flt.name in filters:
            raise FilterError(str(path), "name", f"duplicate filter name {flt.name!r}")
        filters[flt.name] = flt
    return filters


def load_filter(path: Path) -> Filter:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise FilterError(where, "(file)", f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FilterError(where, "(syntax)", str(exc)) from exc
    return parse_filter(data, where, default_name=path.stem)


def parse_filter(data: dict[str, Any], where: str, default_name: str = "") -> Filter:
    _no_unknown(data, _TOP_KEYS, where, "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FilterError(where, "name", "must be lowercase letters, digits, '_' or '-'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise FilterError(where, "description", "must be a string")
    offender = data.get("offender", "src")
    if offender not in ("src", "dst"):
        raise FilterError(where, "offender", "must be 'src' or 'dst'")
    weight = _number(data.get("weight", 1.0), where, "weight")
    if not 0 < weight <= 1000:
        raise FilterError(where, "weight", "must be > 0 and <= 1000")
    distinct = _strings(data.get("distinct", []), where, "distinct")
    for field_name in distinct:
        if field_name not in _DISTINCT_FIELDS:
            raise FilterError(where, "distinct", f"unknown field {field_name!r}; "
                              f"choose from {', '.join(_DISTINCT_FIELDS)}")
    match = _table(data.get("match", {}), where, "match")
    _no_unknown(match, _MATCH_KEYS, where, "match.")
    ignore = _table(data.get("ignore", {}), where, "ignore")
    _no_unknown(ignore, _IGNORE_KEYS, where, "ignore.")
    direction = _optional_set(match, "direction", where)
    if direction is not None and not direction <= _DIRECTIONS:
        raise FilterError(where, "match.direction", "must be among 'in', 'out', 'forward'")
    flags = _optional_flags(match, "flags", where)
    flags_all = _optional_flags(match, "flags_all", where) or frozenset()
    flags_none = _optional_flags(match, "flags_none", where) or frozenset()
    if not match:
        raise FilterError(where, "match", "a filter needs at least one condition")
    for key, value in match.items():
        # An empty list or regex constrains nothing: a typo must not make a filter match all.
        if value in ([], "") and key != "flags":
            raise FilterError(where, f"match.{key}", "must not be empty")
    if ignore.get("prefix") == "":
        raise FilterError(where, "ignore.prefix", "must not be empty")
    dst_unicast = match.get("dst_unicast", False)
    if not isinstance(dst_unicast, bool):
        raise FilterError(where, "match.dst_unicast", "must be true or false")
    return Filter(
        name=name,
        description=description,
        offender=offender,
        weight=weight,
        distinct=tuple(distinct),
        direction=direction,
        proto=_optional_set(match, "proto", where, numbers_ok=True),
        not_proto=_optional_set(match, "not_proto", where, numbers_ok=True) or frozenset(),
        flags=flags,
        flags_all=flags_all,
        flags_none=flags_none,
        dport=_ports(match, "dport", where),
        sport=_ports(match, "sport", where),
        prefix=_regex(match.get("prefix"), where, "match.prefix"),
        ignore_prefix=_regex(ignore.get("prefix"), where, "ignore.prefix"),
        dst_unicast=dst_unicast,
        icmp_type=_optional_ints(match, "icmp_type", where),
        icmp_code=_optional_ints(match, "icmp_code", where),
        path=where,
    )


def _no_unknown(table: dict[str, Any], known: Iterable[str], where: str, scope: str) -> None:
    for key in table:
        if key not in known:
            raise FilterError(where, scope + key, "unknown key")


def _table(value: object, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FilterError(where, key, "must be a table")
    return value


def _number(value: object, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterError(where, key, "must be a number")
    try:
        return float(value)
    except OverflowError:
        raise FilterError(where, key, "is far too large") from None


def _strings(value: object, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FilterError(where, key, "must be a string or a list of strings")
    return list(value)


def _optional_set(match: dict[str, Any], key: str, where: str,
                  numbers_ok: bool = False) -> frozenset[str] | None:
    if key not in match:
        return None
    value = match[key]
    if numbers_ok and isinstance(value, list):
        value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return frozenset(_strings(value, where, "match." + key))


def _optional_flags(match: dict[str, Any], key: str, where: str) -> frozenset[str] | None:
    flags = _optional_set(match, key, where)
    if flags is not None and not flags <= _TCP_FLAGS:
        raise FilterError(where, "match." + key,
                          f"unknown TCP flag(s) {sorted(flags - _TCP_FLAGS)}")
    return flags


def _optional_ints(match: dict[str, Any], key: str, where: str) -> frozenset[int] | None:
    if key not in match:
        return None
    value = match[key]
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
        raise FilterError(where, "match." + key, "must be integers 0-255")
    return frozenset(values)


def _ports(match: dict[str, Any], key: str, where: str) -> PortSet | None:
    if key not in match:
        return None
    value = match[key]
    items = value if isinstance(value, list) else [value]
    ranges: list[tuple[int, int]] = []
    for item in items:
        lo = hi = -1
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", item):
            lo, hi = (int(part) for part in item.split("-"))
        if not 0 <= lo <= hi <= 65535:
            raise FilterError(where, "match." + key,
                              f"{item!r} is not a port (0-65535) or range 'LO-HI'")
        ranges.append((lo, hi))
    return PortSet(tuple(ranges))


def _regex(value: object, where: str, key: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FilterError(where, key, "must be a regular expression string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise FilterError(where, key, f"bad regular expression: {exc}") from exc
