"""A real blockerd reading NFLOG inside a server namespace, banning into that namespace's ipsets.

    with linked_pair() as (server, client), nflog_blockerd(server) as daemon:
        ...send packets from client...
        must(lambda: daemon.banned("192.0.2.66"))

The server logs what the shipped jails expect, to its own NFLOG group, with the prefixes of
the README's recommended rules: INVALID inbound packets ("INVALID "), new inbound SYNs to
closed ports ("CLOSED ") and the host's own bare RSTs ("UNKNOWN_OUTGOING: ").
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from control_client import ControlClient
from lab import members, server_rules
from netns import Namespace, unique_name, wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def nflog_rules(ns: Namespace, group: int) -> None:
    """The recommended NFLOG setup (README), with the service port open."""
    for binary in ("iptables", "ip6tables"):
        log = ["-j", "NFLOG", "--nflog-group", str(group), "--nflog-prefix"]
        for rule in server_rules(binary, log, ""):
            ns.run(binary, *rule)


@dataclass
class NflogDaemon(ControlClient):
    ns: Namespace
    root: Path
    group: int
    set4: str
    set6: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "ctl.sock"

    def banned(self, address: str) -> bool:
        """In the kernel set (`ipset list`), not blockerd's word."""
        return address in members(self.ns, self.set6 if ":" in address else self.set4)

    def stderr(self) -> str:
        path = self.root / "blockerd.err"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def nflog_blockerd(ns: Namespace, jails: str = "", **defaults: object) -> Iterator[NflogDaemon]:
    """blockerd in `ns` with the shipped jails reading a fresh NFLOG group; stopped, its
    sets destroyed, after. `defaults` are extra [defaults] keys; `jails` extra TOML."""
    group = random.randrange(1000, 60000)
    tag = unique_name("nf").split("-")[1]
    with tempfile.TemporaryDirectory(prefix="blknf-", dir="/tmp") as tmp:
        root = Path(tmp)
        daemon = NflogDaemon(ns, root, group, f"b4-{tag}", f"b6-{tag}")
        nflog_rules(ns, group)
        text = (REPO / "jails.toml").read_text()
        text = text.replace('filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"')
        text = text.replace('set_v4 = "blocker4"', f'set_v4 = "{daemon.set4}"')
        text = text.replace('set_v6 = "blocker6"', f'set_v6 = "{daemon.set6}"')
        text = text.replace('rule_check_interval = "2s"', 'rule_check_interval = "1s"')
        extra = {"source": "nflog", "nflog_groups": [group], **defaults}
        lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in extra.items())
        for key in extra:  # the shipped line of an overridden key must go
            text = re.sub(rf"(?m)^{key} = .*\n", "", text, count=1)
        text = text.replace("[defaults]\n", "[defaults]\n" + lines + "\n", 1) + jails
        (root / "jails.toml").write_text(text)
        with (root / "blockerd.err").open("wb") as err:
            daemon.process = subprocess.Popen(
                ns.argv(
                    str(BIN / "blockerd"),
                    "--config",
                    str(root / "jails.toml"),
                    "--state-dir",
                    str(root / "state"),
                    "--socket",
                    str(daemon.socket_path),
                ),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        try:

            def ready() -> bool:
                assert daemon.process is not None
                if daemon.process.poll() is not None:
                    raise AssertionError(f"blockerd exited:\n{daemon.stderr()}")
                return daemon.ctl("status", check=False).returncode == 0

            assert wait_until(ready, timeout=20), daemon.stderr()
            yield daemon
        finally:
            if daemon.process.poll() is None:
                daemon.process.terminate()
                try:
                    daemon.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    daemon.process.kill()
                    daemon.process.wait(timeout=10)
            for binary in ("iptables", "ip6tables"):
                ns.run(binary, "-F", "INPUT", check=False)
                ns.run(binary, "-F", "OUTPUT", check=False)
            ns.run("ipset", "destroy", daemon.set4, check=False)
            ns.run("ipset", "destroy", daemon.set6, check=False)
