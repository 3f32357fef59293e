"""ban_book.py: marks, the gate, and flat work per ban up to a million marks."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st

from blocker.ban_book import GATE_CACHE_SIZE, BanBook, subnet_key
from blocker.subnet_escalation import SubnetOffenders

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


# -- subnets by key: source_key.network_key(), never the Network object ------------------

_P = 2**61 - 1  # CPython hashes an int as its value modulo this
_M64 = 2**64 - 1


def _colliding_v6_subnets() -> list[IPv6Network]:
    """/64s whose IPv6Network objects share one hash: hash(int(address) ^ int(netmask)),
    and (~high << 64) ^ ... modulo 2**61 - 1 is 8 * ~high, equal for highs p apart."""
    lows = [1 + k * _P for k in range(8)]  # all below 2**64
    return [IPv6Network(((~low & _M64) << 64, 64)) for low in lows]


def test_subnets_chosen_to_share_a_hash_as_objects_do_not_as_keys() -> None:
    subnets = _colliding_v6_subnets()
    assert len(subnets) == 8
    assert len({hash(net) for net in subnets}) == 1  # the attack on Network keys
    assert len({hash(subnet_key(net)) for net in subnets}) == len(subnets)
    book = BanBook(cap=100)
    for i, net in enumerate(subnets):
        book.ban_subnet(net, T0 + 100 + i, T0)
    assert [book.subnet_until(net) for net in subnets] == [
        T0 + 100 + i for i in range(len(subnets))
    ]
    book.forget_subnet(subnets[0])
    assert book.subnet_until(subnets[0]) is None


@given(
    st.one_of(
        st.integers(0, 2**32 - 1).map(IPv4Address),
        st.integers(0, 2**128 - 1).map(IPv6Address),
    ),
    st.integers(8, 32),
    st.integers(16, 128),
)
def test_escalation_names_a_subnet_by_the_books_key(
    addr: IPv4Address | IPv6Address, v4_prefix: int, v6_prefix: int
) -> None:
    """The engine asks the book whether an escalated subnet is banned by network_key_of()
    of the escalation's key, without a Network: it must be the Network's subnet_key()."""
    escalation = SubnetOffenders(3, 3600.0, v4_prefix, v6_prefix, 100)
    subnet = escalation.subnet(addr)
    assert escalation.network_key_of(escalation.key(addr)) == subnet_key(subnet)
    book = BanBook(cap=10)
    book.ban_subnet(subnet, T0 + 60, T0)
    assert book.subnet_until_key(escalation.network_key_of(escalation.key(addr))) == T0 + 60
    # IPv4 keys never meet IPv6 ones (the tag), nor do two prefix lengths of one address.
    other = ip_network(f"{subnet.network_address}/{subnet.prefixlen - 1}", strict=False)
    assert subnet_key(other) != subnet_key(subnet)
