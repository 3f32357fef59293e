"""Write a deterministic, realistic mixed kern.log for benchmarks (issue 2).

What a busy internet-facing host's kern.log holds, in proportions of the lines:
  ~40%  ordinary kernel noise (EXT4, usb, audit, TCP: request_sock, martian source, bridges...)
  ~60%  netfilter LOG records, of which about
        30%  benign strays: one or two packets from each of very many sources (real background)
        20%  unsolicited SYN/ACK trains from a pool of reflectors/probers
         8%  the host's own bare RSTs answering some of those SYN/ACKs (UNKNOWN_OUTGOING)
        28%  SYN/FIN/NULL/XMAS/ACK/UDP scans over many ports
        10%  INVALID drops (late or stray segments of real connections)
         2%  ICMP / other protocols
        with ~20% of them IPv6 (addresses fully expanded, as the kernel prints them).

The field layout copies the kernel's (nf_log_ipv4/ipv6), as seen in
/work/shared/corpora/psad-scans/. Addresses are text only: documentation ranges for the host
and part of the offenders, random public-looking ones for the rest. No traffic is ever sent.

    python bench/gen_kernlog.py --lines 1000000 --seed 1 --style rfc3339 --out bench/out/k.log

Besides the log it writes PATH.json: the mix it wrote (the benchmark checks fail2ban-regex's
matched count against `synack`).
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GENERATOR_VERSION = 1  # bump when the output changes: cached files are keyed on it
DEFAULT_START = "2026-11-22T02:00:00Z"
LINES_PER_SECOND = 1000.0  # of log time

HOST = "edge1"
HOST_V4 = "203.0.113.10"
HOST_V6 = "2001:0db8:1234:0000:0000:0000:0000:0010"
# Inbound frames all arrive from the upstream router: one MAC pair per family.
MAC_V4 = "52:54:00:8a:1c:02:00:1b:21:3a:9f:40:08:00"
MAC_V6 = "52:54:00:8a:1c:02:00:1b:21:3a:9f:40:86:dd"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

NOISE_SHARE = 0.40
# Netfilter categories drawn per line (outgoing RSTs follow their SYN/ACK instead).
NETFILTER_MIX = (
    ("stray", 0.30),
    ("synack", 0.20),
    ("scan", 0.28),
    ("invalid", 0.10),
    ("icmp_other", 0.02),
)
RST_ANSWERED = 0.40  # share of SYN/ACK trains the host answers with a bare RST
IPV6_SHARE = 0.20
ACTIVE_TRAINS = 24
ACTIVE_SCANS = 6
STRAY_REPEAT = 0.25  # chance a stray packet comes from a recent stray source (seen twice)
PROBER_POOL = 3000

# IPv4 ranges that are not public unicast (first octet handled separately).
_RESERVED_V4 = (
    (0x0A000000, 8),
    (0x64400000, 10),
    (0x7F000000, 8),
    (0xA9FE0000, 16),
    (0xAC100000, 12),
    (0xC0000000, 24),
    (0xC0A80000, 16),
    (0xC6120000, 15),
    (0xC0000200, 24),
    (0xC6336400, 24),
    (0xCB007100, 24),
)
# Offenders' documentation ranges; the host's own 203.0.113.0/24 is left out on purpose.
_DOC_V4 = ("192.0.2.", "198.51.100.")
_PUBLIC_V6_PREFIXES = (
    "2a01:04f8",
    "2a02:0c7c",
    "2600:1f18",
    "2604:a880",
    "2406:da18",
    "2a03:b0c0",
    "2001:41d0",
    "2a0e:97c0",
)


def fmt_v4(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class Addresses:
    """Seeded address factory: documentation ranges and random public-looking addresses."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def v4(self, doc_share: float = 0.0) -> str:
        rng = self.rng
        if rng.random() < doc_share:
            return rng.choice(_DOC_V4) + str(rng.randrange(1, 255))
        while True:
            n = rng.getrandbits(32)
            first, last = n >> 24, n & 255
            if first == 0 or first >= 224 or last in (0, 255):
                continue
            if any((n >> (32 - bits)) == (base >> (32 - bits)) for base, bits in _RESERVED_V4):
                continue
            return fmt_v4(n)

    def v6(self, doc_share: float = 0.0) -> str:
        rng = self.rng
        prefix = "2001:0db8" if rng.random() < doc_share else rng.choice(_PUBLIC_V6_PREFIXES)
        groups = [f"{rng.getrandbits(16):04x}" for _ in range(2)]
        if rng.random() < 0.5:  # servers often have ::N style interface ids
            groups += ["0000", "0000", "0000", f"{rng.randrange(1, 0x100):04x}"]
        else:
            groups += [f"{rng.getrandbits(16):04x}" for _ in range(4)]
        return prefix + ":" + ":".join(groups)

    def any(self, v6: bool, doc_share: float = 0.0) -> str:
        return self.v6(doc_share) if v6 else self.v4(doc_share)


@dataclass
class Train:
    """An unsolicited SYN/ACK train: a reflector answering SYNs spoofed with our address."""

    src: str
    v6: bool
    sport: int
    left: int
    answered: bool  # the host's stack answers each SYN/ACK with a bare RST


@dataclass
class Scan:
    kind: str  # syn | fin | null | xmas | ack | udp
    src: str
    v6: bool
    sport: int
    ports: list[int]
    window: int
    prefix: str
    ttl_base: int = 48
    done: int = 0


@dataclass
class Mix:
    counts: Counter[str] = field(default_factory=Counter)
    netfilter_v6: int = 0
    sources: Counter[str] = field(default_factory=Counter)


class KernLogWriter:
    def __init__(self, seed: int, style: str, start: float) -> None:
        self.rng = random.Random(seed)
        self.addr = Addresses(self.rng)
        self.style = style
        self.now = start
        self.uptime = 81795.100496  # [seconds since boot] printed by traditional rsyslog lines
        self.mix = Mix()
        self.trains: list[Train] = []
        self.scans: list[Scan] = []
        self.recent_strays: list[tuple[str, bool]] = []
        self.probers_v4 = [self.addr.v4(doc_share=0.3) for _ in range(PROBER_POOL)]
        self.probers_v6 = [self.addr.v6(doc_share=0.3) for _ in range(PROBER_POOL // 4)]
        self._stamp_second = -1
        self._stamp_text = ""
        self._noise = self._noise_makers()

    # -- headers -----------------------------------------------------------------------

    def header(self) -> str:
        """'<timestamp> host kernel: ' in the chosen rsyslog style, at self.now."""
        whole = int(self.now)
        if whole != self._stamp_second:
            self._stamp_second = whole
            t = time.gmtime(whole)
            if self.style == "rfc3339":
                self._stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", t)
            else:
                self._stamp_text = f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} " + time.strftime(
                    "%H:%M:%S", t
                )
        if self.style == "rfc3339":
            # Debian 12's rsyslog (RSYSLOG_FileFormat) drops the kernel's [uptime] stamp.
            micros = int((self.now - whole) * 1e6)
            return f"{self._stamp_text}.{micros:06d}+00:00 {HOST} kernel: "
        return f"{self._stamp_text} {HOST} kernel: [{self.uptime:12.6f}] "

    def advance(self) -> None:
        step = self.rng.expovariate(LINES_PER_SECOND)
        self.now += step
        self.uptime += step

    # -- netfilter records ---------------------------------------------------------------

    def ip_part(
        self, src: str, dst: str, v6: bool, *, length: int, ttl: int, df: bool, inbound: bool = True
    ) -> str:
        rng = self.rng
        mac = "" if not inbound else f"MAC={MAC_V6 if v6 else MAC_V4} "
        ifaces = "IN=eth0 OUT= " if inbound else "IN= OUT=eth0 "
        if v6:
            return (
                f"{ifaces}{mac}SRC={src} DST={dst} LEN={length + 20} TC=0 HOPLIMIT={ttl} "
                f"FLOWLBL={rng.getrandbits(20) if rng.random() < 0.6 else 0} "
            )
        # Linux sends its RSTs and most DF segments with ID=0.
        ident = 0 if df and (not inbound or rng.random() < 0.7) else rng.getrandbits(16)
        return (
            f"{ifaces}{mac}SRC={src} DST={dst} LEN={length} TOS=0x00 PREC=0x00 TTL={ttl} "
            f"ID={ident} {'DF ' if df else ''}"
        )

    def tcp(
        self,
        prefix: str,
        src: str,
        v6: bool,
        *,
        sport: int,
        dport: int,
        flags: str,
        window: int,
        ttl: int,
        length: int = 40,
        df: bool = False,
        opt: str = "",
        inbound: bool = True,
    ) -> str:
        dst = (HOST_V6 if v6 else HOST_V4) if inbound else src
        if not inbound:
            src = HOST_V6 if v6 else HOST_V4
        ip = self.ip_part(src, dst, v6, length=length, ttl=ttl, df=df, inbound=inbound)
        flag_text = f"{flags} " if flags else ""
        tail = f"OPT ({opt}) " if opt else ""
        return (
            f"{self.header()}{prefix}{ip}PROTO=TCP SPT={sport} DPT={dport} "
            f"WINDOW={window} RES=0x00 {flag_text}URGP=0 {tail}\n"
        )

    def udp(
        self, prefix: str, src: str, v6: bool, *, sport: int, dport: int, payload: int, ttl: int
    ) -> str:
        host = HOST_V6 if v6 else HOST_V4
        ip = self.ip_part(src, host, v6, length=28 + payload, ttl=ttl, df=False)
        return f"{self.header()}{prefix}{ip}PROTO=UDP SPT={sport} DPT={dport} LEN={8 + payload} \n"

    def _count(self, category: str, src: str, v6: bool) -> None:
        mix = self.mix
        mix.counts[category] += 1
        mix.sources[src] += 1
        if v6:
            mix.netfilter_v6 += 1

    def synack(self) -> list[str]:
        rng = self.rng
        if len(self.trains) < ACTIVE_TRAINS or rng.random() < 0.02:
            v6 = rng.random() < IPV6_SHARE
            pool = self.probers_v6 if v6 else self.probers_v4
            length = min(int(rng.paretovariate(1.3)) * 2, 60)  # mostly short, a few long
            self.trains.append(
                Train(
                    rng.choice(pool),
                    v6,
                    rng.choice((80, 443, 443, 22, 53, 8080, 3389, 25, 993)),
                    max(length, 1),
                    rng.random() < RST_ANSWERED,
                )
            )
        index = rng.randrange(len(self.trains))
        train = self.trains[index]
        train.left -= 1
        if train.left <= 0:
            self.trains[index] = self.trains[-1]
            self.trains.pop()
        dport = rng.randrange(32768, 61000)
        prefix = rng.choice(
            ("[UFW BLOCK] ", "SYNACK_UNSOLICITED: ", "DROP INVALID ", "nft-in-drop: ")
        )
        ttl = rng.randrange(40, 120) if train.v6 else rng.choice((48, 52, 55, 57, 116, 243))
        lines = [
            self.tcp(
                prefix,
                train.src,
                train.v6,
                sport=train.sport,
                dport=dport,
                flags="ACK SYN",
                window=rng.choice((65535, 64240, 28960, 14600, 29200)),
                ttl=ttl,
                length=44,
                df=True,
                opt="020405B4",
            )
        ]
        self._count("synack", train.src, train.v6)
        if train.answered:
            # The kernel answers at once: same second, a few microseconds later.
            self.now += 0.00002
            lines.append(
                self.tcp(
                    "UNKNOWN_OUTGOING: ",
                    train.src,
                    train.v6,
                    sport=dport,
                    dport=train.sport,
                    flags="RST",
                    window=0,
                    ttl=64,
                    df=True,
                    inbound=False,
                )
            )
            self._count("rst_out", train.src, train.v6)
        return lines

    def new_scan(self) -> Scan:
        rng = self.rng
        v6 = rng.random() < IPV6_SHARE
        kind = rng.choices(("syn", "fin", "null", "xmas", "ack", "udp"), (50, 8, 8, 8, 8, 18))[0]
        size = rng.choice((20, 50, 100, 100, 250, 500, 1000, 1500))
        if rng.random() < 0.5:
            low = rng.randrange(1, 64000)
            ports = list(range(low, min(low + size, 65536)))
            rng.shuffle(ports)
        else:
            ports = rng.sample(range(1, 65536), size)
        prefix = (
            "DROP INVALID "
            if kind in ("fin", "null", "xmas")
            else rng.choice(("[UFW BLOCK] ", "DROP ", "nft-in-drop: "))
        )
        return Scan(
            kind,
            self.addr.any(v6, doc_share=0.5),
            v6,
            rng.randrange(33000, 61000),
            ports,
            rng.choice((1024, 2048, 3072, 4096)),
            prefix,
            rng.randrange(37, 60),
        )

    def scan(self) -> list[str]:
        rng = self.rng
        if len(self.scans) < ACTIVE_SCANS:
            self.scans.append(self.new_scan())
        index = rng.randrange(len(self.scans))
        scan = self.scans[index]
        port = scan.ports[scan.done]
        scan.done += 1
        if scan.done >= len(scan.ports):
            self.scans[index] = self.scans[-1]
            self.scans.pop()
        ttl = scan.ttl_base + rng.randrange(0, 12)
        self._count(f"scan_{scan.kind}", scan.src, scan.v6)
        if scan.kind == "udp":
            return [
                self.udp(
                    scan.prefix, scan.src, scan.v6, sport=scan.sport, dport=port, payload=0, ttl=ttl
                )
            ]
        flags, length, opt = {
            "syn": ("SYN", 44, "020405B4"),
            "fin": ("FIN", 40, ""),
            "null": ("", 40, ""),
            "xmas": ("URG PSH FIN", 40, ""),
            "ack": ("ACK", 40, ""),
        }[scan.kind]
        return [
            self.tcp(
                scan.prefix,
                scan.src,
                scan.v6,
                sport=scan.sport,
                dport=port,
                flags=flags,
                window=scan.window,
                ttl=ttl,
                length=length,
                opt=opt,
            )
        ]

    def stray(self) -> list[str]:
        rng = self.rng
        if self.recent_strays and rng.random() < STRAY_REPEAT:
            src, v6 = self.recent_strays.pop(rng.randrange(len(self.recent_strays)))
        else:
            v6 = rng.random() < IPV6_SHARE
            src = self.addr.any(v6)
            if len(self.recent_strays) < 2000:
                self.recent_strays.append((src, v6))
        self._count("stray", src, v6)
        prefix = rng.choice(("[UFW BLOCK] ", "[UFW BLOCK] ", "DROP ", "nft-in-drop: "))
        ttl = rng.randrange(30, 250)
        if rng.random() < 0.3:
            dport = rng.choice((53, 123, 161, 1900, 5060, 11211, 137, 500, 19, 3702))
            return [
                self.udp(
                    prefix,
                    src,
                    v6,
                    sport=rng.randrange(1024, 65536),
                    dport=dport,
                    payload=rng.choice((0, 12, 40, 48, 90)),
                    ttl=ttl,
                )
            ]
        dport = rng.choice(
            (
                23,
                22,
                445,
                3389,
                80,
                443,
                8080,
                2323,
                5555,
                6379,
                1433,
                3306,
                rng.randrange(1, 65536),
            )
        )
        return [
            self.tcp(
                prefix,
                src,
                v6,
                sport=rng.randrange(1024, 65536),
                dport=dport,
                flags="SYN",
                window=rng.choice((1024, 65535, 29200, 64240, 14600)),
                ttl=ttl,
                length=60,
                df=True,
                opt="020405B40402080A",
            )
        ]

    def invalid(self) -> list[str]:
        rng = self.rng
        v6 = rng.random() < IPV6_SHARE
        src = self.addr.any(v6)
        self._count("invalid", src, v6)
        flags = rng.choice(("ACK", "ACK FIN", "ACK RST", "ACK PSH", "ACK PSH FIN", "RST"))
        return [
            self.tcp(
                rng.choice(("DROP INVALID ", "[UFW BLOCK INVALID] ", "INVALID: ")),
                src,
                v6,
                sport=rng.choice((443, 80, 443, 993, 5222)),
                dport=rng.randrange(32768, 61000),
                flags=flags,
                window=rng.randrange(0, 65536) & ~0x7,
                ttl=rng.randrange(40, 64),
                length=52,
                df=True,
            )
        ]

    def icmp_other(self) -> list[str]:
        rng = self.rng
        v6 = rng.random() < IPV6_SHARE
        src = self.addr.any(v6)
        self._count("icmp_other", src, v6)
        host = HOST_V6 if v6 else HOST_V4
        prefix = rng.choice(("[UFW BLOCK] ", "DROP "))
        if rng.random() < 0.8:
            ip = self.ip_part(src, host, v6, length=84, ttl=rng.randrange(40, 120), df=False)
            proto = "ICMPv6 TYPE=128" if v6 else "ICMP TYPE=8"
            return [
                f"{self.header()}{prefix}{ip}PROTO={proto} CODE=0 "
                f"ID={rng.getrandbits(16)} SEQ={rng.randrange(1, 20)} \n"
            ]
        ip = self.ip_part(src, host, v6, length=56, ttl=rng.randrange(40, 120), df=False)
        return [f"{self.header()}{prefix}{ip}PROTO={rng.choice((47, 50, 132, 41))} \n"]

    # -- kernel noise -------------------------------------------------------------------

    def _noise_makers(self) -> list[tuple[float, Callable[[], list[str]]]]:
        rng = self.rng

        def pid() -> int:
            return rng.randrange(300, 40000)

        def audit() -> list[str]:
            serial = rng.randrange(100, 999999)
            prof = rng.choice(
                (
                    "/usr/sbin/cupsd",
                    "snap.lxd.daemon",
                    "/usr/bin/man",
                    "docker-default",
                    "/usr/sbin/named",
                )
            )
            return [
                f"audit: type=1400 audit({int(self.now)}.{rng.randrange(1000):03d}:{serial}):"
                f' apparmor="DENIED" operation="open" class="file" profile="{prof}" '
                f'name="/proc/{pid()}/stat" pid={pid()} comm="{prof.rsplit("/", 1)[-1]}" '
                'requested_mask="r" denied_mask="r" fsuid=0 ouid=0'
            ]

        def netfilter_audit() -> list[str]:
            return [
                f"audit: type=1325 audit({int(self.now)}.{rng.randrange(1000):03d}:"
                f"{rng.randrange(100, 99999)}): table=filter family={rng.choice((2, 10))} "
                f"entries={rng.randrange(20, 400)} op=xt_replace pid={pid()} "
                'subj=unconfined comm="iptables-restor"'
            ]

        def martian() -> list[str]:
            src = self.addr.v4()
            return [
                f"IPv4: martian source {HOST_V4} from {src}, on dev eth0",
                "ll header: 00000000: 52 54 00 8a 1c 02 00 1b 21 3a 9f 40 08 00",
            ]

        def ext4() -> list[str]:
            dev = rng.choice(("sda1", "nvme0n1p2", "dm-0", "vdb1"))
            options = (
                f"EXT4-fs ({dev}): mounted filesystem with ordered data mode. Quota mode: none.",
                f"EXT4-fs ({dev}): re-mounted. Quota mode: none.",
                f"EXT4-fs ({dev}): error count since last fsck: {rng.randrange(1, 9)}",
                f"EXT4-fs warning (device {dev}): ext4_dx_add_entry:2522: Directory (ino: "
                f"{rng.randrange(10**5, 10**7)}) index full, reach max htree level :2",
            )
            return [rng.choice(options)]

        def usb() -> list[str]:
            port = f"{rng.randrange(1, 4)}-{rng.randrange(1, 8)}"
            options = (
                f"usb {port}: new high-speed USB device number {rng.randrange(2, 40)} "
                "using xhci_hcd",
                f"usb {port}: New USB device found, idVendor=0781, idProduct=5581, bcdDevice= 1.00",
                f"usb {port}: USB disconnect, device number {rng.randrange(2, 40)}",
                f"usb-storage {port}:1.0: USB Mass Storage device detected",
            )
            return [rng.choice(options)]

        def syn_flood() -> list[str]:
            port = rng.choice((443, 80, 25, 8443))
            return [
                f"TCP: request_sock_TCP: Possible SYN flooding on port {port}. "
                "Sending cookies.  Check SNMP counters."
            ]

        def systemd() -> list[str]:
            options = (
                f"systemd-journald[{pid()}]: Data hash table of /var/log/journal/"
                "3f1c2a9d8e7b4c5a/system.journal has a fill level at 75.0 (8535 of 11377 "
                "items, 6553600 file size, 767 bytes per hash table item), suggesting rotation.",
                f"systemd[1]: session-{rng.randrange(1, 9999)}.scope: Deactivated successfully.",
                "systemd[1]: Started apt-daily.service - Daily apt download activities.",
                f"systemd-journald[{pid()}]: Received client request to flush runtime journal.",
            )
            return [rng.choice(options)]

        def net_misc() -> list[str]:
            veth = f"veth{rng.getrandbits(28):07x}"
            options = (
                f"br-{rng.getrandbits(48):012x}: port {rng.randrange(1, 9)}({veth}) entered "
                f"{rng.choice(('blocking', 'forwarding', 'disabled'))} state",
                f"device {veth} entered promiscuous mode",
                "e1000e 0000:00:1f.6 eth0: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: "
                "Rx/Tx",
                f"net_ratelimit: {rng.randrange(2, 400)} callbacks suppressed",
                "nf_conntrack: nf_conntrack: table full, dropping packet",
                f"kauditd_printk_skb: {rng.randrange(2, 60)} callbacks suppressed",
            )
            return [rng.choice(options)]

        def misc() -> list[str]:
            options = (
                f"perf: interrupt took too long ({rng.randrange(2501, 9000)} > 2500), lowering "
                f"kernel.perf_event_max_sample_rate to {rng.randrange(20, 80)}000",
                f"Out of memory: Killed process {pid()} (java) total-vm:8123456kB, "
                "anon-rss:4021234kB, file-rss:0kB, shmem-rss:0kB, UID:1001 pgtables:9876kB "
                "oom_score_adj:0",
                f"nvme nvme0: I/O {rng.randrange(1, 1023)} QID {rng.randrange(1, 9)} timeout, "
                "aborting",
                "ata1.00: exception Emask 0x0 SAct 0x0 SErr 0x0 action 0x6 frozen",
                f"Buffer I/O error on dev sdb1, logical block {rng.randrange(10**6)}, "
                "async page read",
                f"python3[{pid()}]: segfault at 0 ip 00007f3a1c2b4e10 sp 00007ffd2a1b3c40 error 4 "
                "in libc.so.6[7f3a1c200000+155000] likely on CPU 1 (core 1, socket 0)",
                f"INFO: task kworker/u16:{rng.randrange(9)}:{pid()} blocked for more than "
                "120 seconds.",
            )
            return [rng.choice(options)]

        return [
            (14, audit),
            (3, netfilter_audit),
            (8, martian),
            (12, ext4),
            (10, usb),
            (6, syn_flood),
            (15, systemd),
            (20, net_misc),
            (12, misc),
        ]

    def noise(self) -> list[str]:
        weights, makers = zip(*self._noise, strict=True)
        messages = self.rng.choices(makers, weights)[0]()
        self.mix.counts["noise"] += len(messages)
        return [f"{self.header()}{text}\n" for text in messages]

    # -- driver -------------------------------------------------------------------------

    def lines(self, total: int) -> list[str]:
        rng = self.rng
        kinds = ("noise", *(name for name, _ in NETFILTER_MIX))
        weights = (NOISE_SHARE, *((1 - NOISE_SHARE) * share for _, share in NETFILTER_MIX))
        makers: dict[str, Callable[[], list[str]]] = {
            "noise": self.noise,
            "stray": self.stray,
            "synack": self.synack,
            "scan": self.scan,
            "invalid": self.invalid,
            "icmp_other": self.icmp_other,
        }
        out: list[str] = []
        while len(out) < total:
            self.advance()
            out.extend(makers[rng.choices(kinds, weights)[0]]())
        # A multi-line record may overshoot: cut, and recount what was cut from the mix.
        for line in out[total:]:
            self.uncount(line)
        return out[:total]

    def uncount(self, line: str) -> None:
        """Remove a line cut at the end from the mix (only the last record can be cut)."""
        if "UNKNOWN_OUTGOING" in line:
            self.mix.counts["rst_out"] -= 1
            dst = line.split(" DST=", 1)[1].split(" ", 1)[0]
            self.mix.sources[dst] -= 1
            if ":" in dst:
                self.mix.netfilter_v6 -= 1
        else:
            self.mix.counts["noise"] -= 1


def generate(
    path: Path, lines: int, seed: int, style: str, start: str = DEFAULT_START
) -> dict[str, object]:
    """Write the log to `path` and its mix to `path`.json; return the mix."""
    epoch = float(calendar.timegm(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ")))
    writer = KernLogWriter(seed, style, epoch)
    began = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii", newline="\n") as out:
        out.writelines(writer.lines(lines))
    tmp.replace(path)
    mix = writer.mix
    netfilter = sum(n for name, n in mix.counts.items() if name != "noise")
    seen = Counter(mix.sources.values())
    manifest: dict[str, object] = {
        "generator_version": GENERATOR_VERSION,
        "lines": lines,
        "seed": seed,
        "style": style,
        "start": start,
        "log_seconds": round(writer.now - epoch, 1),
        "counts": dict(sorted(mix.counts.items())),
        "netfilter": netfilter,
        "netfilter_ipv6": mix.netfilter_v6,
        "synack": mix.counts["synack"],
        "distinct_sources": len(mix.sources),
        "sources_seen_once": seen[1],
        "sources_seen_twice": seen[2],
        "bytes": path.stat().st_size,
        "generate_seconds": round(time.perf_counter() - began, 2),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def describe(manifest: dict[str, object]) -> str:
    lines = int(str(manifest["lines"]))
    netfilter = int(str(manifest["netfilter"]))
    counts = manifest["counts"]
    assert isinstance(counts, dict)
    out = [
        f"{lines} lines ({int(str(manifest['bytes'])) / 1e6:.1f} MB), style "
        f"{manifest['style']}, seed {manifest['seed']}, {manifest['log_seconds']} s of log "
        f"time, written in {manifest['generate_seconds']} s"
    ]
    for name, count in counts.items():
        out.append(f"  {name:12} {count:9d}  {100 * count / lines:5.1f}%")
    v6 = int(str(manifest["netfilter_ipv6"]))
    out.append(
        f"  netfilter    {netfilter:9d}  {100 * netfilter / lines:5.1f}%  "
        f"(IPv6 {100 * v6 / max(netfilter, 1):.1f}% of them)"
    )
    out.append(
        f"  distinct sources {manifest['distinct_sources']}: seen once "
        f"{manifest['sources_seen_once']}, twice {manifest['sources_seen_twice']}"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--style",
        choices=("rfc3339", "traditional"),
        default="rfc3339",
        help="rsyslog timestamp style (default rfc3339, as on Debian 12)",
    )
    parser.add_argument("--start", default=DEFAULT_START, help="first timestamp, UTC")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output path (default bench/out/kern-STYLE-LINES-sSEED.log)",
    )
    args = parser.parse_args(argv)
    if args.lines < 1:
        parser.error("--lines must be >= 1")
    out = args.out or default_path(args.lines, args.seed, args.style)
    manifest = generate(out, args.lines, args.seed, args.style, args.start)
    print(f"wrote {out}")
    print(describe(manifest))
    return 0


def default_path(lines: int, seed: int, style: str) -> Path:
    return (
        Path(__file__).resolve().parent
        / "out"
        / f"kern-{style}-{lines}-s{seed}-v{GENERATOR_VERSION}.log"
    )


if __name__ == "__main__":
    sys.exit(main())
