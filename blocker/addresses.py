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
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from blocker.records import Address, Network

__all__ = [
    "BANNABLE_V6",
    "SPECIAL_V4",
    "SPECIAL_V6",
    "AllowList",
    "host_network",
    "is_special",
    "is_special_network",
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


def is_special_network(net: Network) -> bool:
    """True when `net` touches any special address, so it must never be banned whole."""
    if isinstance(net, IPv4Network):
        return any(net.overlaps(special) for special in SPECIAL_V4)
    return not any(net.subnet_of(block) for block in BANNABLE_V6)


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
        self._cache: dict[Address, bool] = {}
        self._cache_size = max(1, cache_size)

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._v4 + self._v6

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def contains_address(self, addr: Address) -> bool:
        """True when `addr` (or the IPv4 address an IPv4-mapped `addr` carries) is allowed."""
        if not (self._v4 or self._v6):
            return False  # the common case: no allowlist, nothing to hash
        cached = self._cache.get(addr)
        if cached is not None:
            return cached
        answer = self._lookup(addr)
        if len(self._cache) >= self._cache_size:
            # A full clear is O(1) amortized and keeps the bound simple.
            self._cache.clear()
        self._cache[addr] = answer
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
