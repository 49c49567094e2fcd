"""Offline scoring of an unlabelled pool with an exported variant (`knowacq predict`): in chunks, so that memory
stays flat; malformed rows reported by line and skipped or refused, never dropped silently.

`engine="local"` scores in this process; `engine="ray"` (`knowacq.loop._predict_ray`) reads, scores and writes
through Ray Data on a Ray cluster, with one `Scorer` per actor.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export import RuntimeOptions, Scorer
from knowacq.base import PoolWriter, count_rows, read_pool
from knowacq.errors import ConfigError, MalformedDataError, RowProblem

__all__ = ["ON_ERROR", "PredictResult", "predict_file"]

ON_ERROR = ("refuse", "skip")
"""What a malformed row does: refuse the file (nothing is written), or skip the row and list it."""


@dataclass
class PredictResult:
    """What a `knowacq predict` run did and measured."""

    out: str
    rows: int
    skipped: int
    seconds: float
    texts_per_s: float
    peak_rss_mb: float
    engine: str = "local"
    labels: list[str] = field(default_factory=list)
    embedding_width: int | None = None
    problems_file: str | None = None
    first_problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def problems_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.jsonl")


def predict_file(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    column: str | None = None,
    embeddings: bool = False,
    on_error: str = "refuse",
    batch_size: int = 32,
    chunk_rows: int = 4096,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PredictResult:
    """Score every row of `data` (TSV, CSV, JSONL or Parquet; column `text` or `sentence`, or `column`) with
    the variant `model` and write `out` (JSONL or Parquet): label, score, margin, entropy, probabilities and,
    with `embeddings`, the classifier head's input (see `export.Scorer`). Texts are batched by length inside
    chunks of `chunk_rows` rows, `batch_size` per inference batch, as `knowacq bench` batches them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    data, out = Path(data), Path(out)
    total = count_rows(data)
    scorer = Scorer(model, embeddings=embeddings, options=RuntimeOptions(threads=threads, max_batch_size=batch_size))
    if scorer.predictor.manifest.pairs:
        raise ConfigError(f"{model} classifies sentence pairs; knowacq predict scores pools of single texts")
    if scorer.predictor.multi_label:
        raise ConfigError(f"{model} is multi-label; knowacq predict scores pools for single-label models")
    writer = PoolWriter(out, scorer.labels, embedding_width=scorer.width)
    problems: list[RowProblem] = []
    skipped_file = problems_path(out)
    skipped_file.unlink(missing_ok=True)
    started = time.perf_counter()
    columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("scoring", total=total)
            for chunk in read_pool(data, column=column, chunk_rows=chunk_rows):
                if chunk.problems and on_error == "refuse":
                    raise MalformedDataError(str(data), chunk.problems)
                problems.extend(chunk.problems)
                scored = scorer.score(chunk.texts)
                writer.write(chunk, scored.probabilities, scored.truncated, scored.embeddings)
                bar.advance(task, len(chunk) + len(chunk.problems))
    except BaseException:
        writer.abort()
        raise
    finally:
        scorer.close()
    seconds = time.perf_counter() - started
    writer.close()
    if problems:
        with skipped_file.open("w", encoding="utf-8") as handle:
            for p in problems:
                handle.write(json.dumps({"line": p.line, "problem": p.message}) + "\n")
        log(f"skipped {len(problems)} malformed row(s), listed in {skipped_file}; the first: {problems[0]}")
    return PredictResult(
        out=str(out),
        rows=writer.rows,
        skipped=len(problems),
        seconds=round(seconds, 3),
        texts_per_s=round(writer.rows / seconds, 1) if seconds > 0 else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        labels=list(scorer.labels),
        embedding_width=writer.embedding_width,
        problems_file=str(skipped_file) if problems else None,
        first_problems=[str(p) for p in problems[:5]],
    )
