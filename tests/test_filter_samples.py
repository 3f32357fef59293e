"""Every filter proves itself on its annotated sample log (tests/samples/<filter>.log).

Format, after fail2ban's tests/files/logs: each sample line is preceded by
``# expect: {"match": true, "offender": "203.0.113.66"}`` or ``# expect: {"match": false}``.
Other ``#`` lines are free comments; blank lines are ignored. A line is fed to its filter
ALONE (a one-filter Matcher) and the verdict, including the offender address in canonical
compressed form, must agree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import pytest
from loglines import BASE, PROBER4, PROBER6, outgoing_syn

from blocker.config import load_config
from blocker.filters import Filter, Matcher, load_filter, load_filters
from blocker.netfilter import KernelLogParser

REPO = Path(__file__).resolve().parents[1]
FILTERS_DIR = REPO / "filters"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
# An hour after the samples' RFC 3339 stamps; year-less stamps are placed relative to it.
NOW = BASE + 3600.0
_EXPECT = "# expect:"
_TRADITIONAL = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: ")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) \S+ kernel: ")
_IGNORED_PREFIXES = ("ACCEPT ", "ALLOW: ", "[UFW ALLOW] ", "[UFW AUDIT] ", "audit: ")
_UPTIME = re.compile(r"\[\s*\d+\.\d+\] ")
# Known bugs in blocker/: lines of this shape are expected to fail until the bug is fixed
# (strict: a fix turns them into XPASS failures, and the entry must then go).
KNOWN_BUGS: list[tuple[re.Pattern[str], str]] = []


def known_bug(line: str) -> list[pytest.MarkDecorator]:
    return [
        pytest.mark.xfail(strict=True, reason=reason)
        for shape, reason in KNOWN_BUGS
        if shape.search(line)
    ]


@dataclass(frozen=True)
class Sample:
    filter: str
    lineno: int
    line: str
    match: bool
    offender: str | None

    @property
    def id(self) -> str:
        return f"{self.filter}.log:{self.lineno}"


def read_samples(path: Path) -> tuple[list[Sample], list[str]]:
    """(samples, format problems) of one sample file."""
    samples: list[Sample] = []
    problems: list[str] = []
    expect: dict[str, object] | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{lineno}"
        if raw.startswith(_EXPECT):
            if expect is not None:
                problems.append(f"{where}: two '# expect' lines in a row")
            try:
                parsed = json.loads(raw[len(_EXPECT) :])
            except ValueError as exc:
                problems.append(f"{where}: '# expect' is not JSON: {exc}")
                parsed = {}
            expect = parsed if isinstance(parsed, dict) else {}
            problem = _expect_problem(expect)
            if problem:
                problems.append(f"{where}: {problem}")
            continue
        if raw.startswith("#") or not raw.strip():
            continue
        if expect is None:
            problems.append(f"{where}: sample line without a '# expect' line before it")
            continue
        offender = expect.get("offender")
        samples.append(
            Sample(
                path.stem,
                lineno,
                raw,
                expect.get("match") is True,
                offender if isinstance(offender, str) else None,
            )
        )
        expect = None
    if expect is not None:
        problems.append(f"{path.name}: '# expect' at the end of the file with no line after it")
    return samples, problems


def _expect_problem(expect: dict[str, object]) -> str | None:
    if set(expect) - {"match", "offender"}:
        return f"unknown keys {sorted(set(expect) - {'match', 'offender'})}"
    if not isinstance(expect.get("match"), bool):
        return "'match' must be true or false"
    offender = expect.get("offender")
    if expect["match"] is False:
        return "a non-match names no offender" if offender is not None else None
    if not isinstance(offender, str):
        return "a match must name its offender"
    try:
        canonical = str(ip_address(offender))
    except ValueError:
        return f"offender {offender!r} is not an address"
    return None if canonical == offender else f"offender must be written {canonical!r}"


def shipped_filters() -> dict[str, Filter]:
    return load_filters(FILTERS_DIR)


def all_samples() -> list[Sample]:
    samples: list[Sample] = []
    for path in sorted(SAMPLES_DIR.glob("*.log")):
        samples.extend(read_samples(path)[0])
    return samples


def verdict(flt: Filter, line: str) -> tuple[bool, str | None]:
    """(matched, offender) for one line run through `flt` alone."""
    packet = KernelLogParser().parse(line, NOW)
    if packet is None:
        return False, None
    hit = Matcher("t", [(flt, flt.weight)]).match(packet)
    if hit is None:
        return False, None
    assert hit.filter == flt.name
    assert hit.weight == flt.weight
    return True, str(hit.offender)


SAMPLES = all_samples()
SAMPLE_PARAMS = [pytest.param(s, id=s.id, marks=known_bug(s.line)) for s in SAMPLES]


def test_samples_were_found() -> None:
    assert len(SAMPLES) >= 12 * 10, "tests/samples/ lost its lines"


@pytest.mark.parametrize("sample", SAMPLE_PARAMS)
def test_sample_line(sample: Sample) -> None:
    flt = load_filter(FILTERS_DIR / f"{sample.filter}.toml")
    assert verdict(flt, sample.line) == (sample.match, sample.offender), sample.line


@pytest.mark.parametrize("name", sorted(p.stem for p in FILTERS_DIR.glob("*.toml")))
def test_every_filter_has_a_complete_sample_file(name: str) -> None:
    path = SAMPLES_DIR / f"{name}.log"
    assert path.is_file(), f"filters/{name}.toml has no sample log {path}"
    samples, problems = read_samples(path)
    assert problems == []
    positives = [s for s in samples if s.match]
    assert positives, f"{path.name} has no positive line"
    assert any(not s.match for s in samples), f"{path.name} has no negative line"
    versions = {ip_address(s.offender or "").version for s in positives}
    assert versions == {4, 6}, f"{path.name}: positives must cover IPv4 and IPv6"
    styles = {_style(s.line) for s in positives}
    assert {"traditional", "rfc3339", "headerless"} <= styles, (
        f"{path.name}: positives must cover both syslog timestamp styles and headerless text"
    )


def _style(line: str) -> str:
    if _TRADITIONAL.match(line):
        return "traditional"
    if _RFC3339.match(line):
        return "rfc3339"
    if line.startswith("["):
        return "dmesg"
    return "headerless"


def test_every_sample_file_names_a_shipped_filter() -> None:
    names = set(shipped_filters())
    orphans = sorted(p.stem for p in SAMPLES_DIR.glob("*.log") if p.stem not in names)
    assert orphans == []


def test_format_checker_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.log"
    bad.write_text(
        "# free comment\n"
        "DROP IN=eth0 OUT= SRC=203.0.113.66 DST=192.0.2.10\n"  # no expect before it
        '# expect: {"match": true}\n'  # a match without offender
        "line\n"
        '# expect: {"match": true, "offender": "2001:0db8::1"}\n'  # not canonical
        "line\n"
        '# expect: {"match": false, "ofender": "x"}\n'  # typo'd key
        "line\n"
        '# expect: {"match": false}\n',  # dangling
        encoding="utf-8",
    )
    samples, problems = read_samples(bad)
    assert len(samples) == 3
    assert [p.split(": ", 1)[0] for p in problems] == [
        "x.log:2",
        "x.log:3",
        "x.log:5",
        "x.log:7",
        "x.log",
    ]


# ---- properties every filter shares, checked across the whole sample corpus ----------


@pytest.mark.parametrize("at", [BASE, None], ids=["rfc3339", "headerless"])
@pytest.mark.parametrize("dst", [PROBER4, PROBER6])
def test_outgoing_syn_matches_no_filter_and_no_jail(dst: str, at: float | None) -> None:
    line = outgoing_syn(dst, at=at)
    packet = KernelLogParser().parse(line, NOW)
    assert packet is not None and packet.direction == "out"
    for flt in shipped_filters().values():
        assert verdict(flt, line) == (False, None), flt.name
    for jail in load_config(REPO / "jails.toml").jails:
        assert jail.matcher().match(packet) is None, jail.name


def _prefix_start(line: str) -> int:
    """Index where the LOG prefix begins: after the syslog header and any [uptime] stamp."""
    tag = line.find(" kernel: ")
    start = tag + len(" kernel: ") if tag >= 0 else 0
    uptime = _UPTIME.match(line, start)
    return uptime.end() if uptime else start


def _forged(line: str) -> str:
    """The same record written by a user process: a syslog tag other than 'kernel:'."""
    tag = line.find(" kernel: ")
    body = line[tag + len(" kernel: ") :] if tag >= 0 else line
    return f"Nov 22 02:04:54 host sshd[1]: Invalid user kernel: {body}"


def _variants() -> list[object]:
    """Every positive sample line with an ignored word put at the start of its LOG prefix."""
    params: list[object] = []
    for sample in SAMPLES:
        if not sample.match:
            continue
        start = _prefix_start(sample.line)
        for word in _IGNORED_PREFIXES:
            line = sample.line[:start] + word + sample.line[start:]
            params.append(
                pytest.param(line, id=f"{sample.id}:{word.strip()}", marks=known_bug(line))
            )
    return params


@pytest.mark.parametrize("line", _variants())
def test_accept_allow_audit_prefixes_match_no_filter(line: str) -> None:
    for flt in shipped_filters().values():
        assert verdict(flt, line) == (False, None), flt.name


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.match], ids=[s.id for s in SAMPLES if s.match]
)
def test_forged_variants_are_refused(sample: Sample) -> None:
    traditional = _forged(sample.line)
    rfc3339 = traditional.replace("Nov 22 02:04:54", "2026-11-22T02:04:54Z")
    for line in (traditional, rfc3339):
        assert KernelLogParser().parse(line, NOW) is None, line
        assert list(KernelLogParser().parse_text(line + "\n", NOW)) == []
