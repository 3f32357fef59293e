"""Plain records handed from one pipeline stage to the next.

line -> Packet (netfilter.py) -> Hit (filters.py) -> Decision (scoring.py) -> firewall
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Literal, NamedTuple

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Direction = Literal["in", "out", "forward"]


# Packet and Hit are built once per log line on the hot path: a NamedTuple is as immutable
# as a frozen dataclass and about four times cheaper to construct.
class Packet(NamedTuple):
    """One netfilter LOG line, parsed. Addresses are canonical ipaddress objects."""

    time: float  # event time, seconds since the epoch (from the log line, or the source)
    prefix: str  # the LOG rule's --log-prefix, stripped ("" when none)
    iface_in: str  # IN=  ("" for the host's own outgoing packets)
    iface_out: str  # OUT= ("" for packets addressed to the host)
    src: Address
    dst: Address
    proto: str  # "TCP", "UDP", "ICMP", "ICMPv6", ... or the protocol number as text
    spt: int | None = None
    dpt: int | None = None
    flags: frozenset[str] = frozenset()  # TCP flags, e.g. {"SYN", "ACK"}; empty = NULL packet
    length: int | None = None
    ttl: int | None = None  # TTL (IPv4) or HOPLIMIT (IPv6)
    icmp_type: int | None = None
    icmp_code: int | None = None
    physin: str = ""
    ip_id: int | None = None  # IPv4 identification (ID=); IPv6 headers have none

    @property
    def direction(self) -> Direction:
        return direction_of(self.iface_in, self.iface_out)


def direction_of(iface_in: str, iface_out: str) -> Direction:
    """'in' = addressed to the host, 'out' = the host's own packet, 'forward' = routed."""
    if not iface_out:
        return "in"
    if not iface_in:
        return "out"
    return "forward"


class Signature(NamedTuple):
    """What kind of packet a LOG record holds: everything a filter checks except ports and
    addresses. Records of one kind share one Signature, so filters decide once per kind."""

    direction: Direction
    proto: str
    flags: frozenset[str]
    prefix: str
    icmp_type: int | None
    icmp_code: int | None
    ports: bool  # the protocol carries ports: a record of it without DPT= was cut short

    @classmethod
    def of(cls, packet: Packet) -> Signature:
        return cls(
            packet.direction,
            packet.proto,
            packet.flags,
            packet.prefix,
            packet.icmp_type,
            packet.icmp_code,
            packet.dpt is not None,
        )


class Hit(NamedTuple):
    """A filter recognized a packet: `offender` earned `weight` points in `jail`."""

    time: float
    jail: str
    filter: str
    offender: Address
    weight: float
    # Scan filters count distinct keys (e.g. (dst, dport)); None = every hit counts in full.
    distinct_key: tuple[object, ...] | None = None


class Decision(NamedTuple):
    """Ban `target` (an address or a whole subnet) for `duration` seconds from `at`.

    A NamedTuple, as Packet and Hit: a storm makes one per reflector, and a frozen
    dataclass's __init__ (object.__setattr__ per field) costs three times as much."""

    target: Network  # a host is a /32 or /128
    jail: str
    at: float
    duration: float  # seconds; math.inf only when a jail is configured with ban_time = "permanent"
    score: float
    filters: tuple[str, ...] = ()
    reason: str = ""

    @property
    def target_text(self) -> str:
        return network_text(self.target)


def network_text(net: Network) -> str:
    """Canonical compressed text: '198.51.100.7', '2001:db8::1', '203.0.113.0/24'."""
    address = net.network_address
    if isinstance(net, IPv4Network):  # inet_ntop prints exactly str()'s dotted quad, in C
        text = inet_ntop(AF_INET, address.packed)
        return text if net.prefixlen == 32 else f"{text}/{net.prefixlen}"
    packed = address.packed
    # Global unicast (2000::/3): inet_ntop gives exactly str()'s RFC 5952 form in C, where
    # ipaddress spends microseconds per address (a burst logs thousands of bans); elsewhere
    # inet_ntop may print an embedded IPv4 form.
    text = inet_ntop(AF_INET6, packed) if packed[0] & 0xE0 == 0x20 else str(address)
    return text if net.prefixlen == net.max_prefixlen else f"{text}/{net.prefixlen}"
