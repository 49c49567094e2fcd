"""The `knowacq` typer app, its consoles, the error wrapper (one clear line, exit code 2), shared options, `main`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console

from knowacq.errors import ConfigError, KnowacqError

__all__ = ["StoreOption", "app", "err", "friendly", "main", "out", "split_names"]

app = typer.Typer(
    help="Fine-tune, optimise, serve and actively improve transformer text classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[default: ...]" in them is text, not Rich markup (which would swallow it).
    rich_markup_mode=None,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="KNOWACQ_STORE_URL",
        help="SQLAlchemy URL of the feedback store [default: ./knowacq-feedback.db].",
    ),
]


def friendly(fn: F) -> F:
    """Turn the kit's own errors into one 'error: ...' message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KnowacqError as exc:
            err.print(f"[red]error:[/] {exc}", markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return cast(F, wrapper)


def split_names(text: str) -> tuple[str, ...]:
    """Class names from a comma-separated option (--label-names): at least two, none empty."""
    names = tuple(n.strip() for n in text.split(","))
    if len(names) < 2 or not all(names):
        raise ConfigError(f"--label-names needs at least two non-empty comma-separated names, got {text!r}")
    return names


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
