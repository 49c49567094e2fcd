"""What serves, and what served: `knowacq rollback`, `knowacq models history`, `knowacq models shadow`.

Every command reads or writes the feedback store only; the services that follow it (every worker of every
replica, each `KNOWACQ_RELOAD_POLL_S` seconds) do the switching.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from knowacq.cli._app import StoreOption, err, friendly, out

if TYPE_CHECKING:
    from knowacq.base import ModelEvent, ShadowRun

__all__ = ["commands"]

commands = typer.Typer()

models_app = typer.Typer(help="The serving model's history, the shadow candidate.", no_args_is_help=True)
commands.add_typer(models_app, name="models")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@commands.command()
@friendly
def rollback(
    store: StoreOption = None,
    reason: Annotated[str, typer.Option(help="Why, recorded in the model history.")] = "",
) -> None:
    """Return every replica to the model that served before the current one (a running shadow run stops)."""
    from knowacq.base import FeedbackStore

    event = FeedbackStore(store).rollback(reason=reason)
    source = event.evidence.get("from", "?")
    source_version = event.evidence.get("from_version") or "version unknown"
    say(
        f"rolled back from {source} ({source_version}) to {event.model} ({event.model_version or 'version unknown'});"
        " every service following the store switches at its next look (KNOWACQ_RELOAD_POLL_S)"
    )


@models_app.command("history")
@friendly
def models_history(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """What served when (start, promote, shadow-promote, reload, rollback) with its evidence, and the shadow runs."""
    from knowacq.base import FeedbackStore

    feedback = FeedbackStore(store)
    events, runs = feedback.model_history(), feedback.shadow_runs()
    if as_json:
        body = {"history": [_event_dict(e) for e in events], "shadow_runs": [_run_dict(r) for r in runs]}
        sys.stdout.write(json.dumps(body) + "\n")
        return
    if not events and not runs:
        say(f"no model history in {feedback!r} yet: it starts when a service first serves through it")
        return
    say("model history (newest last):")
    for e in events:
        say(f"  #{e.id} {_when(e.created_at)}  {e.action:<14} {e.model_version or '-'}  {e.model}")
        if e.reason:
            say(f"      reason: {e.reason}")
        if e.evidence:
            say(f"      evidence: {_summary(e.evidence)}")
    if runs:
        _print_runs(runs)


@models_app.command("shadow")
@friendly
def models_shadow(
    store: StoreOption = None,
    start: Annotated[
        str | None,
        typer.Option(help="Put this variant folder or model-store tag in shadow (a running candidate is superseded)."),
    ] = None,
    stop: Annotated[bool, typer.Option(help="Stop the running shadow run (it ends as superseded).")] = False,
    as_json: JsonOption = False,
) -> None:
    """The candidate in shadow: how much it scored, its agreement with the serving model; or start or stop one."""
    from knowacq.base import FeedbackStore
    from knowacq.errors import ConfigError

    if start and stop:
        raise ConfigError("give --start MODEL or --stop, not both")
    feedback = FeedbackStore(store)
    console = err if as_json else out  # with --json, stdout holds the JSON alone

    def note(line: str) -> None:
        console.print(line, soft_wrap=True, markup=False)

    if start:
        from bento import check_model

        check_model(start)  # a folder or tag that does not hold a passing variant fails here, not in every replica
        run = feedback.start_shadow(start, evidence={"started_by": "knowacq models shadow"})
        note(f"shadow run {run.id} started: {start}; every service following the store loads it beside its model")
    elif stop:
        active = feedback.active_shadow()
        if active is None:
            note("no shadow run is running")
        elif feedback.finish_shadow(active.id, "superseded", "stopped by 'knowacq models shadow --stop'"):
            note(f"shadow run {active.id} ({active.model}) stopped")
    runs = feedback.shadow_runs()
    current = feedback.active_shadow() or (runs[-1] if runs else None)
    if as_json:
        sys.stdout.write(json.dumps({"shadow": None if current is None else _run_dict(current)}) + "\n")
    elif current is None:
        out.print("no shadow run yet: start one with 'knowacq models shadow --start MODEL'")
    elif not (start or stop):
        _print_runs([current], "shadow run:" if current.state == "running" else "the last shadow run:")


def _print_runs(runs: list[ShadowRun], title: str = "shadow runs (newest last):") -> None:
    say(title)
    for r in runs:
        agreement = f"agreement {r.agreement:.4f}" if r.scored else "agreement -"
        finished = f", finished {_when(r.finished_at)}" if r.finished_at else ""
        say(
            f"  #{r.id} {_when(r.started_at)}  {r.state:<10} scored {r.scored}, {agreement}  "
            f"{r.model_version or '-'}  {r.model}{finished}"
        )
        if r.reason:
            say(f"      reason: {r.reason}")


def say(line: str) -> None:
    """One line of a listing, never wrapped nor read as markup (models are paths and tags)."""
    out.print(line, soft_wrap=True, markup=False)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _summary(evidence: dict[str, Any], limit: int = 6) -> str:
    """The evidence's figures in one line: scalars as they are, intervals by their estimate."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, dict) and "estimate" in value:
            parts.append(f"{key}={value['estimate']:.4g} (n={value.get('n', '?')})")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str, bool)):
            parts.append(f"{key}={value}")
    return ", ".join(parts[:limit]) + (f", +{len(parts) - limit} more" if len(parts) > limit else "")


def _event_dict(e: ModelEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "created_at": e.created_at.isoformat(),
        "action": e.action,
        "model": e.model,
        "model_version": e.model_version,
        "reason": e.reason,
        "evidence": e.evidence,
    }


def _run_dict(r: ShadowRun) -> dict[str, Any]:
    return {
        "id": r.id,
        "model": r.model,
        "model_version": r.model_version,
        "state": r.state,
        "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "scored": r.scored,
        "agreed": r.agreed,
        "agreement": r.agreement,
        "reason": r.reason,
        "evidence": r.evidence,
    }
