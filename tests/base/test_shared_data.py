"""The suite and the shared data: skipped without it, failed under CI, checked first by .ci/run, never in the vocab."""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

import tests.conftest as suite
from tests.conftest import REPO, SHARED_FILES, require_shared_data, tiny_tokenizer, tiny_vocabulary


def _folder(root: Path, files: tuple[str, ...]) -> Path:
    """A data folder holding empty files of the given names."""
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_missing_shared_data_fails_under_ci_and_skips_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = _folder(tmp_path / "partial", ("sst2/train.tsv", "sst2/dev.tsv"))
    monkeypatch.setenv("KNOWACQ_DATA_DIR", str(partial))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_shared_data(partial)
    assert str(failed.value) == (
        "the shared data is required under CI but agnews/test.tsv, agnews/labels.txt not found in "
        f"{partial.resolve()} (from KNOWACQ_DATA_DIR)"
    )
    monkeypatch.delenv("CI")
    monkeypatch.delenv("KNOWACQ_DATA_DIR")
    absent = tmp_path / "absent"
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_shared_data(absent)
    assert str(skipped.value) == (
        f"shared data {', '.join(SHARED_FILES)} not found in {absent.resolve()} "
        "(from ../shared/data beside the checkout); point KNOWACQ_DATA_DIR at them"
    )
    monkeypatch.setenv("CI", "true")
    complete = _folder(tmp_path / "complete", SHARED_FILES)
    assert require_shared_data(complete) == complete


def _ci_run(tmp_path: Path, data: Path | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """.ci/run in a copy of the checkout with nothing else in it (tmp/repo, beside tmp/shared), with `make`,
    `apt-get` and the Prometheus tools stubbed: the stub `make` writes down what it was asked and with which
    KNOWACQ_DATA_DIR."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "make-calls.txt"
    # python3: the Label Studio install; buildah and mmdebstrap: the container test's tools
    for tool in ("make", "apt-get", "sudo", "promtool", "prometheus", "python3", "buildah", "mmdebstrap"):
        body = f'echo "$KNOWACQ_DATA_DIR $*" >> {calls}\n' if tool == "make" else ""
        (stubs / tool).write_text(f"#!/usr/bin/env bash\n{body}exit 0\n")
        (stubs / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "KNOWACQ_DATA_DIR"}
    env["PATH"] = f"{stubs}{os.pathsep}{env.get('PATH', '')}"
    if data is not None:
        env["KNOWACQ_DATA_DIR"] = str(data)
    done = subprocess.run(
        ["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    return done, calls


@pytest.mark.parametrize("absent", SHARED_FILES)
def test_ci_run_stops_before_the_suite_when_a_data_file_is_missing(tmp_path: Path, absent: str) -> None:
    data = _folder(tmp_path / "data", tuple(f for f in SHARED_FILES if f != absent))
    done, calls = _ci_run(tmp_path, data)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the shared data is incomplete: {absent} not found in {data.resolve()}" in done.stderr, done.stderr
    assert not calls.exists(), "make ran although the data was missing"


def test_ci_run_looks_beside_the_checkout_and_hands_the_suite_that_folder(tmp_path: Path) -> None:
    done, calls = _ci_run(tmp_path, None)  # no KNOWACQ_DATA_DIR, no tmp/shared/data
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{' '.join(SHARED_FILES)} not found in {(tmp_path / 'shared' / 'data').resolve()}" in done.stderr
    assert not calls.exists()
    shared = _folder(tmp_path / "shared" / "data", SHARED_FILES)
    done, calls = _ci_run(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    targets = ("test", "test-matrix", "test-container")  # the suite, then the support matrix and the container test
    assert calls.read_text() == "".join(f"{shared.resolve()} {target}\n" for target in targets)


def test_the_tiny_vocabulary_ignores_the_shared_data(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny_base was built with whatever shared data there is (all of it under CI); without any, and in any
    session, its vocabulary is the same token for token and id for id."""
    from tokenizers import Tokenizer

    built = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    monkeypatch.setattr(suite, "SHARED_DATA", tmp_path / "no-data")
    monkeypatch.setenv("KNOWACQ_DATA_DIR", str(tmp_path / "no-data"))
    assert tiny_tokenizer().get_vocab() == built.get_vocab()
    assert sorted(built.get_vocab(), key=built.get_vocab().__getitem__) == tiny_vocabulary()
    # A fresh interpreter (another hash seed) builds the same list.
    code = "import sys; sys.path.insert(0, '.'); from tests.conftest import tiny_vocabulary as v; print(v())"
    fresh = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert fresh.stdout.strip() == repr(tiny_vocabulary())
    # No printable ASCII character is unknown to it, at the start of a word or inside one.
    unk = built.token_to_id("[UNK]")
    text = " ".join([*string.printable.split(), string.ascii_letters + string.digits])
    assert unk not in built.encode(text).ids
    with open(tiny_base / "config.json", encoding="utf-8") as handle:
        assert json.load(handle)["vocab_size"] == len(tiny_vocabulary())
