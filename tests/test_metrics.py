"""Prometheus metrics: a real blockerd scraped over HTTP and through its textfile, the figures
read back with prometheus_client's own parser."""

from __future__ import annotations

import math
import re
import socket
import time
import urllib.error
import urllib.request
from ipaddress import ip_network
from pathlib import Path

import pytest
from daemon_fixture import CONFIG, poll, running_blockerd
from fakes.backend import FakeBackend
from loglines import synack
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blocker import metrics as metrics_module
from blocker.config import ConfigError, load_config, parse_config
from blocker.metrics import BlockerCollector, Metrics, behind_bytes
from blocker.service import Service
from blocker.state import State

ATTACKERS = ("203.0.113.66", "198.51.100.7")
EXAMPLES = Path(__file__).resolve().parents[1] / "packaging" / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from exposition text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def value(
    figures: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return figures[name, tuple(sorted(labels.items()))]


def test_real_scrape_counts_lines_hits_bans_and_latency() -> None:
    port = free_port()
    config = CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    with running_blockerd(config) as daemon:
        url = f"http://127.0.0.1:{port}/metrics"
        before = samples(scrape(url))
        assert value(before, "blocker_lines_read_total") == 0
        now = time.time()
        lines = [synack(src, at=now - 5 + i) for src in ATTACKERS for i in range(5)]
        lines += [
            "Nov 22 02:04:54 host sshd[1]: not a LOG record",
            "Nov 22 02:04:54 host kernel: IN=eth0 OUT= SRC=203.0.113.9 DST=bogus LEN=40 "
            "TOS=0x00 PREC=0x00 TTL=64 ID=0 PROTO=TCP SPT=80 DPT=4 WINDOW=0 RES=0x00 "
            "ACK SYN URGP=0 ",
        ]
        daemon.append(lines)
        for attacker in ATTACKERS:
            daemon.wait_ban(attacker)
        source = f"kernlog:{daemon.log}"

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            figures = samples(scrape(url))
            done = value(figures, "blocker_lines_read_total") == len(lines)
            return figures if done else None

        figures = poll(settled, what="the lines to be counted")
        assert value(figures, "blocker_source_lines_total", source=source) == len(lines)
        assert value(figures, "blocker_records_parsed_total") == 10
        assert value(figures, "blocker_lines_unparsed_total") == 2
        assert value(figures, "blocker_records_malformed_total") == 1
        assert (
            value(figures, "blocker_hits_total", jail="probes", filter="unsolicited_synack") == 10
        )
        assert value(figures, "blocker_hits_total", jail="probes", filter="outgoing_rst") == 0
        assert value(figures, "blocker_bans_total", jail="probes", origin="auto") == 2
        assert value(figures, "blocker_active_bans", jail="probes") == 2
        assert value(figures, "blocker_set_entries", set="blocker4", family="ipv4") == 2
        assert value(figures, "blocker_set_entries", set="blocker6", family="ipv6") == 0
        assert value(figures, "blocker_tracked_sources", jail="probes") >= 0
        assert value(figures, "blocker_source_behind_bytes", source=source) == 0
        assert value(figures, "blocker_source_error", source=source) == 0
        assert 0 <= value(figures, "blocker_source_last_line_age_seconds", source=source) < 60
        assert value(figures, "blocker_ban_latency_seconds_count") == 2
        assert value(figures, "blocker_ban_latency_seconds_bucket", le="+Inf") == 2
        assert 0 <= value(figures, "blocker_ban_latency_seconds_sum") < 10
        assert value(figures, "blocker_state_commit_seconds_count") >= 1
        assert value(figures, "blocker_firewall_check_ok") == 1
        assert value(figures, "blocker_firewall_repairs_total", kind="rule") == 0
        assert value(figures, "process_resident_memory_bytes") > 1_000_000
        assert value(figures, "process_open_fds") > 3
        assert value(figures, "blocker_up_seconds") >= 0
        # No address is a label anywhere: the series are bounded by the configuration.
        text = scrape(url)
        assert not any(attacker in text for attacker in ATTACKERS)
        # The shipped dashboard and alert rules only name series that really exist.
        exported = {name for name, _ in figures}
        for example in ("blocker-dashboard.json", "blocker-alerts.yml"):
            named = set(
                re.findall(
                    r"\b((?:blocker|process)_[a-z0-9_]+)",
                    (EXAMPLES / example).read_text(encoding="utf-8"),
                )
            )
            assert named, example
            # Capacity comes from a kernel set's maxelem: the dry-run backend has none
            # (test_collector_with_a_kernel_backend checks it).
            assert named - {"blocker_set_capacity"} <= exported, (example, named - exported)

        assert daemon.ctl("ban", "198.51.100.99", "--for", "1h").code == 0
        assert daemon.ctl("unban", "198.51.100.99").code == 0

        def admin_counted() -> bool:
            figures = samples(scrape(url))  # a body is served again for up to a second
            return (
                figures.get(("blocker_unbans_total", (("jail", "probes"), ("origin", "admin"))))
                == 1
            )

        poll(admin_counted, what="the admin unban in the metrics")
        figures = samples(scrape(url))
        assert value(figures, "blocker_bans_total", jail="probes", origin="admin") == 1


def test_restored_bans_count_under_their_origin() -> None:
    port = free_port()
    config = CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    with running_blockerd(config) as daemon:
        now = time.time()
        daemon.append([synack(ATTACKERS[0], at=now - 5 + i) for i in range(5)])
        daemon.wait_ban(ATTACKERS[0])
        assert daemon.stop() == 0
        daemon.start()
        figures = samples(scrape(f"http://127.0.0.1:{port}/metrics"))
        assert value(figures, "blocker_bans_total", jail="probes", origin="restore") == 1
        assert ("blocker_bans_total", (("jail", "probes"), ("origin", "auto"))) not in figures


def test_ipv6_listen_address() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = int(sock.getsockname()[1])
    config = CONFIG + f'[metrics]\nlisten = "[::1]:{port}"\n'
    with running_blockerd(config) as daemon:
        text = scrape(f"http://[::1]:{port}/metrics")
        assert "blocker_lines_read_total 0.0" in text
        assert f"metrics on http://[::1]:{port}/metrics" in daemon.stderr()


def test_textfile_is_written_and_replaced(tmp_path: Path) -> None:
    target = tmp_path / "blocker.prom"
    config = CONFIG + f'[metrics]\ntextfile = "{target}"\ntextfile_interval = "1s"\n'
    with running_blockerd(config) as daemon:
        poll(target.exists, what="the metrics textfile")
        first = target.stat().st_ino
        now = time.time()
        daemon.append([synack(ATTACKERS[0], at=now - 5 + i) for i in range(5)])
        daemon.wait_ban(ATTACKERS[0])

        def banned() -> bool:
            figures = samples(target.read_text(encoding="utf-8"))
            key = ("blocker_bans_total", (("jail", "probes"), ("origin", "auto")))
            return figures.get(key) == 1

        poll(banned, what="the ban in the textfile")
        # Replaced by a rename, never rewritten in place: node-exporter never reads half.
        assert target.stat().st_ino != first
        assert [p.name for p in tmp_path.iterdir()] == ["blocker.prom"]


def test_unwritable_textfile_is_reported_and_the_daemon_runs(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "blocker.prom"
    config = CONFIG + f'[metrics]\ntextfile = "{target}"\ntextfile_interval = "1s"\n'
    with running_blockerd(config) as daemon:
        daemon.wait_log("cannot write the metrics file")
        now = time.time()
        daemon.append([synack(ATTACKERS[0], at=now - 5 + i) for i in range(5)])
        daemon.wait_ban(ATTACKERS[0])
        assert daemon.stderr().count("cannot write the metrics file") == 1


def test_listen_address_in_use_stops_the_start() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        config = CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        with running_blockerd(config, start=False) as daemon:
            daemon.start(wait=False)
            assert daemon.proc is not None
            assert daemon.proc.wait(timeout=30) == 1
            assert "cannot serve metrics on 127.0.0.1" in daemon.stderr()


def listening_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def test_metrics_are_off_by_default() -> None:
    with running_blockerd() as daemon:
        assert daemon.proc is not None
        fds = Path(f"/proc/{daemon.proc.pid}/fd")
        sockets = {
            link.removeprefix("socket:[").removesuffix("]")
            for link in (str(fd.readlink()) for fd in fds.iterdir())
            if link.startswith("socket:")
        }
        assert sockets  # the control socket at least
        assert not sockets & listening_inodes()  # no TCP listener: nothing serves /metrics
        assert "metrics on" not in daemon.stderr()


def test_behind_bytes_of_a_kernlog_report(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_bytes(b"x" * 100)
    inode = log.stat().st_ino
    report: dict[str, object] = {
        "kind": "kernlog",
        "path": str(log),
        "inode": inode,
        "offset": 40,
        "following_rotated_file": False,
    }
    assert behind_bytes(report) == 60
    assert behind_bytes({**report, "inode": inode + 1}) is None  # rotated: unknown
    assert behind_bytes({**report, "kind": "journald"}) is None
    assert behind_bytes({**report, "offset": None}) is None


@pytest.mark.parametrize("listen", ["127.0.0.1:0x10", "::1:9645", "[bogus]:9645", "h:70000"])
def test_bad_listen_values_are_config_errors(tmp_path: Path, listen: str) -> None:
    data = {
        "filters_dir": str(Path(__file__).resolve().parents[1] / "filters"),
        "metrics": {"listen": listen},
        "jails": {"probes": {"filters": ["unsolicited_synack"]}},
    }
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config(data, "jails.toml", tmp_path)


def test_collector_with_a_kernel_backend(tmp_path: Path) -> None:
    """Set fill against capacity, counted without a Python loop over the bans."""
    backend = FakeBackend()
    backend.maxelem = 1024  # type: ignore[attr-defined]  # what IpsetBackend has
    config_path = tmp_path / "jails.toml"
    config_path.write_text(CONFIG.replace('backend = "dry-run"\n', ""), encoding="utf-8")
    service = Service(load_config(config_path), State(tmp_path / "state"), backend)
    now = 1_000_000.0
    for i in range(25_000):  # more than one counting slice
        target = ip_network(f"2001:db8:a::{i + 1:x}/128")
        service.active.set(target, "probes", now + 600)
    target = ip_network("203.0.113.0/24")
    service.active.set(target, "probes", math.inf)
    registry = CollectorRegistry()
    registry.register(BlockerCollector(service, list, clock=lambda: now))
    figures = samples(generate_latest(registry).decode())
    assert value(figures, "blocker_set_capacity", set="blocker6", family="ipv6") == 1024
    assert value(figures, "blocker_set_entries", set="blocker6", family="ipv6") == 25_000
    assert value(figures, "blocker_set_entries", set="blocker4", family="ipv4") == 1
    assert value(figures, "blocker_active_bans", jail="probes") == 25_001


def in_process_metrics(tmp_path: Path) -> Metrics:
    config_path = tmp_path / "jails.toml"
    config_path.write_text(CONFIG, encoding="utf-8")
    service = Service(load_config(config_path), State(tmp_path / "state"), FakeBackend())
    return Metrics(service, list)


def test_textfile_replaces_a_planted_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n", encoding="utf-8")
    target = tmp_path / "blocker.prom"
    target.symlink_to(victim)
    metrics = in_process_metrics(tmp_path)
    metrics.write_textfile(str(target))
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not target.is_symlink()
    assert value(samples(target.read_text(encoding="utf-8")), "blocker_lines_read_total") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blocker.prom",
        "jails.toml",
        "state",
        "victim",
    ]


def test_an_idle_scrape_connection_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "HTTP_TIMEOUT", 0.5)
    metrics = in_process_metrics(tmp_path)
    host, port = metrics.serve("127.0.0.1", 0)
    try:
        with socket.create_connection((host, port), timeout=10) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - started < 9
        assert "blocker_up_seconds" in scrape(f"http://{host}:{port}/metrics")
    finally:
        metrics.close()


def test_scrapes_within_a_second_share_one_collection(tmp_path: Path) -> None:
    metrics = in_process_metrics(tmp_path)
    host, port = metrics.serve("127.0.0.1", 0)
    try:
        url = f"http://{host}:{port}/metrics"
        first, second = scrape(url), scrape(url)
        assert first == second  # process_cpu_seconds_total alone would differ otherwise
        time.sleep(metrics_module.COLLECT_EVERY + 0.1)
        assert scrape(url) != first
        with pytest.raises(urllib.error.HTTPError, match="404"):
            scrape(f"http://{host}:{port}/other")
    finally:
        metrics.close()
