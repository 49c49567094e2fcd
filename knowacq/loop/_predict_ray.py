"""`knowacq predict --engine ray`: the same scoring through Ray Data, for pools that outgrow one machine.

Ray Data reads the pool (`read_csv` / `read_json` / `read_parquet`), an actor pool scores it (`map_batches`
with one `export.Scorer` per actor: each actor loads the variant once), and `write_parquet` writes the scores
as a folder of Parquet files, with the columns and the label list of the local engine's output (no `line`:
Ray reads files in parallel blocks and does not number their rows). Order is preserved, so the output's rows
follow the input's, and the rows are scored in the local engine's chunks (`chunk_rows` consecutive rows), so
that the scores are the local engine's too.

Malformed rows: a row whose text is missing, empty or not a string is skipped (`--on-error skip`, counted) or
stops the run (`refuse`); a row that the CSV parser cannot read stops the run with pyarrow's message either
way (find and skip such rows with the local engine, which lists them by line).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knowacq.base import POOL_INPUTS, pick_text_column, pool_format
from knowacq.errors import ConfigError, DataError, MissingDependencyError
from knowacq.loop._predict import ON_ERROR, PredictResult, peak_rss_mb

__all__ = ["predict_ray"]


class _ScoreBatch:
    """One Ray actor: a variant loaded once, scoring the pyarrow batches it is given."""

    def __init__(
        self, model: str, text_column: str, embeddings: bool, batch_size: int, threads: int, on_error: str, counter: Any
    ) -> None:
        from export import RuntimeOptions, Scorer

        options = RuntimeOptions(threads=threads, max_batch_size=batch_size)
        self.scorer = Scorer(model, embeddings=embeddings, options=options)
        self.width = self.scorer.width
        self.text_column = text_column
        self.on_error = on_error
        self.counter = counter

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        from knowacq.base import entropy, top_margin

        labels = list(self.scorer.labels)
        raw = batch.column(self.text_column).to_pylist()
        good = [i for i, t in enumerate(raw) if isinstance(t, str) and t.strip()]
        if len(good) != len(raw) and self.on_error == "refuse":
            bad = next(i for i in range(len(raw)) if i not in set(good))
            raise DataError(f"a row has a missing, empty or non-string text ({raw[bad]!r}); use --on-error skip")
        if len(good) != len(raw):
            self.counter.add.remote(len(raw) - len(good))
        texts = [raw[i] for i in good]
        scored = self.scorer.score(texts)
        probs = scored.probabilities
        best = probs.argmax(axis=1) if len(texts) else np.zeros(0, np.int64)
        columns: dict[str, Any] = {}
        if "id" in batch.column_names and self.text_column != "id":
            ids = batch.column("id").to_pylist()
            columns["id"] = pa.array([None if ids[i] is None else str(ids[i]) for i in good], pa.string())
        struct = pa.StructArray.from_arrays(
            [pa.array(probs[:, j].astype(np.float32), pa.float32()) for j in range(len(labels))], names=labels
        )
        columns.update(
            text=pa.array(texts, pa.string()),
            label=pa.array([labels[b] for b in best], pa.string()),
            score=pa.array(probs[np.arange(len(best)), best].astype(np.float32), pa.float32()),
            margin=pa.array(top_margin(probs).astype(np.float32), pa.float32()),
            entropy=pa.array(entropy(probs).astype(np.float32), pa.float32()),
            probabilities=struct,
            truncated=pa.array(scored.truncated.astype(bool), pa.bool_()),
        )
        if scored.embeddings is not None and self.width is not None:
            flat = pa.array(scored.embeddings.astype(np.float32).reshape(-1), pa.float32())
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, self.width)
        table = pa.table(columns)
        return table.replace_schema_metadata({b"knowacq.labels": json.dumps(labels).encode()})


def _read(ray: Any, data: Path, kind: str) -> Any:
    if kind == "parquet":
        return ray.data.read_parquet(str(data))
    if kind == "jsonl":
        return ray.data.read_json(str(data), lines=True)
    import pyarrow.csv as pcsv

    options = pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True)
    return ray.data.read_csv(str(data), parse_options=options)


# long: Ray's set-up, read, actor pool and write in one place; the actor is `_ScoreBatch`
def predict_ray(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    column: str | None = None,
    embeddings: bool = False,
    on_error: str = "refuse",
    batch_size: int = 32,
    chunk_rows: int = 4096,
    address: str | None = None,
    actors: int = 2,
    threads: int | None = 1,
    log: Callable[[str], None] = print,
) -> PredictResult:
    """Score `data` with the variant `model` on Ray (a local one, or the cluster at `address`) and write the
    scores as a Parquet folder `out` (its name must end in .parquet). `actors` scoring actors, each with one
    `Scorer` of `threads` ONNX Runtime threads (and as many CPUs reserved), each given `chunk_rows` consecutive
    rows at a time."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("ray", "ray", "knowacq predict --engine ray") from exc
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    data, out = Path(data), Path(out)
    kind = pool_format(data, POOL_INPUTS, "a pool file")
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--engine ray writes a Parquet folder: --out must end in .parquet, got {out}")
    if out.exists() and any(out.iterdir() if out.is_dir() else [out]):
        raise ConfigError(f"{out} exists; remove it or choose another --out")
    model = str(Path(model).resolve())
    started = time.perf_counter()
    owned = not ray.is_initialized()
    if owned:
        local: dict[str, Any] = {} if address else {"_node_ip_address": "127.0.0.1"}  # our own Ray: loopback only
        ray.init(
            address=address,
            num_cpus=None if address else actors * (threads or 1) + 1,  # + 1: the read and write tasks
            **local,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        # Blocks of exactly `chunk_rows` consecutive rows (the last one shorter), one scoring batch each: the
        # chunks of the local engine. An int8 variant quantises its activations per batch, so a text's scores
        # depend a little on the texts batched with it, and only the same chunks give the same scores.
        dataset = _read(ray, data.resolve(), kind).repartition(target_num_rows_per_block=chunk_rows, strict=True)
        names = dataset.columns()
        text_column = pick_text_column(names, column, data)  # the same rule as the local engine

        @ray.remote(num_cpus=0)
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def add(self, n: int) -> None:
                self.n += n

            def get(self) -> int:
                return self.n

        counter = Counter.remote()  # type: ignore[attr-defined]
        scored = dataset.map_batches(
            _ScoreBatch,
            fn_constructor_kwargs={
                "model": model,
                "text_column": text_column,
                "embeddings": embeddings,
                "batch_size": batch_size,
                "threads": threads or 1,
                "on_error": on_error,
                "counter": counter,
            },
            batch_size=chunk_rows,
            batch_format="pyarrow",
            concurrency=actors,
            num_cpus=threads or 1,
        )
        scored.write_parquet(str(out.resolve()))
        import pyarrow.parquet as pq

        rows = pq.ParquetDataset(out).read(columns=["label"]).num_rows
        skipped = int(ray.get(counter.get.remote()))
        version = ray.__version__
    finally:
        if owned:
            ray.shutdown()
    seconds = time.perf_counter() - started
    if skipped:
        log(f"skipped {skipped} row(s) with a missing, empty or non-string text")
    schema = pq.read_schema(next(out.glob("*.parquet")))
    labels = json.loads((schema.metadata or {}).get(b"knowacq.labels", b"[]"))
    width = schema.field("embedding").type.list_size if "embedding" in schema.names else None
    return PredictResult(
        out=str(out),
        rows=rows,
        skipped=skipped,
        seconds=round(seconds, 3),
        texts_per_s=round(rows / seconds, 1) if seconds > 0 else 0.0,
        peak_rss_mb=round(peak_rss_mb(), 1),
        engine="ray",
        labels=labels,
        embedding_width=width,
        extra={"ray": version, "actors": actors, "address": address or "local"},
    )
