"""The early INPUT rule: one per family, rule #1 of INPUT, dropping banned sources.

    -m set --match-set SET src
    -m conntrack --ctstate INVALID,NEW,RELATED,ESTABLISHED --ctdir ORIGINAL
    -m comment --comment blocker -j DROP

drops every packet from a banned source except replies to connections the host opened itself
(conntrack REPLY direction). Measured in namespaces (tests/test_firewall_rules.py):
- `--ctstate NEW,INVALID` keeps a banned attacker's already-established inbound connection alive;
- `--ctdir ORIGINAL` alone never matches packets without a conntrack entry, so unsolicited
  SYN/ACKs (INVALID) pass; listing the ctstates makes the match also true for those;
- UNTRACKED stays out: IPv6 neighbour discovery is never tracked, and dropping a banned
  neighbour's advertisements would cut the host's own IPv6 traffic to it;
- this rule cuts both, while the host's own outgoing connections to a banned address still work.

Rules go through the iptables/ip6tables commands (iptables-nft or iptables-legacy: the binary
is a parameter) and are found again by their comment and set name.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from blocker.firewall import namespace
from blocker.firewall.base import FirewallError

CHAIN = "INPUT"
# Listing states makes packets without a conntrack entry (INVALID) match; ctdir spares replies.
CTSTATES = "INVALID,NEW,RELATED,ESTABLISHED"
_BINARY = {4: re.compile(r"iptables(-nft|-legacy)?"), 6: re.compile(r"ip6tables(-nft|-legacy)?")}
_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,30}")  # set names and the comment
_TIMEOUT = 30  # seconds for one iptables command (it waits up to 5 s for the xtables lock)


def rule_spec(set_name: str, comment: str) -> list[str]:
    """Our rule's match and target, in the order `iptables -S` prints them back."""
    return [
        "-m", "set", "--match-set", set_name, "src",
        "-m", "conntrack", "--ctstate", CTSTATES, "--ctdir", "ORIGINAL",
        "-m", "comment", "--comment", comment,
        "-j", "DROP",
    ]  # fmt: skip


def check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: 1-31 of [A-Za-z0-9_.:-], not starting with -")
    return value


def default_ip6tables(iptables: str) -> str:
    """The ip6tables that goes with an iptables binary ('iptables-legacy' -> 'ip6tables-legacy')."""
    head, base = os.path.split(iptables)
    return os.path.join(head, "ip6" + base[2:]) if base.startswith("iptables") else iptables


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """Where our rule stands in one family's INPUT chain."""

    positions: tuple[int, ...]  # 1-based positions of every rule carrying our comment and set
    exact_first: bool  # rule #1 is ours, word for word

    @property
    def in_place(self) -> bool:
        return self.exact_first and len(self.positions) == 1


class InputRules:
    """Keeps our DROP rule first in INPUT for each family {4: set name, 6: set name}."""

    def __init__(
        self,
        sets: Mapping[int, str],
        *,
        iptables: str = "iptables",
        ip6tables: str | None = None,
        netns: str | None = None,
        comment: str = "blocker",
    ) -> None:
        self.sets = {family: check_token(name, "set name") for family, name in sets.items()}
        if not self.sets or set(self.sets) - {4, 6}:
            raise ValueError(f"families must be 4 and/or 6: {sorted(self.sets)}")
        self.binaries = {4: iptables, 6: ip6tables or default_ip6tables(iptables)}
        for family, binary in self.binaries.items():
            if not _BINARY[family].fullmatch(os.path.basename(binary)):
                raise ValueError(
                    f"not an {'ip6' if family == 6 else 'ip'}tables binary: {binary!r}"
                )
        self.netns = namespace.check_netns(netns)
        self.comment = check_token(comment, "rule comment")
        self._variants: dict[int, str] = {}

    def _run(self, family: int, *args: str) -> str:
        argv = namespace.command(self.netns, [self.binaries[family], "-w", "5", *args])
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FirewallError(f"{' '.join(argv)}: {err}") from err
        if done.returncode != 0:
            raise FirewallError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def _expected(self, family: int) -> str:
        return " ".join(["-A", CHAIN, *rule_spec(self.sets[family], self.comment)])

    def check(self, family: int) -> RuleCheck:
        """Read INPUT (one `iptables -S INPUT`) and locate our rules."""
        rules = [
            line for line in self._run(family, "-S", CHAIN).splitlines() if line.startswith("-A ")
        ]
        marks = (f"--match-set {self.sets[family]} ", f"--comment {self.comment} ")
        positions = tuple(
            number
            for number, line in enumerate(rules, start=1)
            if all(mark in line + " " for mark in marks)
        )
        return RuleCheck(positions, bool(rules) and rules[0] == self._expected(family))

    def ensure(self) -> tuple[tuple[int, ...], int]:
        """Make our rule #1 of INPUT, once per family -> (families fixed, copies removed)."""
        fixed: list[int] = []
        removed = 0
        for family in sorted(self.sets):
            found = self.check(family)
            if found.in_place:
                continue
            # Delete bottom-up so the remaining positions stay valid, then insert one fresh copy.
            for position in sorted(found.positions, reverse=True):
                self._run(family, "-D", CHAIN, str(position))
            removed += len(found.positions)
            self._run(family, "-I", CHAIN, "1", *rule_spec(self.sets[family], self.comment))
            fixed.append(family)
        return tuple(fixed), removed

    def remove(self) -> int:
        """Delete every copy of our rules -> how many were deleted."""
        removed = 0
        for family in sorted(self.sets):
            positions = self.check(family).positions
            for position in sorted(positions, reverse=True):
                self._run(family, "-D", CHAIN, str(position))
            removed += len(positions)
        return removed

    def variant(self, family: int) -> str:
        """'nf_tables' or 'legacy' (from `iptables -V`), 'unknown' otherwise."""
        if family not in self._variants:
            version = self._run(family, "-V")
            found = re.search(r"\((nf_tables|legacy)\)", version)
            self._variants[family] = found.group(1) if found else "unknown"
        return self._variants[family]

    def status(self) -> dict[str, dict[str, object]]:
        """Per family: binary, variant, set name, our rule's positions, whether it is in place."""
        report: dict[str, dict[str, object]] = {}
        for family in sorted(self.sets):
            entry: dict[str, object] = {"binary": self.binaries[family], "set": self.sets[family]}
            try:
                entry["variant"] = self.variant(family)
                found = self.check(family)
                entry.update(positions=list(found.positions), in_place=found.in_place)
            except FirewallError as err:
                entry.update(positions=[], in_place=False, error=str(err))
            report[f"ipv{family}"] = entry
        return report
