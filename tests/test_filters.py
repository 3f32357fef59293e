"""filters.py: loading filters/*.toml (every error names file and key) and matching packets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from loglines import BASE, HOST4, PROBER4, outgoing_rst, syn, synack, tcp_line

from blocker.filters import Filter, FilterError, Matcher, load_filter, load_filters
from blocker.netfilter import KernelLogParser
from blocker.records import Packet

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "filters"
NOW = BASE + 60.0
GOOD = 'name = "x"\noffender = "src"\n[match]\nproto = ["TCP"]\n'


def packet(line: str) -> Packet:
    parsed = KernelLogParser().parse(line, NOW)
    assert parsed is not None, line
    return parsed


def write(directory: Path, text: str, name: str = "x.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('name = "x"\nnmae = "y"\n[match]\nproto = ["TCP"]\n', "nmae", "unknown key"),
        ('name = "x"\n[match]\ndports = [22]\n', "match.dports", "unknown key"),
        (
            'name = "x"\n[match]\nproto = ["TCP"]\n[ignore]\nproto = ["UDP"]\n',
            "ignore.proto",
            "unknown key",
        ),
        ('name = "x"\n[match]\nprefix = "(unclosed"\n', "match.prefix", "bad regular expression"),
        (
            'name = "x"\n[match]\nproto = ["TCP"]\n[ignore]\nprefix = "[z-a]"\n',
            "ignore.prefix",
            "bad regular expression",
        ),
        ('name = "x"\n[match]\nprefix = 5\n', "match.prefix", "regular expression string"),
        ('name = "x"\n[match]\nflags = ["SYNN"]\n', "match.flags", "unknown TCP flag"),
        ('name = "x"\n[match]\nflags_all = ["syn"]\n', "match.flags_all", "unknown TCP flag"),
        ('name = "x"\n[match]\nflags_none = ["NS"]\n', "match.flags_none", "unknown TCP flag"),
        ('name = "x"\n[match]\ndport = ["2000-1000"]\n', "match.dport", "is not a port"),
        ('name = "x"\n[match]\ndport = [70000]\n', "match.dport", "is not a port"),
        ('name = "x"\n[match]\nsport = ["1-2-3"]\n', "match.sport", "is not a port"),
        ('name = "x"\n[match]\ndport = [-1]\n', "match.dport", "is not a port"),
        ('name = "x"\n[match]\ndport = [true]\n', "match.dport", "is not a port"),
        ('name = "x"\n[match]\ndport = "ssh"\n', "match.dport", "is not a port"),
        ('name = "x"\n', "match", "at least one condition"),
        ('name = "x"\n[match]\n', "match", "at least one condition"),
        ('name = "x"\nmatch = 3\n', "match", "must be a table"),
        ('name = "Bad Name"\n[match]\nproto = ["TCP"]\n', "name", "lowercase"),
        ('name = 7\n[match]\nproto = ["TCP"]\n', "name", "lowercase"),
        (
            'name = "x"\ndescription = 1\n[match]\nproto = ["TCP"]\n',
            "description",
            "must be a string",
        ),
        ('name = "x"\noffender = "both"\n[match]\nproto = ["TCP"]\n', "offender", "'src' or 'dst'"),
        ('name = "x"\nweight = 0\n[match]\nproto = ["TCP"]\n', "weight", "> 0"),
        ('name = "x"\nweight = 1001\n[match]\nproto = ["TCP"]\n', "weight", "<= 1000"),
        ('name = "x"\nweight = "1"\n[match]\nproto = ["TCP"]\n', "weight", "must be a number"),
        ('name = "x"\nweight = true\n[match]\nproto = ["TCP"]\n', "weight", "must be a number"),
        (
            'name = "x"\ndistinct = ["port"]\n[match]\nproto = ["TCP"]\n',
            "distinct",
            "unknown field 'port'",
        ),
        ('name = "x"\ndistinct = [1]\n[match]\nproto = ["TCP"]\n', "distinct", "list of strings"),
        ('name = "x"\n[match]\ndirection = ["inbound"]\n', "match.direction", "'in', 'out'"),
        ('name = "x"\n[match]\nproto = [["TCP"]]\n', "match.proto", "list of strings"),
        ('name = "x"\n[match]\ndst_unicast = "yes"\n', "match.dst_unicast", "true or false"),
        ('name = "x"\n[match]\nicmp_type = [256]\n', "match.icmp_type", "integers 0-255"),
        ('name = "x"\n[match]\nicmp_code = ["0"]\n', "match.icmp_code", "integers 0-255"),
        ('name = "x"\n[match\nproto = ["TCP"]\n', "(syntax)", ""),
        ('name = "x"\nname = "y"\n[match]\nproto = ["TCP"]\n', "(syntax)", ""),
    ],
)
def test_loader_errors_name_file_and_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FilterError) as caught:
        load_filter(path)
    assert (caught.value.path, caught.value.key) == (str(path), key)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_unreadable_file_is_a_filter_error(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b'name = "\xff"\n[match]\nproto = ["TCP"]\n')
    with pytest.raises(FilterError) as caught:
        load_filter(path)
    assert (caught.value.path, caught.value.key) == (str(path), "(file)")
    with pytest.raises(FilterError) as missing:
        load_filter(tmp_path / "absent.toml")
    assert missing.value.key == "(file)"


def test_duplicate_names_name_the_second_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.toml")
    second = write(tmp_path, GOOD, "b.toml")
    with pytest.raises(FilterError) as caught:
        load_filters(tmp_path)
    assert (caught.value.path, caught.value.key) == (str(second), "name")
    assert "duplicate filter name 'x'" in caught.value.reason


def test_a_bad_file_in_a_directory_stops_the_load(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.toml")
    bad = write(tmp_path, 'name = "y"\n[match]\nflags = ["BOGUS"]\n', "b.toml")
    with pytest.raises(FilterError) as caught:
        load_filters(tmp_path)
    assert (caught.value.path, caught.value.key) == (str(bad), "match.flags")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FilterError) as caught:
        load_filters(tmp_path / "nowhere")
    assert caught.value.key == "filters_dir"
    assert "not a directory" in caught.value.reason


def test_name_defaults_to_the_file_stem_and_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, '[match]\nproto = ["TCP"]\n', "my_filter.toml")
    write(tmp_path, "not toml at all", "README.md")
    assert list(load_filters(tmp_path)) == ["my_filter"]
    assert load_filters(tmp_path)["my_filter"].weight == 1.0


@pytest.mark.parametrize("condition", ["flags_none = []", 'prefix = ""', "not_proto = []"])
def test_vacuous_conditions_are_refused(tmp_path: Path, condition: str) -> None:
    with pytest.raises(FilterError):
        load_filter(write(tmp_path, f'name = "x"\noffender = "dst"\n[match]\n{condition}\n'))


# ---- the shipped filters -----------------------------------------------------------------


def test_shipped_filters_load_and_are_named_after_their_files() -> None:
    filters = load_filters(SHIPPED)
    assert sorted(filters) == sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert {"unsolicited_synack", "outgoing_rst", "syn_scan", "closed_port_reset"} <= set(filters)
    for name, flt in filters.items():
        assert flt.description, name
        assert flt.ignore_prefix is not None, f"{name} must ignore ACCEPT/ALLOW/AUDIT prefixes"
    assert filters["outgoing_rst"].offender == "dst"
    assert filters["closed_port_reset"].offender == "dst"
    assert filters["unsolicited_synack"].distinct == ()
    assert filters["syn_scan"].distinct == ("dst", "dport")


# ---- matching ----------------------------------------------------------------------------


def one(flt: Filter) -> Matcher:
    return Matcher("t", [(flt, flt.weight)])


def test_offender_is_src_or_dst_and_the_hit_carries_time_jail_weight() -> None:
    filters = load_filters(SHIPPED)
    hit = Matcher("probes", [(filters["unsolicited_synack"], 2.5)]).match(packet(synack()))
    assert hit is not None
    assert (str(hit.offender), hit.jail, hit.filter, hit.weight, hit.time) == (
        PROBER4,
        "probes",
        "unsolicited_synack",
        2.5,
        BASE,
    )
    assert hit.distinct_key is None
    rst = one(filters["outgoing_rst"]).match(packet(outgoing_rst()))
    assert rst is not None and str(rst.offender) == PROBER4


def test_distinct_key_follows_the_filter_fields() -> None:
    flt = load_filters(SHIPPED)["syn_scan"]
    hit = one(flt).match(packet(syn(dpt=1025)))
    assert hit is not None
    assert hit.distinct_key == (packet(syn()).dst, 1025)


def test_chain_order_first_match_wins(tmp_path: Path) -> None:
    broad = load_filter(write(tmp_path, 'name = "broad"\n[match]\nproto = ["TCP"]\n', "a.toml"))
    narrow = load_filter(
        write(tmp_path, 'name = "narrow"\n[match]\nflags = ["SYN", "ACK"]\n', "b.toml")
    )
    line = packet(synack())
    first = Matcher("j", [(narrow, 1.0), (broad, 1.0)]).match(line)
    second = Matcher("j", [(broad, 1.0), (narrow, 1.0)]).match(line)
    assert first is not None and first.filter == "narrow"
    assert second is not None and second.filter == "broad"


def test_ports_ranges_and_protocol_numbers(tmp_path: Path) -> None:
    ports = load_filter(write(tmp_path, 'name = "p"\n[match]\ndport = [22, "1000-1002"]\n'))
    matcher = one(ports)
    # Same signature, different ports: the per-signature cache must not decide ports.
    verdicts = {
        dpt: matcher.match(packet(syn(dpt=dpt))) is not None
        for dpt in (21, 22, 23, 999, 1000, 1002, 1003)
    }
    assert verdicts == {
        21: False,
        22: True,
        23: False,
        999: False,
        1000: True,
        1002: True,
        1003: False,
    }
    numbers = load_filter(write(tmp_path, 'name = "n"\n[match]\nproto = [47, "TCP"]\n', "n.toml"))
    assert numbers.proto == frozenset({"47", "TCP"})


def test_dst_unicast_ignores_multicast_broadcast_and_unspecified(tmp_path: Path) -> None:
    flt = load_filter(write(tmp_path, 'name = "u"\n[match]\ndst_unicast = true\n'))
    matcher = one(flt)
    verdicts = {
        dst: matcher.match(packet(tcp_line(PROBER4, dst, "SYN"))) is not None
        for dst in (HOST4, "224.0.0.1", "192.0.2.255", "0.0.0.0", "255.255.255.255")
    }
    assert verdicts == {
        HOST4: True,
        "224.0.0.1": False,
        "192.0.2.255": False,
        "0.0.0.0": False,
        "255.255.255.255": False,
    }
    v6 = {
        dst: matcher.match(packet(tcp_line("2001:db8::42", dst, "SYN"))) is not None
        for dst in ("2001:db8::10", "ff02::1", "::")
    }
    assert v6 == {"2001:db8::10": True, "ff02::1": False, "::": False}


def test_jail_prefix_restricts_the_whole_chain(tmp_path: Path) -> None:
    flt = load_filter(write(tmp_path, GOOD))
    matcher = Matcher("j", [(flt, 1.0)], prefix=re.compile("UNKNOWN_"))
    assert matcher.match(packet(synack())) is not None  # prefix UNKNOWN_INCOMING:
    assert matcher.match(packet(syn())) is None  # prefix DROP


def test_ignore_prefix_wins_over_match_prefix(tmp_path: Path) -> None:
    flt = load_filter(
        write(tmp_path, 'name = "i"\n[match]\nprefix = "(?i)invalid"\n[ignore]\nprefix = "AUDIT"\n')
    )
    matcher = one(flt)
    assert matcher.match(packet(tcp_line(prefix="DROP INVALID "))) is not None
    assert matcher.match(packet(tcp_line(prefix="[UFW AUDIT INVALID] "))) is None
    assert matcher.match(packet(tcp_line(prefix="DROP "))) is None
