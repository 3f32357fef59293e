"""Parse one kernel log line holding a netfilter LOG record into a Packet. Pure.

Accepted line forms (what admins actually have):
  rsyslog traditional  ``Aug 14 11:48:37 host kernel: [81795.100496] PREFIX IN=eth0 OUT= ...``
  rsyslog RFC 3339     ``2026-11-22T02:04:54.684948+00:00 host kernel: PREFIX IN=eth0 ...``
  dmesg                ``[81795.100496] PREFIX IN=eth0 OUT= ...``
  dmesg -T             ``[Fri Jan 10 10:34:04 2020] PREFIX IN=eth0 OUT= ...`` (local time)
  OpenWrt logread      ``Mon Dec 25 13:31:15 2017 kern.warn kernel: [45020.39] PREFIX IN=...``
  journald / kmsg text ``PREFIX IN=eth0 OUT= ...`` (the source supplies the time)

A line with a syslog header whose tag is not exactly ``kernel:`` is refused: only the kernel
writes netfilter LOG records, and a user process could otherwise forge them. Text from a file
(kern.log) must carry that header: headerless text is valid only where the source itself
vouches for the kernel (kmsg's facility, journald's _TRANSPORT), so scan() is told which.
Kernel TRACE output (``TRACE: raw:PREROUTING:policy:2 IN=...``) describes a packet being
traced, not one a rule logged: it is never a packet here.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6, inet_pton
from typing import NamedTuple

from blocker.records import Address, Packet, Signature, direction_of
from blocker.source_key import source_key_v6, v6_address

_KERNEL_TAG = " kernel: "
_TRADITIONAL = re.compile(r"([A-Z][a-z]{2}) ([ 0123]\d) ([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60) \S+")
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(Z|[+-]\d\d:?\d\d)? \S+")
# OpenWrt's logread: ctime() with the year, then facility.level; only kern.* is the kernel's.
_LOGREAD = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ 0123]\d) ([01]\d|2[0-3]):([0-5]\d):"
    r"([0-5]\d|60) (\d{4}) kern\.(?:emerg|alert|crit|err|warn|warning|notice|info|debug)"
)
# dmesg -T: the kernel's timestamp printed as local ctime() in the bracket.
_CTIME_BRACKET = re.compile(
    r"\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ 0123]\d) ([01]\d|2[0-3]):([0-5]\d):"
    r"([0-5]\d|60) (\d{4})\]"
)
# A line that starts like a syslog timestamp but carries no kernel tag came from a user process.
_SYSLOG_START = re.compile(
    r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    r"|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} "
)
# Field order is fixed by the kernel (nf_log_ipv4/ipv6); optional parts are the bridge
# (PHYSIN/PHYSOUT), MAC, IP options/flags before PROTO, and TCP sequence numbers.
# `[^ ]` rather than `\S`: a negated literal is the fastest class the engine has (`\S` tests
# Unicode categories per character), and this regex runs over every byte of a bulk read.
# It can run past a newline where `\S` would stop; scan() catches such a match and reads
# those lines one by one.
# Everything after OUT= is optional as a whole: a record cut (or mangled) before PROTO=
# still matches, with PROTO None, so it is counted as malformed instead of passing unseen.
# Each optional part is spelled `(?:X|)`, not `(?:X)?`: the same match (X first, then
# nothing, backtracking alike), but the engine runs a BRANCH where `?` runs its general
# repeat machinery, ~700 instructions per optional part per line, a fifth of this regex's
# cost. Digit runs and the TCP flags are possessive (`++`, `*+`): what follows each (a space,
# 'URGP=') can never match inside what they took, so giving some back never finds a match,
# and the engine skips keeping the means to. tests/test_netfilter.py holds this regex to the
# plain spelling on mutated lines.
_PACKET = re.compile(
    r"IN=(?P<iface_in>[^ ]*) OUT=(?P<iface_out>[^ ]*)(?: (?:PHYSIN=(?P<physin>[^ ]*) |)"
    r"(?:PHYSOUT=[^ ]* |)(?:MAC=[^ ]* |)"
    r"SRC=(?P<src>[^ ]+) DST=(?P<dst>[^ ]+) LEN=(?P<length>[0-9]++) "
    r"(?:T(?:OS=[^ ]* PREC=[^ ]* TTL=(?P<ttl>[0-9]++) ID=(?P<ip_id>[0-9]++)"
    r"|C=[0-9]++ HOPLIMIT=(?P<hoplimit>[0-9]++) FLOWLBL=[0-9]++) |)"
    # IPv4 flags and options (CE DF MF FRAG:n OPT (..)) or IPv6 extension headers: no '='.
    r"[^=\n]*PROTO=(?P<proto>\w+)"
    # The kernel always prints a field after DPT/CODE: requiring the space refuses a line
    # cut in the middle of a port number.
    r"(?: SPT=(?P<spt>[0-9]++) DPT=(?P<dpt>[0-9]++) (?:SEQ=[0-9]++ ACK=[0-9]++ |)"
    r"(?:WINDOW=[0-9]++ RES=[^ ]* (?P<flags>(?:[A-Z]{3} )*+)URGP=|)"
    r"| TYPE=(?P<icmp_type>[0-9]++) CODE=(?P<icmp_code>[0-9]++)(?= |$)"
    r"| (?P<incomplete>INCOMPLETE) \[|)|)",
    re.MULTILINE,
)


class LogFields(NamedTuple):
    """The fields of one LOG record, in the order of _PACKET's groups (a test ties the
    group names and numbers to these fields). The bulk path hands them on as the plain tuple
    match.groups() returns, at no cost; code off the hot path may wrap that tuple as
    LogFields._make(fields) to read it by name, and a hot loop unpacks it by position in
    exactly this order. None: the field is absent from the record."""

    iface_in: str | None  # IN=
    iface_out: str | None  # OUT=
    physin: str | None  # PHYSIN= (bridged packets)
    src: str | None  # SRC=, as printed
    dst: str | None  # DST=
    length: str | None  # LEN=
    ttl: str | None  # TTL= (IPv4)
    ip_id: str | None  # ID= (IPv4)
    hoplimit: str | None  # HOPLIMIT= (IPv6)
    proto: str | None  # PROTO=: a name, or a number; None for a record cut before it
    spt: str | None  # SPT=
    dpt: str | None  # DPT=
    flags: str | None  # the TCP flags between RES= and URGP=, e.g. "ACK SYN "
    icmp_type: str | None  # TYPE=
    icmp_code: str | None  # CODE=
    incomplete: str | None  # "INCOMPLETE": the kernel says the transport header was cut


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_NO_FLAGS: frozenset[str] = frozenset()
_ZONE_START = ("+", "-", "Z")
_UPTIME_START = frozenset(" 0123456789")  # "[UFW BLOCK]" is a prefix, "[ 3445.03]" an uptime
# What nf_log prints after PROTO= (anything else it prints as a number).
_KNOWN_PROTOS = frozenset(("TCP", "UDP", "UDPLITE", "SCTP", "DCCP", "ICMP", "ICMPv6", "AH", "ESP"))
_PORT_PROTOS = frozenset(("TCP", "UDP", "UDPLITE", "SCTP", "DCCP"))
_ICMP_PROTOS = frozenset(("ICMP", "ICMPv6"))
_TCP_FLAGS = frozenset(("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"))
_CACHE_LIMIT = 65536
# What scan() returns per LOG line: (time, raw prefix, the groups of _PACKET), the groups in
# LogFields' order (a plain tuple: LogFields._make() names them off the hot path).
Fields = tuple[str | None, ...]
# Positions in Fields of what the cached parts of a record depend on.
_IN, _OUT, _PROTO, _FLAGS, _TYPE, _CODE, _INCOMPLETE = (
    LogFields._fields.index(name)
    for name in ("iface_in", "iface_out", "proto", "flags", "icmp_type", "icmp_code", "incomplete")
)
Record = tuple[float, str, Fields]
# Text -> address cache. A flood of new sources only misses it, and full it holds ~16 MiB
# of IPv6 addresses and their texts (13.5 MiB IPv4) at 65,536 entries, ~4 MiB at 16,384. On
# the mixed 1M-line log 16,384 entries hit 79.1% of SRC=/DST= lookups, 65,536 hit 81.1%: 23k
# more misses of ~0.5 us in ~1.15M lookups (issue 9).
_ADDRESS_CACHE_LIMIT = 16384
KEY_TABLE_LIMIT = _ADDRESS_CACHE_LIMIT  # KeyTable's bound
# Traditional timestamps carry no year: one further in the future than this is last year's.
_MAX_FUTURE = 7 * 86400.0
# No line's text at offset 26 starts with a newline before its 'IN=': matches no header.
_NO_TAIL = "\n"


_new = object.__new__


class _HashedOnce:
    """Mixin for ipaddress classes: hash once. Each packet's addresses are looked up in
    several dicts per jail, and ipaddress recomputes its hash in Python on every lookup. The
    value is the stdlib's, so these mix freely with plain address keys. Only AddressTable
    makes them, through from_int() (tests hold the result to the stdlib's own objects in
    every respect)."""

    __slots__ = ()
    _hash: int

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"{type(self).__mro__[2].__name__}({str(self)!r})"


class _KernelIPv4Address(_HashedOnce, IPv4Address):
    __slots__ = ("_hash",)
    _ip: int  # IPv4Address's own slot

    @classmethod
    def from_int(cls, ip: int) -> _KernelIPv4Address:
        """IPv4Address(ip) without its checks: `ip` is inet_pton's 4 bytes as an int."""
        self = _new(cls)
        self._ip, self._hash = ip, hash(hex(ip))  # _BaseAddress.__hash__'s formula
        return self


class _KernelIPv6Address(_HashedOnce, IPv6Address):
    __slots__ = ("_hash",)
    _ip: int  # IPv6Address's own slots
    _scope_id: str | None

    @classmethod
    def from_int(cls, ip: int) -> _KernelIPv6Address:
        """IPv6Address(ip) without its checks: `ip` is inet_pton's 16 bytes as an int."""
        self = _new(cls)
        self._ip, self._scope_id, self._hash = ip, None, hash((ip, None))  # its __hash__'s
        return self


class AddressTable(dict[str, "Address | None"]):
    """SRC=/DST= text -> the address it names, or None when it is not one. Reading a text
    never seen before builds its entry, so `table[text]` never raises and costs one dict
    lookup in C for a text seen before (most of them); the table bounds itself. Callers only
    read it: it is a cache, and what it holds is up to it."""

    __slots__ = ()

    def __missing__(self, text: str) -> Address | None:
        # A flood of new sources lands here, once per line: one further Python call (not
        # the three of IPv4Address(packed) and its __hash__ and __int__). inet_pton is as
        # strict as ip_address() and 3-10x faster (the kernel prints IPv6 fully expanded,
        # which ip_address() parses slowly).
        # int.from_bytes() reads big-endian by default (3.11), cheaper than parsing "big".
        if len(self) >= _ADDRESS_CACHE_LIMIT:
            self.clear()
        address: Address | None
        try:
            if ":" in text:
                address = _KernelIPv6Address.from_int(int.from_bytes(inet_pton(AF_INET6, text)))
            else:
                address = _KernelIPv4Address.from_int(int.from_bytes(inet_pton(AF_INET, text)))
        except (OSError, ValueError):
            address = None
        self[text] = address
        return address


def address_of(key: int) -> Address:
    """The address of a source key (KeyTable's, tiers.key_of()'s: see source_key.py)."""
    if key >> 128:
        return _KernelIPv6Address.from_int(v6_address(key))
    return _KernelIPv4Address.from_int(key)


def kernel_address_types() -> tuple[type[Address], type[Address]]:
    """The classes of AddressTable's IPv4 and IPv6 addresses, in that order."""
    return _KernelIPv4Address, _KernelIPv6Address


class KeyTable(dict[str, "int | None"]):
    """SRC= text -> the address it names as a source key (address_of() makes the address),
    or None when it is not one: AddressTable without an object per address.  Most hits
    never need the address object (the tiers are keyed by the int): only a source no tier
    holds does (the gate, its refusal), or a ban.  Keys are ints, so this table stays small
    and bounds itself like AddressTable.  The pipeline asks it only for IPv6 and bad text:
    it parses IPv4 text itself on every line (a storm's sources miss any cache)."""

    __slots__ = ()

    def __missing__(self, text: str) -> int | None:
        if len(self) >= KEY_TABLE_LIMIT:
            self.clear()
        key: int | None
        try:
            if ":" in text:
                key = source_key_v6(int.from_bytes(inet_pton(AF_INET6, text)))
            else:
                key = int.from_bytes(inet_pton(AF_INET, text))
        except (OSError, ValueError):
            key = None
        self[text] = key
        return key


class KernelLogParser:
    """Parses lines; keeps bounded caches so repeated timestamps and addresses cost a lookup."""

    def __init__(self) -> None:
        self._header_times: dict[str, float | None] = {}
        # The commonest header, RFC 3339 with microseconds, from one host: the text after the
        # fraction up to the kernel tag ("+00:00 host kernel: ") of the last such line, and
        # its times by whole second ("2026-11-22T02:00:00"); see scan().
        self._stamp_tail = _NO_TAIL
        self._stamp_times: dict[str, float] = {}
        # Year inference depends on `now`: cached header times are valid for one day of it.
        self._cache_from = self._cache_until = 0.0
        self._addresses = AddressTable()
        self._keys = KeyTable()
        self._flags: dict[str, frozenset[str] | None] = {}
        self._signatures: dict[tuple[str | None, ...], Signature | None] = {}
        self._rejected = 0
        # Lines in the text the last scan() read (a text not ending in a newline ends in one
        # more line): counted in passing, so the caller need not read the text again.
        self.lines = 0

    def take_rejected(self) -> int:
        """LOG-like lines refused since the last call (for the 'malformed' count): a bad or
        forged header counted by scan(), or fields refused by parse()/parse_text()."""
        rejected, self._rejected = self._rejected, 0
        return rejected

    # -- whole records -------------------------------------------------------------------

    def parse(self, line: str, now: float, source_time: float | None = None) -> Packet | None:
        """Return the Packet in one `line`, or None when it is not a (valid) netfilter LOG line.

        `now` anchors year-less timestamps and times headerless lines that have no
        `source_time` (journald/kmsg pass the time they read from the kernel record).
        """
        for record in self.scan(line, now, source_time):
            packet = self.packet(record)
            if packet is None and not is_trace(record[1]):
                self._rejected += 1
            return packet
        return None

    def parse_text(self, text: str, now: float) -> Iterator[Packet]:
        """Packets of every valid LOG line in `text` (many lines)."""
        for record in self.scan(text, now):
            packet = self.packet(record)
            if packet is not None:
                yield packet
            elif not is_trace(record[1]):
                self._rejected += 1

    def packet(self, record: Record) -> Packet | None:
        """The Packet of a scanned record, or None when its fields are not valid."""
        event_time, prefix, fields = record
        f = LogFields._make(fields)
        signature = self.signature(prefix, fields)
        if signature is None or (signature.ports and f.dpt is None):
            return None
        src = self.address(f.src)  # type: ignore[arg-type]  # SRC= and DST= always match
        dst = self.address(f.dst)  # type: ignore[arg-type]
        if src is None or dst is None or type(src) is not type(dst):
            return None
        hops = f.ttl or f.hoplimit
        return Packet(
            event_time,
            signature.prefix,
            f.iface_in or "",
            f.iface_out or "",
            src,
            dst,
            signature.proto,
            int(f.spt) if f.spt is not None else None,
            int(f.dpt) if f.dpt is not None else None,
            signature.flags,
            int(f.length),  # type: ignore[arg-type]  # LEN= always matches
            int(hops) if hops else None,
            signature.icmp_type,
            signature.icmp_code,
            f.physin or "",
            int(f.ip_id) if f.ip_id else None,
        )

    # -- scanning: the bulk path ---------------------------------------------------------

    def scan(  # noqa: PLR0915 - one flat loop is the hot path
        self, text: str, now: float, source_time: float | None = None, headerless: bool = True
    ) -> list[Record]:
        """(time, prefix, fields) of every line of `text` holding a LOG record from a trusted
        header; lines with a bad or forged header are counted as rejected and skipped.
        `headerless=False` (text read from a file) also refuses lines without a syslog
        header with the `kernel:` tag: in a file, anyone's text can look headerless.

        The caller validates the fields: signature() for what depends on the kind of packet
        (cached), address() and the ports for the rest. `prefix` is the raw text between the
        header (and [uptime]) and 'IN='. Lines without a record cost almost nothing: the regex
        skips them in C, and `self.lines` counts them (and those with records) in passing:
        the newlines between records are counted in C only where a line without one lies.
        """
        if now >= self._cache_until or now < self._cache_from:
            self._reset_header_cache(now)
        header_times = self._header_times
        stamp_times, tail = self._stamp_times, self._stamp_tail
        tail_end = 26 + len(tail)
        records: list[Record] = []
        append = records.append
        done = 0  # text before this offset is handled
        size = len(text)
        newlines = 0  # in text[:counted]
        counted = 0
        for m in _PACKET.finditer(text):
            start, end = m.span()
            if start < done:
                continue  # a second 'IN=' on a line already handled
            line_start = text.rfind("\n", 0, start) + 1
            if line_start != counted:  # lines without a record since the last one
                newlines += text.count("\n", counted, line_start)
            done = text.find("\n", start)
            if done < 0:
                done = counted = size
            else:
                newlines += 1
                counted = done + 1
            if end > done:
                # The match ran across a newline (a cut line): read the lines it spans alone.
                done = text.find("\n", end)
                if done < 0:
                    done = size
                newlines += text.count("\n", counted, done)
                if done < size:
                    newlines += 1
                    counted = done + 1
                else:
                    counted = size
                records += self._scan_lines(text[line_start:done], now, source_time, headerless)
                continue
            # The commonest line of all: the header of the line before with another time
            # ('<second>.<microseconds><tail>'), that second seen before. No slice but the
            # second and the prefix: the tail's kernel tag is the first one on the line, as
            # it was on the line it was taken from (the second and the fraction hold none).
            prefix_start = line_start + tail_end
            if prefix_start <= start and text.startswith(tail, line_start + 26):
                fraction = text[line_start + 20 : line_start + 26]
                if text[line_start + 19] == "." and fraction.isdigit() and fraction.isascii():
                    base = stamp_times.get(text[line_start : line_start + 19])
                    if base is not None:
                        prefix = text[prefix_start:start]
                        if prefix[:1] == "[" and prefix[1:2] in _UPTIME_START:
                            prefix = _without_uptime(prefix)[1]
                        append((base + int(fraction) * 1e-6, prefix, m.groups()))
                        continue
            head = text[line_start:start]
            # A cached syslog header, inlined (the keys are the ones _time_and_prefix
            # stores); anything else takes the full path.
            k = head.find(_KERNEL_TAG)
            if k > 0:
                fraction = head[20:26]
                if (
                    head[19:20] == "."
                    and head[26:27] in _ZONE_START
                    and fraction.isdigit()
                    and fraction.isascii()
                ):  # _digits() inlined
                    base = header_times.get(head[:19] + head[26:k])
                    if base is None:
                        event_time = None
                    else:
                        event_time = base + int(fraction) * 1e-6
                        if head[26 : k + 9] != tail:  # another host (or zone): its tail now
                            tail = self._stamp_tail = head[26 : k + 9]
                            tail_end = 26 + len(tail)
                            stamp_times.clear()
                        elif len(stamp_times) >= _CACHE_LIMIT:
                            stamp_times.clear()
                        stamp_times[head[:19]] = base
                else:
                    event_time = header_times.get(head[:k])
                if event_time is not None:
                    prefix = head[k + 9 :]  # len(_KERNEL_TAG)
                    if prefix[:1] == "[" and prefix[1:2] in _UPTIME_START:
                        prefix = _without_uptime(prefix)[1]
                    append((event_time, prefix, m.groups()))
                    continue
            found = self._time_and_prefix(head, now, source_time, headerless)
            if found is None:
                self._rejected += 1
            else:
                append((found[0], found[1], m.groups()))
        if counted < size:
            newlines += text.count("\n", counted)
        self.lines = newlines + (size > 0 and text[-1] != "\n")
        return records

    def _scan_lines(
        self, text: str, now: float, source_time: float | None, headerless: bool
    ) -> list[Record]:
        """scan() line by line, uncached: for the rare text a match ran across."""
        records: list[Record] = []
        for line in text.split("\n"):
            one = _PACKET.search(line)
            if one is not None:
                found = self._time_and_prefix(line[: one.start()], now, source_time, headerless)
                if found is None:
                    self._rejected += 1
                else:
                    records.append((found[0], found[1], one.groups()))
        return records

    def _reset_header_cache(self, now: float) -> None:
        self._header_times.clear()
        self._stamp_times.clear()
        day = now // 86400 * 86400
        self._cache_from, self._cache_until = day, day + 86400

    def _time_and_prefix(
        self, head: str, now: float, source_time: float | None, headerless: bool
    ) -> tuple[float, str] | None:
        """Event time and raw prefix from the text before 'IN=' on a line; None when the
        line has a bad syslog header or one a user process wrote. Only scan() calls it, after
        making the header cache valid for `now`."""
        k = head.find(_KERNEL_TAG)
        if k >= 0:
            event_time = self._header_time(head[:k], now)
            if event_time is None:
                return None
            head = head[k + 9 :]  # len(_KERNEL_TAG)
        elif not headerless or _SYSLOG_START.match(head):
            return None  # a syslog line from a user process (or any tag but kernel:)
        else:
            event_time = now if source_time is None else source_time
        if head.startswith("["):
            uptime, head = _without_uptime(head)
            if uptime is not None and k < 0 and source_time is None:
                event_time = uptime  # dmesg dumps: the only clock the line has
            elif uptime is None and k < 0 and (m := _CTIME_BRACKET.match(head)) is not None:
                stamp = _local_epoch(m, int(m.group(6)))  # dmesg -T: the date is in the line
                if stamp is None:
                    return None
                if source_time is None:
                    event_time = stamp
                head = head[m.end() :]
        return event_time, head

    # -- the parts of a record -----------------------------------------------------------

    def signature(self, prefix: str, fields: Fields) -> Signature | None:
        """What kind of packet a record holds; None when that kind is not valid (a record
        cut short, unknown TCP flags). Cached: records of one kind share it."""
        key = (
            prefix,
            fields[_IN],
            fields[_OUT],
            fields[_PROTO],
            fields[_FLAGS],
            fields[_TYPE],
            fields[_CODE],
            fields[_INCOMPLETE],
        )
        try:
            return self._signatures[key]
        except KeyError:
            pass
        signature = _signature(prefix, fields, self._tcp_flags)
        if len(self._signatures) >= _CACHE_LIMIT:
            self._signatures.clear()
        self._signatures[key] = signature
        return signature

    @property
    def addresses(self) -> AddressTable:
        """The fast entry point for SRC=/DST= text: `addresses[text]` is address(text), a
        dict lookup in C when the text was seen before (see AddressTable)."""
        return self._addresses

    @property
    def keys(self) -> KeyTable:
        """SRC= text -> source key (see KeyTable): what the bulk path scores by."""
        return self._keys

    def address(self, text: str) -> Address | None:
        """The address a SRC=/DST= field names, or None when it is not one (cached)."""
        return self._addresses[text]

    def _header_time(self, header: str, now: float) -> float | None:
        """Epoch time of a syslog header ('<timestamp> <host>'), None if it is not one."""
        fraction = 0.0
        key = header
        if len(header) > 20 and header[4] == "-" and header[19] == ".":
            # RFC 3339 with a fraction: cached on the whole seconds, the fraction added back.
            end = 20
            while end < len(header) and _digits(header[end]):
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


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() and float() refuse."""
    return text.isascii() and text.isdigit()


def _without_uptime(head: str) -> tuple[float | None, str]:
    """Split a leading '[81795.100496]' uptime stamp off; "[UFW ALLOW]" is a LOG prefix and
    stays."""
    close = head.find("]")
    if close > 1 and _digits(head[1:close].strip().replace(".", "", 1)):
        return float(head[1:close].strip()), head[close + 1 :]
    return None, head


def _signature(
    prefix: str, fields: Fields, tcp_flags: Callable[[str], frozenset[str] | None]
) -> Signature | None:
    if is_trace(prefix):
        return None  # never a packet; callers do not count it as malformed either
    f = LogFields._make(fields)
    proto, flag_text, icmp_type, icmp_code = f.proto, f.flags, f.icmp_type, f.icmp_code
    if proto is None:
        return None
    if f.incomplete or _digits(proto):  # INCOMPLETE: the kernel says the header was cut
        ports = False
    elif proto in _PORT_PROTOS:
        ports = True  # a record without ports was cut short
    elif proto in _ICMP_PROTOS:
        if icmp_type is None:
            return None
        ports = False
    elif proto in _KNOWN_PROTOS:
        ports = False
    else:
        return None  # e.g. "PROTO=TC": cut inside the protocol name
    flags = _NO_FLAGS
    if proto == "TCP":
        if flag_text is None:
            return None  # truncated or mangled TCP record: its flags are the point
        parsed = tcp_flags(flag_text)
        if parsed is None:
            return None
        flags = parsed
    return Signature(
        direction_of(f.iface_in or "", f.iface_out or ""),
        proto,
        flags,
        prefix.strip(),
        int(icmp_type) if icmp_type is not None else None,
        int(icmp_code) if icmp_code is not None else None,
        ports,
    )


def _local_epoch(m: re.Match[str], year: int) -> float | None:
    """Local time from (month name, day, hour, minute, second) groups 1-5 of `m`."""
    month = _MONTHS.get(m.group(1))
    if month is None or not 1 <= int(m.group(2)) <= calendar.monthrange(year, month)[1]:
        return None  # mktime() would take Feb 31 for Mar 2
    fields = (int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
    try:
        return time.mktime((year, month, *fields, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def is_trace(prefix: str) -> bool:
    """A record printed by the kernel's TRACE target (iptables -j TRACE), not by a LOG rule."""
    return prefix.lstrip().startswith("TRACE:")


def _parse_header_time(header: str, now: float) -> float | None:
    m = _LOGREAD.fullmatch(header)
    if m is not None:
        return _local_epoch(m, int(m.group(6)))
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
