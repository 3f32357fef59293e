"""blockerctl: talk to blockerd over its Unix socket, or replay a log offline (`test`)."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from blocker.commands import (
    BanRequest,
    ExplainRequest,
    ListRequest,
    ReloadRequest,
    Request,
    StatusRequest,
    UnbanRequest,
    iso_time,
)
from blocker.config import ConfigError, duration, load_config
from blocker.control import DEFAULT_SOCKET, ControlError, request
from blocker.records import Decision
from blocker.replay import ReplayResult, decision_lines, replay_file, write_json
from blocker.verdicts import SHOW_CHOICES, SHOWN, replay_file_verdicts

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
    status = commands.add_parser(
        "status", help="per jail: hits, tracked addresses, active bans; sources; firewall"
    )
    status.add_argument("--json", action="store_true", help="print the machine form (JSON)")
    listing = commands.add_parser("list", help="active bans")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument("--jail", help="only this jail's bans")
    listing.add_argument(
        "--sort",
        choices=("target", "expiry"),
        default="target",
        help="order: by address (default) or soonest expiry first",
    )
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
    unban.add_argument(
        "--fleet",
        action="store_true",
        help="lift it on every host of the fleet too (a signed unban event)",
    )
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
    test.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (with --show: one JSON object per line, the summary last)",
    )
    test.add_argument(
        "--show",
        choices=SHOW_CHOICES,
        metavar="{" + ",".join(SHOW_CHOICES) + "}",
        help="also print, per line, what became of it: hits (and the bans they "
        "made), bans, unparsed (malformed and not LOG records), malformed, "
        "or all (ignored records too)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "test":
            return _remote(args)
        code = _test(args)
        if argv is None:  # the command line's own process, which ends next
            # The replay's engine is garbage now, in reference cycles (a scorer and its
            # tiers' callback): freeing it object by object at exit took 0.7 s of a 5 s
            # replay of the mixed 1M-line log; the kernel takes the memory back at once.
            gc.freeze()
        return code
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
    if args.show is not None:
        shown = SHOWN[args.show]
        write = _verdict_json if args.json else _verdict_text

        def emit(verdicts: list[dict[str, Any]]) -> None:
            for verdict in verdicts:
                if verdict["verdict"] in shown:
                    print(write(verdict))

        try:
            result = replay_file_verdicts(Path(args.log), config, emit)
        except OSError as exc:
            print(f"blockerctl: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAIL
        if args.json:
            print(json.dumps({"summary": result.to_json()}))
        else:
            print(_test_report(args.log, result))
        return EXIT_OK
    if not args.json:
        try:
            result = replay_file(Path(args.log), config)
        except OSError as exc:
            print(f"blockerctl: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAIL
        print(_test_report(args.log, result))
        return EXIT_OK
    # Bans are spooled to a file while the log replays: a flood's million bans as objects
    # would outweigh everything else the replay holds.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:

        def spill(decisions: list[Decision]) -> None:
            spool.write(decision_lines(decisions))

        try:
            result = replay_file(Path(args.log), config, spill)
        except OSError as exc:
            print(f"blockerctl: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAIL
        spool.seek(0)
        write_json(result, spool, sys.stdout)
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


def _verdict_json(verdict: dict[str, Any]) -> str:
    return json.dumps(verdict)


def _verdict_text(verdict: dict[str, Any]) -> str:
    """One line of `test --show`: line number, verdict, and what it is about."""
    kind = verdict["verdict"]
    head = f"{verdict['line']:>7} {kind:9}"
    if kind == "not_log":
        return f"{head} {verdict.get('reason', 'not a LOG record')}"
    if kind == "malformed":
        return f"{head} {verdict['reason']}"
    if kind == "ban":
        span = "permanent" if verdict["permanent"] else _span(float(verdict["duration"]))
        return f"{head} {verdict['target']} ({verdict['jail']}) {span}: {verdict['reason']}"
    packet = _packet_text(verdict["fields"])
    if kind == "hit":
        return (
            f"{head} {verdict['jail']}/{verdict['filter']} {verdict['offender']} "
            f"score {verdict['score']:g}/{verdict['threshold']:g}  {packet}"
        )
    if "jail" in verdict:
        return (
            f"{head} {verdict['jail']}/{verdict['filter']} {verdict['offender']}: "
            f"{verdict['reason']}  {packet}"
        )
    return f"{head} {verdict['reason']}  {packet}"


def _packet_text(fields: dict[str, Any]) -> str:
    src, dst = fields["src"], fields["dst"]
    if "dpt" in fields:
        src, dst = _with_port(src, fields["spt"]), _with_port(dst, fields["dpt"])
    text = f"{fields['proto']} {src} -> {dst}"
    if "flags" in fields:
        text += " " + (",".join(fields["flags"]) or "(no flags)")
    if "icmp_type" in fields:
        text += f" type {fields['icmp_type']} code {fields['icmp_code']}"
    where = f"in={fields['in']}" if fields["in"] else f"out={fields['out']}"
    prefix = f" [{fields['prefix']}]" if fields["prefix"] else ""
    return f"{text} {where}{prefix} at {fields['time']}"


def _with_port(address: str, port: object) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


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
        command = UnbanRequest(args.target, fleet=args.fleet)
    elif args.command == "explain":
        command = ExplainRequest(args.address)
    elif args.command == "list":
        command = ListRequest(args.jail or None)
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
    if args.command == "list" and isinstance(result, list):
        # blockerd streams them in the kernel's order
        result.sort(key=_expiry_order if args.sort == "expiry" else _ban_order)
    if args.command == "list" and args.json:
        print(json.dumps(result))
    elif args.command == "list":
        print(_list_report(result))
    elif args.command == "status" and not args.json and isinstance(result, dict):
        print(status_report(result))
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


def status_report(status: dict[str, Any]) -> str:
    """`blockerctl status` for people: what blockerd does and whether it keeps up."""
    out = [
        f"blockerd {status.get('version', '?')}, up {_ago(status.get('uptime'))}",
        f"lines {status.get('lines', 0)}: parsed {status.get('parsed', 0)}, unparsed "
        f"{status.get('unparsed', 0)} (malformed {status.get('malformed', 0)})",
        f"active bans {status.get('active_bans', 0)}"
        + (
            f", spared for live peers {status['spared_live_peers']} (conntrack "
            f"{status.get('conntrack', '?')})"
            if "spared_live_peers" in status
            else ""
        ),
        "",
        "jails:",
    ]
    for name, jail in sorted(dict(status.get("jails") or {}).items()):
        hits = dict(jail.get("hits") or {})
        detail = ", ".join(f"{f} {n}" for f, n in sorted(hits.items(), key=lambda h: -h[1]))
        last = jail.get("last_ban") or "never"
        out.append(f"  {name:12} hits {sum(hits.values())}" + (f" ({detail})" if detail else ""))
        out.append(
            f"  {'':12} tracked {jail.get('tracked', 0)}, active bans "
            f"{jail.get('active_bans', 0)}, last ban {last}"
        )
    out += ["", "sources:"]
    for source in status.get("sources") or [{"source": "(none)", "status": "none"}]:
        line = f"  {source.get('source', '?')}: {source.get('status', source.get('state'))}"
        if source.get("behind_bytes") is not None:
            line += f", {source['behind_bytes']} bytes behind"
        if source.get("last_line_age") is not None:
            line += f", last line {_ago(source['last_line_age'])} ago"
        if source.get("error") or source.get("last_error"):
            line += f" ({source.get('error') or source.get('last_error')})"
        out.append(line)
    out += ["", "firewall:"]
    out += _firewall_lines(status)
    return "\n".join(out)


def _firewall_lines(status: dict[str, Any]) -> list[str]:
    firewall = status.get("firewall") or {}
    rules = firewall.get("rules") if isinstance(firewall, dict) else None
    out: list[str] = []
    if isinstance(rules, dict):
        for family, rule in sorted(rules.items()):
            where = "in place" if rule.get("in_place") else "MISSING"
            positions = ",".join(str(p) for p in rule.get("positions") or []) or "-"
            out.append(
                f"  {family} rule: {where} (INPUT position {positions}, {rule.get('variant', '?')})"
            )
    elif isinstance(firewall, dict) and "backend" in firewall:
        out.append(f"  backend {firewall['backend']}: no kernel rules")
    for family, info in sorted(dict(status.get("sets") or {}).items()):
        capacity = info.get("capacity")
        fill = (
            f"{info.get('entries', 0)}/{capacity} "
            f"({100 * info.get('entries', 0) / capacity:.1f}% full)"
            if capacity
            else f"{info.get('entries', 0)} entries"
        )
        out.append(f"  {family} set {info.get('name')}: {fill}")
    checks = status.get("firewall_checks") or {}
    if checks:
        repairs = (
            ", ".join(f"{k} {v}" for k, v in sorted(dict(checks.get("repairs") or {}).items()))
            or "none"
        )
        state = "ok" if checks.get("ok") else "FAILING"
        out.append(f"  checks: {state}, failures {checks.get('failures', 0)}, repairs {repairs}")
    return out


def _ago(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s" if isinstance(seconds, float) else f"{whole}s"


def _expiry_order(row: object) -> tuple[float, tuple[int, int, int, str]]:
    """Soonest expiry first, permanent bans last, then by address."""
    remaining = row.get("remaining") if isinstance(row, dict) else None
    soon = float(remaining) if isinstance(remaining, int | float) else math.inf
    return (soon, _ban_order(row))


def _ban_order(row: object) -> tuple[int, int, int, str]:
    """IPv4 before IPv6, then by network address and prefix; anything odd last."""
    text = row.get("target") if isinstance(row, dict) else None
    try:
        network = ip_network(str(text), strict=False)
    except ValueError:
        return (9, 0, 0, str(text))
    return (network.version, int(network.network_address), network.prefixlen, "")


def _list_report(result: object) -> str:
    if not isinstance(result, list) or not result:
        return "no active bans"
    rows = [f"{'TARGET':24} {'JAIL':10} {'ORIGIN':20} EXPIRES"]
    for ban in result:
        if isinstance(ban, dict):
            rows.append(
                f"{ban.get('target', '?')!s:24} {ban.get('jail', '?')!s:10} "
                f"{ban.get('origin') or '-'!s:20} {ban.get('expires') or 'never'}"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
