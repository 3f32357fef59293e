"""Three hosts, one Redis, real packets: a scan of host A gets the scanner dropped by B and C.

    scanner 192.0.2.66-68 ---+
    host A  192.0.2.1     ---+--- bridge (its own namespace)
    host B  192.0.2.2     ---+
    host C  192.0.2.3     ---+

Each host is a namespace with its own iptables LOG rules (prefix = its tag), its own ipsets
and a real blockerd (ipset backend) reading /dev/kmsg. Redis runs on a Unix socket, which
every namespace reaches (AF_UNIX paths are not per network namespace). Every assertion about
a ban reads the kernel: `ipset list` in the host's namespace, or a TCP connection that fails.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab import _LISTENER, log_all_netns, members, must, tcp_open
from netns import Namespace, namespace, veth
from redis_server import RedisServer, redis_server

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE_PORT = 8080
HOSTS = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
SCANNER, SCANNER_WHILE_DOWN, SCANNER_ALLOWED_ON_C = "192.0.2.66", "192.0.2.67", "192.0.2.68"
KEY = b"three-host-fleet-key-0123456789"
WAIT = 20.0


def _reaches(scanner: Namespace, host: Host) -> bool:
    return tcp_open(scanner, host.address, SERVICE_PORT, wait=1, source=SCANNER)


@dataclass
class Host:
    name: str
    address: str
    ns: Namespace
    tmp: Path
    tag: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def set4(self) -> str:
        return f"f4-{self.tag}"

    def config(self, redis_url: str, key_file: Path, allow: tuple[str, ...] = ()) -> None:
        (self.tmp / "jails.toml").write_text(f"""
filters_dir = "{REPO / "filters"}"
[firewall]
backend = "ipset"
set_v4 = "{self.set4}"
set_v6 = "f6-{self.tag}"
rule_check_interval = "1s"
[defaults]
source = "kmsg"
prefix = "^{self.tag}$"
subnet_min_offenders = 0
allow = {json.dumps(list(allow))}
[jails.scans]
filters = ["syn_scan"]
[fleet]
url = "{redis_url}"
key_file = "{key_file}"
host_id = "host-{self.name}"
publish = ["scans"]
""")

    def firewall(self) -> None:
        for rule in (
            ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
            ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "INPUT", "-p", "tcp", "--dport", str(SERVICE_PORT), "-j", "ACCEPT"],
            ["-A", "INPUT", "-p", "tcp", "--syn", "-j", "LOG", "--log-prefix", f"{self.tag} "],
            ["-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"],
        ):
            self.ns.run("iptables", *rule)

    def start(self) -> None:
        with (self.tmp / "blockerd.err").open("ab") as err:
            self.process = subprocess.Popen(
                self.ns.argv(
                    str(BIN / "blockerd"),
                    "--config",
                    str(self.tmp / "jails.toml"),
                    "--state-dir",
                    str(self.tmp / "state"),
                    "--socket",
                    str(self.tmp / "ctl.sock"),
                ),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        must(self._ready, f"blockerd on host {self.name}", timeout=WAIT)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"blockerd {self.name} exited:\n{self.stderr()}")
        done = self.ctl("status", "--json")
        return done.returncode == 0 and json.loads(done.stdout)["fleet"]["reader"] == "up"

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "blockerctl"), "--socket", str(self.tmp / "ctl.sock"), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.ns.run("ipset", "destroy", check=False)

    def stderr(self) -> str:
        return (self.tmp / "blockerd.err").read_text(errors="replace")

    def banned(self, address: str) -> bool:
        return address in members(self.ns, self.set4)

    def origin(self, address: str) -> str:
        rows = json.loads(self.ctl("list", "--json").stdout)
        return next((r["origin"] for r in rows if r["target"] == address), "")


@dataclass
class Fleet:
    hosts: dict[str, Host]
    scanner: Namespace
    redis: RedisServer


@contextmanager
def fleet_of_three(tmp: Path) -> Iterator[Fleet]:
    with ExitStack() as stack:
        stack.enter_context(log_all_netns())
        switch = stack.enter_context(namespace("blkfsw"))
        switch.run("ip", "link", "add", "br0", "type", "bridge")
        switch.run("ip", "link", "set", "br0", "up")
        scanner = stack.enter_context(namespace("blkfsc"))
        _, port = stack.enter_context(
            veth(
                scanner,
                switch,
                (f"{SCANNER}/24", f"{SCANNER_WHILE_DOWN}/24", f"{SCANNER_ALLOWED_ON_C}/24"),
                (),
            )
        )
        switch.run("ip", "link", "set", port, "master", "br0")
        redis = stack.enter_context(redis_server())
        key_file = tmp / "fleet.key"
        key_file.write_bytes(KEY)
        os.chmod(key_file, 0o600)
        hosts: dict[str, Host] = {}
        for name, address in HOSTS.items():
            ns = stack.enter_context(namespace(f"blkf{name}"))
            _, port = stack.enter_context(veth(ns, switch, (f"{address}/24",), ()))
            switch.run("ip", "link", "set", port, "master", "br0")
            home = tmp / name
            home.mkdir()
            host = Host(name, address, ns, home, "BLF" + uuid.uuid4().hex[:6])
            host.firewall()
            host.config(redis.url, key_file, (SCANNER_ALLOWED_ON_C,) if name == "c" else ())
            ns.spawn(sys.executable, "-c", _LISTENER, str(SERVICE_PORT))
            hosts[name] = host
            stack.callback(host.stop)
        for host in hosts.values():
            must(
                functools.partial(_reaches, scanner, host),
                f"the scanner reaches {host.name}",
            )
        for host in hosts.values():
            host.start()
        yield Fleet(hosts, scanner, redis)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_of_three(tmp_path) as opened:
        yield opened


@contextmanager
def diagnosed(fleet: Fleet) -> Iterator[None]:
    """On a failure, print each daemon's log and status (shown by pytest) to debug it."""
    try:
        yield
    except BaseException:
        for host in fleet.hosts.values():
            status = host.ctl("status", "--json").stdout
            print(f"== host {host.name}\n{host.stderr()}\n{status}")
        raise


def scan(fleet: Fleet, source: str, target: str) -> None:
    """A SYN scan of 21 closed ports from `source` (nmap -sS, one try each)."""
    done = fleet.scanner.run(
        "nmap",
        "-sS",
        "-Pn",
        "-n",
        "-p",
        "1000-1020",
        "-T4",
        "--max-retries",
        "0",
        "-S",
        source,
        "-e",
        _interface_of(fleet.scanner, source),
        target,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _interface_of(ns: Namespace, address: str) -> str:
    for line in ns.run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        if f" {address}/" in line:
            return line.split()[1]
    raise AssertionError(f"{address} not in {ns.name}")


def test_a_scan_of_one_host_bans_the_scanner_on_all_three(fleet: Fleet) -> None:
    with diagnosed(fleet):
        three_hosts(fleet)


def three_hosts(fleet: Fleet) -> None:
    a, b, c = fleet.hosts["a"], fleet.hosts["b"], fleet.hosts["c"]
    scan(fleet, SCANNER, a.address)
    must(lambda: a.banned(SCANNER), "A bans the scanner it saw", timeout=WAIT)
    for host in (b, c):
        must(functools.partial(host.banned, SCANNER), f"{host.name} bans A's scanner", timeout=WAIT)
        assert host.origin(SCANNER) == "fleet:host-a"
        assert not tcp_open(fleet.scanner, host.address, SERVICE_PORT, source=SCANNER), (
            f"the scanner's packets are dropped by {host.name}"
        )
    assert a.origin(SCANNER) == "auto"
    assert not tcp_open(fleet.scanner, a.address, SERVICE_PORT, source=SCANNER)

    # Redis killed: A still bans locally; once Redis is back, B and C get the ban.
    fleet.redis.kill()
    scan(fleet, SCANNER_WHILE_DOWN, a.address)
    must(lambda: a.banned(SCANNER_WHILE_DOWN), "A bans with Redis down", timeout=WAIT)
    assert not b.banned(SCANNER_WHILE_DOWN) and not c.banned(SCANNER_WHILE_DOWN)
    assert tcp_open(fleet.scanner, b.address, SERVICE_PORT, source=SCANNER_WHILE_DOWN)
    fleet.redis.start()
    for host in (b, c):
        must(
            functools.partial(host.banned, SCANNER_WHILE_DOWN),
            f"{host.name} gets the ban once Redis is back",
            timeout=40,
        )

    # An address allowlisted on C: banned on A and B, not on C.
    scan(fleet, SCANNER_ALLOWED_ON_C, a.address)
    must(lambda: a.banned(SCANNER_ALLOWED_ON_C), "A bans the third scanner", timeout=WAIT)
    must(lambda: b.banned(SCANNER_ALLOWED_ON_C), "B too", timeout=WAIT)
    must(
        lambda: json.loads(c.ctl("status", "--json").stdout)["fleet"]["remote"]["refused"] >= 1,
        "C refuses it (allowlisted)",
        timeout=WAIT,
    )
    assert not c.banned(SCANNER_ALLOWED_ON_C)
    assert tcp_open(fleet.scanner, c.address, SERVICE_PORT, source=SCANNER_ALLOWED_ON_C)
    for host in (a, b, c):
        assert host.process is not None and host.process.poll() is None, host.stderr()
