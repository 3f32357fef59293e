"""Ban backends: the protocol, a dry-run backend, and (in .ipset) the kernel ipset backend.

IpsetBackend is imported from blocker.firewall.ipset so that dry runs do not need pyroute2.
"""

from blocker.firewall.base import Backend, Bans, FirewallError, InvalidBan, Repair
from blocker.firewall.dryrun import DryRunBackend

__all__ = ["Backend", "Bans", "DryRunBackend", "FirewallError", "InvalidBan", "Repair"]
