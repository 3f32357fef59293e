"""Pick the ban backend the configuration asks for."""

from __future__ import annotations

from blocker.config import FirewallConfig
from blocker.firewall.base import Backend
from blocker.firewall.dryrun import DryRunBackend


def make_backend(kind: str, config: FirewallConfig) -> Backend:
    if kind == "dry-run":
        return DryRunBackend()
    if kind == "ipset":
        # Imported here so dry runs and `blockerctl` never need pyroute2.
        from blocker.firewall.ipset import IpsetBackend  # noqa: PLC0415 - only the ipset backend needs pyroute2

        return IpsetBackend(set4=config.set_v4, set6=config.set_v6, maxelem=config.maxelem)
    raise ValueError(f"unknown firewall backend {kind!r}")
