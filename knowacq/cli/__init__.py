"""The `knowacq` command line (the top layer): one module per stage's commands; `main` is the entry point."""

from __future__ import annotations

from knowacq.cli import _export, _loop, _models, _serve, _train
from knowacq.cli._app import app, main

for _stage in (_train, _export, _serve, _loop, _models):  # this order is the order of `knowacq --help`
    app.add_typer(_stage.commands)

__all__ = ["app", "main"]
