"""Parse one kernel log line holding a netfilter LOG record into a Packet. Pure.

Accepted line forms (what admins actually have):
  rsyslog traditional  ``Aug 14 11:48:37 host kernel: [81795.100496] PREFIX IN=eth0 OUT= ...``
  rsyslog RFC 3339     ``2026-11-22T02:04:54.684948+00:00 host kernel: PREFIX IN=eth0 ...``
  dmesg                ``[81795.100496] PREFIX IN=eth0 OUT= ...``
  journald / kmsg text ``PREFIX IN=eth0 OUT= ...`` (the source supplies the time)

A line with a syslog header whose tag is not exactly ``kernel:`` is refused: only the kernel
writes netfilter LOG records, and a user process could otherwise forge them.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6, inet_pton

from blocker.records import Address, Packet

_KERNEL_TAG = " kernel: "
_TRADITIONAL = re.compile(r"([A-Z][a-z]{2}) ([ 0123]\d) ([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60) \S+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(Z|[+-]\d\d:?\d\d)? \S+"
)
# A line that starts like a syslog timestamp but carries no kernel tag came from a user process.
_SYSLOG_START = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
# Field order is fixed by the kernel (nf_log_ipv4/ipv6); optional parts are the bridge
# (PHYSIN/PHYSOUT), MAC, IP options/flags before PROTO, and TCP sequence numbers.
_PACKET = re.compile(
    r"IN=(\S*) OUT=(\S*) (?:PHYSIN=(\S*) )?(?:PHYSOUT=\S* )?(?:MAC=\S* )?"
    r"SRC=([0-9A-Fa-f.:]+) DST=([0-9A-Fa-f.:]+) LEN=(\d+) "
    r"(?:TOS=\S+ PREC=\S+ TTL=(\d+) ID=(\d+) |TC=\d+ HOPLIMIT=(\d+) FLOWLBL=\d+ )?"
    r"(?:\S+ )*?PROTO=(\w+)"
    # The kernel always prints a field after DPT/CODE: requiring the space refuses a line
    # cut in the middle of a port number.
    r"(?: SPT=(\d+) DPT=(\d+) (?:SEQ=\d+ ACK=\d+ )?(?:WINDOW=\d+ RES=\S+ ((?:[A-Z]{3} )*)URGP=)?"
    r"| TYPE=(\d+) CODE=(\d+)(?= |$)| (INCOMPLETE) \[)?"
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_NO_FLAGS: frozenset[str] = frozenset()
_ZONE_START = ("+", "-", "Z")
# What nf_log prints after PROTO= (anything else it prints as a number).
_KNOWN_PROTOS = frozenset(("TCP", "UDP", "UDPLITE", "SCTP", "DCCP", "ICMP", "ICMPv6", "AH", "ESP"))
_PORT_PROTOS = frozenset(("TCP", "UDP", "UDPLITE", "SCTP", "DCCP"))
_ICMP_PROTOS = frozenset(("ICMP", "ICMPv6"))
_TCP_FLAGS = frozenset(("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"))
_CACHE_LIMIT = 65536
_ADDRESS_CACHE_LIMIT = 262144
# Traditional timestamps carry no year: one further in the future than this is last year's.
_MAX_FUTURE = 7 * 86400.0


class _HashedOnce:
    """Mixin for ipaddress classes: hash once. Each packet's addresses are looked up in
    several dicts per jail, and ipaddress recomputes its hash in Python on every lookup. The
    value is the stdlib's, so these mix freely with plain address keys."""

    __slots__ = ()
    _hash: int

    def __init__(self, packed: bytes) -> None:
        super().__init__(packed)  # type: ignore[call-arg]
        # The slot lives in the concrete classes (two slotted bases cannot share a layout).
        self._hash = super().__hash__()  # type: ignore[misc]

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"{type(self).__mro__[2].__name__}({str(self)!r})"


class _KernelIPv4Address(_HashedOnce, IPv4Address):
    __slots__ = ("_hash",)


class _KernelIPv6Address(_HashedOnce, IPv6Address):
    __slots__ = ("_hash",)


class KernelLogParser:
    """Parses lines; keeps bounded caches so repeated timestamps and addresses cost a lookup."""

    def __init__(self) -> None:
        self._header_times: dict[str, float | None] = {}
        # Year inference depends on `now`: cached header times are valid for one day of it.
        self._cache_from = self._cache_until = 0.0
        self._addresses: dict[str, Address | None] = {}
        self._flags: dict[str, frozenset[str] | None] = {}
        self._rejected = 0

    def _reset_header_cache(self, now: float) -> None:
        self._header_times.clear()
        day = now // 86400 * 86400
        self._cache_from, self._cache_until = day, day + 86400

    def take_rejected(self) -> int:
        """LOG-like lines parse_text refused since the last call (for the 'malformed' count)."""
        rejected, self._rejected = self._rejected, 0
        return rejected

    def parse(self, line: str, now: float, source_time: float | None = None) -> Packet | None:
        """Return the Packet in one `line`, or None when it is not a (valid) netfilter LOG line.

        `now` anchors year-less timestamps and times headerless lines that have no
        `source_time` (journald/kmsg pass the time they read from the kernel record).
        """
        m = _PACKET.search(line)
        if m is None:
            return None
        packet = self._packet(m, line[: m.start()], now, source_time)
        if packet is None:
            self._rejected += 1
        return packet

    def parse_text(self, text: str, now: float) -> Iterator[Packet]:
        """Packets of every valid LOG line in `text` (many lines; the regex skips the rest in C).

        Used for replay and bulk reads: lines without a packet cost almost nothing, so callers
        count lines with text.count("\n") and treat the difference as unparsed.
        """
        next_line = 0
        for m in _PACKET.finditer(text):
            start = m.start()
            if start < next_line:
                continue  # a second 'IN=' on a line already handled
            line_start = text.rfind("\n", 0, start) + 1
            next_line = text.find("\n", m.end())
            if next_line < 0:
                next_line = len(text)
            packet = self._packet(m, text[line_start:start], now, None)
            if packet is None:
                self._rejected += 1
            else:
                yield packet

    def _packet(
        self, m: re.Match[str], head: str, now: float, source_time: float | None
    ) -> Packet | None:
        """Build the Packet from a regex match and the text before 'IN=' on its line."""
        if now >= self._cache_until or now < self._cache_from:
            self._reset_header_cache(now)
        k = head.find(_KERNEL_TAG)
        if k >= 0:
            header = head[:k]
            if header[19:20] == "." and header[26:27] in _ZONE_START and header[20:26].isdigit():
                # rsyslog RFC 3339 (Debian 12): six fraction digits, cached on whole seconds.
                base = self._header_times.get(header[:19] + header[26:])
                event_time = None if base is None else base + int(header[20:26]) * 1e-6
            else:
                event_time = self._header_times.get(header)
            if event_time is None:
                event_time = self._header_time(header, now)
                if event_time is None:
                    return None
            head = head[k + 9 :]  # len(_KERNEL_TAG)
        elif _SYSLOG_START.match(head):
            return None  # a syslog line from a user process: never trusted
        else:
            event_time = now if source_time is None else source_time
        if head.startswith("["):
            # Only an [uptime] stamp is stripped: "[UFW ALLOW]" is a LOG prefix and stays.
            close = head.find("]")
            if close > 1 and head[1:close].strip().replace(".", "", 1).isdigit():
                if k < 0 and source_time is None:
                    # dmesg dumps: the [uptime] stamp is the only clock the line has.
                    event_time = float(head[1:close].strip())
                head = head[close + 1 :]
        (iface_in, iface_out, physin, src_text, dst_text, length, ttl, ip_id, hoplimit, proto,
         spt, dpt, flag_text, icmp_type, icmp_code, incomplete) = m.groups()
        addresses = self._addresses
        src = addresses.get(src_text) or self._address(src_text)
        dst = addresses.get(dst_text) or self._address(dst_text)
        if src is None or dst is None or src.version != dst.version:
            return None
        if not self._complete(proto, dpt, icmp_type, incomplete):
            return None
        if proto == "TCP":
            if flag_text is None:
                return None  # truncated or mangled TCP record: its flags are the point
            flags = self._flags.get(flag_text) or self._tcp_flags(flag_text)
            if flags is None:
                return None
            return Packet(
                event_time, head.strip(), iface_in, iface_out, src, dst, proto,
                int(spt), int(dpt), flags, int(length), int(ttl or hoplimit or 0) or None,
                None, None, physin or "", int(ip_id) if ip_id else None,
            )
        hops = ttl or hoplimit
        return Packet(
            event_time,
            head.strip(),
            iface_in,
            iface_out,
            src,
            dst,
            proto,
            int(spt) if spt is not None else None,
            int(dpt) if dpt is not None else None,
            _NO_FLAGS,
            int(length),
            int(hops) if hops else None,
            int(icmp_type) if icmp_type is not None else None,
            int(icmp_code) if icmp_code is not None else None,
            physin or "",
            int(ip_id) if ip_id else None,
        )

    @staticmethod
    def _complete(proto: str, dpt: str | None, icmp_type: str | None,
                  incomplete: str | None) -> bool:
        """False for a record cut short (a partial last line): its fields would be wrong.

        A protocol number at the very end of a line cannot be told from a cut one (real
        logs end "PROTO=2" with and without a trailing space), so numbers are taken as they are.
        """
        if incomplete or proto.isdigit():  # INCOMPLETE: the kernel says the header was cut
            return True
        if proto in _PORT_PROTOS:
            return dpt is not None
        if proto in _ICMP_PROTOS:
            return icmp_type is not None
        return proto in _KNOWN_PROTOS  # e.g. "PROTO=TC": cut inside the protocol name

    def _header_time(self, header: str, now: float) -> float | None:
        """Epoch time of a syslog header ('<timestamp> <host>'), None if it is not one."""
        fraction = 0.0
        key = header
        if len(header) > 20 and header[4] == "-" and header[19] == ".":
            # RFC 3339 with microseconds: cache on the whole seconds, add the fraction back.
            end = 20
            while end < len(header) and header[end].isdigit():
                end += 1
            fraction = float("0" + header[19:end])
            key = header[:19] + header[end:]
        if len(self._header_times) >= _CACHE_LIMIT:
            self._header_times.clear()
        try:
            base = self._header_times[key]
        except KeyError:
            base = self._header_times[key] = _parse_header_time(key, now)
        return None if base is None else base + fraction

    def _address(self, text: str) -> Address | None:
        try:
            return self._addresses[text]
        except KeyError:
            pass
        if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
            self._addresses.clear()
        # inet_pton is as strict as ip_address() and 3-10x faster (the kernel prints IPv6
        # fully expanded, which ip_address() parses slowly); new sources arrive constantly.
        address: Address | None
        try:
            if ":" in text:
                address = _KernelIPv6Address(inet_pton(AF_INET6, text))
            else:
                address = _KernelIPv4Address(inet_pton(AF_INET, text))
        except (OSError, ValueError):
            address = None
        self._addresses[text] = address
        return address

    def _tcp_flags(self, text: str) -> frozenset[str] | None:
        try:
            return self._flags[text]
        except KeyError:
            pass
        words = frozenset(text.split())
        flags = words if words <= _TCP_FLAGS else None
        if len(self._flags) < 4096:
            self._flags[text] = flags
        return flags


def _parse_header_time(header: str, now: float) -> float | None:
    m = _TRADITIONAL.fullmatch(header)
    if m is not None:
        month = _MONTHS.get(m.group(1))
        if month is None:
            return None
        year = time.localtime(now).tm_year
        fields = (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
        try:
            stamp = time.mktime((year, month, *fields, 0, 0, -1))
            if stamp > now + _MAX_FUTURE:
                stamp = time.mktime((year - 1, month, *fields, 0, 0, -1))
        except (OverflowError, ValueError):
            return None
        return stamp
    m = _RFC3339.fullmatch(header)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    zone = m.group(7)
    try:
        if zone is None:
            return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))
        offset = 0
        if zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        return _utc_epoch((year, month, day, hour, minute, second)) - offset
    except (OverflowError, ValueError):
        return None


def _utc_epoch(fields: tuple[int, int, int, int, int, int]) -> float:
    year, month, day, hour, minute, second = fields
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError("timestamp field out of range")
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def looks_like_netfilter(line: str) -> bool:
    """True for lines that resemble a LOG record: failing to parse one is worth reporting."""
    return "SRC=" in line and "IN=" in line
