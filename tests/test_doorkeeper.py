"""doorkeeper.py: no false negatives within the window, few false positives, and it forgets."""

from __future__ import annotations

import random

import pytest

from blocker.doorkeeper import Doorkeeper

T0 = 1_700_000_000.0


def test_every_key_added_within_the_window_is_seen() -> None:
    keeper = Doorkeeper(60.0, cells=1 << 16)
    rng = random.Random(1)
    keys = [rng.getrandbits(32) for _ in range(20_000)]  # 20k keys x 4 probes in 64k cells
    for i, key in enumerate(keys):
        keeper.add(key, T0 + i * 0.002)
    now = T0 + 59.9
    assert all(keeper.seen(key, now) for key in keys)


def test_false_positives_stay_near_the_bound() -> None:
    keeper = Doorkeeper(60.0, cells=1 << 20)
    rng = random.Random(2)
    for _ in range(65_536):
        keeper.add(rng.getrandbits(32), T0)
    others = [rng.getrandbits(32) | 1 << 40 for _ in range(50_000)]  # never added
    rate = sum(keeper.seen(key, T0) for key in others) / len(others)
    # f = 1 - exp(-4 * 65536 / 2**20) ~ 0.22; f ** 4 ~ 0.0024
    assert rate < 0.01


def test_keys_are_forgotten_after_the_window() -> None:
    keeper = Doorkeeper(60.0, cells=1 << 16)
    keeper.add(12345, T0)
    assert keeper.seen(12345, T0 + 60.0)
    assert not keeper.seen(12345, T0 + 70.0)  # 9 quanta of 7.5 s later
    assert not keeper.seen(54321, T0)


def test_ipv6_keys_use_their_high_bits() -> None:
    keeper = Doorkeeper(60.0, cells=1 << 16)
    low = 0x20010DB8 << 96 | 1
    keeper.add(low | 1 << 128, T0)
    assert keeper.seen(low | 1 << 128, T0)
    assert not keeper.seen(low, T0)


def test_cells_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Doorkeeper(60.0, cells=1000)
