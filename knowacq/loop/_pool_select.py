"""Selection from a scored pool (`knowacq feedback export --pool`): any query strategy, those that need
embeddings included, over what `knowacq predict` wrote (locally or on Ray).

A pool of at most `max_in_memory` rows is ranked whole. A larger one is selected in two stages: one pass keeps
the `candidates` most uncertain rows by margin, then the strategy ranks those; the result says so
(`two_stage`). The pass streams a Parquet pool (memory: one batch and the candidates); a JSONL pool is read
whole first (`read_scored_pool`). The selected rows become Label Studio tasks (with the model's
answer as a pre-annotation) or CSV, as `feedback export` writes them for captured predictions; their labels
come back through `knowacq feedback import`, as new labelled texts, into the store and the next retrain.
"""

from __future__ import annotations

import csv
import heapq
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knowacq.base import read_scored_pool, text_sha256, top_margin
from knowacq.errors import DataError, InvalidInputError
from knowacq.loop._handoff import FROM_NAME, TO_NAME
from knowacq.loop._strategies import Selection, select, strategy

__all__ = ["PoolSelection", "export_pool_tasks"]


@dataclass(frozen=True)
class PoolSelection:
    """What `export_pool_tasks` picked and how."""

    out: str
    strategy: str
    pool_rows: int
    picked: list[dict[str, Any]]
    """The rows written: line (when known), id, text, predicted label and score."""
    two_stage: bool
    candidates: int
    """Rows the strategy ranked (the whole pool, or the first stage's most uncertain)."""
    seconds: float


def _iter_pool(path: Path, chunk_rows: int = 65536) -> Iterator[dict[str, Any]]:
    """A scored pool's rows in chunks (columns as `read_scored_pool` gives them), for the streaming stage."""
    if path.is_dir() or path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        dataset = pq.ParquetDataset(path)
        meta = dataset.schema.metadata or {}
        if b"knowacq.labels" not in meta:
            raise DataError(
                f"{path}: not a scored pool (no knowacq.labels in its schema; write it with knowacq predict)"
            )
        labels = json.loads(meta[b"knowacq.labels"])
        for fragment in dataset.fragments:
            for batch in fragment.to_batches(batch_size=chunk_rows):
                names = batch.schema.names
                probs = batch.column("probabilities")
                yield {
                    "line": batch.column("line").to_pylist() if "line" in names else [None] * batch.num_rows,
                    "id": batch.column("id").to_pylist() if "id" in names else [None] * batch.num_rows,
                    "text": batch.column("text").to_pylist(),
                    "probabilities": np.stack([np.asarray(probs.field(n), np.float64) for n in labels], axis=1),
                    "embedding": (
                        np.asarray(batch.column("embedding").flatten(), np.float32).reshape(batch.num_rows, -1)
                        if "embedding" in names
                        else None
                    ),
                    "labels": labels,
                }
        return
    columns, labels = read_scored_pool(path)  # JSONL: parsed line by line; held once for the stage
    n = len(columns["text"])
    for start in range(0, n, chunk_rows):
        part = slice(start, start + chunk_rows)
        yield {
            "line": columns["line"][part],
            "id": (columns["id"] or [None] * n)[part],
            "text": columns["text"][part],
            "probabilities": columns["probabilities"][part],
            "embedding": None if columns["embedding"] is None else columns["embedding"][part],
            "labels": list(labels),
        }


def _count(path: Path) -> int:
    if path.is_dir() or path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return sum(f.metadata.num_rows for f in pq.ParquetDataset(path).fragments)
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _candidates(path: Path, keep: int) -> tuple[dict[str, Any], list[str], int]:
    """The `keep` rows of smallest margin (most uncertain), in one pass; ties keep the earlier row."""
    heap: list[tuple[float, int, dict[str, Any]]] = []
    labels: list[str] = []
    seen = 0
    for chunk in _iter_pool(path):
        labels = chunk["labels"]
        margins = top_margin(chunk["probabilities"])
        for i, m in enumerate(margins):
            item = (-float(m), -(seen + i), {"chunk": chunk, "i": i})
            if len(heap) < keep:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        seen += len(margins)
        heap = [(m, order, {"row": _row(entry)}) for m, order, entry in heap]  # drop references to old chunks
        heapq.heapify(heap)
    rows = [entry["row"] for _, _, entry in sorted(heap, key=lambda t: -t[1])]
    return _stack(rows), labels, seen


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    if "row" in entry:
        return dict(entry["row"])
    chunk, i = entry["chunk"], entry["i"]
    emb = chunk["embedding"]
    return {
        "line": chunk["line"][i],
        "id": chunk["id"][i],
        "text": chunk["text"][i],
        "probabilities": chunk["probabilities"][i],
        "embedding": None if emb is None else emb[i],
    }


def _stack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    has_embedding = bool(rows) and rows[0]["embedding"] is not None
    return {
        "line": [r["line"] for r in rows],
        "id": [r["id"] for r in rows],
        "text": [r["text"] for r in rows],
        "probabilities": np.array([r["probabilities"] for r in rows], np.float64),
        "embedding": np.array([r["embedding"] for r in rows], np.float32) if has_embedding else None,
    }


def export_pool_tasks(
    pool: str | Path,
    out_file: str | Path,
    *,
    n: int,
    strategy_name: str = "margin",
    fmt: str = "label-studio",
    seed: int = 0,
    max_in_memory: int = 200_000,
    candidates: int | None = None,
    options: Selection = Selection(near_duplicate_cosine=None),  # noqa: B008  frozen dataclass: immutable
) -> PoolSelection:
    """Pick `n` rows of the scored pool with `strategy_name` and write them as Label Studio tasks or CSV."""
    started = time.perf_counter()
    if fmt not in ("label-studio", "csv"):
        raise InvalidInputError(f"format must be 'label-studio' or 'csv', got {fmt!r}", field="format")
    chosen = strategy(strategy_name)
    pool = Path(pool)
    total = _count(pool)
    if total == 0:
        raise DataError(f"{pool}: the scored pool has no rows")
    two_stage = total > max_in_memory
    if two_stage:
        keep = candidates or max(10 * n, 1000)
        columns, labels, total = _candidates(pool, min(keep, total))
    else:
        columns, label_tuple = read_scored_pool(pool)
        labels = list(label_tuple)
        if columns["id"] is None:
            columns["id"] = [None] * len(columns["text"])
        if columns["line"] is None:
            columns["line"] = [None] * len(columns["text"])
    if chosen.needs_embeddings and columns["embedding"] is None:
        raise InvalidInputError(
            f"the {strategy_name} strategy needs embeddings, which {pool} does not hold; score the pool with "
            "knowacq predict --embeddings",
            field="strategy",
        )
    probabilities = columns["probabilities"]
    picked = select(
        chosen,
        probabilities,
        n,
        rng=np.random.default_rng(seed),
        embeddings=columns["embedding"],
        text_hashes=[text_sha256(t) for t in columns["text"]],
        options=options,
    )
    rows = []
    for i in picked:
        best = int(np.argmax(probabilities[i]))
        rows.append(
            {
                "line": columns["line"][i],
                "id": columns["id"][i],
                "text": columns["text"][i],
                "predicted": labels[best],
                "score": float(probabilities[i, best]),
            }
        )
    _write(Path(out_file), rows, fmt)
    return PoolSelection(
        out=str(out_file),
        strategy=strategy_name,
        pool_rows=total,
        picked=rows,
        two_stage=two_stage,
        candidates=len(columns["text"]),
        seconds=round(time.perf_counter() - started, 3),
    )


def _write(out_file: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with out_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "predicted", "score", "pool_line", "pool_id", "label"])
            for r in rows:
                line = "" if r["line"] is None else r["line"]
                pool_id = "" if r["id"] is None else r["id"]
                writer.writerow([r["text"], r["predicted"], f"{r['score']:.6f}", line, pool_id, ""])
        return
    tasks = []
    for r in rows:
        data = {"text": r["text"]}
        if r["line"] is not None:
            data["pool_line"] = r["line"]
        if r["id"] is not None:
            data["pool_id"] = r["id"]
        result = [
            {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [r["predicted"]]}}
        ]
        tasks.append({"data": data, "predictions": [{"score": r["score"], "result": result}]})
    out_file.write_text(json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
