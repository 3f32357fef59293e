"""Builders of realistic kernel netfilter LOG lines for tests (field layout of nf_log_ipv4/6).

Documentation addresses only: the host is 192.0.2.10 / 2001:db8::10, peers are in
198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32. IPv6 is printed fully expanded, as the
kernel does.
"""

from __future__ import annotations

import calendar
import json
import time
from ipaddress import ip_address
from pathlib import Path

import pytest

HOST4 = "192.0.2.10"
HOST6 = "2001:db8::10"
PROBER4 = "203.0.113.66"
PROBER6 = "2001:db8::42"

MAC4 = "MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00"
MAC6 = "MAC=52:54:00:12:34:56:52:54:00:65:43:21:86:dd"

# 2026-11-22T02:04:54Z: the instant every RFC 3339 sample below is stamped with.
BASE = float(calendar.timegm((2026, 11, 22, 2, 4, 54, 0, 0, 0)))


JAILS_TOML = Path(__file__).resolve().parents[1] / "jails.toml"


def kernel_address(text: str) -> str:
    """How the kernel prints an address: IPv6 fully expanded, IPv4 as is."""
    address = ip_address(text)
    return address.exploded if address.version == 6 else str(address)


def rfc3339(epoch: float) -> str:
    """rsyslog's RFC 3339 high-precision stamp in UTC (+00:00), microseconds included."""
    whole = int(epoch // 1)
    micro = round((epoch - whole) * 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micro:06d}+00:00"


def ip_fields(src: str, dst: str, length: int = 40, ttl: int = 64) -> str:
    """SRC .. up to (not including) PROTO=, for either family."""
    s, d = kernel_address(src), kernel_address(dst)
    if ip_address(src).version == 6:
        return f"SRC={s} DST={d} LEN={length + 20} TC=0 HOPLIMIT={ttl} FLOWLBL=0 "
    return f"SRC={s} DST={d} LEN={length} TOS=0x00 PREC=0x00 TTL={ttl} ID=0 "


def tcp_line(
    src: str = PROBER4,
    dst: str = HOST4,
    flags: str = "ACK SYN",
    spt: int = 80,
    dpt: int = 40000,
    *,
    prefix: str = "DROP ",
    direction: str = "in",
    at: float | None = BASE,
) -> str:
    """One TCP LOG line; `at=None` leaves the syslog header off (journald/kmsg text)."""
    v6 = ip_address(src).version == 6
    if direction == "in":
        ifaces = f"IN=eth0 OUT= {MAC6 if v6 else MAC4} "
    elif direction == "out":
        ifaces = "IN= OUT=eth0 "
    else:
        ifaces = f"IN=eth0 OUT=eth1 {MAC6 if v6 else MAC4} "
    flag_text = f"{flags} " if flags else ""
    body = (
        f"{prefix}{ifaces}{ip_fields(src, dst)}PROTO=TCP SPT={spt} DPT={dpt} WINDOW=512 "
        f"RES=0x00 {flag_text}URGP=0 "
    )
    if at is None:
        return body
    return f"{rfc3339(at)} host kernel: {body}"


def synack(src: str = PROBER4, at: float | None = BASE, dpt: int = 40000) -> str:
    """What `hping3 -S -A` from `src` looks like when the host's LOG rule catches it."""
    return tcp_line(
        src,
        HOST4 if ip_address(src).version == 4 else HOST6,
        "ACK SYN",
        spt=2372,
        dpt=dpt,
        prefix="UNKNOWN_INCOMING: ",
        at=at,
    )


def outgoing_rst(prober: str = PROBER4, at: float | None = BASE, spt: int = 40000) -> str:
    """The host's bare RST to `prober`: the mission's UNKNOWN_OUTGOING line."""
    host = HOST4 if ip_address(prober).version == 4 else HOST6
    return tcp_line(
        host, prober, "RST", spt=spt, dpt=2372, prefix="UNKNOWN_OUTGOING: ", direction="out", at=at
    )


def syn(src: str = PROBER4, dpt: int = 22, at: float | None = BASE) -> str:
    """An inbound SYN to a closed (logged) port of the host."""
    return tcp_line(
        src, HOST4 if ip_address(src).version == 4 else HOST6, "SYN", spt=56247, dpt=dpt, at=at
    )


def outgoing_syn(dst: str = PROBER4, at: float | None = BASE, dpt: int = 443) -> str:
    """The host opening a connection to `dst`."""
    host = HOST4 if ip_address(dst).version == 4 else HOST6
    return tcp_line(
        host, dst, "SYN", spt=40022, dpt=dpt, prefix="UNKNOWN_OUTGOING: ", direction="out", at=at
    )


def blockerctl_test_json(log: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """`blockerctl test --config jails.toml --json LOG` run in-process: its JSON object."""
    from blocker.cli import main  # noqa: PLC0415 - keeps this module importable alone

    assert main(["test", "--config", str(JAILS_TOML), "--json", str(log)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result = json.loads(out)
    assert isinstance(result, dict)
    return result
