"""ban_book.py: marks, the gate, and flat work per ban up to a million marks."""

from __future__ import annotations

import math
from ipaddress import ip_address, ip_network

from blocker.ban_book import GATE_CACHE_SIZE, BanBook

T0 = 1_700_000_000.0


def key(text: str) -> int:
    """The engine's key of an IPv4 host: its address as an int (source_key.py)."""
    return int(ip_address(text))


def test_one_million_marks_and_refusals_copy_linear_work() -> None:
    # Counts work, not time: the gate is rebuilt from the marks only after as many new
    # refusals as there are marks, so copies stay below 2 entries per gate write.
    book = BanBook(cap=2_000_000)
    writes = 0
    for i in range(1_000_000):
        book.ban_host(i, T0 + 600, T0)
        writes += 1
        if i % 4 == 0:
            book.refuse(-i - 1)
            writes += 1
    assert len(book.hosts) == 1_000_000
    assert book.gate_copies <= 2 * writes
    assert all(book.gate[i] == T0 + 600 for i in range(0, 1_000_000, 997))


def test_a_rebuild_keeps_every_mark_and_forgets_refusals() -> None:
    book = BanBook(cap=10)
    book.ban_host(key("198.51.100.1"), T0 + 60, T0)
    for i in range(GATE_CACHE_SIZE + 1):
        book.refuse(i)
    assert book.gate[key("198.51.100.1")] == T0 + 60
    assert 0 not in book.gate
    assert book.gate[GATE_CACHE_SIZE] == math.inf


def test_marks_past_the_cap_sweep_expired_ones_first() -> None:
    book = BanBook(cap=4)
    for i in range(3):
        book.ban_host(key(f"198.51.100.{i + 1}"), T0 + 10, T0)
    book.ban_host(key("198.51.100.9"), T0 + 1000, T0)
    book.ban_subnet(ip_network("203.0.113.0/24"), T0 + 1000, T0)
    book.ban_host(key("198.51.100.10"), T0 + 1000, T0 + 20)  # 5 > 4: sweep
    assert list(book.hosts) == [key("198.51.100.9"), key("198.51.100.10")]
    assert book.subnet_until(ip_network("203.0.113.0/24")) == T0 + 1000
    book.forget_host(key("198.51.100.9"))
    assert book.host_until(key("198.51.100.9")) is None
    assert key("198.51.100.9") not in book.gate


def test_past_the_cap_a_sweep_walks_the_marks_only_when_one_may_have_ended() -> None:
    # A storm's bans at the cap: none has ended, so dropping the oldest 10% needs no walk
    # over every mark.  Once the first ends, the next sweep walks them and drops it.
    book = BanBook(cap=1000)
    for i in range(5000):
        book.ban_host(i, T0 + 600 + i, T0 + i * 1e-3)
    assert book.marks_walked == 0
    assert len(book.hosts) <= 1000
    assert list(book.hosts)[-1] == 4999
    book.ban_host(-1, T0 + 10, T0 + 5)  # ends first
    for i in range(5000, 5200):
        book.ban_host(i, T0 + 600 + i, T0 + 20)
    assert book.marks_walked > 0
    assert -1 not in book.hosts
    assert -1 not in book.gate


class _Counted:
    """A key that counts its __hash__ calls (an address's is a Python call)."""

    calls = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        _Counted.calls += 1
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Counted) and other.value == self.value


def test_a_new_mark_hashes_its_address_once_for_the_gate_and_once_for_the_marks() -> None:
    book = BanBook(cap=100)
    keys = [_Counted(i) for i in range(150)]
    _Counted.calls = 0
    for key in keys[:100]:  # with room
        book.ban_host(key, T0 + 600, T0)  # type: ignore[arg-type]
    assert _Counted.calls == 2 * 100
    _Counted.calls = 0
    for key in keys[100:]:  # at the cap: each drop costs one more for the marks, one for the gate
        book.ban_host(key, T0 + 600, T0)  # type: ignore[arg-type]
    assert len(book.hosts) <= 100
    dropped = 150 - len(book.hosts)
    assert _Counted.calls == 2 * 50 + 2 * dropped


def test_a_permanent_mark_the_cap_drops_stays_in_the_gate() -> None:
    book = BanBook(cap=3)
    forever = key("198.51.100.1")
    book.ban_host(forever, math.inf, T0)
    for i in range(2, 6):
        book.ban_host(key(f"198.51.100.{i}"), T0 + 600, T0)
    assert forever not in book.hosts
    assert book.gate[forever] == math.inf
    assert key("198.51.100.2") not in book.gate  # dropped with it, and not permanent
