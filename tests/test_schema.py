"""schema.py: one table of keys gives the defaults, the validation and the docs."""

from __future__ import annotations

import dataclasses
import math
import re
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from blocker import config_docs
from blocker.config import FirewallConfig, Jail, parse_config
from blocker.schema import FIREWALL, JAIL, REQUIRED, SECTIONS, Key, Section
from blocker.scoring import JailPolicy
from blocker.validators import (
    Addresses,
    Bool,
    Choice,
    ConfigError,
    Duration,
    HostPort,
    Integer,
    Integers,
    Invalid,
    Networks,
    Number,
    OrNone,
    Regex,
    Strings,
    Table,
    Text,
    Validator,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    (
        REPO / "README.md",
        config_docs.MARKDOWN_BEGIN,
        config_docs.MARKDOWN_END,
        config_docs.markdown,
    ),
    (
        REPO / "docs" / "jails.toml.5",
        config_docs.ROFF_BEGIN,
        config_docs.ROFF_END,
        config_docs.roff,
    ),
]


# ---- the docs ----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=[d[0].name for d in DOCS])
def test_docs_list_the_schema(doc: tuple[Path, str, str, Any]) -> None:
    path, begin, end, render = doc
    text = path.read_text(encoding="utf-8")
    assert config_docs.replace_region(text, begin, end, render()) == text, (
        f"{path.name} disagrees with blocker/schema.py: run ./scripts/config-docs"
    )


def test_a_schema_change_shows_in_the_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    before = (config_docs.markdown(), config_docs.roff())
    key = JAIL.by_name["threshold"]
    changed = dataclasses.replace(
        JAIL, keys=tuple(dataclasses.replace(k, default=7.0) if k is key else k for k in JAIL.keys)
    )
    monkeypatch.setattr(config_docs, "SECTIONS", (*SECTIONS[:-1], changed))
    after = (config_docs.markdown(), config_docs.roff())
    assert "| `threshold` | number > 0 | `7` |" in after[0]
    assert "(number > 0; default 7)." in after[1]
    assert after[0] != before[0] and after[1] != before[1]


def test_every_key_is_documented_once() -> None:
    markdown, roff = config_docs.markdown(), config_docs.roff()
    for section in SECTIONS:
        for key in section.keys:
            assert markdown.count(f"| `{key.name}` |") == 1, key.name
            assert roff.count(f"\n.B {key.name.replace('-', chr(92) + '-')}\n") == 1, key.name


def test_replace_region_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="not found"):
        config_docs.replace_region("no markers\n", "<b>", "<e>", "x\n")
    assert config_docs.replace_region("a\n<b>\nold\n<e>\nz\n", "<b>", "<e>", "new\n") == (
        "a\n<b>\nnew\n<e>\nz\n"
    )


# ---- defaults come from the schema -------------------------------------------------------


def test_every_default_passes_its_own_validator_unchanged() -> None:
    for section in SECTIONS:
        for key in section.keys:
            if key.default is not REQUIRED:
                assert key.check(key.default) == key.default, key.name
                assert key.check(key.check(key.default)) == key.default, key.name


def test_jail_policy_and_firewall_config_read_their_defaults_from_the_schema() -> None:
    policy = JailPolicy("x")
    for f in dataclasses.fields(JailPolicy):
        if f.name != "name":
            assert getattr(policy, f.name) == JAIL.default(f.name), f.name
    assert dataclasses.asdict(FirewallConfig()) == FIREWALL.defaults()
    assert policy.problems() == []


def test_every_jail_key_lands_on_the_jail_or_its_policy() -> None:
    policy_fields = {f.name for f in dataclasses.fields(JailPolicy)} - {"name"}
    jail_fields = {f.name for f in dataclasses.fields(Jail)} - {"name", "filters", "policy"}
    assert not policy_fields & jail_fields
    handled_by_config = {"filters", "enabled", "weights"}
    assert set(JAIL.by_name) == policy_fields | jail_fields | handled_by_config


# ---- one rule per key: the config file and JailPolicy.problems() agree --------------------


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("subnet_v4_prefix", 32, "must be an integer from 8 to 31"),
        ("subnet_v4_prefix", 0, "must be an integer from 8 to 31"),
        ("subnet_v6_prefix", 128, "must be an integer from 16 to 127"),
        ("repeat_factor", 1.5, "must be between 0 and 1"),
        ("repeat_factor", -0.1, "must be between 0 and 1"),
        ("threshold", 0, "must be greater than 0"),
        ("ban_factor", 0.5, "must be >= 1"),
        ("window", 0, "must be longer than 0 s"),
        ("max_tracked", 0, "must be an integer from 1 to 10000000"),
    ],
)
def test_config_and_policy_refuse_with_the_same_reason(
    key: str, value: object, reason: str
) -> None:
    data = {"jails": {"j": {"filters": ["syn_scan"], key: value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "t.toml", base_dir=REPO)
    assert (caught.value.key, caught.value.reason) == (f"jails.j.{key}", reason)
    given: dict[str, Any] = {key: value}  # a wrong type on purpose: problems() must say so
    problems = JailPolicy("j", **given).problems()
    assert problems == [f"{key} {reason}, got {value!r}"]


def test_policy_problems_accept_permanent_and_parsed_addresses() -> None:
    policy = JailPolicy(
        "j",
        ban_time=math.inf,
        allow=(ip_network("192.0.2.0/24"),),
        own_addresses=(ip_address("2001:db8::1"),),
    )
    assert policy.problems() == []


def test_section_checks_name_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        FIREWALL.parse({"set_v4": "a", "set_v6": "a"}, "f.toml", "firewall.")
    assert (caught.value.key, caught.value.reason) == ("firewall.set_v6", "must differ from set_v4")


def test_unknown_and_jail_only_keys() -> None:
    with pytest.raises(ConfigError, match=r"x\.nope: unknown key"):
        JAIL.refuse_unknown({"nope": 1}, "f", "x.")
    JAIL.refuse_unknown({"filters": []}, "f", "jails.a.")
    with pytest.raises(ConfigError, match=r"defaults\.filters: unknown key"):
        JAIL.refuse_unknown({"filters": []}, "f", "defaults.", jail_only_ok=False)


# ---- the validators ----------------------------------------------------------------------


def refused(validator: Validator[Any], value: object) -> str:
    with pytest.raises(Invalid) as caught:
        validator(value)
    return caught.value.reason


def test_number_bounds_and_messages() -> None:
    assert Number()(3) == 3.0
    assert refused(Number(), True) == "must be a number"
    assert refused(Number(), 10**400) == "must be a finite number of sensible size"
    assert refused(Number(), math.nan) == "must be a finite number of sensible size"
    assert refused(Number(0, 1), 2) == "must be between 0 and 1"
    assert refused(Number(low=0, high=1000, low_open=True), 0) == "must be > 0 and <= 1000"
    assert refused(Number(high=2.5), 3) == "must be <= 2.5"
    assert Number(low=0, low_open=True).kind == "number > 0"


def test_integer_and_integers() -> None:
    assert Integer(1, 3)(2) == 2
    assert refused(Integer(1, 3), 2.0) == "must be an integer from 1 to 3"
    assert refused(Integer(1, 3), True) == "must be an integer from 1 to 3"
    assert Integers(0, 65535)([1, 2]) == (1, 2)
    assert Integers(0, 255, single_ok=True)(7) == (7,)
    assert refused(Integers(0, 65535), 7) == "must be integers 0-65535"
    assert refused(Integers(0, 65535), [1, 70000]) == "must be integers 0-65535"
    assert refused(Integers(0, 65535), [False]) == "must be integers 0-65535"


def test_duration_bounds() -> None:
    assert Duration()("10m") == 600.0
    assert Duration(permanent=True)("permanent") == math.inf
    assert refused(Duration(), 0) == "must be longer than 0 s"
    assert refused(Duration(permanent=True), 0) == "must be longer than 0 s (or 'permanent')"
    assert refused(Duration(low=0.1, high=5), "6s") == "must be between 0.1 s and 5 s"
    assert refused(Duration(), math.inf) == "must be a finite, non-negative duration"
    assert Duration().show(7 * 86400.0) == '"7d"'
    assert Duration().show(90.0) == '"90s"'
    assert Duration().show(0.5) == '"0.5s"'


def test_bool_choice_text_regex() -> None:
    assert Bool()(False) is False
    assert refused(Bool(), 0) == "must be true or false"
    assert Choice(("a", "b"))("b") == "b"
    assert refused(Choice(("a", "b")), "c") == "must be one of a, b"
    assert refused(Choice(("a", "b")), ["a"]) == "must be one of a, b"
    assert Text(r"[a-z]+")("abc") == "abc"
    assert refused(Text(r"[a-z]+", "lowercase only"), "aB") == "lowercase only"
    assert Regex()("") is None
    pattern = Regex()("^DROP")
    assert pattern is not None and Regex()(pattern) is pattern
    assert refused(Regex(), "(").startswith("bad regular expression")


def test_strings() -> None:
    assert Strings()(["a", "b"]) == ("a", "b")
    assert Strings(single_ok=True)("a") == ("a",)
    assert refused(Strings(), "a") == "must be a list of strings"
    assert refused(Strings(nonempty=True), []) == "must be a list of strings"
    assert refused(Strings(options=("x", "y")), ["z"]) == "unknown 'z'; choose from x, y"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("localhost:80", ("localhost", 80)),
        ("[2001:db8::1]:9100", ("2001:db8::1", 9100)),
        ("[::]:65535", ("::", 65535)),
    ],
)
def test_host_port_parses(text: str, parsed: tuple[str, int]) -> None:
    assert HostPort()(text) == parsed
    assert HostPort()(parsed) == parsed
    assert HostPort().show(parsed) == f'"{text}"'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2001:db8::1:9100", "must be HOST:PORT"),
        ("host", "must be HOST:PORT"),
        (":9100", "must be HOST:PORT"),
        ("host:0", "the port must be from 1 to 65535"),
        ("host:70000", "the port must be from 1 to 65535"),
        ("[zz::]:1", "is not an IPv6 address"),
        ("[192.0.2.1]:1", "is not an IPv6 address"),
        (9100, "must be HOST:PORT"),
    ],
)
def test_host_port_refuses(value: object, reason: str) -> None:
    assert reason in refused(HostPort(), value)


def test_networks_and_addresses() -> None:
    assert Networks()(["192.0.2.1", "2001:db8::/48"]) == (
        ip_network("192.0.2.1/32"),
        ip_network("2001:db8::/48"),
    )
    assert refused(Networks(), [3]) == "must be a list of addresses or CIDR networks"
    assert refused(Networks(), ["192.0.2.0/33"]) == ("'192.0.2.0/33' is not an address or network")
    assert Addresses()(["192.0.2.1"]) == (ip_address("192.0.2.1"),)
    assert refused(Addresses(), ["192.0.2.0/24"]) == "'192.0.2.0/24' is not an IP address"
    assert refused(Addresses(), "192.0.2.1") == "must be a list of addresses"


def test_table_names_the_bad_entry() -> None:
    weights = Table(Number(low=0, low_open=True))
    assert weights({"a": 1}) == {"a": 1.0}
    with pytest.raises(Invalid) as caught:
        weights({"a": 1, "b": 0})
    assert (caught.value.subkey, caught.value.reason) == ("b", "must be greater than 0")
    assert refused(weights, 3) == "must be a table"


def test_kinds_are_plain_text() -> None:
    for section in SECTIONS:
        for key in section.keys:
            assert re.fullmatch(r"[\w \-\".,:=<>]+", key.check.kind), key.check.kind


def test_or_none_is_for_keys_whose_absence_means_off() -> None:
    listen = OrNone(HostPort())
    assert listen(None) is None
    assert listen("[::1]:9100") == ("::1", 9100)
    assert listen.show(None) == "(none)"
    assert listen.kind == "host:port"
    assert "must be HOST:PORT" in refused(listen, "nope")


def test_a_new_section_is_a_few_lines() -> None:
    metrics = Section(
        "metrics",
        "how blocker is watched",
        (
            Key("listen", OrNone(HostPort()), None, "where to serve /metrics"),
            Key("textfile_interval", Duration(high=3600), 15.0, "how often the file is written"),
            Key("groups", Integers(0, 65535), (), "groups"),
        ),
    )
    assert metrics.parse({}, "f") == {"listen": None, "textfile_interval": 15.0, "groups": ()}
    assert metrics.parse({"listen": "127.0.0.1:9100", "groups": [1]}, "f", "metrics.") == {
        "listen": ("127.0.0.1", 9100),
        "textfile_interval": 15.0,
        "groups": (1,),
    }
    with pytest.raises(ConfigError) as caught:
        metrics.parse({"textfile_interval": "2h"}, "f.toml", "metrics.")
    assert str(caught.value) == (
        "f.toml: metrics.textfile_interval: must be between 0 s and 3600 s"
    )
    with pytest.raises(ConfigError, match=r"^f: metrics\.port: unknown key$"):
        metrics.parse({"port": 1}, "f", "metrics.")
    assert metrics.by_name["textfile_interval"].check.kind == "duration > 0, <= 3600s"
