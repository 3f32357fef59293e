"""CPU per remote ban on the daemon's side of a fleet, without Redis: root; prints figures.

    sudo .venv/bin/python bench/profile_fleet_apply.py [--bans 100000] [--profile]

In a network namespace of its own, a Service on the ipset backend (real kernel sets) as
blockerd builds it; --bans signed events of distinct IPv6 addresses as one stream would carry
them: `decode` is the reader thread's share (HMAC, JSON, every field checked), `apply` the
daemon's (the inbox's slices of 2,000, the gate, the kernel, ActiveBans, scorers, state), as
wall time and as CPU time of this process (user + system: the kernel's ipset work counts).
--repo DIR measures another checkout's blocker/ (e.g. main's worktree) with this script.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
import uuid
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from netns_rerun import rerun_in_netns

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY = b"profile-fleet-apply-key-0123456789"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the apply")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose blocker/ to measure"
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("profile_fleet_apply: needs root (network namespace, ipset)", file=sys.stderr)
        return 1
    if not args.inner:
        return rerun_in_netns("blkbench", __file__)
    # The imports below come after sys.path is set, inside the namespace.
    sys.path.insert(0, str(args.repo))
    from blocker.config import load_config  # noqa: PLC0415
    from blocker.firewall.factory import make_backend  # noqa: PLC0415
    from blocker.fleet.events import FleetEvent, decode, entry  # noqa: PLC0415
    from blocker.fleet.inbox import Inbox  # noqa: PLC0415
    from blocker.fleet_role import FleetRole  # noqa: PLC0415
    from blocker.host import host_addresses  # noqa: PLC0415
    from blocker.live_peers import LivePeers  # noqa: PLC0415
    from blocker.service import Service  # noqa: PLC0415
    from blocker.state import State  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="blkfa-") as tmp:
        work = Path(tmp)
        logging.basicConfig(filename=work / "log", level=logging.INFO)  # as blockerd logs
        tag = uuid.uuid4().hex[:6]
        (work / "jails.toml").write_text(
            f'filters_dir = "{args.repo / "filters"}"\n[firewall]\nset_v4 = "fa4-{tag}"\n'
            f'set_v6 = "fa6-{tag}"\n[defaults]\nsource = "kernlog"\n'
            '[jails.probes]\nfilters = ["unsolicited_synack"]\n'
        )
        config = load_config(work / "jails.toml")
        state = State(work / "state")
        backend = make_backend("ipset", config.firewall)
        service = Service(
            config,
            state,
            backend,
            own_addresses=host_addresses(),
            live_peers=LivePeers(),
            fleet=FleetRole("here", frozenset(), accept=True),
        )
        try:
            service.start(time.time())
            now = time.time()
            base = int(IPv6Address("2001:db8:7::"))
            events = [
                FleetEvent(
                    "ban", uuid.uuid4().hex, "there", IPv6Network((base + i, 128)),
                    "probes", now, now + 3600, "profile",
                )
                for i in range(1, args.bans + 1)
            ]  # fmt: skip
            entries = [entry(KEY, events[i : i + 500]) for i in range(0, len(events), 500)]
            began, cpu = time.perf_counter(), time.process_time()
            decoded = [e for fields in entries for e in decode(KEY, fields, "here")]
            report("decode", began, cpu, len(decoded))
            inbox = Inbox(10**9)
            inbox.add([("", e) for e in decoded if not isinstance(e, str)])
            profiler = cProfile.Profile() if args.profile else None
            began, cpu = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            while len(inbox):
                taken = inbox.take(time.monotonic())
                with state.transaction():
                    service.apply_remote(taken.events, time.time())
            if profiler is not None:
                profiler.disable()
            report("apply", began, cpu, len(service.active))
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("cumtime").print_stats(30)
        finally:
            backend.teardown()
            state.close()
    return 0


def report(what: str, began: float, cpu: float, count: int) -> None:
    wall = time.perf_counter() - began
    used = time.process_time() - cpu
    print(
        f"{what:7} {count:,} bans: {wall:.2f} s wall, {wall / count * 1e6:.1f} us/ban; "
        f"CPU {used:.2f} s, {used / count * 1e6:.1f} us/ban "
        f"(load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    sys.exit(main())
