"""blockerctl against a test's own blockerd: the commands and `status --json`, shared by
the daemons that tests start (tests/lab.py's Blockerd, tests/nflog_daemon.py's NflogDaemon)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


class ControlClient:
    """Mixed into a test daemon that says where its control socket is."""

    @property
    def socket_path(self) -> Path:
        raise NotImplementedError

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "blockerctl"), "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=check,
        )

    def ctl_json(self, *args: str) -> object:
        return json.loads(self.ctl(*args).stdout)

    def status(self) -> dict[str, object]:
        result = self.ctl_json("status", "--json")
        assert isinstance(result, dict)
        return result
