"""Subnet escalation: which banned hosts each subnet holds lately.  PURE: times passed in.

After a host ban, if at least ``min_offenders`` distinct hosts of its /``v4_prefix`` (or
/``v6_prefix``) were banned within ``window``, the engine bans the subnet too (unless it
is already banned or may not be banned: addresses.AddressRules).  Only "are there
enough?" matters, so per subnet the newest ``4 * min_offenders`` hosts are kept, and at
most ``cap`` subnets (least recently touched forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict

from blocker.addresses import subnet_of
from blocker.records import Address, Network

__all__ = ["SubnetOffenders"]


class SubnetOffenders:
    __slots__ = ("_cap", "_offenders", "min_offenders", "v4_prefix", "v6_prefix", "window")

    def __init__(self, min_offenders: int, window: float, v4_prefix: int, v6_prefix: int,
                 cap: int) -> None:
        self.min_offenders = min_offenders
        self.window = window
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self._cap = cap
        # subnet -> {banned host address: ban time}
        self._offenders: OrderedDict[Network, dict[Address, float]] = OrderedDict()

    def subnet(self, addr: Address) -> Network:
        """The subnet `addr` escalates to, e.g. 203.0.113.0/24."""
        return subnet_of(addr, self.v4_prefix, self.v6_prefix)

    def count(self, subnet: Network, addr: Address, at: float, now: float
              ) -> dict[Address, float]:
        """Record `addr` as banned at `at` in `subnet`; return its live offenders."""
        offenders = self._offenders.get(subnet)
        if offenders is None:
            offenders = self._offenders[subnet] = {}
            while len(self._offenders) > self._cap:
                self._offenders.popitem(last=False)
        else:
            self._offenders.move_to_end(subnet)
        offenders[addr] = max(at, offenders.get(addr, at))
        horizon = now - self.window
        for host in [host for host, when in offenders.items() if when <= horizon]:
            del offenders[host]
        keep = max(self.min_offenders, 1) * 4
        while len(offenders) > keep:  # ties broken by address: hit order must not matter
            oldest = min(offenders.items(), key=lambda item: (item[1], item[0]))
            del offenders[oldest[0]]
        return offenders

    def live(self, subnet: Network, now: float) -> int:
        """Hosts of `subnet` banned within the window before `now` (for explain)."""
        offenders = self._offenders.get(subnet, {})
        return sum(1 for when in offenders.values() if now - when < self.window)

    def forget_host(self, addr: Address) -> None:
        offenders = self._offenders.get(self.subnet(addr))
        if offenders is not None:
            offenders.pop(addr, None)

    def forget_subnet(self, subnet: Network) -> None:
        self._offenders.pop(subnet, None)
