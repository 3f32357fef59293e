"""CPU per record of the two ways into the pipeline, in this process, without a kernel.

    .venv/bin/python bench/profile_nflog.py [--packets 200000] [--cprofile 15]

  nflog    64-packet NFLOG datagrams (what the kernel sends for hping3's SYN/ACKs) ->
           the NFLOG source's decoder -> Pipeline.feed_records
  kernlog  the LOG lines of the same packets, in 1 MiB batches -> Pipeline.feed_lines
           (what the kern.log source hands the pipeline)

Shipped jails, one Pipeline per run, process CPU time (time.process_time): records per
CPU-second, best of three. `--cprofile N` prints the top N functions of the NFLOG path. The
figures are this process's only (no recv, no select loop): bench_nflog.py measures blockerd.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blocker import nflog_wire  # noqa: E402
from blocker.config import Config, load_config  # noqa: E402
from blocker.nflog_records import DatagramDecoder, Decoded  # noqa: E402
from blocker.pipeline import Pipeline, tune_gc  # noqa: E402

SPOOFED, SERVER = "198.51.100.7", "192.0.2.1"
NAMES = {2: "veth0"}


def synack(i: int) -> bytes:
    ip = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        40,
        i % 65536,
        0,
        64,
        6,
        0,
        socket.inet_aton(SPOOFED),
        socket.inet_aton(SERVER),
    )
    return ip + struct.pack(">HHIIBBHHH", 1024 + i % 64512, 443, 0, 0, 0x50, 0x12, 512, 0, 0)


def datagrams(count: int, now: float) -> list[bytes]:
    messages = [
        nflog_wire.packet_message(
            nflog_wire.NflogPacket(2, 5, 1, b"INVALID ", 2, 0, 0, now, synack(i))
        )
        for i in range(count)
    ]
    return [b"".join(messages[i : i + 64]) for i in range(0, count, 64)]


def line_batches(count: int) -> list[list[str]]:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    batches: list[list[str]] = [[]]
    size = 0
    for i in range(count):
        line = (
            f"{stamp} bench kernel: INVALID IN=veth0 OUT= MAC= SRC={SPOOFED} DST={SERVER} "
            f"LEN=40 TOS=0x00 PREC=0x00 TTL=64 ID={i % 65536} PROTO=TCP SPT={1024 + i % 64512} "
            "DPT=443 WINDOW=512 RES=0x00 ACK SYN URGP=0 "
        )
        if size + len(line) > 1 << 20:
            batches.append([])
            size = 0
        batches[-1].append(line)
        size += len(line) + 1
    return batches


def run_nflog(pipeline: Pipeline, data: list[bytes], now: float) -> None:
    decoder = DatagramDecoder()
    for datagram in data:
        decoded = Decoded()
        decoder.decode(datagram, NAMES.__getitem__, now, decoded)
        pipeline.feed_records(decoded.records)


def run_kernlog(pipeline: Pipeline, batches: list[list[str]], now: float) -> None:
    for batch in batches:
        pipeline.feed_lines(batch, now)


def per_cpu_second(config: Config, count: int, run: Callable[[Pipeline], None]) -> float:
    best = 0.0
    for _ in range(3):
        pipeline = Pipeline(config)
        start = time.process_time()
        run(pipeline)
        spent = time.process_time() - start
        assert pipeline.stats.parsed == count, pipeline.stats
        best = max(best, count / spent)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        config_text = (REPO / "jails.toml").read_text()
        config_text = config_text.replace(
            'filters_dir = "filters"', f'filters_dir = "{REPO / "filters"}"'
        )
        (Path(tmp) / "jails.toml").write_text(config_text)
        config = load_config(Path(tmp) / "jails.toml")
    data, batches = datagrams(args.packets, now), line_batches(args.packets)
    tune_gc()
    nflog = per_cpu_second(config, args.packets, lambda p: run_nflog(p, data, now))
    kernlog = per_cpu_second(config, args.packets, lambda p: run_kernlog(p, batches, now))
    print(f"nflog  : {nflog:,.0f} records per CPU-second ({1e6 / nflog:.2f} us each)")
    print(f"kernlog: {kernlog:,.0f} lines per CPU-second ({1e6 / kernlog:.2f} us each)")
    print(f"ratio  : {nflog / kernlog:.2f} (same run; this VM varies 20-30% between runs)")
    if args.cprofile:
        profile = cProfile.Profile()
        pipeline = Pipeline(config)
        profile.runcall(run_nflog, pipeline, data, now)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
