"""Labelled text data: reading and writing `sentence<TAB>label` files (or `sentence1<TAB>sentence2<TAB>label` for
sentence pairs) and the label map that goes with them."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import numpy as np

from knowacq.errors import DataError, MalformedDataError, RowProblem

__all__ = [
    "LABELS_FILE",
    "MULTI_LABEL_SEPARATOR",
    "PAIR_COLUMNS",
    "LabelledData",
    "Text",
    "load_tsv",
    "read_label_names",
    "split_pairs",
    "text_chars",
    "write_tsv",
]

_INT = re.compile(r"[+-]?\d+")
_TEXT_COLUMNS = ("sentence", "text")
PAIR_COLUMNS = ("sentence1", "sentence2")
"""The columns of a sentence-pair data file (GLUE's names): each row's input is the pair (sentence1, sentence2)."""
LABELS_FILE = "labels.txt"
MULTI_LABEL_SEPARATOR = "|"
"""Between the labels of one row of a multi-label file (`sports|politics`); an empty field is a row with none."""

Text: TypeAlias = str | tuple[str, str]
"""One classifier input: a text, or a sentence pair (first, second) that the tokenizer joins as a pair
(`[CLS] a [SEP] b [SEP]` for BERT, its own template for other models; truncation takes the longer one first)."""


def text_chars(text: Text) -> int:
    """Characters in a text or in both sentences of a pair (what batching sorts by)."""
    return len(text) if isinstance(text, str) else len(text[0]) + len(text[1])


def split_pairs(texts: Sequence[Text]) -> tuple[list[str], list[str] | None]:
    """`texts` as a tokenizer takes them: (texts, None), or (first sentences, second sentences) for pairs.

    A mix of texts and pairs is a DataError: one model reads one kind of input."""
    pairs = [not isinstance(t, str) for t in texts]
    if not any(pairs):
        return list(texts), None  # type: ignore[arg-type]  # every item is a str here
    if not all(pairs):
        raise DataError("texts and sentence pairs are mixed; a model reads one kind of input")
    return [t[0] for t in texts], [t[1] for t in texts]


@dataclass(frozen=True)
class LabelledData:
    """Texts (or sentence pairs) with integer labels and the names of every class (index = label id).

    Multi-label data holds a 0/1 matrix instead, one row per text and one column per label name."""

    texts: tuple[Text, ...]
    labels: np.ndarray = field(repr=False)
    label_names: tuple[str, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        if labels.ndim == 2:
            if labels.shape != (len(self.texts), len(self.label_names)):
                raise DataError(
                    f"{len(self.texts)} texts and {len(self.label_names)} labels but a label matrix of "
                    f"shape {labels.shape}"
                )
            if labels.size and not np.isin(labels, (0, 1)).all():
                raise DataError("a multi-label matrix holds 0 and 1 only")
            labels.setflags(write=False)
            object.__setattr__(self, "labels", labels)
            return
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

    @property
    def multi_label(self) -> bool:
        """True when each row holds a set of labels (a 0/1 matrix), not one label."""
        return self.labels.ndim == 2

    def label_sets(self) -> list[tuple[str, ...]]:
        """Each row's label names (one for single-label data), in label-map order."""
        if not self.multi_label:
            return [(self.label_names[i],) for i in self.labels]
        return [tuple(n for n, on in zip(self.label_names, row) if on) for row in self.labels]

    @property
    def pairs(self) -> bool:
        """True when the inputs are sentence pairs."""
        return bool(self.texts) and not isinstance(self.texts[0], str)

    def require_kind(self, pairs: bool, model: str | Path) -> None:
        """DataError unless these rows are sentence pairs exactly when the model `model` reads pairs (`pairs`)."""
        if len(self) and self.pairs != pairs:
            kinds = ("single texts ('sentence' column)", "sentence pairs ('sentence1', 'sentence2')")
            raise DataError(f"{self.source} holds {kinds[self.pairs]} but {model} classifies {kinds[pairs]}")

    def single_texts(self, purpose: str) -> tuple[str, ...]:
        """The texts, or DataError when they are sentence pairs, which `purpose` does not take."""
        if self.pairs:
            raise DataError(f"{self.source} holds sentence pairs; {purpose} takes single texts ('sentence' column)")
        return self.texts  # type: ignore[return-value]  # no pair among them

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledData:
        """The rows at `indices`, in that order, with the same label map."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledData(tuple(self.texts[i] for i in idx), self.labels[idx], self.label_names, self.source)

    def label_counts(self) -> dict[str, int]:
        """Rows holding each label."""
        if self.multi_label:
            counts = self.labels.sum(axis=0)
        else:
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
    multi_label: bool = False,
) -> LabelledData:
    """Read a tab-separated file with a header naming the columns `sentence` (or `text`) and `label`, or, for
    sentence pairs, `sentence1`, `sentence2` and `label` (each row's input is then the pair).

    Labels may be ids (0, 1, ...) or names. The label map comes from, in this order: `label_names`;
    `labels_file`; a `labels.txt` beside the data file; otherwise the data itself (ids 0..max, or the
    sorted distinct names). Fields may use CSV-style double-quote quoting. Every malformed row is
    reported with its line number in one `MalformedDataError`.

    `multi_label`: each label field holds any number of labels separated by `MULTI_LABEL_SEPARATOR` (`|`),
    an empty field none; the labels are then a 0/1 matrix (`LabelledData.multi_label`).
    """
    path = Path(path)
    if label_names is None:
        if labels_file is None and (path.parent / LABELS_FILE).is_file():
            labels_file = path.parent / LABELS_FILE
        if labels_file is not None:
            label_names = read_label_names(labels_file)
    fixed = tuple(label_names) if label_names is not None else None

    texts, tokens, lines, problems = _read_rows(path, empty_labels=multi_label)
    if not texts and not problems:
        raise DataError(f"{path}: no data rows after the header")
    if multi_label:
        return _multi_label(path, texts, tokens, lines, problems, fixed)

    if fixed is not None:
        names = fixed
        ids = _ids_from_fixed_names(fixed, tokens, lines, problems)
    else:
        names, ids = _ids_from_data(tokens, lines, problems)
    if problems:
        problems.sort(key=lambda p: p.line)
        raise MalformedDataError(str(path), problems)
    return LabelledData(tuple(texts), np.asarray(ids, dtype=np.int64), names, str(path))


def _multi_label(
    path: Path,
    texts: list[Text],
    tokens: list[str],
    lines: list[int],
    problems: list[RowProblem],
    fixed: tuple[str, ...] | None,
) -> LabelledData:
    """The rows' label sets as a 0/1 matrix over `fixed` (or the data's own names: ids 0..max, or sorted)."""
    parts = [[t.strip() for t in token.split(MULTI_LABEL_SEPARATOR) if t.strip()] for token in tokens]
    flat = [t for row in parts for t in row]
    if fixed is not None:
        names = fixed
    elif flat and all(_INT.fullmatch(t) and int(t) >= 0 for t in flat):
        names = tuple(str(i) for i in range(max(int(t) for t in flat) + 1))
    else:
        names = tuple(sorted(set(flat)))
    matrix = np.zeros((len(texts), len(names)), dtype=np.int64)
    for row, (labels, line) in enumerate(zip(parts, lines)):
        ids = _ids_from_fixed_names(names, labels, [line] * len(labels), problems)
        matrix[row, [i for i in ids if i >= 0]] = 1
    if problems:
        problems.sort(key=lambda p: p.line)
        raise MalformedDataError(str(path), problems)
    if not names:
        raise DataError(f"{path}: no row holds a label")
    return LabelledData(tuple(texts), matrix, names, str(path))


def _read_rows(path: Path, *, empty_labels: bool = False) -> tuple[list[Text], list[str], list[int], list[RowProblem]]:
    texts: list[Text] = []
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
        pair_cols = [columns.index(c) for c in PAIR_COLUMNS if c in columns]
        text_cols = pair_cols if len(pair_cols) == 2 else []
        text_cols = text_cols or [next((columns.index(c) for c in _TEXT_COLUMNS if c in columns), -1)]
        if text_cols == [-1] or "label" not in columns:
            raise MalformedDataError(
                str(path),
                [
                    RowProblem(
                        1,
                        "expected a header with columns 'sentence' and 'label' (or 'sentence1', 'sentence2' and "
                        f"'label' for sentence pairs), got {header}",
                    )
                ],
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
            parts, token = [row[c].strip() for c in text_cols], row[label_col].strip()
            empty = [columns[c] for c, part in zip(text_cols, parts) if not part]
            if empty:
                problems.append(RowProblem(start, f"empty {' and '.join(empty)}"))
                continue
            text: Text = parts[0] if len(parts) == 1 else (parts[0], parts[1])
            if not token and not empty_labels:
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


def write_tsv(path: str | Path, texts: Sequence[Text], labels: Sequence[str]) -> None:
    """Write `sentence<TAB>label` rows (`sentence1<TAB>sentence2<TAB>label` for pairs) that `load_tsv` reads
    back (whitespace in a text folded to one space)."""
    first, second = split_pairs(texts)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        if second is None:
            writer.writerow(["sentence", "label"])
            for text, label in zip(first, labels):
                writer.writerow([" ".join(text.split()), label])
            return
        writer.writerow([*PAIR_COLUMNS, "label"])
        for a, b, label in zip(first, second, labels):
            writer.writerow([" ".join(a.split()), " ".join(b.split()), label])
