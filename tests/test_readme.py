"""The README shows the DROP rule the code installs (rules.rule_spec), word for word."""

from __future__ import annotations

import re
from pathlib import Path

from blocker.firewall.rules import rule_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_rule_is_rule_spec() -> None:
    shown = re.findall(
        r"^\s*(-m set --match-set \S+ src .*)$", README.read_text(encoding="utf-8"), re.MULTILINE
    )
    assert shown == [" ".join(rule_spec("blocker4", "blocker"))]
    assert "UNTRACKED" not in shown[0]
