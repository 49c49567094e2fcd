"""Unlabelled pools on disk: texts read in chunks (TSV, CSV, JSONL or Parquet), scores written in chunks
(JSONL or Parquet), so that memory stays flat whatever the file's size.

Reading reports every malformed row with its line (for Parquet, its 1-based row number), never drops one
silently: a row with the wrong number of fields, an undecodable line, invalid JSON, a missing, empty or
non-string text. The caller decides whether such rows are skipped or refuse the file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from knowacq.base._numeric import entropy, top_margin
from knowacq.errors import DataError, MalformedDataError, RowProblem

__all__ = [
    "POOL_INPUTS",
    "POOL_OUTPUTS",
    "PoolChunk",
    "PoolWriter",
    "count_rows",
    "pick_text_column",
    "pool_format",
    "read_pool",
    "read_scored_pool",
]

POOL_INPUTS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
POOL_OUTPUTS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TEXT_COLUMNS = ("text", "sentence")
"""The text column when none is named: the first of these the file has."""
ID_COLUMN = "id"
"""Carried from input to output when the file has it."""


def pool_format(path: str | Path, formats: dict[str, str], what: str) -> str:
    """The format of `path` by its suffix among `formats` (POOL_INPUTS, POOL_OUTPUTS); DataError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise DataError(f"{path}: {what} must end in {', '.join(sorted(formats))}, got {suffix or 'no suffix'!r}")
    return formats[suffix]


@dataclass
class PoolChunk:
    """Rows read: their lines, texts and ids (when the file has an `id` column), and the problems of the rows
    left out."""

    lines: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ids: list[Any] | None = None
    problems: list[RowProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def count_rows(path: str | Path) -> int:
    """Data rows in a pool file (for a progress bar): Parquet's row count, else lines after any header."""
    path = Path(path)
    kind = pool_format(path, POOL_INPUTS, "a pool file")
    if kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
    return max(lines - (kind != "jsonl"), 0)


def pick_text_column(names: Sequence[str], column: str | None, path: str | Path) -> str:
    """The text column among `names`: `column` if given (refused when absent), else 'text' or 'sentence'."""
    lowered = {n.strip().lower(): n for n in names}
    if column is not None:
        if column in names:
            return column
        if column.lower() in lowered:
            return lowered[column.lower()]
        raise DataError(f"{path}: no column {column!r}; the file has {list(names)}")
    for name in TEXT_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise DataError(
        f"{path}: no text column: name it with --column, or call it 'text' or 'sentence' (got {list(names)})"
    )


def _text_problem(value: Any) -> str | None:
    if value is None:
        return "the text is missing"
    if not isinstance(value, str):
        return f"the text is a {type(value).__name__}, not a string"
    if not value.strip():
        return "the text is empty"
    return None


def read_pool(path: str | Path, *, column: str | None = None, chunk_rows: int = 4096) -> Iterator[PoolChunk]:
    """The pool's rows in chunks of at most `chunk_rows` good rows; a chunk's `problems` are the rows read
    with it that are left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be at least 1, got {chunk_rows}")
    kind = pool_format(path, POOL_INPUTS, "a pool file")
    if kind == "parquet":
        yield from _read_parquet(path, column, chunk_rows)
    elif kind == "jsonl":
        yield from _read_jsonl(path, column, chunk_rows)
    else:
        yield from _read_delimited(path, "\t" if kind == "tsv" else ",", column, chunk_rows)


def _read_delimited(path: Path, delimiter: str, column: str | None, chunk_rows: int) -> Iterator[PoolChunk]:
    with path.open(encoding="utf-8-sig", newline="", errors="strict") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise MalformedDataError(str(path), [RowProblem(1, f"unreadable header: {exc}")]) from exc
        if header is None:
            raise DataError(f"{path} is empty; expected a header line naming a text column")
        text_col = header.index(pick_text_column(header, column, path))
        id_col = header.index(ID_COLUMN) if ID_COLUMN in header else None
        chunk = PoolChunk(ids=[] if id_col is not None else None)
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                chunk.problems.append(RowProblem(line, f"unreadable: {exc}"))
                if isinstance(exc, UnicodeDecodeError):  # the decoder cannot go on past the bad bytes
                    break
                continue
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                chunk.problems.append(RowProblem(line, f"{len(row)} fields, the header has {len(header)}"))
                continue
            problem = _text_problem(row[text_col])
            if problem is not None:
                chunk.problems.append(RowProblem(line, problem))
                continue
            chunk.lines.append(line)
            chunk.texts.append(row[text_col])
            if chunk.ids is not None and id_col is not None:
                chunk.ids.append(row[id_col])
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = PoolChunk(ids=[] if id_col is not None else None)
        yield chunk


def _read_jsonl(path: Path, column: str | None, chunk_rows: int) -> Iterator[PoolChunk]:
    name: str | None = None
    chunk = PoolChunk()
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                chunk.problems.append(RowProblem(line, f"not a JSON line: {exc}"))
                continue
            if not isinstance(row, dict):
                chunk.problems.append(RowProblem(line, f"a JSON {type(row).__name__}, not an object"))
                continue
            if name is None:
                name = pick_text_column(list(row), column, path)
                chunk.ids = [] if ID_COLUMN in row else None
            problem = _text_problem(row.get(name))
            if problem is not None:
                chunk.problems.append(RowProblem(line, problem if name in row else f"no {name!r} field"))
                continue
            chunk.lines.append(line)
            chunk.texts.append(row[name])
            if chunk.ids is not None:
                chunk.ids.append(row.get(ID_COLUMN))
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = PoolChunk(ids=[] if chunk.ids is not None else None)
    yield chunk


def _read_parquet(path: Path, column: str | None, chunk_rows: int) -> Iterator[PoolChunk]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors name the problem; ours says which file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = parquet.schema_arrow.names
    name = pick_text_column(names, column, path)
    wanted = [name] + ([ID_COLUMN] if ID_COLUMN in names and name != ID_COLUMN else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=wanted):
        chunk = PoolChunk(ids=[] if len(wanted) > 1 else None)
        ids = batch.column(ID_COLUMN).to_pylist() if chunk.ids is not None else None
        for i, text in enumerate(batch.column(name).to_pylist()):
            row += 1
            problem = _text_problem(text)
            if problem is not None:
                chunk.problems.append(RowProblem(row, problem))
                continue
            chunk.lines.append(row)
            chunk.texts.append(text)
            if chunk.ids is not None and ids is not None:
                chunk.ids.append(ids[i])
        yield chunk


class PoolWriter:
    """Scores written as they come, to `<path>.partial`, renamed to `path` by `close()` (so a run that fails
    leaves no half-written file under the final name; `abort()` removes the partial one).

    A row: `line`, `id` (when the input has one), `text`, `label`, `score`, `margin`, `entropy`,
    `probabilities` (an object of label -> probability; in Parquet a struct with a field per label),
    `truncated`, and `embedding` (a list of floats) when the scorer gives embeddings."""

    def __init__(self, path: str | Path, labels: Sequence[str], *, embedding_width: int | None = None) -> None:
        self.path = Path(path)
        self.kind = pool_format(self.path, POOL_OUTPUTS, "the output file")
        self.labels = tuple(labels)
        self.embedding_width = embedding_width
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._handle: IO[bytes] | None = None
        self._parquet: Any = None
        self._with_ids: bool | None = None
        if self.kind == "jsonl":
            self._handle = self.partial.open("wb")

    def _schema(self, with_ids: bool) -> Any:
        import pyarrow as pa

        columns = [pa.field("line", pa.int64())]
        if with_ids:
            columns.append(pa.field("id", pa.string()))
        columns += [
            pa.field("text", pa.string()),
            pa.field("label", pa.string()),
            pa.field("score", pa.float32()),
            pa.field("margin", pa.float32()),
            pa.field("entropy", pa.float32()),
            pa.field("probabilities", pa.struct([pa.field(n, pa.float32()) for n in self.labels])),
            pa.field("truncated", pa.bool_()),
        ]
        if self.embedding_width is not None:
            columns.append(pa.field("embedding", pa.list_(pa.float32(), self.embedding_width)))
        return pa.schema(columns, metadata={b"knowacq.labels": json.dumps(list(self.labels)).encode()})

    def write(
        self,
        chunk: PoolChunk,
        probabilities: np.ndarray,
        truncated: np.ndarray,
        embeddings: np.ndarray | None = None,
    ) -> None:
        """One chunk's rows and their scores (`probabilities`: rows x labels, calibrated)."""
        if not len(chunk):
            return
        best = probabilities.argmax(axis=1)
        labels = [self.labels[b] for b in best]
        score = probabilities[np.arange(len(best)), best].astype(np.float32)
        margins = top_margin(probabilities).astype(np.float32)
        entropies = entropy(probabilities).astype(np.float32)
        with_ids = chunk.ids is not None
        if self._with_ids is None:
            self._with_ids = with_ids
        if self.kind == "parquet":
            self._write_parquet(chunk, labels, score, margins, entropies, probabilities, truncated, embeddings)
        else:
            assert self._handle is not None
            out = []
            for i in range(len(chunk)):
                row: dict[str, Any] = {"line": chunk.lines[i]}
                if chunk.ids is not None:
                    row["id"] = chunk.ids[i]
                row.update(
                    text=chunk.texts[i],
                    label=labels[i],
                    score=float(score[i]),
                    margin=float(margins[i]),
                    entropy=float(entropies[i]),
                    probabilities={n: float(p) for n, p in zip(self.labels, probabilities[i])},
                    truncated=bool(truncated[i]),
                )
                if embeddings is not None:
                    row["embedding"] = [round(float(x), 7) for x in embeddings[i]]
                out.append(json.dumps(row, ensure_ascii=False))
            self._handle.write(("\n".join(out) + "\n").encode("utf-8"))
        self.rows += len(chunk)

    def _write_parquet(
        self,
        chunk: PoolChunk,
        labels: list[str],
        score: np.ndarray,
        margins: np.ndarray,
        entropies: np.ndarray,
        probabilities: np.ndarray,
        truncated: np.ndarray,
        embeddings: np.ndarray | None,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.partial, self._schema(bool(self._with_ids)))
        schema = self._parquet.schema
        columns: dict[str, Any] = {"line": pa.array(chunk.lines, pa.int64())}
        if self._with_ids:
            columns["id"] = pa.array([None if x is None else str(x) for x in (chunk.ids or [])], pa.string())
        struct = pa.StructArray.from_arrays(
            [pa.array(probabilities[:, j].astype(np.float32)) for j in range(len(self.labels))], names=list(self.labels)
        )
        columns.update(
            text=pa.array(chunk.texts, pa.string()),
            label=pa.array(labels, pa.string()),
            score=pa.array(score),
            margin=pa.array(margins),
            entropy=pa.array(entropies),
            probabilities=struct,
            truncated=pa.array(truncated.astype(bool)),
        )
        if self.embedding_width is not None:
            assert embeddings is not None
            flat = pa.array(embeddings.astype(np.float32).reshape(-1))
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, self.embedding_width)
        self._parquet.write_table(pa.table(columns, schema=schema))

    def close(self) -> Path:
        """Finish the file and give it its name."""
        if self._handle is not None:
            self._handle.close()
        elif self._parquet is None:  # no row at all: an empty file with the schema
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(self.partial, self._schema(bool(self._with_ids)))
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written."""
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()
        self.partial.unlink(missing_ok=True)


def read_scored_pool(path: str | Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A scored pool (what `PoolWriter` wrote, or the Parquet folder of `knowacq predict --engine ray`) in
    memory: columns `line` and `id` (or None), `text`, `probabilities` (rows x labels), `embedding` (rows x
    width, or None); and the label names."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = pool_format(path, POOL_OUTPUTS, "a scored pool")
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if b"knowacq.labels" not in meta:
            why = "no knowacq.labels in its schema; write it with knowacq predict"
            raise DataError(f"{path}: not a scored pool ({why})")
        labels = tuple(json.loads(meta[b"knowacq.labels"]))
        probs = table.column("probabilities").combine_chunks()
        probabilities = np.stack([np.asarray(probs.field(n), np.float64) for n in labels], axis=1)
        embedding = None
        if "embedding" in table.column_names:
            emb = table.column("embedding").combine_chunks()
            embedding = np.asarray(emb.flatten(), np.float32).reshape(len(table), -1)
        columns = {
            "line": table.column("line").to_pylist() if "line" in table.column_names else None,
            "id": table.column("id").to_pylist() if "id" in table.column_names else None,
            "text": table.column("text").to_pylist(),
            "probabilities": probabilities,
            "embedding": embedding,
        }
        return columns, labels
    lines, ids, texts, rows, vectors = [], [], [], [], []
    labels_seen: tuple[str, ...] = ()
    with path.open(encoding="utf-8") as handle:
        for n, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                labels_now = tuple(row["probabilities"])
                if not labels_seen:
                    labels_seen = labels_now
                elif labels_now != labels_seen:
                    raise ValueError(f"labels {labels_now} differ from the first row's {labels_seen}")
                lines.append(row["line"])
                ids.append(row.get("id"))
                texts.append(row["text"])
                rows.append([row["probabilities"][k] for k in labels_seen])
                if "embedding" in row:
                    vectors.append(row["embedding"])
            except (ValueError, KeyError, TypeError) as exc:
                raise MalformedDataError(str(path), [RowProblem(n, f"not a scored row: {exc}")]) from None
    if vectors and len(vectors) != len(rows):
        raise DataError(f"{path}: some rows have an embedding and some do not")
    columns = {
        "line": lines,
        "id": ids if any(i is not None for i in ids) else None,
        "text": texts,
        "probabilities": np.asarray(rows, np.float64).reshape(len(rows), len(labels_seen)),
        "embedding": np.asarray(vectors, np.float32) if vectors else None,
    }
    return columns, labels_seen
