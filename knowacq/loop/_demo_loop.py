"""One turn of the loop, shown on real data: serve -> traffic -> capture and sample -> label -> retrain judged
on dev and live data -> shadow -> promote or reject.

The data set's own labels stand in for annotators. Traffic comes from a slice of a labelled TSV that is
not the dev file, so the retrained model is still judged on data it never saw. A share of the traffic
(`sample_rate`) is the unbiased live sample; labelled, it is the live evaluation set the retrain compares
both models on (when it holds `config.min_live` labels). A passing candidate goes to shadow: the server
scores every batch with it too (KNOWACQ_SHADOW_SHARE=1) and decides once it has scored `shadow_min_texts`
texts, while the demo keeps sending traffic.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from knowacq.base import FeedbackStore, ShadowRun, load_tsv
from knowacq.loop._handoff import ImportResult, export_tasks, import_labels
from knowacq.loop._retrain import RetrainConfig, retrain

__all__ = ["demo_loop"]

SHADOW_WAIT_S = 120.0
"""How long the demo sends traffic for a shadow run to be decided before it reports it still running."""


def demo_loop(
    variant: str | Path,
    traffic_file: str | Path,
    out_dir: str | Path,
    *,
    traffic: int = 1000,
    skip: int = 0,
    labels: int = 200,
    min_confidence: float = 0.75,
    sample_rate: float = 0.1,
    shadow: bool = True,
    shadow_min_texts: int = 200,
    config: RetrainConfig = RetrainConfig(),  # noqa: B008  frozen dataclass: immutable, safe to share
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve `variant`, send rows of `traffic_file`, label the captured and the sampled ones with the file's
    labels, retrain, follow the candidate through shadow; write and return the summary (loop.json)."""
    from bento import ServerProcess
    from export import read_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{(out_dir / 'feedback.db').resolve()}"
    data = load_tsv(traffic_file, label_names=tuple(read_manifest(variant).labels))
    rows = list(zip(data.single_texts("the demo loop"), (data.label_names[i] for i in data.labels)))[
        skip : skip + traffic
    ]
    settings: dict[str, str | int | float | bool | None] = {
        "model": str(Path(variant).resolve()),
        "store_url": store_url,
        "api_token": "demo-loop",
        "reload_poll_s": 1.0,
        "min_confidence": min_confidence,
        "sample_rate": sample_rate,
        "shadow_share": 1.0,
        "shadow_min_texts": shadow_min_texts,
    }
    with ServerProcess(settings, log_file=out_dir / "server.log", cwd=out_dir) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            version = client.get("/model").json()["model_version"]
            log(f"serving {version}; sending {len(rows)} texts of {traffic_file} as traffic")
            captured = _send(client, rows)
            store = FeedbackStore(store_url)
            sampled = store.counts().get("status_sampled", 0)
            log(f"{captured} of {len(rows)} predictions were captured as low-confidence, {sampled} sampled")
            imported = _label(store, out_dir, labels, dict(rows), "captured", log)
            live = _label(store, out_dir, sampled, dict(rows), "sampled", log) if sampled else None
            result = retrain(variant, store, out_dir / "runs", config=config, shadow=shadow, log=log, progress=False)
            run = _follow_shadow(client, store, result.shadow_run, rows, log) if result.shadow_run else None
            serving = result.published == "serving" or (run is not None and run.state == "promoted")
            after = _switched(client, version) if serving else version
    summary = {
        "served_before": version,
        "served_after": after,
        "traffic": len(rows),
        "captured": captured,
        "sampled": sampled,
        "labelled": imported.created,
        "live_labelled": 0 if live is None else live.created,
        "decision": "promoted" if result.promoted else "rejected",
        "decided_by": result.decided_by,
        "reasons": list(result.reasons),
        "current_dev_accuracy": result.current_accuracy,
        "candidate_dev_accuracy": result.candidate_accuracy,
        "live": None if result.live is None else result.live.as_dict(),
        "live_skipped": result.live_skipped,
        "published": result.published,
        "shadow": None if run is None else _shadow_summary(run),
        "tag": result.tag,
        "record": str(result.run_dir / "record.json"),
    }
    (out_dir / "loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _send(client: httpx.Client, rows: list[tuple[str, str]]) -> int:
    """Classify the texts, 16 a request; how many predictions the server captured as low-confidence."""
    captured = 0
    for start in range(0, len(rows), 16):
        answers = client.post("/classify", json={"texts": [t for t, _ in rows[start : start + 16]]}).json()
        captured += sum(a["low_confidence"] for a in answers)
    return captured


def _label(
    store: FeedbackStore, out_dir: Path, n: int, truth: dict[str, str], status: str, log: Callable[[str], None]
) -> ImportResult:
    """Export `n` predictions of `status` for labelling (captured: chosen by margin; sampled: oldest first),
    answer with the data set's labels, import the answers."""
    tasks = out_dir / f"to-label-{status}.csv"
    strategy = "margin" if status == "captured" else None
    exported = export_tasks(store, tasks, n=n, strategy_name=strategy, fmt="csv", status=status)
    answered = out_dir / f"labelled-{status}.csv"
    with (
        tasks.open(newline="", encoding="utf-8") as src,
        answered.open("w", newline="", encoding="utf-8") as dst,
    ):
        writer = csv.writer(dst)
        writer.writerow(["prediction_id", "label"])
        unmatched = 0
        for row in csv.DictReader(src):  # the data set's label stands in for an annotator
            if row["text"] in truth:
                writer.writerow([row["prediction_id"], truth[row["text"]]])
            else:
                unmatched += 1  # the stored text was redacted, so it no longer matches the data set
    imported = import_labels(store, answered, annotator="dataset")
    how = "margin strategy" if strategy else "the live sample, oldest first"
    log(
        f"exported {len(exported)} {status} for labelling ({how}), imported {imported.created} labels"
        + (f"; {unmatched} redacted text(s) could not be matched to the data set" if unmatched else "")
    )
    return imported


def _follow_shadow(
    client: httpx.Client, store: FeedbackStore, run_id: int, rows: list[tuple[str, str]], log: Callable[[str], None]
) -> ShadowRun:
    """Send traffic (the same texts again, 16 a request) until the server decides shadow run `run_id`, or
    SHADOW_WAIT_S pass; the run as the store has it then."""
    log(f"shadow run {run_id}: sending traffic until the server promotes or rejects the candidate")
    started = time.monotonic()
    deadline = started + SHADOW_WAIT_S
    start = 0
    run = store.shadow_run(run_id)
    while run is not None and run.state == "running" and time.monotonic() < deadline:
        client.post("/classify", json={"texts": [t for t, _ in rows[start : start + 16]] or ["a film"]})
        start = (start + 16) % max(len(rows), 1)
        run = store.shadow_run(run_id)
    assert run is not None  # retrain started it in this store
    said = run.reason or f"undecided after {SHADOW_WAIT_S:.0f} s"
    log(
        f"shadow run {run_id}: {run.state} after {run.scored} texts scored in {time.monotonic() - started:.1f} s "
        f"(agreement {run.agreement:.4f}): {said}"
    )
    return run


def _shadow_summary(run: ShadowRun) -> dict[str, Any]:
    return {
        "run": run.id,
        "state": run.state,
        "reason": run.reason,
        "scored": run.scored,
        "agreement": run.agreement,
    }


def _switched(client: httpx.Client, version: str) -> str:
    """The version served once the running service has switched from `version` (at most a minute's wait)."""
    after = version
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and after == version:
        time.sleep(0.5)
        after = client.get("/model").json()["model_version"]
    return after
