"""What blockerd did since it started, for the metrics and the status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SourceKey = tuple[str, str]  # (kind, path): one log source, as the jails name it


@dataclass
class Activity:
    """Counted per batch or per ban, never per line. Keys come from the configuration (jails,
    sources) or fixed words (origins, repair kinds): no address is ever a key."""

    lines: Counter[SourceKey] = field(default_factory=Counter)
    last_line: dict[SourceKey, float] = field(default_factory=dict)  # when read, epoch
    bans: Counter[tuple[str, str]] = field(default_factory=Counter)  # (jail, origin)
    # (jail, origin); expiries are counted for all jails at once, under jail "*"
    unbans: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_ban: dict[str, float] = field(default_factory=dict)  # jail -> epoch
    repairs: Counter[str] = field(default_factory=Counter)  # set, rule, duplicate_rule
    firewall_ok: bool = True  # the last rule and set check succeeded
    firewall_failures: int = 0
