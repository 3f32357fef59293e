"""Prometheus metrics of blockerd: an HTTP /metrics endpoint and/or a node-exporter textfile.

Nothing here runs per line. The daemon counts in the structures it already keeps (the
pipeline's LineStats and hit counts, Service.activity, the sources' health) and a custom
collector turns them into metric families when someone scrapes. The HTTP server answers from
its own thread: collection there takes no lock the ban path waits for; it copies each shared
dict or list in one C-level call (atomic under the GIL) and reads the copy, and it runs at most
once a second however often /metrics is fetched (the body is served again in between). Only
the two histograms (ban latency, sqlite commit time) are prometheus_client objects, observed
per ban (after the kernel acknowledged its batch) and per commit.

Labels are jail, filter, source, set and fixed words (origin, repair kind): no address, so
the number of series is bounded by the configuration.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blocker.activity import SourceKey
from blocker.config import MetricsConfig
from blocker.firewall.base import Backend
from blocker.running_jails import source_label
from blocker.service import Service
from blocker.version import version

# Ban latency (line read -> kernel ack) buckets: a healthy daemon answers in milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# (source key, its health report), as the daemon sees them at the time of the call.
HTTP_TIMEOUT = 10.0  # seconds a scrape connection may sit idle
COLLECT_EVERY = 1.0  # seconds a collected scrape body is served again
SourceHealth = Callable[[], list[tuple[SourceKey, dict[str, object]]]]


class BlockerCollector(Collector):
    """Builds every blocker_ family from the daemon's own counters at scrape time."""

    def __init__(
        self, service: Service, sources: SourceHealth, clock: Callable[[], float] = time.time
    ) -> None:
        self.service = service
        self.sources = sources
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        service = self.service
        now = self.clock()
        pipeline = service.pipeline  # a reload swaps it whole: keep the one we read
        activity = service.activity
        stats = pipeline.stats
        yield _gauge("blocker_up_seconds", "seconds since blockerd started", now - service.started)
        info = GaugeMetricFamily("blocker_build_info", "blocker's version", labels=["version"])
        info.add_metric([version()], 1)
        yield info
        yield _counter("blocker_lines_read", "lines read from every source", stats.lines)
        yield _counter("blocker_records_parsed", "netfilter LOG records parsed", stats.parsed)
        yield _counter(
            "blocker_lines_unparsed",
            "lines that were not a valid LOG record (malformed included)",
            stats.unparsed,
        )
        yield _counter(
            "blocker_records_malformed",
            "lines that started a LOG record but were refused",
            stats.malformed,
        )
        yield from self._sources(now, dict(activity.lines), dict(activity.last_line))
        hits = CounterMetricFamily(
            "blocker_hits", "packets a filter matched, per jail", labels=["jail", "filter"]
        )
        for key, count in pipeline.hit_counts().items():
            jail, name = key.split("/", 1)
            hits.add_metric([jail, name], count)
        yield hits
        yield _labelled_counter(
            "blocker_bans",
            "bans issued, per jail and origin (auto, admin, restore, fleet)",
            ["jail", "origin"],
            dict(activity.bans),
        )
        yield _labelled_counter(
            "blocker_unbans",
            "bans lifted, per jail and origin (admin, expired)",
            ["jail", "origin"],
            dict(activity.unbans),
        )
        yield from self._bans(now)
        repairs = CounterMetricFamily(
            "blocker_firewall_repairs",
            "INPUT rules and sets put back by the periodic check",
            labels=["kind"],
        )
        counts = dict(activity.repairs)
        for kind in ("rule", "set", "duplicate_rule"):
            repairs.add_metric([kind], counts.get(kind, 0))
        yield repairs
        yield _gauge(
            "blocker_firewall_check_ok",
            "1 when the last check of the rules and sets succeeded",
            1.0 if activity.firewall_ok else 0.0,
        )
        yield _counter(
            "blocker_firewall_check_failures",
            "periodic rule and set checks that failed",
            activity.firewall_failures,
        )

    def _sources(
        self, now: float, lines: dict[SourceKey, int], last_line: dict[SourceKey, float]
    ) -> Iterator[Metric]:
        read = CounterMetricFamily(
            "blocker_source_lines", "lines read, per source", labels=["source"]
        )
        age = GaugeMetricFamily(
            "blocker_source_last_line_age_seconds",
            "seconds since the source gave its last line",
            labels=["source"],
        )
        behind = GaugeMetricFamily(
            "blocker_source_behind_bytes",
            "bytes written to the log file and not yet read (kern.log)",
            labels=["source"],
        )
        error = GaugeMetricFamily(
            "blocker_source_error",
            "1 when the source is failing or cannot be opened",
            labels=["source"],
        )
        health = dict(self.sources())
        for key in sorted({*self.service.groups, *health}):
            label = source_label(key)
            read.add_metric([label], lines.get(key, 0))
            if key in last_line:
                age.add_metric([label], max(0.0, now - last_line[key]))
            report = health.get(key, {"state": "error"})
            error.add_metric([label], 1.0 if report.get("state") == "error" else 0.0)
            lag = behind_bytes(report)
            if lag is not None:
                behind.add_metric([label], lag)
        yield from (read, age, behind, error)

    def _bans(self, now: float) -> Iterator[Metric]:
        service = self.service
        # Bans past their expiry are dropped at the next firewall check, as the kernel drops
        # them at their timeout: counted until then.
        per_family = service.active.family_counts()
        active = GaugeMetricFamily(
            "blocker_active_bans", "bans in force, per jail", labels=["jail"]
        )
        tracked = GaugeMetricFamily(
            "blocker_tracked_sources", "addresses with a live score, per jail", labels=["jail"]
        )
        for runner in list(service.pipeline.runners):
            active.add_metric([runner.jail.name], service.active.count(runner.jail.name))
            tracked.add_metric([runner.jail.name], runner.scorer.tracked_count())
        yield active
        yield tracked
        firewall = service.config.firewall
        names = {4: firewall.set_v4, 6: firewall.set_v6}
        entries = GaugeMetricFamily(
            "blocker_set_entries", "bans blocker holds in each kernel set", labels=["set", "family"]
        )
        capacity = GaugeMetricFamily(
            "blocker_set_capacity",
            "entries each kernel set can hold (maxelem)",
            labels=["set", "family"],
        )
        maxelem = set_capacity(service.backend)
        for family, name in names.items():
            entries.add_metric([name, f"ipv{family}"], per_family[family])
            if maxelem is not None:
                capacity.add_metric([name, f"ipv{family}"], maxelem)
        yield entries
        yield capacity


def behind_bytes(report: dict[str, object]) -> int | None:
    """How far a kern.log follower is from the end of its file; None when unknown."""
    path, inode, offset = report.get("path"), report.get("inode"), report.get("offset")
    if (
        report.get("kind") != "kernlog"
        or not isinstance(path, str)
        or not isinstance(offset, int)
        or report.get("following_rotated_file")
    ):
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if info.st_ino != inode:
        return None  # rotated under us: the follower finds the new file itself
    return max(0, info.st_size - offset)


def set_capacity(backend: Backend) -> int | None:
    maxelem = getattr(backend, "maxelem", None)
    return maxelem if isinstance(maxelem, int) else None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, count in sorted(values.items()):
        family.add_metric(list(key), count)
    return family


class Metrics:
    """The registry, the two histograms, and where they are published."""

    def __init__(
        self, service: Service, sources: SourceHealth, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.clock = clock
        self.ban_latency = Histogram(
            "blocker_ban_latency_seconds",
            "from reading the line that caused a ban to the kernel's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_time = Histogram(
            "blocker_state_commit_seconds",
            "sqlite COMMIT duration",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(BlockerCollector(service, sources, clock))
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)  # RSS, CPU, fds; Python version; GC
        self._server: ThreadingHTTPServer | None = None
        self._collect_lock = threading.Lock()  # HTTP threads only; the daemon never takes it
        self._body: bytes | None = None
        self._collected = 0.0
        self._thread: threading.Thread | None = None

    def observe_commit(self, seconds: float) -> None:
        self.commit_time.observe(seconds)

    def observe_bans(self, read_at: float, bans: int) -> None:
        latency = max(0.0, self.clock() - read_at)
        for _ in range(bans):
            self.ban_latency.observe(latency)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve /metrics from a daemon thread; returns the bound address. Raises OSError."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        metrics = self

        class Handler(BaseHTTPRequestHandler):
            timeout = HTTP_TIMEOUT  # an idle or slow client does not keep its thread

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape is not worth a log line

        server = Server((host, port), Handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def exposition(self) -> bytes:
        """The scrape body, collected at most once per COLLECT_EVERY seconds: however often
        anyone scrapes (any local user can reach a loopback port), collection takes at most
        a few ms of the GIL per second away from the ban path."""
        with self._collect_lock:
            now = time.monotonic()
            if self._body is None or now - self._collected >= COLLECT_EVERY:
                self._body = generate_latest(self.registry)
                self._collected = now
            return self._body

    def write_textfile(self, path: str) -> None:
        """Replace `path` atomically with the current figures. Raises OSError.

        Not prometheus_client's write_to_textfile(): its temporary name is predictable and
        opened following symlinks, and the textfile directory often belongs to another user
        (prometheus); a root daemon must not write through a link planted there."""
        data = generate_latest(self.registry)
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}")
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)  # a rename replaces a link, never writes through it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def start(config: MetricsConfig, service: Service, sources: SourceHealth) -> Metrics | None:
    """Metrics as configured, or None when [metrics] turns them off. Raises OSError when the
    listen address cannot be bound."""
    if not config.enabled:
        return None
    metrics = Metrics(service, sources)
    if config.listen is not None:
        try:
            metrics.serve(*config.listen)
        except OSError:
            metrics.close()
            raise
    return metrics
