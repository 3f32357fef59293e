"""Which addresses and subnets may be banned at all.  PURE: no clock, no I/O.

Special addresses are never banned, whatever a log line claims:

* IPv4: 0.0.0.0/8 (unspecified, "this network"), 127.0.0.0/8 (loopback),
  169.254.0.0/16 (link-local), 224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved,
  includes the limited broadcast 255.255.255.255).
* IPv6: everything outside global unicast 2000::/3 and unique-local fc00::/7, i.e.
  ::, ::1, fe80::/10 (link-local), ff00::/8 (multicast) and the IETF-reserved blocks
  (the same set Python 3.11's ``is_reserved`` uses).  IPv4-mapped ``::ffff:a.b.c.d``
  and NAT64 ``64:ff9b::a.b.c.d`` addresses follow the IPv4 address they carry.

The tables are spelled out here (not taken from ``ipaddress`` properties) so that the
verdict does not change with the Python version.

This module is the one home of "may this be banned?": network_refusal() for the rules no
configuration changes (the firewall backend, the service and the scorer all ask it), and
AddressRules for a jail's own answer (those rules plus its allowlist and the host's own
addresses), used by the scorer per address and by the service per requested ban.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from blocker.records import Address, Network, network_text
from blocker.source_key import source_key_v6

__all__ = [
    "BANNABLE_V6",
    "NEVER_BANNED",
    "SPECIAL_V4",
    "SPECIAL_V6",
    "AddressRules",
    "AllowList",
    "host_network",
    "is_special",
    "is_special_network",
    "network_refusal",
    "subnet_of",
]

SPECIAL_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(text)
    for text in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)
# Only these two IPv6 blocks hold addresses a remote peer can really own.
BANNABLE_V6: tuple[IPv6Network, ...] = (IPv6Network("2000::/3"), IPv6Network("fc00::/7"))
SPECIAL_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(text)
    for text in (
        "::/3",  # ::, ::1, IPv4-mapped/compatible, NAT64, 100::/8 discard, reserved
        "4000::/2",
        "8000::/2",
        "c000::/3",
        "e000::/4",
        "f000::/5",
        "f800::/6",
        "fe00::/8",  # fe00::/9 reserved, fe80::/10 link-local, fec0::/10 old site-local
        "ff00::/8",  # multicast
    )
)
_MAPPED_V4 = IPv6Network("::ffff:0:0/96")
_NAT64_V4 = IPv6Network("64:ff9b::/96")
_LOW32 = 0xFFFFFFFF


def _bits(net: Network) -> tuple[int, int]:
    return int(net.network_address), int(net.netmask)


# Integer (base, mask) pairs: is_special() runs on every new address, `in` is slow.
_SPECIAL_V4_BITS = tuple(_bits(net) for net in SPECIAL_V4)
_BANNABLE_V6_BITS = tuple(_bits(net) for net in BANNABLE_V6)
_EMBEDDED_V4_BITS = tuple(_bits(net) for net in (_MAPPED_V4, _NAT64_V4))


def _by_top_byte(bits: int, tables: tuple[Network, ...]) -> tuple[bool | None, ...]:
    """Per value of an address's first byte: True when that whole /8 lies in `tables`,
    False when none of it does, None when only part of it does (ask the tables)."""
    network = IPv4Network if bits == 32 else IPv6Network
    verdicts: list[bool | None] = []
    for top in range(256):
        block = network((top << (bits - 8), 8))
        if any(block.subnet_of(net) for net in tables):  # type: ignore[arg-type]
            verdicts.append(True)
        elif any(block.overlaps(net) for net in tables):
            verdicts.append(None)
        else:
            verdicts.append(False)
    return tuple(verdicts)


# Derived from the tables above: one index answers for almost every address.
_SPECIAL_V4_BY_BYTE = _by_top_byte(32, SPECIAL_V4)
_BANNABLE_V6_BY_BYTE = _by_top_byte(128, BANNABLE_V6)


def is_special(addr: Address) -> bool:
    """True for addresses that must never be banned (see the module docstring)."""
    value = int(addr)
    if isinstance(addr, IPv4Address):
        return _is_special_v4(value)
    bannable = _BANNABLE_V6_BY_BYTE[value >> 120]
    if bannable is None:
        bannable = _in_any(value, _BANNABLE_V6_BITS)
    if bannable:
        return False
    for base, mask in _EMBEDDED_V4_BITS:
        if value & mask == base:
            return _is_special_v4(value & _LOW32)
    return True


def _is_special_v4(value: int) -> bool:
    special = _SPECIAL_V4_BY_BYTE[value >> 24]
    return _in_any(value, _SPECIAL_V4_BITS) if special is None else special


def _in_any(value: int, blocks: tuple[tuple[int, int], ...]) -> bool:
    """Whether `value` lies in any of the (base, mask) `blocks`."""
    for base, mask in blocks:  # noqa: SIM110 - any() and a generator cost 2x
        if value & mask == base:
            return True
    return False


NEVER_BANNED = (
    "loopback, link-local, multicast, unspecified and reserved addresses are never banned"
)
EVERY_ADDRESS = "that is every address (a whole address family)"
MAPPED = "it holds IPv4-mapped IPv6 addresses: ban the IPv4 form instead"
# Integer (first, last) ranges: Network.overlaps() costs microseconds, and a burst of bans
# (a restart restoring a million) checks every target.
_SPECIAL_V4_RANGES = tuple((int(n.network_address), int(n.broadcast_address)) for n in SPECIAL_V4)
_BANNABLE_V6_RANGES = tuple((int(n.network_address), int(n.broadcast_address)) for n in BANNABLE_V6)
_MAPPED_RANGE = (int(_MAPPED_V4.network_address), int(_MAPPED_V4.broadcast_address))


def network_refusal(target: Network) -> str | None:
    """Why nobody may ever ban `target`, whatever the configuration, or None: a whole
    address family, or any special address inside it (IPv4-mapped ones named apart, as
    their IPv4 form is what to ban)."""
    if target.prefixlen == 0:
        return EVERY_ADDRESS
    low = int(target.network_address)
    high = low | ((1 << (target.max_prefixlen - target.prefixlen)) - 1)
    if isinstance(target, IPv4Network):
        for first, last in _SPECIAL_V4_RANGES:
            if low <= last and first <= high:
                return NEVER_BANNED
        return None
    if low <= _MAPPED_RANGE[1] and _MAPPED_RANGE[0] <= high:
        return MAPPED
    for first, last in _BANNABLE_V6_RANGES:
        if first <= low and high <= last:
            return None
    return NEVER_BANNED


def is_special_network(net: Network) -> bool:
    """True when `net` touches any special address, so it must never be banned whole."""
    return network_refusal(net) is not None


def host_network(addr: Address) -> Network:
    """The single-address network (/32 or /128) that bans exactly `addr`."""
    if isinstance(addr, IPv4Address):
        return IPv4Network((int(addr), 32))
    return IPv6Network((int(addr), 128))


def subnet_of(addr: Address, v4_prefix: int, v6_prefix: int) -> Network:
    """The enclosing subnet of `addr`, e.g. 203.0.113.0/24 or 2001:db8:1:2::/64."""
    # From the integer: given an address object, ip_network() re-parses its text form.
    if isinstance(addr, IPv4Address):
        return IPv4Network((int(addr), v4_prefix), strict=False)
    return IPv6Network((int(addr), v6_prefix), strict=False)


class AllowList:
    """Networks that are never banned.  Per-address answers are cached for the hot path."""

    __slots__ = ("_cache", "_cache_size", "_v4", "_v6")

    def __init__(self, networks: Iterable[Network] = (), cache_size: int = 65536) -> None:
        nets = list(networks)
        for net in nets:
            if not isinstance(net, IPv4Network | IPv6Network):
                raise TypeError(f"allowlist entry is not a network: {net!r}")
        self._v4 = tuple(net for net in nets if isinstance(net, IPv4Network))
        self._v6 = tuple(net for net in nets if isinstance(net, IPv6Network))
        # Keyed by the source key (source_key.py), not the address object: an IPv6Address
        # hashes unsalted, and spoofed sources could be chosen to share one hash.
        self._cache: dict[int, bool] = {}
        self._cache_size = max(1, cache_size)

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._v4 + self._v6

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def contains_v4(self, value: int) -> bool:
        """contains_address() of the IPv4 address `value` (its int), which is its source
        key: cached alike, with no address object unless the answer is not cached."""
        if not self._v4 and not self._v6:
            return False
        cached = self._cache.get(value)
        if cached is not None:
            return cached
        return self.contains_address(IPv4Address(value))

    def contains_address(self, addr: Address) -> bool:
        """True when `addr` (or the IPv4 address an IPv4-mapped `addr` carries) is allowed."""
        if not (self._v4 or self._v6):
            return False  # the common case: no allowlist, nothing to hash
        key = int(addr) if isinstance(addr, IPv4Address) else source_key_v6(int(addr))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._lookup(addr)
        if len(self._cache) >= self._cache_size:
            # A full clear is O(1) amortized and keeps the bound simple.
            self._cache.clear()
        self._cache[key] = answer
        return answer

    def _lookup(self, addr: Address) -> bool:
        if isinstance(addr, IPv4Address):
            return any(addr in net for net in self._v4)
        if any(addr in net for net in self._v6):
            return True
        return addr in _MAPPED_V4 and self._lookup(IPv4Address(int(addr) & _LOW32))

    def overlaps(self, net: Network) -> bool:
        """True when any allowlisted network shares at least one address with `net`."""
        if isinstance(net, IPv4Network):
            return any(net.overlaps(allowed) for allowed in self._v4)
        return any(net.overlaps(allowed) for allowed in self._v6)


class AddressRules:
    """One jail's "may this be banned?": network_refusal()'s rules, then the host's own
    addresses, then the jail's allowlist."""

    __slots__ = ("_allow", "_own", "_own_in_order", "_own_v4", "jail")

    def __init__(
        self, allow: Iterable[Network] = (), own: Iterable[Address] = (), jail: str = ""
    ) -> None:
        self._allow = AllowList(allow)
        self._own_in_order = tuple(dict.fromkeys(own))
        self._own = frozenset(self._own_in_order)
        self._own_v4 = frozenset(int(a) for a in self._own if isinstance(a, IPv4Address))
        self.jail = jail

    def address_refusal(self, addr: Address) -> str | None:
        """Why `addr` may never be banned ("special", "own address", "allowlisted"), or None.
        On the scorer's path for every new source: kept to three cheap tests."""
        if is_special(addr):
            return "special"
        if self._own and addr in self._own:  # empty in a replay: skip hashing for nothing
            return "own address"
        if self._allow.contains_address(addr):
            return "allowlisted"
        return None

    def v4_refusal(self, value: int) -> str | None:
        """address_refusal() of the IPv4 address `value` (its int), with no address object:
        the path of every new IPv4 source.  The same tests in the same order."""
        if _is_special_v4(value):
            return "special"
        if value in self._own_v4:
            return "own address"
        if self._allow.contains_v4(value):
            return "allowlisted"
        return None

    def network_refusal(self, target: Network) -> str | None:
        """Why `target` (a host or a subnet) may never be banned by this jail, or None."""
        fixed = network_refusal(target)
        if fixed is not None:
            return fixed
        for own in self._own_in_order:
            if own in target:
                return f"it holds this host's own address {own}"
        for allowed in self._allow.networks:
            if allowed.version == target.version and allowed.overlaps(target):
                where = f" in jail {self.jail}" if self.jail else ""
                return f"it is allowlisted ({network_text(allowed)}{where})"
        return None
