"""Shared test setup. Tests marked @pytest.mark.root skip unless run as root."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

ROOT_REASON = "needs root (network namespaces, ipset, iptables)"


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.fixture
def root() -> None:
    """Skip the requesting test (or fixture) unless running as root."""
    if not is_root():
        pytest.skip(ROOT_REASON)


# Hypothesis' default 200 ms deadline and its too_slow health check are timing assertions: on
# a loaded 2-core CI machine the first example of a test can take longer (seen in the .deb
# build's test run: 315 ms once, 0.3 ms on the rerun). Loaded here, before any test module
# applies its own @settings, so every test inherits it.
settings.register_profile("blocker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("blocker")
