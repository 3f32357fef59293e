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
from hypothesis import HealthCheck, settings

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


# Hypothesis' default 200 ms deadline and its too_slow health check are timing assertions: on
# a loaded 2-core CI machine the first example of a test can take longer (seen in the .deb
# build's test run: 315 ms once, 0.3 ms on the rerun). Loaded here, before any test module
# applies its own @settings, so every test inherits it.
settings.register_profile("blocker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("blocker")
