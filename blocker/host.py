"""The host's own addresses, read over netlink: they are never banned, nor a subnet holding them."""

from __future__ import annotations

import logging
from ipaddress import ip_address

from blocker.records import Address

log = logging.getLogger("blocker")


def host_addresses() -> list[Address]:
    """Every address configured on this host's (or this namespace's) interfaces."""
    try:
        from pyroute2 import IPRoute  # noqa: PLC0415 - only the daemon needs netlink

        with IPRoute() as ipr:
            messages = ipr.get_addr()
    except Exception as exc:  # pyroute2 raises many types; an empty list is the safe answer
        log.warning("cannot read the host's addresses (they are not protected): %s", exc)
        return []
    addresses: list[Address] = []
    for message in messages:
        text = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
        try:
            addresses.append(ip_address(text))
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(addresses))
