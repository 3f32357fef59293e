"""Log sources for blockerd: kern.log (inotify), the systemd journal, /dev/kmsg, and NFLOG
packets over netlink (no text at all)."""

from __future__ import annotations

import os

from blocker.sources.base import Source, SourceError, SourceLine
from blocker.sources.journald import JournaldSource, journal_usable
from blocker.sources.kernlog import KernlogSource
from blocker.sources.kmsg import KmsgSource
from blocker.sources.nflog import NflogSource, parse_groups

__all__ = ["NflogSource", "Source", "SourceError", "SourceLine", "choose_kind", "open_source"]

KINDS = ("auto", "kernlog", "journald", "kmsg", "nflog")


def choose_kind(path: str) -> str:
    """What "auto" means on this host: kern.log if it exists, else the journal, else kmsg."""
    if os.path.exists(path):
        return "kernlog"
    if journal_usable():
        return "journald"
    return "kmsg"


def open_source(
    kind: str,
    path: str,
    start: dict[str, object] | None,
    from_start: bool = False,
    levels: frozenset[int] = frozenset((4,)),
) -> Source | NflogSource:
    """Open a source; a saved position from another kind is ignored by the source itself.
    `levels`: the syslog levels of LOG records (kmsg and journald check them; for kern.log
    the rsyslog drop-in does, see blocker.sources.rsyslog_guard). For "nflog", `path` is the
    groups ("5,6") and the source gives Records, not lines."""
    if kind == "auto":
        kind = choose_kind(path)
    if kind == "kernlog":
        return KernlogSource(path, start, from_start)
    if kind == "journald":
        return JournaldSource(start, from_start, levels=levels)
    if kind == "kmsg":
        return KmsgSource(start, from_start, levels=levels)
    if kind == "nflog":
        return NflogSource(parse_groups(path))
    raise SourceError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
