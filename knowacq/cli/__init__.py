"""The `knowacq` command line (the top layer): one module per stage's commands; `main` is the entry point."""

from __future__ import annotations

from knowacq.cli._commands import app, main

__all__ = ["app", "main"]
