"""Labelling hand-off: predictions out to annotators (Label Studio tasks or CSV), labels back in.

Export writes the file and marks what it wrote queued. It hands out either captured predictions (low
confidence), picked with a query strategy, or sampled ones (the unbiased random sample of live traffic,
`KNOWACQ_SAMPLE_RATE`): every one waiting, oldest first, with no strategy choosing (a choice would bias the
live evaluation set they form once labelled) and without the model's answer as a pre-annotation (an
annotator shown it tends to agree with it, which would flatter the model being judged).
Import reads a Label Studio JSON export or a CSV (`prediction_id` or `text`, and `label`) and stores the
labels beside those from `POST /feedback` (source "import").
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import MULTI_LABEL_SEPARATOR, FeedbackStore, PredictionRecord, redact_for_storage
from knowacq.errors import DataError, InvalidInputError, UnknownPredictionError
from knowacq.loop._strategies import STRATEGIES, Selection, select, strategy

__all__ = ["ImportResult", "export_tasks", "import_labels"]

EMBEDDING_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.needs_embeddings)
"""Strategies that need sentence embeddings of the pool, which the feedback store does not keep."""

Row = tuple[str | None, str | None, str | None, str]
"""One row of a labels file: (prediction_id, text, label, annotator); label None: skipped, the reason last."""

FROM_NAME = "label"
TO_NAME = "text"


def _label_names(records: Sequence[PredictionRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for name in r.probabilities:
            if name not in names:
                names.append(name)
    return names


EXPORT_STATUSES = ("captured", "sampled")
"""What `export_tasks` hands to labelling: captured (low-confidence) or sampled (the live sample) predictions."""


def export_tasks(
    store: FeedbackStore,
    out_file: str | Path,
    *,
    n: int,
    strategy_name: str | None = None,
    fmt: str = "label-studio",
    seed: int = 0,
    options: Selection = Selection(near_duplicate_cosine=None),  # noqa: B008  frozen dataclass: immutable
    status: str = "captured",
) -> list[PredictionRecord]:
    """Write up to `n` predictions waiting for labels and mark them queued: captured ones chosen with
    `strategy_name` (default margin), or, with `status="sampled"`, the oldest sampled ones (no strategy)."""
    if fmt not in ("label-studio", "csv"):
        raise InvalidInputError(f"format must be 'label-studio' or 'csv', got {fmt!r}", field="format")
    if status not in EXPORT_STATUSES:
        raise InvalidInputError(f"status must be 'captured' or 'sampled', got {status!r}", field="status")
    if status == "sampled":
        records = _sampled(store, n, strategy_name)
    else:
        records = _chosen(store, n, strategy_name or "margin", seed, options)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    hint = status != "sampled"  # the live sample goes out without the model's answer
    if fmt == "label-studio":
        out_file.write_text(json.dumps([_task(r, hint) for r in records], indent=2, ensure_ascii=False) + "\n")
    else:
        pairs = any(r.text_pair is not None for r in records)  # a pair model's captures: both sentences shown
        with out_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            second = ["text_pair"] if pairs else []
            writer.writerow(["prediction_id", "text", *second, "predicted", "score", "model_version", "label"])
            for r in records:
                shown = [r.label, f"{r.score:.6f}"] if hint else ["", ""]
                pair = [r.text_pair or ""] if pairs else []
                writer.writerow([r.prediction_id, r.text, *pair, *shown, r.model_version, ""])
    store.set_status([r.prediction_id for r in records], "queued")
    return records


def _sampled(store: FeedbackStore, n: int, strategy_name: str | None) -> list[PredictionRecord]:
    """The `n` oldest sampled predictions waiting for labels: all of them are labelled in turn, none chosen."""
    if strategy_name is not None:
        raise InvalidInputError(
            f"sampled predictions are exported oldest first, never chosen by a strategy (the {strategy_name} "
            "strategy would bias the live evaluation set); drop --strategy or export --status captured",
            field="strategy",
        )
    records = store.predictions_with_status(("sampled",), limit=n)
    if not records:
        raise DataError(
            "no sampled predictions are waiting for labels; set KNOWACQ_SAMPLE_RATE (for example 0.01) on the "
            "service and serve traffic first"
        )
    return records


def _chosen(store: FeedbackStore, n: int, strategy_name: str, seed: int, options: Selection) -> list[PredictionRecord]:
    """Up to `n` captured predictions picked by the query strategy `strategy_name`."""
    if strategy_name in EMBEDDING_STRATEGIES:
        raise InvalidInputError(
            f"the {strategy_name} strategy needs sentence embeddings, which the store does "
            "not keep; choose random, least-confidence, margin or entropy",
            field="strategy",
        )
    chosen_strategy = strategy(strategy_name)
    pool = store.predictions_with_status(("captured",))
    if not pool:
        raise DataError(
            "no captured predictions are waiting for labels; serve traffic first, or lower the "
            "capture thresholds (KNOWACQ_MIN_CONFIDENCE, KNOWACQ_MIN_MARGIN)"
        )
    labels = _label_names(pool)
    probs = np.array([[r.probabilities.get(name, 0.0) for name in labels] for r in pool])
    picked = select(
        chosen_strategy,
        probs,
        n,
        rng=np.random.default_rng(seed),
        text_hashes=[r.text_sha256 for r in pool],
        options=options,
    )
    return [pool[i] for i in picked]


def _task(r: PredictionRecord, with_prediction: bool) -> dict[str, Any]:
    """One Label Studio task; with the model's answer as a pre-annotation when `with_prediction`."""
    task: dict[str, Any] = {"data": {"text": r.text, "prediction_id": r.prediction_id}}
    if r.text_pair is not None:
        task["data"]["text_pair"] = r.text_pair
    if with_prediction:
        task["predictions"] = [
            {
                "model_version": r.model_version,
                "score": r.score,
                "result": [
                    {
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "choices",
                        "value": {"choices": r.label.split(MULTI_LABEL_SEPARATOR) if r.label else []},
                    }
                ],
            }
        ]
    return task


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int
    new_texts: int
    """Rows given by text that matched no stored prediction: stored as new labelled examples."""
    skipped: list[str]
    """One line per row that was not imported, with the reason."""


def _rows_from_label_studio(data: Any) -> list[Row]:
    if not isinstance(data, list):
        raise DataError("a Label Studio export is a JSON list of tasks")
    rows: list[Row] = []
    for i, task in enumerate(data):
        where = f"task {i + 1}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            rows.append((None, None, None, f"{where}: not a Label Studio task"))
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        choice = None
        annotator = None
        for annotation in reversed(annotations):  # the latest completed annotation wins
            for result in annotation.get("result") or []:
                choices = (result.get("value") or {}).get("choices") if isinstance(result, dict) else None
                if choices:  # several from a multi-label (choice="multiple") control: one '|'-joined set
                    choice = MULTI_LABEL_SEPARATOR.join(str(c) for c in choices)
                    annotator = str(annotation.get("completed_by", "") or "")
                    break
            if choice is not None:
                break
        if choice is None:
            rows.append((None, None, None, f"{where}: no completed annotation with a choice"))
            continue
        rows.append((task["data"].get("prediction_id"), task["data"].get("text"), choice, annotator or ""))
    return rows


def _rows_from_csv(path: Path) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        if "label" not in fields or not ({"prediction_id", "text"} & fields):
            raise DataError(
                f"{path}: a CSV needs a 'label' column and 'prediction_id' or 'text'; found {sorted(fields)}"
            )
        rows: list[Row] = []
        for row in reader:
            label = (row.get("label") or "").strip()
            if not label:
                rows.append((None, None, None, f"line {reader.line_num}: empty label"))
                continue
            rows.append(
                (
                    (row.get("prediction_id") or "").strip() or None,
                    row.get("text"),
                    label,
                    (row.get("annotator") or "").strip(),
                )
            )
        return rows


def import_labels(
    store: FeedbackStore,
    in_file: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    annotator: str = "",
) -> ImportResult:
    """Store the labels of a Label Studio JSON export or a CSV; every skipped row is reported."""
    rows = _read_rows(Path(in_file))
    order = list(
        label_names
        or _label_names(
            store.predictions_with_status(("served", "captured", "sampled", "queued", "labelled", "used"), limit=1000)
        )
    )
    known = set(order)
    if not known:
        raise DataError("the store holds no predictions to take the label set from; pass --label-names")
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    new_texts = 0
    skipped: list[str] = []
    for i, (prediction_id, text, label, who) in enumerate(rows, start=1):
        if label is None:
            skipped.append(who)  # the reason, from the reader
            continue
        parts = label.split(MULTI_LABEL_SEPARATOR)  # a multi-label model's set: each of its labels known
        if label not in known and not (len(parts) > 1 and set(parts) <= known):
            skipped.append(f"row {i}: unknown label {label!r} (known: {', '.join(sorted(known))})")
            continue
        if label not in known:  # a set: kept in label-map order, as POST /feedback keeps it
            label = MULTI_LABEL_SEPARATOR.join(n for n in order if n in parts)
        if prediction_id is None:
            if not text or not text.strip():
                skipped.append(f"row {i}: neither prediction_id nor text")
                continue
            prediction_id, new = _prediction_of_text(store, text, label)
            new_texts += new
        try:
            outcome = store.add_label(prediction_id, label, source="import", annotator=who or annotator)
        except UnknownPredictionError:
            skipped.append(f"row {i}: unknown prediction_id {prediction_id!r}")
            continue
        counts[outcome] += 1
    return ImportResult(counts["created"], counts["updated"], counts["unchanged"], new_texts, skipped)


def _read_rows(path: Path) -> list[Row]:
    """The rows of a Label Studio JSON export (`.json`) or of a CSV (any other suffix)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            return _rows_from_label_studio(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
    return _rows_from_csv(path)


def _prediction_of_text(store: FeedbackStore, text: str, label: str) -> tuple[str, bool]:
    """(prediction id, new): the stored prediction of this text (redacted, matched by hash), or a new record."""
    clean, digest = redact_for_storage(text)
    found = store.find_by_text_hash(digest)
    if found is not None:
        return found.prediction_id, False
    prediction_id = "import-" + digest[:32]
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=prediction_id,
                model_version="import",
                text=clean,
                text_sha256=digest,
                label=label,
                score=1.0,
                margin=1.0,
                probabilities={},
                captured=False,
            )
        ]
    )
    return prediction_id, True
