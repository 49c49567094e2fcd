"""The TSV loader: label maps, quoting, and malformed rows reported with their line numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowacq import (
    DataError,
    LabelledData,
    MalformedDataError,
    load_tsv,
    read_label_names,
)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_numeric_labels(tmp_path: Path) -> None:
    data = load_tsv(write(tmp_path / "d.tsv", "sentence\tlabel\ngood film \t1\nbad film\t0\nok\t1\n"))
    assert data.texts == ("good film", "bad film", "ok")
    assert data.labels.tolist() == [1, 0, 1]
    assert data.label_names == ("0", "1")


def test_named_labels_are_sorted_into_ids(tmp_path: Path) -> None:
    data = load_tsv(write(tmp_path / "d.tsv", "sentence\tlabel\na\tsports\nb\tbusiness\nc\tworld\n"))
    assert data.label_names == ("business", "sports", "world")
    assert data.labels.tolist() == [1, 0, 2]


def test_labels_txt_beside_the_file_names_the_ids(tmp_path: Path) -> None:
    write(tmp_path / "labels.txt", "World\nSports\nBusiness\nSci/Tech\n")
    data = load_tsv(write(tmp_path / "d.tsv", "sentence\tlabel\na\t3\nb\tSports\n"))
    assert data.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert data.labels.tolist() == [3, 1]


def test_fixed_label_names_reject_unknown_and_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "sentence\tlabel\na\tneg\nb\t2\nc\tpos\nd\tmaybe\n")
    with pytest.raises(MalformedDataError) as info:
        load_tsv(path, label_names=("neg", "pos"))
    assert [p.line for p in info.value.problems] == [3, 5]
    assert "unknown label '2'" in str(info.value)
    assert "known labels: neg, pos" in str(info.value)


def test_every_malformed_row_is_reported_with_its_line(tmp_path: Path) -> None:
    text = (
        "sentence\tlabel\n"
        "fine\t1\n"
        "too\tmany\tfields\n"  # line 3
        "\t0\n"  # line 4: empty sentence
        "\n"  # line 5: blank lines are skipped
        "no label here\t\n"  # line 6
        "ok\t0\n"
        "negative id\t-1\n"  # line 8
    )
    with pytest.raises(MalformedDataError) as info:
        load_tsv(write(tmp_path / "d.tsv", text))
    assert [p.line for p in info.value.problems] == [3, 4, 6, 8]
    message = str(info.value)
    assert "line 3: expected 2 tab-separated fields, found 3" in message
    assert "line 4: empty sentence" in message
    assert "line 6: empty label" in message
    assert "line 8: label id -1 is negative" in message


def test_csv_quoting_with_tabs_quotes_and_newlines(tmp_path: Path) -> None:
    text = 'sentence\tlabel\n"he said ""hi""\tthere"\t1\n"two\nlines"\t0\nafter\t1\n'
    data = load_tsv(write(tmp_path / "d.tsv", text))
    assert data.texts == ('he said "hi"\tthere', "two\nlines", "after")
    assert data.labels.tolist() == [1, 0, 1]


def test_bad_quoting_names_the_line(tmp_path: Path) -> None:
    text = 'sentence\tlabel\nfine\t1\n"closed" then text\t0\n'
    with pytest.raises(MalformedDataError) as info:
        load_tsv(write(tmp_path / "d.tsv", text))
    assert [p.line for p in info.value.problems] == [3]
    assert "quot" in str(info.value)


def test_unclosed_quote_is_an_error_not_a_swallowed_file(tmp_path: Path) -> None:
    text = 'sentence\tlabel\nfine\t1\n"never closed\t0\nmore\t1\n'
    with pytest.raises(MalformedDataError) as info:
        load_tsv(write(tmp_path / "d.tsv", text))
    assert info.value.problems[0].line == 3


def test_bom_crlf_and_column_order(tmp_path: Path) -> None:
    text = "\ufefflabel\tsentence\r\n1\tgood\r\n0\tbad\r\n"
    data = load_tsv(write(tmp_path / "d.tsv", text))
    assert data.texts == ("good", "bad")
    assert data.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("sentence\tlabel\n", "no data rows"),
        ("text only\n", "line 1: expected a header"),
    ],
)
def test_files_without_rows_or_header(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_tsv(write(tmp_path / "d.tsv", text))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_tsv(tmp_path / "absent.tsv")


def test_labels_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MalformedDataError, match="line 3: label name 'a' repeats line 1"):
        read_label_names(write(tmp_path / "labels.txt", "a\nb\na\n"))
    with pytest.raises(MalformedDataError, match="line 2: empty label name"):
        read_label_names(write(tmp_path / "l2.txt", "a\n\nb\n"))


def test_labelled_data_checks_itself() -> None:
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        LabelledData(("a", "b"), np.array([0, 2]), ("x", "y"))
    data = LabelledData(("a", "b", "c"), np.array([0, 1, 1]), ("x", "y"))
    assert data.subset([2, 0]).texts == ("c", "a")
    assert data.label_counts() == {"x": 1, "y": 2}
    with pytest.raises(ValueError):
        data.labels[0] = 1  # read-only: LabelledData is immutable


texts = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\x85\u2028\u2029"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(texts, st.integers(0, 5)), min_size=1, max_size=20))
def test_round_trip_through_csv_writer(tmp_path_factory: pytest.TempPathFactory, rows) -> None:
    path = tmp_path_factory.mktemp("rt") / "d.tsv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    data = load_tsv(path, label_names=[str(i) for i in range(6)])
    assert list(data.texts) == [t for t, _ in rows]
    assert data.labels.tolist() == [y for _, y in rows]


def test_shared_data_sets(shared_data: Path) -> None:
    train = load_tsv(shared_data / "sst2" / "train.tsv")
    dev = load_tsv(shared_data / "sst2" / "dev.tsv", label_names=train.label_names)
    assert (len(train), len(dev)) == (67_349, 872)
    assert dev.label_counts() == {"0": 428, "1": 444}
    news = load_tsv(shared_data / "agnews" / "test.tsv")
    assert news.label_names == ("World", "Sports", "Business", "Sci/Tech")
    assert set(news.label_counts().values()) == {1900}
