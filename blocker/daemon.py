"""blockerd: the shell around Service: sources, the control socket, signals, timers.

One thread, one selector. Everything that can wait (log files, the journal, /dev/kmsg, the
control socket, signals) is a file descriptor in it; timers are the select() timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from blocker.activity import SourceKey
from blocker.config import Config, ConfigError, load_config
from blocker.control import DEFAULT_SOCKET, ControlServer
from blocker.firewall.factory import make_backend
from blocker.fleet.daemon_side import FleetWiring
from blocker.fleet.events import FleetEvent
from blocker.host import host_addresses
from blocker.journal import journal_handler
from blocker.live_peers import ConntrackError, LivePeers
from blocker.malloc_tuning import tune_malloc
from blocker.metrics import Metrics, behind_bytes
from blocker.metrics import start as start_metrics
from blocker.pipeline import tune_gc
from blocker.running_jails import source_label
from blocker.service import Service
from blocker.sources import NflogSource, Source, SourceError, open_source
from blocker.sources.rsyslog_guard import unguarded_reason
from blocker.state import State, StateError

log = logging.getLogger("blocker")

DEFAULT_CONFIG = "/etc/blocker/jails.toml"
DEFAULT_STATE = "/var/lib/blocker"
PRUNE_EVERY = 3600.0
SOURCE_RETRY = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockerd",
        description="Follow the kernel log and ban what the jails recognize (runs in the "
        "foreground; logs to stderr).",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    parser.add_argument(
        "--log",
        metavar="PATH",
        help="kernel log to follow for every jail (overrides log_path/source)",
    )
    parser.add_argument("--state-dir", default=DEFAULT_STATE, help=f"default {DEFAULT_STATE}")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"default {DEFAULT_SOCKET}")
    parser.add_argument(
        "--dry-run", action="store_true", help="decide and log bans, touch no firewall"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and its filters, then exit",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="read logs from their beginning when no position is saved",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: logging.Handler | None = journal_handler()  # under systemd: structured
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EveryLineFormatter("blockerd: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    config_path = Path(args.config)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"blockerd: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        names = ", ".join(j.name for j in config.jails)
        print(
            f"config OK: {len(config.jails)} jail(s) ({names}), "
            f"{len(config.filters)} filter(s) in {config_path}"
        )
        return 0
    tune_gc()
    tune_malloc()  # before the tables grow: big blocks are mappings given back when freed
    try:
        daemon = Daemon(config, args)
    except (OSError, SourceError, StateError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return daemon.run()


class EveryLineFormatter(logging.Formatter):
    """Prefixes every line of a multi-line record, so journald files each as its own entry
    with its level (a batch of bans is logged as one record, one line per ban)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        prefix = self._fmt.split("%(message)s")[0] % record.__dict__ if self._fmt else ""
        first, *rest = text.split("\n")
        return "\n".join([first, *(prefix + line for line in rest)])


class Daemon:
    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.args = args
        self.selector = selectors.DefaultSelector()
        self.metrics: Metrics | None = None  # started in run(); observes bans from then on
        self.state = State(Path(args.state_dir), on_commit=self._observe_commit)
        backend_kind = "dry-run" if args.dry_run else config.firewall.backend
        self.backend = make_backend(backend_kind, config.firewall)
        self.sources: dict[SourceKey, Source | NflogSource] = {}
        self.source_errors: dict[SourceKey, str] = {}
        self._guard_warned: dict[str, str] = {}
        self._source_levels: dict[SourceKey, frozenset[int]] = {}
        # The fleet first: its role and health go into the Service; its remote bans go to the
        # Service's ledger, through apply_remote, once both exist.
        self.fleet = (
            FleetWiring.open(config, self.state, self._apply_remote, self._wake)
            if config.fleet.url
            else None
        )
        self.service = Service(
            config,
            self.state,
            self.backend,
            own_addresses=host_addresses(),
            log_override=args.log,
            reload_config=lambda: load_config(Path(args.config)),
            live_peers=_open_live_peers(),
            source_health=self._source_health,
            fleet=self.fleet.role if self.fleet is not None else None,
            fleet_health=self.fleet.health if self.fleet is not None else None,
            after_ban=self._observe_bans,
        )
        self.control = ControlServer(
            args.socket, self.selector, lambda: self.service.handlers(time.time)
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signal)
        self.stopping = False
        self.reload_requested = False
        self._textfile_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._note_signal)
        signal.signal(signal.SIGINT, self._note_signal)
        signal.signal(signal.SIGHUP, self._note_signal)
        began = time.monotonic()
        now = time.time()
        metrics_config = self.service.config.metrics  # as at start: a reload keeps it
        if not self._start_metrics():
            return 1
        self.service.start(now)
        if self.fleet is not None:
            self.fleet.start()
        self._sync_sources()
        interval = self.service.config.firewall.rule_check_interval
        next_check = time.monotonic() + interval
        next_prune = time.monotonic()
        next_retry = time.monotonic() + SOURCE_RETRY
        textfile = metrics_config.textfile if self.metrics is not None else None
        next_textfile = time.monotonic() if textfile is not None else math.inf
        _sd_notify("READY=1\nSTATUS=following the kernel log")
        log.info(
            "ready in %.1f s (%d active ban(s)): %d jail(s), sources: %s",
            time.monotonic() - began,
            len(self.service.active),
            len(self.service.config.jails),
            ", ".join(map(source_label, self.sources)) or "none yet",
        )
        try:
            while not self.stopping:
                wake = min(
                    next_check,
                    next_retry,
                    next_textfile,
                    self.control.next_wake(),
                    self.fleet.due() if self.fleet is not None else math.inf,
                )
                for key, _ in self.selector.select(max(0.0, wake - time.monotonic())):
                    key.data()
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
                tick = time.monotonic()
                self.control.tick(tick)
                if tick >= next_check:
                    self.service.tick(time.time())
                    interval = self.service.config.firewall.rule_check_interval
                    next_check = tick + interval
                if tick >= next_retry:
                    self._sync_sources()
                    next_retry = tick + SOURCE_RETRY
                if tick >= next_prune:
                    self.service.prune(time.time())
                    next_prune = tick + PRUNE_EVERY
                self._commit_turn()
                if tick >= next_textfile and textfile is not None:
                    self._write_textfile(textfile)
                    next_textfile = tick + metrics_config.textfile_interval
        finally:
            _sd_notify("STOPPING=1")
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.metrics is not None:
            self.metrics.close()
        for key in list(self.sources):
            self._close_source(key, save=True)
        self.control.close()
        self.state.close()
        log.info("stopped; bans stay in the kernel with their timeouts")

    def _note_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def _commit_turn(self) -> None:
        """End of a loop turn: remote bans in (one transaction with their cursor), then the
        committed bans to share out to the fleet's writer."""
        if self.fleet is None:
            return
        with self.state.transaction():
            self.fleet.turn()
        self.fleet.hand_outbox()

    def _apply_remote(self, events: Sequence[FleetEvent], now: float) -> dict[str, int]:
        return self.service.apply_remote(events, now)

    def _observe_bans(self, read_at: float, bans: int) -> None:
        """The kernel took `bans` bans of lines read at `read_at`: the latency histogram.
        The metrics' HTTP thread reads what this thread counts, and takes no lock."""
        if self.metrics is not None:
            self.metrics.observe_bans(read_at, bans)

    def _observe_commit(self, seconds: float) -> None:
        """A COMMIT took `seconds`: the metrics' commit histogram, once they run."""
        if self.metrics is not None:
            self.metrics.observe_commit(seconds)

    def _wake(self) -> None:
        """Called from the fleet's threads: make select() return."""
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._wake_w.send(b"f")

    def _on_signal(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reload(self) -> None:
        _sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            log.info("%s", self.service.reload(time.time()))
        except Exception as exc:  # the running configuration stays: report, never die
            log.error("%s", exc)
        if self.fleet is not None:
            self.fleet.reconfigure(self.service.config)
        self._sync_sources()
        _sd_notify("READY=1")

    # -- sources ---------------------------------------------------------------------------
    def _sync_sources(self) -> None:
        """Open a source per (kind, path) the jails need; close the ones no jail needs, and
        reopen (from its saved position) one whose jails changed their log_level."""
        wanted = {
            key: frozenset(r.jail.log_level for r in runners)
            for key, runners in self.service.groups.items()
        }
        for key in [k for k in self.sources if wanted.get(k) != self._source_levels.get(k)]:
            self._close_source(key, save=True)
        for key in wanted.keys() - set(self.sources):
            kind, path = key
            levels = wanted[key]
            try:
                source = open_source(
                    kind,
                    path,
                    self.state.position(source_label(key)),
                    from_start=self.args.from_start,
                    levels=levels,
                )
            except (OSError, SourceError) as exc:
                if self.source_errors.get(key) != str(exc):
                    log.error(
                        "source %s unavailable (retrying every %gs): %s",
                        source_label(key),
                        SOURCE_RETRY,
                        exc,
                    )
                self.source_errors[key] = str(exc)
                continue
            self.source_errors.pop(key, None)
            self.sources[key] = source
            self._source_levels[key] = levels
            self.selector.register(
                source.fileno(), selectors.EVENT_READ, lambda k=key: self._on_source(k)
            )
            log.info("following %s", source.name)
            if source.name.startswith("kernlog:"):
                self._check_rsyslog_guard(source.name, levels)
            # Save where we start at once: a crash before the first line must resume here,
            # not at a later end of the file.
            self._save_position(key, source)
            self._on_source(key)  # lines already waiting

    def _check_rsyslog_guard(self, name: str, levels: frozenset[int]) -> None:
        """Warn (once per source and reason) when nothing keeps forged lines out of kern.log."""
        reason = unguarded_reason(levels)
        if reason is not None and self._guard_warned.get(name) != reason:
            log.warning(
                "%s is not guarded by blocker's rsyslog drop-in, so local users may "
                "forge LOG lines in it (see README, 'Only the kernel can write'): %s",
                name,
                reason,
            )
        self._guard_warned[name] = reason or ""

    def _on_source(self, key: SourceKey) -> None:
        source = self.sources.get(key)
        if source is None:
            return
        if isinstance(source, NflogSource):  # packets, not lines; nothing to resume from
            now = time.time()
            records = source.read_records(now)
            if records:
                self.service.handle_records(key, records, now)
            return
        try:
            lines = source.read()
        except (OSError, SourceError) as exc:
            log.error("source %s failed, reopening: %s", source.name, exc)
            self._close_source(key, save=True)
            self.source_errors[key] = str(exc)
            return
        if lines:
            # The bans these lines caused and the position after them: both or neither.
            with self.state.transaction():
                self.service.handle_lines(key, lines, time.time())
                self._save_position(key, source)

    def _close_source(self, key: SourceKey, save: bool) -> None:
        source = self.sources.pop(key)
        self._source_levels.pop(key, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(source.fileno())
        if save:
            self._save_position(key, source)
        source.close()

    def _save_position(self, key: SourceKey, source: Source | NflogSource) -> None:
        position = source.position()
        if position is not None:  # in the caller's transaction, if it opened one
            self.state.save_position(source_label(key), position)

    def _start_metrics(self) -> bool:
        config = self.service.config.metrics
        try:
            self.metrics = start_metrics(config, self.service, self._source_reports)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%s: %s", *config.listen or ("", ""), exc)
            return False
        if config.listen is not None:
            log.info("metrics on http://%s/metrics", _host_port(*config.listen))
        return True

    def _write_textfile(self, path: str) -> None:
        assert self.metrics is not None
        try:
            self.metrics.write_textfile(path)
        except OSError as exc:
            if self._textfile_error != str(exc):  # once per kind of failure, not per interval
                log.error("cannot write the metrics file %s: %s", path, exc)
            self._textfile_error = str(exc)
        else:
            if self._textfile_error is not None:
                log.info("writing the metrics file %s again", path)
            self._textfile_error = None

    def _source_reports(self) -> list[tuple[SourceKey, dict[str, object]]]:
        """Each source's health, for the metrics thread: the dicts are copied in one C-level
        call each (atomic under the GIL) before they are walked."""
        reports = [(key, source.health()) for key, source in list(self.sources.items())]
        reports += [
            (key, {"state": "error", "error": error})
            for key, error in list(self.source_errors.items())
        ]
        return reports

    def _source_health(self) -> list[dict[str, object]]:
        """Per source: its own report, plus `status` (following, lagging, waiting, error),
        `behind_bytes` (kern.log: unread bytes) and `last_line_age` (seconds)."""
        health: list[dict[str, object]] = []
        now = time.time()
        last_line = self.service.activity.last_line
        for key, source in self.sources.items():
            report = source.health()
            behind = behind_bytes(report)
            state = report.get("state")
            status = (
                "error"
                if state == "error"
                else "waiting"
                if state == "waiting"
                else "lagging"
                if behind
                else "following"
            )
            seen = last_line.get(key)
            health.append(
                {
                    "source": source_label(key),
                    **report,
                    "status": status,
                    "behind_bytes": behind,
                    "last_line_age": None if seen is None else round(now - seen, 1),
                }
            )
        for key, error in self.source_errors.items():
            health.append(
                {"source": source_label(key), "state": "error", "status": "error", "error": error}
            )
        return health


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _open_live_peers() -> LivePeers | None:
    """conntrack, for spare_live_peers; without it every ban goes ahead (said once)."""
    try:
        return LivePeers()
    except ConntrackError as exc:
        log.warning("spare_live_peers is off: %s", exc)
        return None


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness; silent when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
