"""Filters are data: filters/*.toml, loaded, validated and compiled here. Pure.

A filter says which packets count, who the offender is and what they weigh:

    name = "unsolicited_synack"
    description = "..."
    offender = "src"             # "src", or "dst" for the host's own outgoing packets
    weight = 1.0
    distinct = []                # scan filters: e.g. ["dst", "dport"]; [] = every hit counts
    spoofable = true             # anyone can forge the packets it matches in another's name:
                                 # a ban on it first asks conntrack (spare_live_peers)
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
from typing import Any, TypeVar

from blocker.records import Address, Hit, Packet, Signature
from blocker.validators import (
    ANY_TABLE,
    Bool,
    Choice,
    ConfigError,
    Integers,
    Invalid,
    Number,
    Regex,
    Strings,
    Text,
    Validator,
    check,
)

T = TypeVar("T")

_TCP_FLAGS = frozenset(("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"))
# What a distinct key can be made of, in the order DistinctKey takes the values.
_DISTINCT_FIELDS = ("src", "dst", "sport", "dport", "proto", "icmp_type")
_TOP_KEYS = frozenset(
    ("name", "description", "offender", "weight", "distinct", "spoofable", "match", "ignore")
)
_MATCH_KEYS = frozenset(
    (
        "direction",
        "proto",
        "not_proto",
        "flags",
        "flags_all",
        "flags_none",
        "dport",
        "sport",
        "prefix",
        "dst_unicast",
        "icmp_type",
        "icmp_code",
    )
)
_IGNORE_KEYS = frozenset(("prefix",))


class FilterError(ConfigError):
    """A filter file is invalid: names the file, the key and the reason."""


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
    # A LOG record is one packet, forged as easily as sent: true unless the filter matches
    # only packets of a connection conntrack saw answered.
    spoofable: bool = True
    path: str = ""

    def static_match(self, signature: Signature) -> bool:
        """Conditions that depend only on the kind of packet (decided once per Signature)."""
        direction, proto, flags, prefix = (
            signature.direction,
            signature.proto,
            signature.flags,
            signature.prefix,
        )
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

    def dynamic_match(
        self, dport: int | None, sport: int | None, dst: Address, unicast: dict[Address, bool]
    ) -> bool:
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
        ok = cache[dst] = not (
            dst.is_multicast or dst.is_unspecified or (dst.version == 4 and dst.packed[3] == 255)
        )
    return ok


# (src, dst, sport, dport, proto, icmp_type) -> the key
DistinctKey = Callable[
    [Address, Address, "int | None", "int | None", str, "int | None"], tuple[object, ...]
]


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


# The commonest distinct key, (dst, dport): FastCandidate carries this very function, so a
# hot loop may build that key inline when it sees it (`key_of is DST_DPORT`).
DST_DPORT: DistinctKey = lambda *values: (values[1], values[3])  # noqa: E731

# What the Matcher keeps per candidate filter: everything `match` needs without lookups.
_Candidate = tuple[Filter, float, bool, bool, "DistinctKey | None"]
# What Matcher.fast_plan() hands out per candidate filter, in chain order:
#   (filter name, weight, the filter when it has port conditions (check port_match()),
#    the unicast table when it wants a unicast destination (check `table[dst]`),
#    offender is SRC, distinct key or None)
FastCandidate = tuple[
    str, float, "Filter | None", "UnicastTable | None", bool, "DistinctKey | None"
]


class UnicastTable(dict["Address", bool]):
    """Destination -> whether it is a unicast address (see is_unicast): `table[dst]` never
    raises, and is one dict lookup in C for a destination seen before."""

    __slots__ = ()

    def __missing__(self, dst: Address) -> bool:
        return is_unicast(dst, self)


class Matcher:
    """One jail's ordered filter chain: the first filter that matches a packet wins.

    Two ways in: match() (a Packet -> a Hit; the named path that verdicts and the tests
    take) and fast_plan() (what a compiled hot loop needs per kind of packet). Both count
    their hits in `counts`.
    """

    def __init__(
        self,
        jail: str,
        chain: Sequence[tuple[Filter, float]],
        prefix: re.Pattern[str] | None = None,
    ) -> None:
        self.jail = jail
        self.chain = tuple(chain)
        self.prefix = prefix
        # Hits per filter name. A fast_plan() caller adds its hits here (+= 1 per hit).
        self.counts: dict[str, int] = {flt.name: 0 for flt, _ in self.chain}
        self._prepared: list[_Candidate] = [
            (
                flt,
                weight,
                flt.has_dynamic,
                flt.offender == "src",
                distinct_key(flt.distinct) if flt.distinct else None,
            )
            for flt, weight in self.chain
        ]
        self._candidates: dict[Signature, tuple[_Candidate, ...]] = {}
        self._unicast = UnicastTable()

    def match(self, packet: Packet, signature: Signature | None = None) -> Hit | None:
        """The first filter's Hit, or None. `signature` (Signature.of(packet)) may be shared
        by the jails looking at the same packet."""
        if signature is None:
            signature = Signature.of(packet)
        candidates = self._candidates.get(signature)
        if candidates is None:
            candidates = self._static_candidates(signature)
            if len(self._candidates) > 16384:
                self._candidates.clear()
            self._candidates[signature] = candidates
        for flt, weight, dynamic, from_src, key_of in candidates:
            if dynamic and not flt.dynamic_match(packet.dpt, packet.spt, packet.dst, self._unicast):
                continue
            self.counts[flt.name] += 1
            key = (
                None
                if key_of is None
                else key_of(
                    packet.src, packet.dst, packet.spt, packet.dpt, packet.proto, packet.icmp_type
                )
            )
            return Hit(
                packet.time,
                self.jail,
                flt.name,
                packet.src if from_src else packet.dst,
                weight,
                key,
            )
        return None

    def fast_plan(self, signature: Signature) -> tuple[FastCandidate, ...]:
        """The one fast entry point: the filters, in chain order, that packets of this kind
        may match, each as a FastCandidate. A caller does per packet what match() does: the
        first candidate whose port condition (if any) holds and whose destination is unicast
        (if it asks) is the hit; it counts it in `counts`. Not cached here: the caller
        compiles it once per kind of packet."""
        return tuple(
            (
                flt.name,
                weight,
                flt if flt.has_port_conditions else None,
                self._unicast if flt.dst_unicast else None,
                from_src,
                DST_DPORT if flt.distinct == ("dst", "dport") else key_of,
            )
            for flt, weight, _, from_src, key_of in self._static_candidates(signature)
        )

    def _static_candidates(self, signature: Signature) -> tuple[_Candidate, ...]:
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
    def get(
        validator: Validator[T], table: dict[str, Any], key: str, default: object, scope: str = ""
    ) -> T:
        return check(validator, table.get(key, default), where, scope + key, FilterError)

    _no_unknown(data, _TOP_KEYS, where, "")
    name = get(_NAME, data, "name", default_name)
    description = get(Text(), data, "description", "")
    offender = get(_OFFENDER, data, "offender", "src")
    weight = get(_WEIGHT, data, "weight", 1.0)
    distinct = get(_DISTINCT, data, "distinct", [])
    match = get(ANY_TABLE, data, "match", {})
    _no_unknown(match, _MATCH_KEYS, where, "match.")
    ignore = get(ANY_TABLE, data, "ignore", {})
    _no_unknown(ignore, _IGNORE_KEYS, where, "ignore.")

    def optional(validator: Validator[T], key: str) -> T | None:
        return None if key not in match else get(validator, match, key, None, "match.")

    direction = optional(_DIRECTION, "direction")
    flags = optional(_FLAGS, "flags")
    flags_all = optional(_FLAGS, "flags_all")
    flags_none = optional(_FLAGS, "flags_none")
    if not match:
        raise FilterError(where, "match", "a filter needs at least one condition")
    for key, value in match.items():
        # An empty list or regex constrains nothing: a typo must not make a filter match all.
        if value in ([], "") and key != "flags":
            raise FilterError(where, f"match.{key}", "must not be empty")
    if ignore.get("prefix") == "":
        raise FilterError(where, "ignore.prefix", "must not be empty")
    proto = optional(_PROTOCOLS, "proto")
    not_proto = optional(_PROTOCOLS, "not_proto")
    icmp_type = optional(_ICMP, "icmp_type")
    icmp_code = optional(_ICMP, "icmp_code")
    return Filter(
        name=name,
        description=description,
        offender=offender,
        weight=weight,
        distinct=distinct,
        direction=None if direction is None else frozenset(direction),
        proto=None if proto is None else frozenset(proto),
        not_proto=frozenset(not_proto or ()),
        flags=None if flags is None else frozenset(flags),
        flags_all=frozenset(flags_all or ()),
        flags_none=frozenset(flags_none or ()),
        dport=_ports(match, "dport", where),
        sport=_ports(match, "sport", where),
        prefix=optional(Regex(), "prefix"),
        ignore_prefix=get(Regex(), ignore, "prefix", None, "ignore."),
        dst_unicast=get(Bool(), match, "dst_unicast", False, "match."),
        icmp_type=None if icmp_type is None else frozenset(icmp_type),
        icmp_code=None if icmp_code is None else frozenset(icmp_code),
        spoofable=get(Bool(), data, "spoofable", True),
        path=where,
    )


def _no_unknown(table: dict[str, Any], known: Iterable[str], where: str, scope: str) -> None:
    for key in table:
        if key not in known:
            raise FilterError(where, scope + key, "unknown key")


@dataclass(frozen=True)
class _Protocols(Validator[tuple[str, ...]]):
    """Protocol names as the kernel prints them, or numbers (kept as the text the kernel
    prints for a protocol it has no name for)."""

    kind = "list of protocols"

    def __call__(self, value: object) -> tuple[str, ...]:
        if isinstance(value, list):
            value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return _STRINGS(value)


@dataclass(frozen=True)
class _Flags(Validator[tuple[str, ...]]):
    kind = "list of TCP flags"

    def __call__(self, value: object) -> tuple[str, ...]:
        flags = _STRINGS(value)
        unknown = sorted(set(flags) - _TCP_FLAGS)
        if unknown:
            raise Invalid(f"unknown TCP flag(s) {unknown}")
        return flags


_STRINGS = Strings("must be a string or a list of strings", single_ok=True)
_NAME = Text(r"[a-z0-9][a-z0-9_-]{0,63}", "must be lowercase letters, digits, '_' or '-'")
_OFFENDER = Choice(("src", "dst"), "must be 'src' or 'dst'")
_WEIGHT = Number(low=0, high=1000, low_open=True)
_DISTINCT = Strings(
    "must be a string or a list of strings",
    single_ok=True,
    options=_DISTINCT_FIELDS,
    unknown="unknown field {item!r}; choose from {options}",
)
_DIRECTION = Strings(
    "must be among 'in', 'out', 'forward'",
    single_ok=True,
    options=("in", "out", "forward"),
    unknown="must be among 'in', 'out', 'forward'",
)
_PROTOCOLS = _Protocols()
_FLAGS = _Flags()
_ICMP = Integers(0, 255, single_ok=True)


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
            raise FilterError(
                where, "match." + key, f"{item!r} is not a port (0-65535) or range 'LO-HI'"
            )
        ranges.append((lo, hi))
    return PortSet(tuple(ranges))
