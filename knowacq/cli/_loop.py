"""Stage 4's commands: `knowacq feedback export|import`, `knowacq retrain`, `knowacq al simulate|replay|demo-loop`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from knowacq.cli._app import StoreOption, err, friendly, out, split_names
from knowacq.cli._render import print_replay, print_simulation

if TYPE_CHECKING:
    from knowacq.loop import RetrainResult

__all__ = ["commands"]

commands = typer.Typer()

feedback_app = typer.Typer(help="The feedback store: labelling hand-off.", no_args_is_help=True)
commands.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@friendly
def feedback_export(
    out_file: Annotated[Path, typer.Option("--out", dir_okay=False, help="File to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Items to export (at most).")] = 100,
    fmt: Annotated[str, typer.Option("--format", help="label-studio or csv.")] = "label-studio",
    status: Annotated[
        str,
        typer.Option(
            help="captured: low-confidence predictions, chosen by --strategy; sampled: the random sample of live "
            "traffic (KNOWACQ_SAMPLE_RATE), oldest first, no strategy and no pre-annotation: once labelled, the "
            "live evaluation set."
        ),
    ] = "captured",
    strategy_name: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="random, least-confidence, margin or entropy [default: margin] (with --pool also badge, diversity, "
            "density); refused with --status sampled.",
        ),
    ] = None,
    store: StoreOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the strategy's random choices.")] = 0,
    pool: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            help="A scored pool (knowacq predict's .jsonl or .parquet, or its Ray folder) to select from instead "
            "of the store; every strategy, badge, diversity and density included (they need --embeddings there).",
        ),
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --pool over 200,000 rows: the most uncertain rows kept by the first, streaming stage "
            "[default: max(10 x n, 1000)].",
        ),
    ] = None,
) -> None:
    """Hand predictions to labelling: write Label Studio tasks or CSV, mark them queued. With --pool, pick rows
    of a scored pool file instead (their labels come back through feedback import as new labelled texts)."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import export_pool_tasks, export_tasks

    if pool is not None:
        if status != "captured":
            from knowacq.errors import ConfigError

            raise ConfigError("--pool selects from a scored pool file; --status applies to the store only")
        picked = export_pool_tasks(
            pool, out_file, n=n, strategy_name=strategy_name or "margin", fmt=fmt, seed=seed, candidates=candidates
        )
        how = (
            f"two stages: the {picked.candidates} most uncertain of {picked.pool_rows} rows, then {picked.strategy}"
            if picked.two_stage
            else f"{picked.strategy} over all {picked.pool_rows} rows"
        )
        out.print(f"exported {len(picked.picked)} row(s) of {pool} ({how}) to {out_file} in {picked.seconds:.1f} s")
        return
    records = export_tasks(
        FeedbackStore(store), out_file, n=n, strategy_name=strategy_name, fmt=fmt, seed=seed, status=status
    )
    how = "sampled, oldest first," if status == "sampled" else f"chosen by {strategy_name or 'margin'}"
    out.print(f"exported {len(records)} item(s) {how} to {out_file}; marked queued")


@feedback_app.command("import")
@friendly
def feedback_import(
    in_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Label Studio JSON export or CSV.")],
    store: StoreOption = None,
    label_names: Annotated[
        str | None, typer.Option(help="Allowed labels, comma-separated [default: those of the stored predictions].")
    ] = None,
    annotator: Annotated[str, typer.Option(help="Annotator recorded when the file names none.")] = "",
) -> None:
    """Store human labels from a Label Studio export or a CSV (prediction_id or text, label)."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import import_labels

    result = import_labels(
        FeedbackStore(store),
        in_file,
        label_names=split_names(label_names) if label_names else None,
        annotator=annotator,
    )
    out.print(
        f"labels: {result.created} new, {result.updated} changed, {result.unchanged} unchanged; "
        f"{result.new_texts} new text(s); {len(result.skipped)} row(s) skipped"
    )
    for line in result.skipped[:20]:
        err.print(f"  skipped {line}")
    if len(result.skipped) > 20:
        err.print(f"  ... and {len(result.skipped) - 20} more")


# long: typer options (18 of them); the body is short
@commands.command()
@friendly
def retrain(
    current: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The variant folder being served.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for the run (a sub-folder per run).")],
    store: StoreOption = None,
    dev: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Dev TSV [default: the one recorded by training]."),
    ] = None,
    train_tsv: Annotated[
        Path | None,
        typer.Option(
            "--train", exists=True, dir_okay=False, help="Original training TSV for replay [default: recorded]."
        ),
    ] = None,
    replay: Annotated[int, typer.Option(min=0, help="Original training rows trained on beside the new labels.")] = 4000,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate of the continued fine-tuning.")] = 2e-5,
    tolerance: Annotated[
        float, typer.Option(help="Pass if candidate accuracy >= current - tolerance, on dev and on live data.")
    ] = 0.005,
    min_live: Annotated[
        int,
        typer.Option(min=1, help="Live evaluation labels needed to judge on live data too (fewer: dev alone)."),
    ] = 50,
    register: Annotated[
        str, typer.Option(help="Model-store name a passing candidate is registered under ('' to skip).")
    ] = "knowacq-classifier",
    publish: Annotated[bool, typer.Option(help="Tell running services (through the store) about it.")] = True,
    shadow: Annotated[
        bool,
        typer.Option(
            help="Publish a passing candidate in shadow (the services score it on live traffic, then promote or "
            "reject it); --no-shadow: it serves at once."
        ),
    ] = True,
    queued: Annotated[
        bool,
        typer.Option("--queued", help="Run only if a retrain request is queued (Label Studio's START_TRAINING)."),
    ] = False,
    reoptimise: Annotated[
        str,
        typer.Option(
            help="Pruning presets: keep-structure (the current variant's pruned model trains on, no new prune), "
            "fresh-prune, or auto (keep-structure when the variant keeps its pruned model)."
        ),
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Retrain on the new human labels; publish only if the candidate passes its gates and is not worse."""
    from knowacq.base import FeedbackStore
    from knowacq.loop import RetrainConfig, retrain_queued
    from knowacq.loop import retrain as run

    feedback = FeedbackStore(store)
    config = RetrainConfig(
        replay=replay, epochs=epochs, learning_rate=lr, tolerance=tolerance, min_live=min_live, reoptimise=reoptimise
    )

    def once() -> RetrainResult:
        return run(
            current,
            feedback,
            out_dir,
            dev_file=dev,
            train_file=train_tsv,
            config=config,
            register_as=register or None,
            publish=publish,
            shadow=shadow,
            progress=progress,
            log=lambda line: err.print(line),
        )

    if not queued:
        _print_retrain(once())
        return
    requests, result = retrain_queued(feedback, once, log=lambda line: err.print(line))
    if result is None:
        out.print("no queued retrain request")
        return
    _print_retrain(result)
    out.print(f"retrain request(s) {', '.join(f'#{r.id}' for r in requests)} done ({result.run_id})")


def _print_retrain(result: RetrainResult) -> None:
    """The decision, its reasons, the evidence it rests on, and where the candidate went."""
    verdict = "PROMOTED" if result.promoted else "REJECTED"
    out.print(
        f"{verdict}: current dev {result.current_accuracy:.4f}, candidate "
        f"{'-' if result.candidate_accuracy is None else f'{result.candidate_accuracy:.4f}'}, "
        f"{result.labels_used} new label(s); record {result.run_dir / 'record.json'}"
        + (f"; tag {result.tag}" if result.tag else "")
    )
    if result.reoptimise != "none":
        out.print(f"  candidate made by {result.reoptimise} (record.json's reoptimise says why)")
    for reason in result.reasons:
        out.print(f"  {reason}")
    live = result.live
    if live is None:
        out.print(f"  decided by {result.decided_by}; no live evidence: {result.live_skipped}")
    else:
        out.print(
            f"  decided by {result.decided_by}; live evaluation set: current {live.current}, candidate "
            f"{live.candidate}, candidate - current {live.difference}"
        )
    if result.published == "shadow":
        out.print(
            f"  in shadow (run {result.shadow_run}): the services score it beside the serving model and promote "
            "or reject it (knowacq models shadow)"
        )
    elif result.published == "serving":
        out.print("  published as the serving model: every service switches to it")


al_app = typer.Typer(help="Active learning: simulations of the query strategies.", no_args_is_help=True)
commands.add_typer(al_app, name="al")


# long: typer options (19 of them); the body is short
@al_app.command("simulate")
@friendly
def al_simulate(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Training TSV: the pool (labels hidden).")],
    dev: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Dev TSV for the learning curves.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for results.json and the PNG.")],
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: random, least-confidence, margin, entropy, diversity, badge, density, bandit."
        ),
    ] = "random,least-confidence,margin,entropy,diversity,badge,bandit",
    seed_labels: Annotated[int, typer.Option(min=1, help="Labels drawn at random before round 1.")] = 200,
    batch: Annotated[int, typer.Option(min=1, help="Labels queried per round.")] = 200,
    rounds: Annotated[int, typer.Option(min=1)] = 9,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    max_pool: Annotated[
        int,
        typer.Option(
            min=0,
            help="At most this many pool rows (0: all). Full mode needs a "
            "pool of at most 20000 rows: set it, e.g. 3000.",
        ),
    ] = 0,
    heldout: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training rows kept out of the pool and evaluated on beside dev (a seeded permutation; texts found "
            "nowhere else in the training file nor in dev).",
        ),
    ] = 5000,
    reward_rows: Annotated[
        int,
        typer.Option(
            min=0, help="Training rows the bandit is rewarded on, apart from pool and held-out rows (bandit only)."
        ),
    ] = 1000,
    mode: Annotated[
        str,
        typer.Option(
            help="fast: frozen encoder + logistic-regression head (minutes); full: "
            "fine-tune encoder + head from --base every round on the labelled "
            "rows and score the pool with it (slow: limit the pool with "
            "--max-pool)."
        ),
    ] = "fast",
    full_start: Annotated[
        str,
        typer.Option(
            help="Full mode: base: each round fine-tunes from the base model; continue: from the previous "
            "round's weights of the same strategy and seed (round 1 from round 0's), on all labelled rows."
        ),
    ] = "base",
    c: Annotated[
        float,
        typer.Option(
            "--c",
            min=0.0,
            help="Inverse regularisation of the logistic head, fast "
            "mode (0: cross-validated on the labelled set each "
            "round).",
        ),
    ] = 1.0,
    near_duplicate_cosine: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Skip a candidate this similar to one already in the batch (0: off)."),
    ] = 0.98,
    base: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Encoder folder, frozen (fast) or fine-tuned (full) [default: all-MiniLM-L6-v2]."
        ),
    ] = None,
    label_names: Annotated[str | None, typer.Option(help="Class names for ids 0,1,..., comma-separated.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Pool-based active learning on labelled data: learning curves per strategy on dev and held-out rows, AULC
    gain over random and labels to stay at random's final accuracy with bootstrap intervals, the bandit's regret."""
    from knowacq.loop import SimulationConfig, simulate

    config = SimulationConfig(
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        seed_labels=seed_labels,
        batch=batch,
        rounds=rounds,
        seeds=seeds,
        max_pool=max_pool,
        heldout=heldout,
        reward_rows=reward_rows,
        c=c,
        near_duplicate_cosine=near_duplicate_cosine or None,
        mode=cast(Literal["fast", "full"], mode),  # SimulationConfig refuses any other
        full_start=cast(Literal["base", "continue"], full_start),
    )
    result = simulate(
        data,
        dev,
        out_dir,
        config=config,
        base=base,
        label_names=split_names(label_names) if label_names else None,
        progress=progress,
        log=lambda line: err.print(line),
    )
    print_simulation(result)


# long: typer options (14 of them); the body is short
@al_app.command("replay")
@friendly
def al_replay(
    data: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="Training TSV: seed sets, the days' traffic, held-out rows."),
    ],
    dev: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Dev TSV: the retrain gate's evidence.")],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for replay.json, the PNG, runs.")],
    days: Annotated[int, typer.Option(min=1, help="Days: each serves traffic, spends labels, retrains.")] = 5,
    traffic: Annotated[int, typer.Option(min=1, help="Texts served per day.")] = 2000,
    budget: Annotated[int, typer.Option(min=1, help="Labels spent per day in each arm.")] = 100,
    seed_labels: Annotated[int, typer.Option(min=1, help="Training rows the first model is fine-tuned on.")] = 200,
    seeds: Annotated[int, typer.Option(min=1, help="Paired seeds (first model and traffic per seed).")] = 3,
    heldout: Annotated[
        int, typer.Option(min=1, help="Training rows, never served nor trained on, the served model is scored on.")
    ] = 2000,
    preset: Annotated[str, typer.Option(help="Export preset of the first model and of every retrain.")] = "cpu-fp32",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each daily retrain.")] = 3,
    reoptimise: Annotated[
        str, typer.Option(help="Pruning presets: auto, keep-structure or fresh-prune (see knowacq retrain).")
    ] = "auto",
    min_confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help="The service's capture threshold.")] = 0.75,
    base: Annotated[
        Path | None, typer.Option(file_okay=False, help="Encoder folder [default: all-MiniLM-L6-v2].")
    ] = None,
    label_names: Annotated[str | None, typer.Option(help="Class names for ids 0,1,..., comma-separated.")] = None,
) -> None:
    """The live loop replayed through the real service: each day it serves traffic, a label budget goes to
    what it captured (one arm) or to a random sample of the day (the other), `knowacq retrain` runs with its
    gate and a promoted model serves the next day; the served model's held-out accuracy per day and arm."""
    from knowacq.loop import ReplayConfig, RetrainConfig, replay

    config = ReplayConfig(
        days=days,
        traffic=traffic,
        budget=budget,
        seed_labels=seed_labels,
        seeds=seeds,
        heldout=heldout,
        preset=preset,
        min_confidence=min_confidence,
        retrain=RetrainConfig(epochs=epochs, reoptimise=reoptimise),
    )
    result = replay(
        data,
        dev,
        out_dir,
        config=config,
        base=base,
        label_names=split_names(label_names) if label_names else None,
        log=lambda line: err.print(line),
    )
    print_replay(result)


# long: typer options (12 of them); the body is short
@al_app.command("demo-loop")
@friendly
def al_demo_loop(
    variant: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The variant to serve first.")],
    traffic_tsv: Annotated[
        Path,
        typer.Option(
            "--traffic",
            exists=True,
            dir_okay=False,
            help="Labelled TSV: its texts are the traffic, its labels the annotators (not the dev file).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder for the store, runs, logs.")],
    n_traffic: Annotated[int, typer.Option(min=1, help="Texts sent.")] = 1000,
    skip: Annotated[int, typer.Option(min=0, help="Rows of --traffic skipped first.")] = 0,
    labels: Annotated[int, typer.Option(min=1, help="Captured items sent for labelling.")] = 200,
    replay: Annotated[int, typer.Option(min=0, help="Original training rows replayed in the retrain.")] = 4000,
    min_confidence: Annotated[float, typer.Option(help="Capture threshold of the server.")] = 0.75,
    sample_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of traffic sampled for the live evaluation set (all labelled)."),
    ] = 0.1,
    min_live: Annotated[int, typer.Option(min=1, help="Live labels needed to judge the candidate on them.")] = 50,
    shadow: Annotated[
        bool, typer.Option(help="A passing candidate runs in shadow first (--no-shadow: it serves at once).")
    ] = True,
) -> None:
    """One turn of the loop: serve, traffic, capture and sample, label, retrain, shadow, promote or reject."""
    from knowacq.loop import RetrainConfig, demo_loop

    s = demo_loop(
        variant,
        traffic_tsv,
        out_dir,
        traffic=n_traffic,
        skip=skip,
        labels=labels,
        min_confidence=min_confidence,
        sample_rate=sample_rate,
        shadow=shadow,
        config=RetrainConfig(replay=replay, min_live=min_live),
        log=lambda line: err.print(line),
    )
    cand = "-" if s["candidate_dev_accuracy"] is None else f"{s['candidate_dev_accuracy']:.4f}"
    live = s["live"]
    judged = (
        f"live {live['current']['estimate']:.4f} -> {live['candidate']['estimate']:.4f} on {live['n']}"
        if live
        else f"no live evidence: {s['live_skipped']}"
    )
    out.print(
        f"loop: {s['traffic']} texts served, {s['captured']} captured, {s['sampled']} sampled, {s['labelled']} "
        f"labelled + {s['live_labelled']} live; retrain {s['decision'].upper()} by {s['decided_by']} (dev "
        f"{s['current_dev_accuracy']:.4f} -> {cand}; {judged})"
    )
    for reason in s["reasons"]:
        out.print(f"  {reason}")
    run = s["shadow"]
    if run is not None:
        out.print(
            f"shadow run {run['run']}: {run['state']} after {run['scored']} texts (agreement "
            f"{run['agreement']:.4f}){': ' + run['reason'] if run['reason'] else ''}"
        )
    if s["served_after"] != s["served_before"]:
        out.print(f"now serving {s['served_after']} ({s['tag']})")
    out.print(f"record: {s['record']}")
