"""A full kernel set (issue 9), against the real kernel in a throwaway namespace (root only).

The set is created with a tiny maxelem through the firewall config key; the Service bans
through the real IpsetBackend. Kernel state is read back with the ipset binary.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from netns import Namespace, namespace
from test_firewall_ipset import kernel_entries
from test_service import CONFIG, HOST4, HOST6, NOW, ask, synacks

from blocker.config import load_config
from blocker.firewall.ipset import IpsetBackend
from blocker.service import Service
from blocker.state import State

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (shutil.which("ipset") and shutil.which("iptables")), reason="needs ipset and iptables"
    ),
]

FIRST = ["203.0.113.1", "198.51.100.2", "192.0.2.3"]  # three /24s: no subnet escalation
LATE = "203.0.113.4"
KEY = ("kernlog", "/var/log/kern.log")


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with namespace() as made:
        yield made


def test_a_full_set_refuses_new_bans_keeps_its_own_and_bans_again_with_room(
    tmp_path: Path, ns: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    text = CONFIG.replace(
        'backend = "dry-run"',
        f'backend = "ipset"\nset_v4 = "blk4-{tag}"\nset_v6 = "blk6-{tag}"\nmaxelem = 3',
    )
    (tmp_path / "jails.toml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "jails.toml")
    assert config.firewall.maxelem == 3
    fw = config.firewall
    backend = IpsetBackend(set4=fw.set_v4, set6=fw.set_v6, maxelem=fw.maxelem, netns=ns.name)
    state = State(tmp_path / "state")
    service = Service(config, state, backend, own_addresses=(ip_address(HOST4), ip_address(HOST6)))
    try:
        service.start(NOW)
        set4 = f"blk4-{tag}"
        assert "maxelem 3 " in ns.run("ipset", "list", "-t", set4).stdout
        for address in FIRST:
            service.handle_lines(KEY, synacks(address, NOW), NOW)
        assert set(kernel_entries(ns, set4)) == set(FIRST)

        decisions = service.handle_lines(KEY, synacks(LATE, NOW), NOW)
        assert [str(d.target.network_address) for d in decisions] == [LATE]  # decided ...
        assert set(kernel_entries(ns, set4)) == set(FIRST)  # ... refused, the others kept
        assert {str(b.network_address) for b in service.active} == set(FIRST)
        assert {str(r.target.network_address) for r in state.active(NOW)} == set(FIRST)
        explained = ask(service, "explain", {"address": LATE}, NOW)
        assert explained["banned_by"] == []
        assert explained["jails"]["probes"]["banned_until"] is None
        status = ask(service, "status", {}, NOW)
        assert status["refused_bans"] == 1
        assert status["firewall"]["sets"]["ipv4"] == {
            "name": set4,
            "present": True,
            "entries": 3,
            "maxelem": 3,
            "fill": 1.0,
        }
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1
        assert "set is full" in refusals[0]

        # A present entry is still refreshed in a full set.
        assert "banned" in ask(service, "ban", {"target": FIRST[0], "duration": 7200}, NOW)
        assert kernel_entries(ns, set4)[FIRST[0]] > 3600

        # With room again, LATE's next offence bans it (its score started over).
        ask(service, "unban", {"target": FIRST[1]}, NOW + 1)
        assert service.handle_lines(KEY, synacks(LATE, NOW + 10, count=4), NOW + 10) == []
        again = service.handle_lines(KEY, synacks(LATE, NOW + 11, count=1), NOW + 11)
        assert [str(d.target.network_address) for d in again] == [LATE]
        assert set(kernel_entries(ns, set4)) == {FIRST[0], FIRST[2], LATE}
        assert service.active[again[0].target].jail == "probes"
    finally:
        state.close()
        backend.teardown()
        backend.close()
