"""Versions of the libraries that made an artifact, recorded beside it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["library_versions"]


def library_versions(*packages: str) -> dict[str, str]:
    """Python's version and each installed package's version (absent packages are left out)."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
