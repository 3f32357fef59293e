"""blocker's version, as installed (the package metadata), for status and metrics."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("blocker")
    except metadata.PackageNotFoundError:
        return "unknown"
