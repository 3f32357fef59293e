"""The typed admin requests: what blockerctl sends is what blockerd reads back."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from blocker.commands import (
    BanRequest,
    ExplainRequest,
    ListRequest,
    ReloadRequest,
    Request,
    RequestError,
    StatusRequest,
    UnbanRequest,
    iso_time,
    route,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "request_",
    [
        StatusRequest(),
        ListRequest(),
        ReloadRequest(),
        BanRequest("203.0.113.7"),
        BanRequest("203.0.113.0/24", 7200.0, "scans"),
        BanRequest("2001:db8::/48", math.inf),
        UnbanRequest("203.0.113.7"),
        ExplainRequest("198.51.100.9"),
    ],
)
def test_a_request_survives_the_wire(request_: Request) -> None:
    message = json.loads(json.dumps(request_.to_message(), allow_nan=False))
    assert message["cmd"] == request_.command
    assert type(request_).from_message(message) == request_


def test_a_permanent_ban_travels_as_the_word_permanent() -> None:
    assert BanRequest("203.0.113.7", math.inf).to_message() == {
        "cmd": "ban",
        "target": "203.0.113.7",
        "duration": "permanent",
    }


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "give an address or a network"),
        ({"target": "  "}, "give an address or a network"),
        ({"target": ["203.0.113.7"]}, "give an address or a network"),
        ({"target": "203.0.113.7", "jail": 3}, "no jail 3"),
        ({"target": "203.0.113.7", "duration": "soon"}, "duration: must be a duration like"),
        ({"target": "203.0.113.7", "duration": 0}, "duration must be longer than 0 s"),
        ({"target": "203.0.113.7", "duration": True}, "duration: must be a duration"),
    ],
)
def test_a_malformed_ban_is_refused_before_any_command_runs(
    message: dict[str, object], error: str
) -> None:
    with pytest.raises(RequestError, match=error):
        BanRequest.from_message(message)


def test_explain_and_unban_need_their_field() -> None:
    with pytest.raises(RequestError, match="explain needs an address"):
        ExplainRequest.from_message({"address": 5})
    with pytest.raises(RequestError, match="give an address or a network"):
        UnbanRequest.from_message({})


def test_times_in_replies_are_utc_and_a_bad_one_says_so() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00+00:00"
    assert iso_time(math.inf) == "invalid-time"


SERVICE_MODULES = (
    "service.py",
    "running_jails.py",
    "ban_ledger.py",
    "live_peer_sparing.py",
    "fleet_role.py",
    "admin_commands.py",
    "activity.py",
)


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_the_service_knows_neither_the_transport_nor_replay(module: str) -> None:
    tree = ast.parse((REPO / "blocker" / module).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported.isdisjoint({"blocker.control", "blocker.replay"})


def test_the_service_parses_requests_with_commands_py() -> None:
    tree = ast.parse((REPO / "blocker" / "service.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "blocker.commands" in imported


def test_a_route_parses_the_message_before_its_handler_runs() -> None:
    seen: list[tuple[BanRequest, float]] = []

    def ban(request: BanRequest, now: float) -> str:
        seen.append((request, now))
        return "banned"

    name, handler = route(BanRequest, ban, lambda: 5.0)
    assert name == "ban"
    with pytest.raises(RequestError, match="give an address"):
        handler({"cmd": "ban", "target": 7})
    assert seen == []
    assert handler({"cmd": "ban", "target": "203.0.113.7", "duration": "1h"}) == "banned"
    assert seen == [(BanRequest("203.0.113.7", 3600.0), 5.0)]


def test_nothing_patches_the_service_after_construction() -> None:
    """Its collaborators (fleet role and health, ban latency, source health, the state's
    commit hook) are constructor arguments: no module assigns to `service.x`,
    `self.service.x` or `service.state.x`."""
    patched = []
    for path in sorted((REPO / "blocker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Attribute) and (
                    (isinstance(target.value, ast.Name) and target.value.id == "service")
                    or (
                        isinstance(target.value, ast.Attribute)
                        and target.value.attr in ("service", "state")
                    )
                ):
                    patched.append(f"{path.name}:{node.lineno}: {ast.unparse(target)}")
    assert patched == []
