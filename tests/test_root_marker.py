"""The one mechanism for root-only tests (tests/conftest.py): a marker that carries its reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CONFTEST = (TESTS / "conftest.py").read_text()

SAMPLE = """
import pytest

@pytest.mark.root("read and write /dev/kmsg")
def test_with_reason(): pass

@pytest.mark.root
def test_without_reason(): pass

def test_plain(): pass
"""


def run_sample(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, uid: int, *args: str
) -> pytest.RunResult:
    monkeypatch.setattr("os.geteuid", lambda: uid)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\naddopts = --strict-markers\nmarkers =\n    root(reason): root\n")
    pytester.makepyfile(test_sample=SAMPLE)
    return pytester.runpytest_inprocess("-ra", *args)


def test_without_root_marked_tests_skip_and_say_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_sample(pytester, monkeypatch, 1000)
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * test_sample.py:*: needs root: read and write /dev/kmsg",
            "SKIPPED * test_sample.py:*: needs root: network namespaces, ipset, iptables",
        ]
    )


def test_as_root_marked_tests_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sample(pytester, monkeypatch, 0).assert_outcomes(passed=3)


def test_not_root_deselects_them_for_scripts_check(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_sample(pytester, monkeypatch, 0, "-m", "not root")
    result.assert_outcomes(passed=1, deselected=2)


def test_no_test_decides_on_its_own_whether_it_is_root() -> None:
    """A second way (a skipif on geteuid, a skip in a fixture) would dodge `-m "not root"`."""
    uid_check = re.compile(r"get(e)?uid\(\)\s*(!=|==|>|<)")
    offenders = [
        f"{path.relative_to(TESTS)}:{number}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "conftest.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if uid_check.search(line) and path != Path(__file__).resolve()
    ]
    assert offenders == [], "mark these tests @pytest.mark.root(reason) instead"
