"""Interface index -> name over rtnetlink (RTM_GETLINK), on a socket of a chosen namespace.

NFLOG names interfaces by index, and an index means something only in the network namespace
of the socket that received it. socket.if_indextoname() asks the namespace of the calling
thread; a NETLINK_ROUTE socket opened beside the NFLOG socket asks the right one, whichever
thread or namespace the caller is in later.
"""

from __future__ import annotations

import socket
import struct

RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
IFLA_IFNAME = 3
_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_NLA = struct.Struct("=HH")


def request(index: int, seq: int) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def name_in(reply: bytes, seq: int) -> str | None:
    """The IFLA_IFNAME of the RTM_NEWLINK answering `seq`; None for an error (no such
    interface) or anything malformed."""
    if len(reply) < _HEADER.size:
        return None
    size, kind, _flags, got_seq, _pid = _HEADER.unpack_from(reply)
    if kind != RTM_NEWLINK or got_seq != seq or size > len(reply):
        return None
    at = _HEADER.size + _IFINFO.size
    while at + _NLA.size <= size:
        length, attr = _NLA.unpack_from(reply, at)
        if length < _NLA.size or at + length > size:
            return None
        if attr & 0x3FFF == IFLA_IFNAME:
            return (
                reply[at + _NLA.size : at + length]
                .split(b"\0", 1)[0]
                .decode("utf-8", errors="replace")
            )
        at += (length + 3) & ~3
    return None


class LinkNames:
    """Answers RTM_GETLINK for one index at a time, in the namespace it was opened in."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.settimeout(1.0)
        self._sock.bind((0, 0))
        self._seq = 0

    def name(self, index: int) -> str | None:
        self._seq += 1
        try:
            self._sock.send(request(index, self._seq))
            while True:
                reply = self._sock.recv(65536)
                seq = _HEADER.unpack_from(reply)[3] if len(reply) >= _HEADER.size else -1
                if seq == self._seq:
                    return name_in(reply, self._seq)
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()
