"""Run a benchmark again inside a network namespace of its own, removed afterwards, so its
sets, rules and daemons never touch the host's."""

from __future__ import annotations

import subprocess
import sys
import uuid


def rerun_in_netns(prefix: str, script: str) -> int:
    """`script --inner ARGS...` in a fresh namespace named PREFIX-<random>; its exit code."""
    netns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        return subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, script, "--inner", *sys.argv[1:]],
            check=False,
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
