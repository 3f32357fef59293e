"""No module of the package reads another object's private attributes (issue 13.1): the
fast path goes through named entry points (KernelLogParser.addresses, Matcher.fast_plan,
Scorer.add), not through another class's caches."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blocker"
# NamedTuple's API is spelled with a leading underscore, and is public.
NAMEDTUPLE_API = frozenset(("_make", "_fields", "_replace", "_asdict", "_field_defaults"))


def private_reads(source: str) -> list[str]:
    """`x._name` where x is not self or cls, as `line: expression`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMEDTUPLE_API
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_finds_a_private_read() -> None:
    assert private_reads("def f(parser):\n    return parser._addresses.get\n") == [
        "2: parser._addresses"
    ]
    assert private_reads("class A:\n    def f(self):\n        return self._cache\n") == []


def test_no_module_reads_another_objects_private_attributes() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): reads
        for path in sorted(PACKAGE.rglob("*.py"))
        if (reads := private_reads(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
