"""One turn of the loop, shown on real data: serve -> traffic -> capture -> label -> retrain -> promote or reject.

The data set's own labels stand in for annotators. Traffic comes from a slice of a labelled TSV that is
not the dev file, so the retrained model is still judged on data it never saw.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from knowacq.base import FeedbackStore, load_tsv
from knowacq.loop._handoff import ImportResult, export_tasks, import_labels
from knowacq.loop._retrain import RetrainConfig, retrain

__all__ = ["demo_loop"]


def demo_loop(
    variant: str | Path,
    traffic_file: str | Path,
    out_dir: str | Path,
    *,
    traffic: int = 1000,
    skip: int = 0,
    labels: int = 200,
    min_confidence: float = 0.75,
    config: RetrainConfig = RetrainConfig(),  # noqa: B008  frozen dataclass: immutable, safe to share
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve `variant`, send rows of `traffic_file`, label the captured ones with the file's labels, retrain;
    write and return the summary (loop.json)."""
    from bento import ServerProcess
    from export import read_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{(out_dir / 'feedback.db').resolve()}"
    data = load_tsv(traffic_file, label_names=tuple(read_manifest(variant).labels))
    rows = list(zip(data.texts, (data.label_names[i] for i in data.labels)))[skip : skip + traffic]
    settings: dict[str, str | int | float | bool | None] = {
        "model": str(Path(variant).resolve()),
        "store_url": store_url,
        "api_token": "demo-loop",
        "reload_poll_s": 1.0,
        "min_confidence": min_confidence,
    }
    with ServerProcess(settings, log_file=out_dir / "server.log", cwd=out_dir) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            version = client.get("/model").json()["model_version"]
            log(f"serving {version}; sending {len(rows)} texts of {traffic_file} as traffic")
            captured = _send(client, rows)
            log(f"{captured} of {len(rows)} predictions were captured as low-confidence")
            store = FeedbackStore(store_url)
            imported = _label(store, out_dir, labels, dict(rows), log)
            result = retrain(variant, store, out_dir / "runs", config=config, log=log, progress=False)
            after = _switched(client, version) if result.promoted else version
    summary = {
        "served_before": version,
        "served_after": after,
        "traffic": len(rows),
        "captured": captured,
        "labelled": imported.created,
        "decision": "promoted" if result.promoted else "rejected",
        "reasons": list(result.reasons),
        "current_dev_accuracy": result.current_accuracy,
        "candidate_dev_accuracy": result.candidate_accuracy,
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
    store: FeedbackStore, out_dir: Path, labels: int, truth: dict[str, str], log: Callable[[str], None]
) -> ImportResult:
    """Export captured predictions for labelling, answer with the data set's labels, import the answers."""
    tasks = out_dir / "to-label.csv"
    exported = export_tasks(store, tasks, n=labels, strategy_name="margin", fmt="csv")
    answered = out_dir / "labelled.csv"
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
    log(
        f"exported {len(exported)} for labelling (margin strategy), imported {imported.created} labels"
        + (f"; {unmatched} redacted text(s) could not be matched to the data set" if unmatched else "")
    )
    return imported


def _switched(client: httpx.Client, version: str) -> str:
    """The version served once the running service has switched from `version` (at most a minute's wait)."""
    after = version
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and after == version:
        time.sleep(0.5)
        after = client.get("/model").json()["model_version"]
    return after
