"""Shared test setup: the one mechanism for root-only tests.

A test that needs root says so, and why, with a marker (a module may set it as `pytestmark`):

    @pytest.mark.root("read and write /dev/kmsg")

Run as root, it runs. Otherwise it skips with "needs root: <why>" in the summary (`-ra`), and
`pytest -m "not root"` (scripts/check) leaves it out altogether. Nothing else in tests/ looks at
the effective uid to decide whether a test runs: tests/test_root_marker.py keeps it that way.
"""

from __future__ import annotations

import os

import pytest

DEFAULT_REASON = "network namespaces, ipset, iptables"


def root_skip_reason(marker: pytest.Mark) -> str:
    """The skip reason a root marker gives: its own words, or the default."""
    return f"needs root: {marker.args[0] if marker.args else DEFAULT_REASON}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=root_skip_reason(marker)))
