"""Packets straight from the kernel: nfnetlink_log groups on a NETLINK_NETFILTER socket.

No text is in the path, so nothing a user process writes can reach it: only a rule with
`-j NFLOG --nflog-group N` (or nft `log group N`) in this network namespace sends here, and
only CAP_NET_ADMIN in the namespace can add one. The kernel batches packets (QTHRESH packets
or TIMEOUT, whichever first) into one datagram; a flood that outruns us fills the socket
buffer and the kernel drops packets: recv() then reports ENOBUFS once, which is counted
(`overruns`) and reading goes on. ENOBUFS says only that something was lost since the last
time: how many datagrams the kernel dropped (each up to QTHRESH packets) is the socket's drop
counter, read from /proc/net/netlink (`dropped_batches`).

Closing the socket releases the groups (the kernel destroys the instances of a closed port).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Sequence

from blocker import nflog_wire
from blocker.link_names import LinkNames
from blocker.netfilter import Record
from blocker.nflog_records import DatagramDecoder, Decoded
from blocker.sources.base import SourceError, SourceLine

# Enough for IPv4/IPv6 headers, a chain of extension headers and the transport header; a
# packet whose transport header lies past this is read as LOG reads a truncated one.
COPY_RANGE = 512
QTHRESH = 64  # packets per datagram under load
# The kernel allocates each batch's buffer at this size and sends it when the next packet
# does not fit: 64 small packets fill about 12 KiB, so a larger buffer mostly wastes socket
# memory (its whole size counts against the receive buffer) and overruns sooner.
NLBUFSIZ = 16384
TIMEOUT_CS = 2  # 1/100 s: at most this much latency for a lone packet
RCVBUF = 16 * 1024 * 1024  # absorbs bursts; SO_RCVBUFFORCE passes rmem_max as root
RECV_BYTES = nflog_wire.MAX_NLBUFSIZ + 4096
DATAGRAMS_PER_READ = 256  # then the loop serves the control socket before reading on
ACK_TIMEOUT = 5.0
NAME_TTL = 1.0  # seconds an ifindex -> name answer is trusted (interfaces get renamed)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def parse_groups(text: str) -> tuple[int, ...]:
    """'5,6' (a source key's path) -> (5, 6)."""
    try:
        groups = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SourceError(f"nflog groups must be numbers, got {text!r}") from None
    if not groups or not all(0 <= group <= 65535 for group in groups):
        raise SourceError(f"nflog groups must be 0-65535, got {text!r}")
    return groups


class NflogSource:
    """Binds NFLOG groups in this network namespace and hands out LOG-equivalent Records."""

    def __init__(
        self, groups: Sequence[int], *, copy_range: int = COPY_RANGE, rcvbuf: int = RCVBUF
    ) -> None:
        self.groups = tuple(groups)
        self.name = "nflog group " + ",".join(map(str, self.groups))
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                nflog_wire.NETLINK_NETFILTER,
            )
        except OSError as exc:
            raise SourceError(f"nflog: cannot open a netfilter netlink socket: {exc}") from exc
        try:
            self._sock.bind((0, 0))
            self.rcvbuf = _set_rcvbuf(self._sock, rcvbuf)
            self._configure(copy_range)
            self._links = LinkNames()  # in this namespace, as the NFLOG socket is
            self._drops = _DropCounter(self._sock)
        except BaseException:
            self._sock.close()
            raise
        self.packets = 0
        self.records = 0
        self.undecodable = 0  # not IP, or headers LOG would not print a PROTO= for
        self.malformed = 0  # netlink messages cut short (never seen from a sane kernel)
        self.overruns = 0  # ENOBUFS: the kernel dropped packets we were too slow for
        self.last_overrun: float | None = None
        self.dropped_batches = 0  # datagrams the kernel dropped (the socket's sk_drops)
        self._last_error: str | None = None
        self._names: dict[int, str] = {}
        self._names_at = 0.0
        self._decoder = DatagramDecoder()

    def _configure(self, copy_range: int) -> None:
        seq = 0
        requests: dict[int, str] = {}
        for group in self.groups:
            settings: tuple[tuple[str, dict[str, int]], ...] = (
                ("bind", {"command": nflog_wire.CMD_BIND}),
                (
                    "configure",
                    {
                        "copy_range": copy_range,
                        "nlbufsiz": NLBUFSIZ,
                        "timeout_cs": TIMEOUT_CS,
                        "qthresh": QTHRESH,
                    },
                ),
            )
            for what, request in settings:
                seq += 1
                requests[seq] = f"{what} group {group}"
                self._sock.send(nflog_wire.config_request(group, seq=seq, **request))
        deadline = time.monotonic() + ACK_TIMEOUT
        while requests:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                raise SourceError(
                    f"nflog: no answer from the kernel to: {', '.join(requests.values())}"
                )
            data = self._sock.recv(RECV_BYTES)
            for seq_answered, error in nflog_wire.acks(data):
                what = requests.pop(seq_answered, "")
                if not what or error == 0:
                    continue
                raise SourceError(f"nflog: the kernel refused to {what}: {_explain(error)}")

    # -- the Source protocol ---------------------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[SourceLine]:
        """No text lines: this source gives Records (read_records)."""
        return []

    def read_records(self, now: float) -> list[Record]:
        """Every Record waiting (up to DATAGRAMS_PER_READ datagrams); never raises on bad data.
        `now` times packets the kernel sent without a timestamp (output hooks)."""
        decoded = Decoded()
        decode = self._decoder.decode
        recv = self._sock.recv
        interface = self._interface_namer(now)
        for _ in range(DATAGRAMS_PER_READ):
            try:
                data = recv(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    self.last_overrun = now
                    self.dropped_batches = self._drops.read(self.dropped_batches)
                    continue
                self._last_error = f"recv: {exc}"
                break
            decode(data, interface, now, decoded)
        self.malformed += decoded.malformed
        self.packets += decoded.packets
        self.undecodable += decoded.undecodable
        self.records += len(decoded.records)
        return decoded.records

    def _interface_namer(self, now: float) -> _Namer:
        if not now - NAME_TTL < self._names_at <= now:
            self._names.clear()
            self._decoder.forget_names()  # its heads hold interface names
            self._names_at = now
        return _Namer(self._names, self._links)

    def position(self) -> dict[str, object] | None:
        return None  # packets not read before a restart are gone: there is nothing to resume

    def health(self) -> dict[str, object]:
        self.dropped_batches = self._drops.read(self.dropped_batches)
        return {
            "state": "error" if self._last_error else "ok",
            "kind": "nflog",
            "groups": list(self.groups),
            "packets": self.packets,
            "records": self.records,
            "undecodable": self.undecodable,
            "malformed": self.malformed,
            "overruns": self.overruns,
            "last_overrun": self.last_overrun,
            "dropped_batches": self.dropped_batches,
            "rcvbuf": self.rcvbuf,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        self._sock.close()
        self._links.close()
        self._drops.close()


class _DropCounter:
    """A netlink socket's drop counter (sk_drops: one per datagram the kernel could not
    queue), from the Drops column of /proc/self/net/netlink. The file is opened now, in the
    socket's network namespace, and read again from its start each time."""

    def __init__(self, sock: socket.socket) -> None:
        self._inode = str(os.fstat(sock.fileno()).st_ino)
        try:
            self._fd: int | None = os.open("/proc/self/net/netlink", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # no /proc: the count stays at what ENOBUFS told

    def read(self, last: int) -> int:
        """The count now; `last` when it cannot be read."""
        if self._fd is None:
            return last
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._fd, 65536):
                chunks.append(chunk)
        except OSError:
            return last
        for line in b"".join(chunks).decode("ascii", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 10 and fields[-1] == self._inode and fields[-2].isdigit():
                return int(fields[-2])
        return last

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Namer:
    """ifindex -> interface name, cached; an index that no longer names an interface
    becomes 'if<N>' (never "", which would change the packet's direction)."""

    __slots__ = ("_links", "_names")

    def __init__(self, names: dict[int, str], links: LinkNames) -> None:
        self._names = names
        self._links = links

    def __call__(self, index: int) -> str:
        name = self._names.get(index)
        if name is None:
            name = self._links.name(index) or f"if{index}"
            self._names[index] = name
        return name


def _set_rcvbuf(sock: socket.socket, size: int) -> int:
    with contextlib.suppress(OSError):  # CAP_NET_ADMIN may pass net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _explain(error: int) -> str:
    if error in (errno.EPERM, errno.EBUSY):
        # The kernel answers EPERM both to a socket without CAP_NET_ADMIN and to one that is
        # not the group's owner (nfulnl_recv_config).
        return (
            "not permitted: the group is bound by another process (ulogd, another "
            "blockerd?), or this process lacks CAP_NET_ADMIN in its network namespace"
        )
    return f"{errno.errorcode.get(error, 'error')} ({os.strerror(error)})"
