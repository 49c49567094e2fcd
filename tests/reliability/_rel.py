"""Shared helpers of the reliability suite; its fixtures (figures, fuzz_server, second_variant) and the
outcome hook are in tests/reliability/conftest.py.

The suite is short by default (part of `make test` and CI), full with KNOWACQ_RELIABILITY=full
(`make reliability`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import RELIABILITY_TOKEN as TOKEN  # noqa: F401 - re-exported for the suite's modules

FULL = os.environ.get("KNOWACQ_RELIABILITY", "short") == "full"


def scale(short: Any, full: Any) -> Any:
    """The short value under `make test`, the full one under `make reliability`."""
    return full if FULL else short


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""
