"""Shared test setup. Tests marked @pytest.mark.root skip unless run as root."""

from __future__ import annotations

import os

import pytest

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
