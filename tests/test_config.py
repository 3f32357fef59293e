"""config.py: jails.toml -> Config, or ConfigError(path, key, reason).

One small file per invalid configuration lives in tests/configs/invalid/, headed by
``# error: <key>: <substring of the reason>`` (and ``# path: <suffix>`` when the error is
reported against another file, e.g. a filter). The test below fails a fixture without it.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest

from blocker.config import ConfigError, duration, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
INVALID = Path(__file__).resolve().parent / "configs" / "invalid"
FIXTURES = sorted(INVALID.glob("*.toml"))
_FILTERS_DIR = re.compile(r'^filters_dir = "([^"]+)"', re.MULTILINE)


def header(path: Path) -> tuple[str, str, str | None]:
    """(key, reason substring, path suffix or None) from a fixture's leading comments."""
    key = reason = suffix = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# error: "):
            key, _, reason = line[len("# error: ") :].partition(": ")
        elif line.startswith("# path: "):
            suffix = line[len("# path: ") :]
    assert key and reason, f"{path.name} needs a '# error: <key>: <reason>' first line"
    return key, reason, suffix


def test_there_are_fixtures() -> None:
    assert len(FIXTURES) >= 25


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_invalid_config(fixture: Path) -> None:
    key, reason, suffix = header(fixture)
    with pytest.raises(ConfigError) as caught:
        load_config(fixture)
    error = caught.value
    assert error.key == key
    assert reason in error.reason
    if suffix is None:
        assert error.path == str(fixture)
    else:
        assert error.path.endswith(suffix), error.path
    assert str(error) == f"{error.path}: {error.key}: {error.reason}"


def test_fixtures_filters_dir_resolves_to_the_shipped_filters() -> None:
    shipped = 0
    for fixture in FIXTURES:
        found = _FILTERS_DIR.search(fixture.read_text(encoding="utf-8", errors="replace"))
        if found is not None and found.group(1) == "../../../filters":
            assert (fixture.parent / found.group(1)).resolve() == REPO / "filters", fixture
            shipped += 1
    assert shipped >= 25


def test_the_header_checker_refuses_a_fixture_without_header(tmp_path: Path) -> None:
    bare = tmp_path / "bare.toml"
    bare.write_text("[jails]\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="needs a '# error"):
        header(bare)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert (caught.value.key, caught.value.path) == ("(file)", str(tmp_path / "absent.toml"))


# ---- the shipped jails.toml --------------------------------------------------------------


def test_shipped_jails_toml() -> None:
    config = load_config(REPO / "jails.toml")
    assert [jail.name for jail in config.jails] == ["probes", "scans"]
    probes, scans = config.jails
    assert [flt.name for flt, _ in probes.filters] == ["unsolicited_synack", "outgoing_rst"]
    assert [flt.name for flt, _ in scans.filters] == [
        "syn_scan",
        "fin_scan",
        "null_scan",
        "xmas_scan",
        "synfin_scan",
        "ack_scan",
        "udp_probe",
        "proto_scan",
        "closed_port_reset",
        "invalid_packet",
    ]
    # invalid_packet comes last: a more specific filter names the offence when one matches.
    for jail in config.jails:
        assert (jail.source, jail.log_path, jail.prefix) == ("auto", "/var/log/kern.log", None)
        policy = jail.policy
        assert (policy.threshold, policy.window, policy.repeat_factor) == (5.0, 60.0, 0.25)
        assert (policy.ban_time, policy.ban_factor, policy.max_ban_time) == (
            600.0,
            2.0,
            7 * 86400.0,
        )
        assert (policy.history_window, policy.subnet_window) == (30 * 86400.0, 3600.0)
        assert (policy.subnet_min_offenders, policy.subnet_v4_prefix, policy.subnet_v6_prefix) == (
            3,
            24,
            64,
        )
        assert (policy.allow, policy.own_addresses, policy.max_tracked) == ((), (), 100_000)
        assert policy.problems() == []
        assert all(weight == flt.weight for flt, weight in jail.filters)
    assert config.firewall.backend == "ipset"
    assert (config.firewall.set_v4, config.firewall.set_v6) == ("blocker4", "blocker6")
    assert config.firewall.rule_check_interval == 2.0
    assert sorted(config.filters) == sorted(p.stem for p in (REPO / "filters").glob("*.toml"))
    assert config.jail("probes") is probes
    assert config.jail("nope") is None


def test_defaults_are_inherited_and_jail_keys_win() -> None:
    data = tomllib.loads(
        '[defaults]\nthreshold = 3\nban_time = "permanent"\nallow = ["192.0.2.0/24"]\n'
        '[jails.a]\nfilters = ["syn_scan", "udp_probe"]\nweights = { udp_probe = 0.5 }\n'
        'window = "2m"\nprefix = "^DROP"\n'
        '[jails.b]\nfilters = ["outgoing_rst"]\nthreshold = 10\nown_addresses = ["2001:db8::10"]\n'
        '[jails.c]\nfilters = ["syn_scan"]\nenabled = false\n'
    )
    config = parse_config(data, "test.toml", base_dir=REPO)
    assert [jail.name for jail in config.jails] == ["a", "b"]
    a, b = config.jails
    assert (a.policy.threshold, a.policy.window, b.policy.threshold) == (3.0, 120.0, 10.0)
    assert math.isinf(a.policy.ban_time) and math.isinf(b.policy.ban_time)
    assert [(flt.name, weight) for flt, weight in a.filters] == [
        ("syn_scan", 1.0),
        ("udp_probe", 0.5),
    ]
    assert [str(net) for net in a.policy.allow] == ["192.0.2.0/24"]
    assert [str(addr) for addr in b.policy.own_addresses] == ["2001:db8::10"]
    assert a.prefix is not None and a.prefix.pattern == "^DROP"
    assert a.matcher().prefix is a.prefix


def test_filters_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    filters = tmp_path / "myfilters"
    filters.mkdir()
    (filters / "only.toml").write_text('[match]\nproto = ["TCP"]\n', encoding="utf-8")
    config_path = tmp_path / "etc" / "jails.toml"
    config_path.parent.mkdir()
    config_path.write_text(
        'filters_dir = "../myfilters"\n[jails.j]\nfilters = ["only"]\n', encoding="utf-8"
    )
    assert list(load_config(config_path).filters) == ["only"]


# ---- duration() --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (60, 60.0),
        (1.5, 1.5),
        (0, 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        (" 10m ", 600.0),
        ("10 m", 600.0),
    ],
)
def test_duration_parses(value: object, seconds: float) -> None:
    assert duration(value, "f", "k") == seconds


def test_permanent_only_where_allowed() -> None:
    assert duration("permanent", "f", "ban_time", permanent_ok=True) == math.inf
    with pytest.raises(ConfigError) as caught:
        duration("permanent", "f", "window")
    assert (caught.value.path, caught.value.key) == ("f", "window")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "m",
        "10M",
        "10 minutes",
        "-5s",
        "1e3",
        "ten",
        True,
        None,
        [60],
        -1,
        float("inf"),
        float("nan"),
        "10h30m",
    ],
)
def test_duration_refuses(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        duration(value, "file.toml", "jails.x.window")
    assert (caught.value.path, caught.value.key) == ("file.toml", "jails.x.window")
