"""Labelled text data: reading and writing `sentence<TAB>label` files and the label map that goes with them."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from knowacq.errors import DataError, MalformedDataError, RowProblem

__all__ = ["LABELS_FILE", "LabelledData", "load_tsv", "read_label_names", "write_tsv"]

_INT = re.compile(r"[+-]?\d+")
_TEXT_COLUMNS = ("sentence", "text")
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class LabelledData:
    """Texts with integer labels and the names of every class (index = label id)."""

    texts: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    label_names: tuple[str, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        if labels.shape != (len(self.texts),):
            raise DataError(f"{len(self.texts)} texts but labels of shape {labels.shape}")
        if len(self.label_names) != len(set(self.label_names)):
            raise DataError(f"label names must be unique, got {list(self.label_names)}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            raise DataError(
                f"labels must lie in 0..{len(self.label_names) - 1} "
                f"for {len(self.label_names)} label names; got {labels.min()}..{labels.max()}"
            )
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledData:
        """The rows at `indices`, in that order, with the same label map."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledData(tuple(self.texts[i] for i in idx), self.labels[idx], self.label_names, self.source)

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_labels)
        return {name: int(c) for name, c in zip(self.label_names, counts)}


def read_label_names(path: str | Path) -> tuple[str, ...]:
    """Class names, one per line; the line number counted from 0 is the label id."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the labels file {path}: {exc.strerror or exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    problems = [RowProblem(i + 1, "empty label name") for i, n in enumerate(names) if not n]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name and name in seen:
            problems.append(RowProblem(i + 1, f"label name {name!r} repeats line {seen[name]}"))
        seen.setdefault(name, i + 1)
    if problems:
        raise MalformedDataError(str(path), problems)
    if len(names) < 1:
        raise DataError(f"the labels file {path} lists no labels")
    return tuple(names)


def load_tsv(
    path: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    labels_file: str | Path | None = None,
) -> LabelledData:
    """Read a tab-separated file with a header naming the columns `sentence` and `label`.

    Labels may be ids (0, 1, ...) or names. The label map comes from, in this order: `label_names`;
    `labels_file`; a `labels.txt` beside the data file; otherwise the data itself (ids 0..max, or the
    sorted distinct names). Fields may use CSV-style double-quote quoting. Every malformed row is
    reported with its line number in one `MalformedDataError`.
    """
    path = Path(path)
    if label_names is None:
        if labels_file is None and (path.parent / LABELS_FILE).is_file():
            labels_file = path.parent / LABELS_FILE
        if labels_file is not None:
            label_names = read_label_names(labels_file)
    fixed = tuple(label_names) if label_names is not None else None

    texts, tokens, lines, problems = _read_rows(path)
    if not texts and not problems:
        raise DataError(f"{path}: no data rows after the header")

    if fixed is not None:
        names = fixed
        ids = _ids_from_fixed_names(fixed, tokens, lines, problems)
    else:
        names, ids = _ids_from_data(tokens, lines, problems)
    if problems:
        problems.sort(key=lambda p: p.line)
        raise MalformedDataError(str(path), problems)
    return LabelledData(tuple(texts), np.asarray(ids, dtype=np.int64), names, str(path))


def _read_rows(path: Path) -> tuple[list[str], list[str], list[int], list[RowProblem]]:
    texts: list[str] = []
    tokens: list[str] = []
    lines: list[int] = []
    problems: list[RowProblem] = []
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle, delimiter="\t", strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise MalformedDataError(str(path), [RowProblem(1, f"unreadable header: {exc}")]) from exc
        if header is None:
            raise DataError(f"{path} is empty; expected a header line 'sentence<TAB>label'")
        columns = [c.strip().lower() for c in header]
        text_col = next((columns.index(c) for c in _TEXT_COLUMNS if c in columns), None)
        if text_col is None or "label" not in columns:
            raise MalformedDataError(
                str(path),
                [RowProblem(1, f"expected a header with columns 'sentence' and 'label', got {header}")],
            )
        label_col = columns.index("label")
        width = len(columns)
        previous_end = reader.line_num
        while True:
            start = previous_end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.append(RowProblem(start, f"bad quoting ({exc}); double any quote inside a quoted field"))
                previous_end = reader.line_num
                continue
            except UnicodeDecodeError as exc:
                problems.append(RowProblem(start, f"not valid UTF-8 ({exc.reason})"))
                break
            previous_end = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            span = f" (lines {start}-{previous_end})" if previous_end > start else ""
            if len(row) != width:
                problems.append(RowProblem(start, f"expected {width} tab-separated fields, found {len(row)}{span}"))
                continue
            text, token = row[text_col].strip(), row[label_col].strip()
            if not text:
                problems.append(RowProblem(start, "empty sentence"))
                continue
            if not token:
                problems.append(RowProblem(start, "empty label"))
                continue
            texts.append(text)
            tokens.append(token)
            lines.append(start)
    return texts, tokens, lines, problems


def _ids_from_fixed_names(
    names: tuple[str, ...], tokens: list[str], lines: list[int], problems: list[RowProblem]
) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for token, line in zip(tokens, lines):
        if token in index:
            ids.append(index[token])
        elif _INT.fullmatch(token) and 0 <= int(token) < len(names):
            ids.append(int(token))
        else:
            problems.append(
                RowProblem(
                    line,
                    f"unknown label {token!r}; known labels: {', '.join(names)} (or their ids 0..{len(names) - 1})",
                )
            )
            ids.append(-1)
    return ids


def _ids_from_data(
    tokens: list[str], lines: list[int], problems: list[RowProblem]
) -> tuple[tuple[str, ...], list[int]]:
    if tokens and all(_INT.fullmatch(t) for t in tokens):
        ids = [int(t) for t in tokens]
        for value, line in zip(ids, lines):
            if value < 0:
                problems.append(RowProblem(line, f"label id {value} is negative"))
        top = max(ids)
        return tuple(str(i) for i in range(top + 1)), ids
    names = tuple(sorted(set(tokens)))
    index = {name: i for i, name in enumerate(names)}
    return names, [index[t] for t in tokens]


def write_tsv(path: str | Path, texts: Sequence[str], labels: Sequence[str]) -> None:
    """Write `sentence<TAB>label` rows that `load_tsv` reads back (whitespace in a text folded to one space)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["sentence", "label"])
        for text, label in zip(texts, labels):
            writer.writerow([" ".join(text.split()), label])
