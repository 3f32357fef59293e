"""The key tables of README.md and docs/jails.toml.5, rendered from blocker/schema.py. PURE.

scripts/config-docs writes them between the BEGIN/END marker lines of each file;
tests/test_schema.py fails when a file's tables differ from what this renders.
Help texts are one line of plain text where `backticks` mark code.
"""

from __future__ import annotations

import re

from blocker.schema import REQUIRED, SECTIONS, Key, Section

MARKDOWN_BEGIN = (
    "<!-- BEGIN config keys: generated from blocker/schema.py by scripts/config-docs -->"
)
MARKDOWN_END = "<!-- END config keys -->"
ROFF_BEGIN = '.\\" BEGIN config keys: generated from blocker/schema.py by scripts/config-docs'
ROFF_END = '.\\" END config keys'
_CODE = re.compile(r"`([^`]+)`")


def title(section: Section) -> str:
    if section.name == "":
        return "Top level"
    if section.name == "jails":
        return "[defaults] and [jails.NAME]"
    return f"[{section.name}]"


def _meaning(key: Key) -> str:
    return key.help + (" ([jails.NAME] only)" if key.jail_only else "")


def markdown() -> str:
    """One table per section: key, type, default, meaning."""
    out: list[str] = []
    for section in SECTIONS:
        name = title(section) if section.name == "" else f"`{title(section)}`"
        out += [
            f"{name}: {section.help}.",
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        out += [
            f"| `{key.name}` | {key.check.kind} | {default} | {_meaning(key)} |"
            for key in section.keys
            for default in [
                "(required)" if key.default is REQUIRED else f"`{key.check.show(key.default)}`"
            ]
        ]
        out.append("")
    return "\n".join(out)


def roff() -> str:
    """One .SS per section, one .TP per key: help (type; default)."""
    out: list[str] = []
    for section in SECTIONS:
        out += [f".SS {_roff_text(title(section))}", _roff_text(_sentence(section.help))]
        for key in section.keys:
            default = (
                "required" if key.default is REQUIRED else "default " + key.check.show(key.default)
            )
            text = _sentence(f"{_meaning(key)} ({key.check.kind}; {default})")
            out += [".TP", f".B {_roff_text(key.name)}", _roff_text(text)]
    return "\n".join(out) + "\n"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _roff_text(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = _CODE.sub(r"\\fB\1\\fR", text)
    return "\\&" + text if text.startswith((".", "'")) else text


def replace_region(text: str, begin: str, end: str, body: str) -> str:
    """`text` with the lines between the `begin` and `end` marker lines replaced by `body`."""
    head, found, rest = text.partition(begin + "\n")
    _, found_end, tail = rest.partition(end + "\n")
    if not found or not found_end:
        raise ValueError(f"markers {begin!r} ... {end!r} not found")
    return head + begin + "\n" + body + end + "\n" + tail
