"""The end-to-end lab: real packets, a real rsyslogd, blockerd inside a server namespace.

    with open_lab() as lab:                      # namespaces, rsyslogd, sysctl; all undone on exit
        with lab.blockerd() as daemon:           # fresh tag, LOG rules, sets and config per test
            lab.attacker.run("hping3", ...)
            wait_until(lambda: ATTACKER_V4 in lab.members(daemon.set4))

Topology (documentation addresses only; nothing is routed out of the namespaces):

    attacker 198.51.100.66..90/24, 2001:db8:a::66..90/64 --- 198.51.100.1, 2001:db8:a::1  server
    benign   203.0.113.10/24,       2001:db8:b::10/64     --- 203.0.113.1,  2001:db8:b::1

The server logs INVALID inbound packets and NEW inbound SYNs to closed ports (every port but
SERVICE_PORT) with the prefix "<tag> INVALID " / "<tag> CLOSED ", then drops them. Each
blockerd gets its own tag ("BLK" + 6 hex) as jail prefix, so lines of earlier tests in the
shared kern.log never count.

Only one rsyslogd may read /proc/kmsg (imklog reads it destructively): the lab skips when
another rsyslogd runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from control_client import ControlClient
from netns import Namespace, namespace, veth, wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE_PORT = 8080
ATTACKER_LISTEN_PORT = 7000
SERVER_ATT_V4, SERVER_ATT_V6 = "198.51.100.1", "2001:db8:a::1"
SERVER_BEN_V4, SERVER_BEN_V6 = "203.0.113.1", "2001:db8:b::1"
ATTACKER_V4, ATTACKER_V6 = "198.51.100.66", "2001:db8:a::66"
BENIGN_V4, BENIGN_V6 = "203.0.113.10", "2001:db8:b::10"
# Extra attacker addresses (host numbers) on the attacker link, one per scenario that bans.
EXTRA_HOSTS = range(67, 91)
LOG_ALL_NETNS = Path("/proc/sys/net/netfilter/nf_log_all_netns")
WAIT = 10.0
DROPIN = REPO / "packaging" / "rsyslog" / "00-blocker-kernel-only.conf"

# A dual-stack TCP service that accepts and closes: enough for `nc -z`.
_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"""

_RSYSLOG_CONF = """\
global(workDirectory="{tmp}/rsyslog-work")
module(load="imklog")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{tmp}/log.sock")
# blocker's rsyslog drop-in, as shipped (packaging/rsyslog), before any rule that writes.
{dropin}
kern.* action(type="omfile" file="{tmp}/kern.log")
kern.* action(type="omfile" file="{tmp}/kern-trad.log" template="RSYSLOG_TraditionalFileFormat")
user.* action(type="omfile" file="{tmp}/user.log")
"""


def new_tag() -> str:
    """'BLK' + 6 hex: with ' UNKNOWN_OUTGOING: ' it stays within LOG's 29-character prefix."""
    return "BLK" + uuid.uuid4().hex[:6]


def attacker_v4(host: int) -> str:
    return f"198.51.100.{host}"


def attacker_v6(host: int) -> str:
    return f"2001:db8:a::{host}"


# -- kernel and log helpers ------------------------------------------------------------------


@contextmanager
def log_all_netns() -> Iterator[None]:
    """LOG rules inside namespaces reach the kernel log only with this sysctl on."""
    old = LOG_ALL_NETNS.read_text().strip()
    LOG_ALL_NETNS.write_text("1\n")
    try:
        yield
    finally:
        LOG_ALL_NETNS.write_text(old + "\n")


def count_lines(paths: Sequence[Path], *needles: str) -> int:
    """Lines holding every needle, over all `paths` (missing files count 0)."""
    total = 0
    for path in paths:
        with (
            contextlib.suppress(FileNotFoundError),
            path.open(encoding="utf-8", errors="replace") as handle,
        ):
            total += sum(1 for line in handle if all(n in line for n in needles))
    return total


def members(ns: Namespace, set_name: str) -> dict[str, int]:
    """{member: timeout} of one ipset in `ns`, read from `ipset list` ({} if it is missing)."""
    done = ns.run("ipset", "list", set_name, check=False)
    if done.returncode != 0:
        return {}
    found: dict[str, int] = {}
    in_members = False
    for line in done.stdout.splitlines():
        if line.startswith("Members:"):
            in_members = True
            continue
        if in_members and line.strip():
            m = re.match(r"(\S+)(?: timeout (\d+))?", line.strip())
            if m:
                member = m.group(1)
                member = member.removesuffix("/32").removesuffix("/128")
                found[member] = int(m.group(2) or 0)
    return found


def input_rules(ns: Namespace, family: int) -> list[str]:
    binary = "ip6tables" if family == 6 else "iptables"
    return [
        line for line in ns.run(binary, "-S", "INPUT").stdout.splitlines() if line.startswith("-A ")
    ]


def must(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) for `condition`, failing the test with `what` when it never holds."""
    if not wait_until(condition, timeout=timeout, interval=0.1):
        pytest.fail(f"timed out after {timeout:g}s waiting for: {what}")


def server_rules(
    binary: str, log: Sequence[str], prefix: str, *, answer_synack: bool = False
) -> list[list[str]]:
    """The README's server rules for one family (`iptables` or `ip6tables`): each logging
    rule ends in `log` (the target up to its prefix option: LOG or NFLOG) and `prefix` + the
    record's kind. `answer_synack`: unsolicited SYN/ACKs get in and the kernel resets them."""
    rules = [
        ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
        ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ]
    if binary == "ip6tables":  # neighbour discovery is never tracked: let it through
        rules.append(["-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"])
    if answer_synack:
        synack = ["-p", "tcp", "--tcp-flags", "ALL", "SYN,ACK"]
        rules.append(
            ["-A", "INPUT", *synack, "-m", "conntrack", "--ctstate", "INVALID", "-j", "ACCEPT"]
        )
    new_syn = ["-A", "INPUT", "-p", "tcp", "--syn", "-m", "conntrack", "--ctstate", "NEW"]
    invalid = ["-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID"]
    outgoing_rst = ["-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "ALL", "RST"]
    return [
        *rules,
        [*invalid, *log, f"{prefix}INVALID "],
        [*invalid, "-j", "DROP"],
        ["-A", "INPUT", "-p", "tcp", "--dport", str(SERVICE_PORT), "-j", "ACCEPT"],
        [*new_syn, *log, f"{prefix}CLOSED "],
        [*new_syn, "-j", "DROP"],
        [*outgoing_rst, *log, f"{prefix}UNKNOWN_OUTGOING: "],
    ]


# -- rsyslogd --------------------------------------------------------------------------------


@dataclass
class Rsyslog:
    tmp: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def kern_log(self) -> Path:
        return self.tmp / "kern.log"

    @property
    def kern_trad(self) -> Path:
        return self.tmp / "kern-trad.log"

    @property
    def user_log(self) -> Path:
        return self.tmp / "user.log"

    @property
    def socket_path(self) -> Path:
        return self.tmp / "log.sock"

    def start(self) -> None:
        (self.tmp / "rsyslog-work").mkdir(exist_ok=True)
        conf = self.tmp / "rsyslog.conf"
        conf.write_text(_RSYSLOG_CONF.format(tmp=self.tmp, dropin=DROPIN.read_text()))
        with (self.tmp / "rsyslogd.out").open("wb") as out:
            self.process = subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(conf), "-i", str(self.tmp / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def hup(self) -> None:
        """rsyslog closes its files on HUP and reopens them on the next write."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def send(self, datagram: bytes) -> None:
        """One raw datagram to the private syslog socket, as any local user could."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, str(self.socket_path))

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


# -- blockerd --------------------------------------------------------------------------------


@dataclass
class Blockerd(ControlClient):
    """One blockerd in the server namespace, with its own tag, sets, state and socket."""

    lab: Lab
    tag: str
    tmp: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def set4(self) -> str:
        return f"b4-{self.tag}"

    @property
    def set6(self) -> str:
        return f"b6-{self.tag}"

    @property
    def config(self) -> Path:
        return self.tmp / "jails.toml"

    @property
    def socket_path(self) -> Path:
        return self.tmp / "ctl.sock"

    def write_config(self, **defaults: object) -> None:
        """The shipped jails.toml with this test's sets, prefix and `defaults` overrides."""
        text = (REPO / "jails.toml").read_text()
        text = text.replace('filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"')
        text = text.replace('set_v4 = "blocker4"', f'set_v4 = "{self.set4}"')
        text = text.replace('set_v6 = "blocker6"', f'set_v6 = "{self.set6}"')
        text = re.sub(r'rule_check_interval = "\w+"', 'rule_check_interval = "1s"', text)
        extra = {"prefix": f"^{self.tag}", **defaults}
        lines = [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
        text = text.replace("[defaults]\n", "[defaults]\n" + "\n".join(lines) + "\n", 1)
        for key in defaults:  # the shipped value of an overridden key must go
            text = re.sub(rf"(?m)^{key} = .*# .*\n", "", text)
        self.config.write_text(text)

    def start(self) -> None:
        self.starts += 1
        err = (self.tmp / f"blockerd.{self.starts}.err").open("wb")
        with err:
            self.process = subprocess.Popen(
                self.lab.server.argv(
                    str(BIN / "blockerd"),
                    "--config",
                    str(self.config),
                    "--log",
                    str(self.log_path),
                    "--state-dir",
                    str(self.tmp / "state"),
                    "--socket",
                    str(self.socket_path),
                ),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        must(self._ready, f"blockerd #{self.starts} answers status", timeout=15)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"blockerd exited with {self.process.returncode}:\n{self.stderr()}")
        return self.ctl("status", check=False).returncode == 0

    def stderr(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("blockerd.*.err"))
        )

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop with `sig` (SIGKILL when SIGTERM is not obeyed within 10 s) -> exit code."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(sig)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            pytest.fail("blockerd ignored SIGTERM for 10 s")

    def hits(self, jail: str, filter_name: str) -> int:
        jails = self.status()["jails"]
        assert isinstance(jails, dict)
        return int(jails[jail]["hits"].get(filter_name, 0))

    def banned(self, address: str) -> bool:
        """Is `address` in the kernel set (not blockerd's word: `ipset list`)?"""
        return address in self.members(6 if ":" in address else 4)

    def members(self, family: int) -> dict[str, int]:
        return members(self.lab.server, self.set6 if family == 6 else self.set4)


# -- the lab ---------------------------------------------------------------------------------


@dataclass
class Lab:
    tmp: Path
    server: Namespace
    attacker: Namespace
    benign: Namespace
    att_if: str  # the attacker's end of its link
    rsyslog: Rsyslog
    _marks: int = 0
    _extra: list[int] = field(default_factory=list)

    def add_attacker_address(self, host: int) -> tuple[str, str]:
        """Another attacker address pair (v4, v6) on the attacker link."""
        v4, v6 = attacker_v4(host), attacker_v6(host)
        if host not in self._extra:
            self.attacker.run("ip", "addr", "add", f"{v4}/24", "dev", self.att_if)
            self.attacker.run("ip", "addr", "add", f"{v6}/64", "dev", self.att_if, "nodad")
            self._extra.append(host)
        return v4, v6

    # The marker: a UDP datagram the server sends, logged on OUTPUT with its own source port.
    def mark(self, timeout: float = WAIT) -> None:
        """Wait until a fresh kernel LOG line reached both kern.log files: every line logged
        before this call has been written by then (imklog reads the kernel log in order)."""
        self._marks += 1
        port = 20000 + self._marks
        self.server.run(
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f"s.bind(('{SERVER_BEN_V4}', {port})); s.sendto(b'm', ('{BENIGN_V4}', 9))",
        )
        needle = f"SPT={port} "
        must(
            lambda: (
                count_lines([self.rsyslog.kern_log], "LABMARK ", needle) == 1
                and count_lines([self.rsyslog.kern_trad], "LABMARK ", needle) == 1
            ),
            f"marker {port} in kern.log and kern-trad.log",
            timeout,
        )

    def reset_firewall(self, tag: str, *, answer_synack: bool = False) -> None:
        """Fresh server rules for one test: flush both families, destroy every set, log."""
        for binary in ("iptables", "ip6tables"):
            for chain in ("INPUT", "OUTPUT"):
                self.server.run(binary, "-F", chain)
        self.server.run("ipset", "destroy", check=False)
        for binary in ("iptables", "ip6tables"):
            log = ["-j", "LOG", "--log-prefix"]
            rules = server_rules(binary, log, f"{tag} ", answer_synack=answer_synack)
            if binary == "iptables":
                rules.append(
                    [
                        "-A",
                        "OUTPUT",
                        "-p",
                        "udp",
                        "--dport",
                        "9",
                        "-j",
                        "LOG",
                        "--log-prefix",
                        "LABMARK ",
                    ]
                )
            for rule in rules:
                self.server.run(binary, *rule)

    @contextmanager
    def blockerd(
        self, *, log: str = "kern.log", answer_synack: bool = False, **defaults: object
    ) -> Iterator[Blockerd]:
        """A fresh tag, firewall and blockerd for one test; stopped (and its sets gone) after."""
        tag = new_tag()
        tmp = self.tmp / tag
        tmp.mkdir()
        self.reset_firewall(tag, answer_synack=answer_synack)
        daemon = Blockerd(self, tag, tmp, self.tmp / log)
        daemon.write_config(**defaults)
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


@contextmanager
def open_lab(tmp: Path) -> Iterator[Lab]:
    others = subprocess.run(
        ["pgrep", "-x", "rsyslogd"], capture_output=True, text=True, check=False
    ).stdout.split()
    if others:
        pytest.skip(
            f"another rsyslogd runs (pid {', '.join(others)}): imklog reads /proc/kmsg "
            "destructively, so only one may run"
        )
    with ExitStack() as stack:
        stack.enter_context(log_all_netns())
        server = stack.enter_context(namespace("blksrv"))
        attacker = stack.enter_context(namespace("blkatt"))
        benign = stack.enter_context(namespace("blkben"))
        _srv_att, att_if = stack.enter_context(
            veth(
                server,
                attacker,
                (f"{SERVER_ATT_V4}/24", f"{SERVER_ATT_V6}/64"),
                (f"{ATTACKER_V4}/24", f"{ATTACKER_V6}/64"),
            )
        )
        stack.enter_context(
            veth(
                server,
                benign,
                (f"{SERVER_BEN_V4}/24", f"{SERVER_BEN_V6}/64"),
                (f"{BENIGN_V4}/24", f"{BENIGN_V6}/64"),
            )
        )
        rsyslog = Rsyslog(tmp)
        stack.callback(rsyslog.stop)
        lab = Lab(tmp, server, attacker, benign, att_if, rsyslog)
        lab.reset_firewall(new_tag())
        server.spawn(sys.executable, "-c", _LISTENER, str(SERVICE_PORT))
        attacker.spawn(sys.executable, "-c", _LISTENER, str(ATTACKER_LISTEN_PORT))
        for ns, address in (
            (attacker, SERVER_ATT_V4),
            (benign, SERVER_BEN_V4),
            (attacker, SERVER_ATT_V6),
            (benign, SERVER_BEN_V6),
        ):
            must(
                partial(tcp_open, ns, address, SERVICE_PORT, wait=1),
                f"{ns.name} reaches {address} port {SERVICE_PORT}",
            )
        rsyslog.start()
        must(rsyslog.socket_path.exists, "rsyslogd's private socket")
        lab.mark(timeout=20)
        yield lab


def tcp_open(
    ns: Namespace, address: str, port: int, wait: int = 2, source: str | None = None
) -> bool:
    """`nc -z -w WAIT [-s SOURCE]` from `ns`: True when the TCP handshake completes."""
    chosen = ("-s", source) if source else ()
    return (
        ns.run(
            "nc", "-z", "-w", str(wait), *chosen, address, str(port), check=False, timeout=wait + 10
        ).returncode
        == 0
    )
