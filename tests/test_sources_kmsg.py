"""/dev/kmsg source: record parsing and filtering, scripted reads, and the real device as root."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blocker.sources import kmsg
from blocker.sources.base import MAX_LINE_BYTES, SourceError, SourceLine
from blocker.sources.kmsg import KmsgSource, RecordFilter, parse_kmsg_record

needs_root = pytest.mark.root("read and write /dev/kmsg")

# -- parsing and filtering (pure) ----------------------------------------------


def test_record_fields_and_continuation_lines() -> None:
    record = parse_kmsg_record(b"4,339,772435052,-;blk IN=vA OUT= SRC=192.0.2.2 \n SUBSYSTEM=net\n")
    assert record is not None
    assert (record.facility, record.level, record.seq, record.usec) == (0, 4, 339, 772435052)
    assert record.message == "blk IN=vA OUT= SRC=192.0.2.2 "


def test_record_with_extra_header_fields() -> None:
    record = parse_kmsg_record(b"14,7,100,-,caller=T1;hello\n")
    assert record is not None
    assert (record.facility, record.level, record.message) == (1, 6, "hello")


@pytest.mark.parametrize(
    "raw",
    [b"", b"no header\n", b"4,1,2;too few fields\n", b"x,1,2,-;bad pri\n", b"4,-1,2,-;neg\n"],
)
def test_malformed_records(raw: bytes) -> None:
    assert parse_kmsg_record(raw) is None


def test_record_text_is_cut_and_decoded_with_replacement() -> None:
    record = parse_kmsg_record(b"6,1,2,-;\xff" + b"a" * (2 * MAX_LINE_BYTES) + b"\n")
    assert record is not None
    assert record.message.startswith("\ufffdaaa")
    assert len(record.message) == MAX_LINE_BYTES


def test_filter_accepts_facility_zero_only() -> None:
    records = RecordFilter(boot_time=1000.0)
    assert records.take(b"4,1,2500000,-;kernel line\n") == SourceLine("kernel line", 1002.5)
    assert records.take(b"12,2,1,-;user write, facility 1\n") is None
    assert records.take(b"38,3,1,-;auth facility\n") is None
    assert records.take(b"garbage") is None
    assert (records.rejected, records.malformed, records.lost) == (2, 1, 0)


def test_filter_skips_records_seen_before_a_restart_and_counts_gaps() -> None:
    records = RecordFilter(boot_time=0.0, last_seq=10)
    assert records.take(b"4,9,1,-;seen\n") is None
    assert records.take(b"4,10,1,-;seen\n") is None
    assert records.take(b"4,11,1,-;new\n") == SourceLine("new", 1e-6)
    assert records.take(b"4,15,1,-;after a gap\n") is not None
    assert (records.skipped, records.lost, records.last_seq) == (2, 3, 15)


# -- read() with scripted records (no device needed) ---------------------------


@pytest.fixture
def boot_id_file(tmp_path: Path) -> Path:
    path = tmp_path / "boot_id"
    path.write_text("11111111-2222-3333-4444-555555555555\n")
    return path


def scripted(monkeypatch: pytest.MonkeyPatch, steps: list[bytes | OSError]) -> None:
    pending = list(steps)

    def read_record(fd: int) -> bytes:
        step = pending.pop(0) if pending else BlockingIOError()
        if isinstance(step, OSError):
            raise step
        return step

    monkeypatch.setattr(kmsg, "read_record", read_record)


def test_overwritten_records_are_counted_and_reading_goes_on(
    monkeypatch: pytest.MonkeyPatch, boot_id_file: Path
) -> None:
    source = KmsgSource(device=os.devnull, boot_id_path=str(boot_id_file))
    scripted(
        monkeypatch,
        [b"4,1,0,-;one\n", BrokenPipeError(), b"4,5,0,-;five\n", b"12,6,0,-;user\n"],
    )
    try:
        assert [line.text for line in source.read()] == ["one", "five"]
        health = source.health()
        assert (health["overruns"], health["lost_records"]) == (1, 3)
        assert health["rejected_not_kernel"] == 1
        assert source.position() == {"seq": 6, "boot_id": "11111111-2222-3333-4444-555555555555"}
    finally:
        source.close()


def test_read_error_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, boot_id_file: Path
) -> None:
    source = KmsgSource(device=os.devnull, boot_id_path=str(boot_id_file))
    scripted(monkeypatch, [OSError(5, "Input/output error")])
    try:
        assert source.read() == []
        assert source.health()["state"] == "error"
        assert "Input/output error" in str(source.health()["last_error"])
    finally:
        source.close()


def test_saved_position_is_used_only_on_the_same_boot(
    monkeypatch: pytest.MonkeyPatch, boot_id_file: Path
) -> None:
    same = {"seq": 7, "boot_id": "11111111-2222-3333-4444-555555555555"}
    source = KmsgSource(start=same, device=os.devnull, boot_id_path=str(boot_id_file))
    scripted(monkeypatch, [b"4,7,0,-;old\n", b"4,8,0,-;new\n"])
    try:
        assert source.health()["start"] == "resumed after seq 7"
        assert [line.text for line in source.read()] == ["new"]
    finally:
        source.close()

    other = {"seq": 7, "boot_id": "another"}
    source = KmsgSource(start=other, device=os.devnull, boot_id_path=str(boot_id_file))
    scripted(monkeypatch, [b"4,0,0,-;first of this boot\n", b"4,1,0,-;second\n"])
    try:
        assert source.health()["start"] == (
            "start of ring buffer (saved position is from an earlier boot)"
        )
        # The saved seq (7) belongs to the old boot: nothing of this one is skipped.
        assert [line.text for line in source.read()] == ["first of this boot", "second"]
    finally:
        source.close()

    source = KmsgSource(
        start=same, device=os.devnull, boot_id_path=str(boot_id_file.parent / "missing")
    )
    try:
        assert source.health()["start"] == "end of ring buffer (boot id unreadable)"
    finally:
        source.close()


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="No such file"):
        KmsgSource(device=str(tmp_path / "kmsg"))


# -- the real /dev/kmsg ----------------------------------------------------------


def raw_records_until(fd: int, marker: bytes) -> bytes:
    """Raw /dev/kmsg records read from `fd` until one holds `marker` (bounded)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        select.select([fd], [], [], 0.5)
        try:
            raw = os.read(fd, 8192)
        except BlockingIOError:
            continue
        if marker in raw:
            return raw
    raise AssertionError(f"{marker!r} never appeared in /dev/kmsg")


def write_kmsg(data: bytes) -> None:
    """One record written to /dev/kmsg as a user process does."""
    writer = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(writer, data)
    finally:
        os.close(writer)


def read_until_seq(source: KmsgSource, seq: int) -> list[SourceLine]:
    got: list[SourceLine] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        last = source.health()["last_seq"]
        if isinstance(last, int) and last >= seq:
            break
        if select.select([source.fileno()], [], [], 0.5)[0]:
            got += source.read()
    return got


@pytest.fixture
def raw_kmsg() -> Iterator[int]:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)
    try:
        yield fd
    finally:
        os.close(fd)


@needs_root
def test_real_user_write_is_read_but_not_taken_as_kernel(raw_kmsg: int) -> None:
    marker = f"blocker-test {uuid.uuid4().hex}".encode()
    source = KmsgSource()
    try:
        # Asks for facility 0 (kernel) at level 4; the kernel must turn it into LOG_USER.
        write_kmsg(b"<4>" + marker + b" IN=eth0 SRC=192.0.2.7 DST=192.0.2.1\n")
        record = parse_kmsg_record(raw_records_until(raw_kmsg, marker))
        assert record is not None
        assert (record.facility, record.level) == (1, 4)

        lines = read_until_seq(source, record.seq)
        assert int(str(source.health()["last_seq"])) >= record.seq  # it was read
        assert not [line for line in lines if marker.decode() in line.text]
        assert int(str(source.health()["rejected_not_kernel"])) >= 1
    finally:
        source.close()


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces on one veth link, 192.0.2.1 (server) and 192.0.2.2 (client)."""
    server, client = f"blk-{uuid.uuid4().hex[:8]}", f"blk-{uuid.uuid4().hex[:8]}"
    sysctl = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    before = sysctl.read_text().strip()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=20)

    try:
        run("ip", "netns", "add", server)
        run("ip", "netns", "add", client)
        run("ip", "link", "add", "v0", "netns", server, "type", "veth", "peer", "name", "v1",
            "netns", client)  # fmt: skip
        run("ip", "-n", server, "addr", "add", "192.0.2.1/24", "dev", "v0")
        run("ip", "-n", client, "addr", "add", "192.0.2.2/24", "dev", "v1")
        run("ip", "-n", server, "link", "set", "v0", "up")
        run("ip", "-n", client, "link", "set", "v1", "up")
        # Netfilter LOG in a non-initial namespace reaches the kernel log only with this.
        sysctl.write_text("1\n")
        yield server, client
    finally:
        sysctl.write_text(before + "\n")
        for name in (server, client):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@needs_root
def test_real_netfilter_log_line_is_a_kernel_line(
    netns_pair: tuple[str, str], raw_kmsg: int
) -> None:
    server, client = netns_pair
    prefix = f"blk-{uuid.uuid4().hex[:8]} "
    subprocess.run(
        ["ip", "netns", "exec", server, "iptables", "-A", "INPUT", "-j", "LOG",
         "--log-prefix", prefix],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    source = KmsgSource()
    try:
        send = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(b'x', ('192.0.2.1', 9))"
        )
        subprocess.run(
            ["ip", "netns", "exec", client, sys.executable, "-c", send],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
        record = parse_kmsg_record(raw_records_until(raw_kmsg, prefix.encode()))
        assert record is not None
        assert record.facility == 0

        lines = [line for line in read_until_seq(source, record.seq) if prefix in line.text]
        assert len(lines) == 1
        assert "SRC=192.0.2.2 DST=192.0.2.1" in lines[0].text
        assert lines[0].time is not None
        assert abs(lines[0].time - time.time()) < 300  # boot time + usec is wall-clock time
    finally:
        source.close()


@needs_root
def test_real_start_after_a_reboot_reads_the_whole_ring_buffer(
    raw_kmsg: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"blocker-test {uuid.uuid4().hex}".encode()
    write_kmsg(b"<6>" + marker + b"\n")  # logged before blockerd starts on the "new boot"
    record = parse_kmsg_record(raw_records_until(raw_kmsg, marker))
    assert record is not None
    seen: list[bytes] = []
    real_read = kmsg.read_record

    def read_record(fd: int) -> bytes:
        seen.append(real_read(fd))
        return seen[-1]

    monkeypatch.setattr(kmsg, "read_record", read_record)
    source = KmsgSource(start={"seq": record.seq + 10**6, "boot_id": "an-earlier-boot"})
    try:
        assert str(source.health()["start"]).startswith("start of ring buffer")
        read_until_seq(source, record.seq)
        assert any(marker in raw for raw in seen)  # written before the source was opened
    finally:
        source.close()


@needs_root
def test_real_restart_from_saved_seq_skips_what_was_read(raw_kmsg: int) -> None:
    source = KmsgSource(from_start=True)
    try:
        while select.select([source.fileno()], [], [], 0)[0] and source.read():
            pass
        saved = source.position()
    finally:
        source.close()
    assert saved is not None

    marker = f"blocker-test {uuid.uuid4().hex}".encode()
    write_kmsg(b"<6>" + marker + b"\n")
    record = parse_kmsg_record(raw_records_until(raw_kmsg, marker))
    assert record is not None

    resumed = KmsgSource(start=saved)
    try:
        assert str(resumed.health()["start"]).startswith("resumed after seq")
        read_until_seq(resumed, record.seq)
        health = resumed.health()
        assert int(str(health["skipped_on_resume"])) > 0
        assert health["lost_records"] == 0
    finally:
        resumed.close()
