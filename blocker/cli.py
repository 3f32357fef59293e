"""blockerctl: talk to blockerd over its Unix socket, or replay a log offline (`test`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blocker.commands import (
    BanRequest,
    ExplainRequest,
    ListedBan,
    ListRequest,
    ReloadRequest,
    Request,
    StatusRequest,
    UnbanRequest,
    iso_time,
)
from blocker.config import ConfigError, duration, load_config
from blocker.control import DEFAULT_SOCKET, ControlError, request
from blocker.replay import ReplayResult, replay_file

DEFAULT_CONFIG = "/etc/blocker/jails.toml"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockerctl",
        description="Control blockerd, or replay a kernel log offline through the jails.",
    )
    parser.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help=f"blockerd's control socket (default {DEFAULT_SOCKET})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("status", help="per jail: hits, tracked addresses, active bans; sources")
    listing = commands.add_parser("list", help="active bans")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    ban = commands.add_parser("ban", help="ban an address or network now")
    ban.add_argument("target", metavar="ADDR|CIDR")
    ban.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="e.g. 3600, 90s, 10m, 1h, 7d, permanent (default: the jail's ban_time)",
    )
    ban.add_argument("--jail", help="jail to record the ban under (default: the first jail)")
    unban = commands.add_parser("unban", help="lift a ban at once and reset that score")
    unban.add_argument("target", metavar="ADDR|CIDR")
    commands.add_parser("reload", help="re-read the configuration, keeping bans")
    explain = commands.add_parser("explain", help="score, recent hits and ban state of an address")
    explain.add_argument("address", metavar="ADDR")
    test = commands.add_parser(
        "test", help="replay LOG offline through the jails: hits, bans it would issue"
    )
    test.add_argument("log", metavar="LOG", help="kernel log file (kern.log, journalctl -k, dmesg)")
    test.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"jails.toml (default {DEFAULT_CONFIG})"
    )
    test.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _test(args) if args.command == "test" else _remote(args)
    except BrokenPipeError:
        # `blockerctl test LOG | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        print(f"blockerctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = replay_file(Path(args.log), config)
    except OSError as exc:
        print(f"blockerctl: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(_test_report(args.log, result))
    return EXIT_OK


def _test_report(path: str, result: ReplayResult) -> str:
    data = result.to_json()
    out = [
        f"{path}:",
        f"  lines {data['lines']}, parsed {data['parsed']}, unparsed {data['unparsed']} "
        f"(of which malformed LOG records: {data['malformed']})",
        f"  hits {data['hits']}:",
    ]
    hits = data["hits_by_filter"]
    assert isinstance(hits, dict)
    out += [f"    {name:40} {count}" for name, count in hits.items()] or ["    (none)"]
    out.append(f"  bans {len(result.decisions)}:")
    for decision in result.decisions:
        span = "permanent" if math.isinf(decision.duration) else _span(decision.duration)
        out.append(
            f"    {decision.target_text:24} {decision.jail:10} {span:>9}  "
            f"{iso_time(decision.at)}  {decision.reason}"
        )
    if not result.decisions:
        out.append("    (none)")
    return "\n".join(out)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _remote(args: argparse.Namespace) -> int:
    command: Request
    if args.command == "ban":
        seconds = None
        if args.duration is not None:
            try:
                seconds = duration(args.duration, "--for", "DURATION", permanent_ok=True)
            except ConfigError as exc:
                print(f"blockerctl: --for: {exc.reason}", file=sys.stderr)
                return EXIT_USAGE
        command = BanRequest(args.target, seconds, args.jail or None)
    elif args.command == "unban":
        command = UnbanRequest(args.target)
    elif args.command == "explain":
        command = ExplainRequest(args.address)
    elif args.command == "list":
        command = ListRequest()
    elif args.command == "reload":
        command = ReloadRequest()
    else:
        command = StatusRequest()
    try:
        reply = request(args.socket, command.to_message())
    except ControlError as exc:
        print(f"blockerctl: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not reply.get("ok"):
        print(f"blockerctl: {reply.get('error', 'request failed')}", file=sys.stderr)
        return EXIT_FAIL
    result = reply.get("result")
    if args.command == "list" and args.json:
        print(json.dumps(result))
    elif args.command == "list":
        print(_list_report(result))
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


def _list_report(result: object) -> str:
    if not isinstance(result, list) or not result:
        return "no active bans"
    rows = [f"{'TARGET':24} {'JAIL':10} EXPIRES"]
    for item in result:
        if isinstance(item, dict):  # a ListedBan, unless the daemon is of another version
            ban: ListedBan = item  # type: ignore[assignment]
            rows.append(
                f"{ban.get('target', '?')!s:24} {ban.get('jail', '?')!s:10} "
                f"{ban.get('expires') or 'never'}"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
