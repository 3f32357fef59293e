"""Bans and unbans as structured journal entries, when blockerd's stderr is the journal.

`journalctl -u blocker BLOCKER_JAIL=probes` works because each ban is sent with its own
fields (BLOCKER_ACTION, BLOCKER_TARGET, BLOCKER_JAIL, BLOCKER_DURATION, BLOCKER_REASON,
BLOCKER_ORIGIN) through python3-systemd's journal.send(). Without that module, or when
stderr is not connected to the journal, blockerd logs plain lines to stderr as before.

The service attaches what it banned to the log record (`extra={"bans": [...]}`); the
fields are built here, only when this handler is the one in use, so the stderr path pays
nothing for them.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from blocker.records import Decision, Network, network_text

# (what was done, target, jail, seconds or None, reason, origin)
BanEvent = tuple[str, Network, str, "float | None", str, str]
Send = Callable[..., Any]
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def ban_events(
    decisions: Sequence[Decision], spans: Sequence[float], origin: str
) -> list[BanEvent]:
    return [
        ("ban", d.target, d.jail, span, d.reason, origin)
        for d, span in zip(decisions, spans, strict=True)
    ]


def journal_fields(event: BanEvent) -> dict[str, str]:
    """The BLOCKER_* fields of one ban or unban (journal field values are text)."""
    action, target, jail, seconds, reason, origin = event
    fields = {
        "BLOCKER_ACTION": action,
        "BLOCKER_TARGET": network_text(target),
        "BLOCKER_JAIL": jail,
        "BLOCKER_ORIGIN": origin,
    }
    if seconds is not None:
        fields["BLOCKER_DURATION"] = "permanent" if math.isinf(seconds) else f"{seconds:.0f}"
    if reason:
        fields["BLOCKER_REASON"] = reason
    return fields


class JournalHandler(logging.Handler):
    """One journal entry per line of a record; a ban batch's lines each get their fields."""

    def __init__(self, send: Send, identifier: str = "blockerd") -> None:
        super().__init__()
        self.send = send
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = self.format(record).split("\n")
            events: Sequence[BanEvent] = getattr(record, "bans", ())
            priority = str(_PRIORITY.get(record.levelno, 6))
            for index, line in enumerate(lines):
                fields = journal_fields(events[index]) if index < len(events) else {}
                self.send(line, PRIORITY=priority, SYSLOG_IDENTIFIER=self.identifier, **fields)
        except Exception:  # a logging failure must never stop a ban
            self.handleError(record)


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=device:inode when stderr is connected to the journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{info.st_dev}:{info.st_ino}"


def journal_handler() -> JournalHandler | None:
    """The handler to use under systemd, or None (python3-systemd missing, or not the
    journal on stderr)."""
    if not stderr_is_journal():
        return None
    try:
        from systemd import journal  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        return None
    return JournalHandler(journal.send)
