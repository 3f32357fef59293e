"""A source address as the scorer's int key.  PURE.

IPv4: the address as an int.  Below 2**32 every int hashes to itself, so no two sources
share a hash in a dict.

IPv6: the address times a secret odd 128-bit number drawn once per process, modulo 2**128
(a bijection: the address comes back times its inverse), with bit 128 set (the tag:
``::192.0.2.1`` never shares 192.0.2.1's key).  CPython hashes an int as its value modulo
2**61 - 1, so raw IPv6 ints can be chosen to share one hash: ``base + k * (2**61 - 1)``
for any k, all inside one /32.  Spoofed sources chosen that way made the tiers' dicts
compare every colliding key on each insert and lookup: 20,000 of them took 1.85 s to put
in one dict, and the cost grows with the square of their number.  Multiplying by a secret
spreads such a set over all hashes, and no one outside knows which addresses collide.
(XOR with a secret does not: it moves the whole set by a few bits, 5,000 such addresses
kept 33 hashes.)  Nothing decided depends on a key's value: ties between equal times are
broken by the address (v6_address()), and the doorkeeper probes by the address too.
"""

from __future__ import annotations

import secrets
from typing import Final

__all__ = ["V6_TAG", "network_key", "source_key_v6", "v6_address"]

V6_TAG: Final = 1 << 128
_M128: Final = (1 << 128) - 1
_SECRET: Final = secrets.randbits(128) | 1  # odd: invertible modulo 2**128
_INVERSE: Final = pow(_SECRET, -1, 1 << 128)


def source_key_v6(ip: int) -> int:
    """The key of the IPv6 address `ip` (an int below 2**128)."""
    return (ip * _SECRET) & _M128 | V6_TAG


def network_key(network: int, prefixlen: int, v6: bool) -> int:
    """The key of a network (its address as an int, its prefix length; `v6`: IPv6): its
    address's key, as a source's, with the prefix length below.  Subnets are banned from
    spoofable sources too: keyed by the IPv6Network object (hash((its int, mask)), unsalted)
    they could be chosen to share one hash as well."""
    return (source_key_v6(network) if v6 else network) << 8 | prefixlen


def v6_address(key: int) -> int:
    """The IPv6 address (an int) of a key that source_key_v6() made."""
    return ((key & _M128) * _INVERSE) & _M128
