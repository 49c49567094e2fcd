"""The support matrix: every architecture of `tests/export/_archs.py` through `knowacq train`, every `knowacq optimize`
preset, `knowacq eval` and the real server. Each cell is one test; `benchmarks/support_matrix.py` runs them and
writes the README's table from what they recorded (KNOWACQ_MATRIX_OUT).

Marked `matrix` and left out of the default run (about a minute on 2 cores); `make test-matrix` runs it and
`.ci/run` calls that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from bento import ServerProcess
from export import PRESETS
from knowacq.cli import app
from tests.conftest import synthetic_rows, write_tsv
from tests.export._archs import ARCHITECTURES, tiny_encoder

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(900)]

runner = CliRunner()
ALL = tuple(PRESETS)
WORKS = {
    "bert": ALL,
    "roberta": ALL,
    "xlm-roberta": ALL,
    "electra": ALL,
    "distilbert": ("cpu-fp32", "cpu-int8"),
    "deberta-v2": ("cpu-fp32", "cpu-int8"),
    "modernbert": ("cpu-fp32", "cpu-int8"),
}
"""What is expected to work, written out (not derived from export's table): a change in support fails a cell."""
REFUSAL = {
    "cpu-int8-pruned": "structured pruning supports for BERT's layer layout only",
    "gpu-fp16": "needs ONNX Runtime's fused attention for CUDA",
}


def _record(cell: dict) -> None:
    """Append one cell to the matrix file the generating command reads (nothing without KNOWACQ_MATRIX_OUT)."""
    out = os.environ.get("KNOWACQ_MATRIX_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(cell) + "\n")


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("matrix-data")
    return (
        write_tsv(folder / "train.tsv", synthetic_rows(320, 2, seed=1)),
        write_tsv(folder / "dev.tsv", synthetic_rows(96, 2, seed=2)),
    )


_TRAINED: dict[str, Path] = {}


@pytest.fixture
def trained(request: pytest.FixtureRequest, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny `arch` encoder fine-tuned by `knowacq train` (once per architecture)."""
    arch = request.param
    if arch not in _TRAINED:
        folder = tmp_path_factory.mktemp(f"matrix-{arch}")
        base = tiny_encoder(arch, folder / "base")
        out = folder / "model"
        _invoke(
            ["train", "--train", str(data[0]), "--dev", str(data[1]), "--out", str(out), "--base", str(base)]
            + ["--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--label-names", "negative,positive"]
            + ["--no-progress"]
        )
        assert json.loads((out / "config.json").read_text())["model_type"] == arch
        _TRAINED[arch] = out
    return _TRAINED[arch]


@pytest.mark.parametrize("preset_name", ALL)
@pytest.mark.parametrize("trained", ARCHITECTURES, indirect=True)
def test_architecture_through_a_preset(trained: Path, preset_name: str, data: tuple[Path, Path]) -> None:
    arch = json.loads((trained / "config.json").read_text())["model_type"]
    out = trained.parent / preset_name
    result = runner.invoke(app, ["optimize", str(trained), "--preset", preset_name, "--out", str(out), "--no-progress"])
    assert "Traceback" not in result.output
    if preset_name not in WORKS[arch]:
        assert result.exit_code != 0, result.output
        message = " ".join(result.output.split())
        assert REFUSAL[preset_name] in message and "use cpu-fp32 or cpu-int8" in message, message
        assert not out.exists(), "a refused recipe writes nothing"
        _record({"arch": arch, "preset": preset_name, "outcome": "refuses", "reason": REFUSAL[preset_name]})
        return
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["passed"] and manifest["metrics"]["architecture"]["model_type"] == arch
    report = json.loads(_invoke(["eval", str(out), "--data", str(data[1]), "--json"]))
    assert report["accuracy"] == pytest.approx(manifest["metrics"]["accuracy"])
    parity = {g["name"]: g["value"] for g in manifest["gates"]}
    _record(
        {
            "arch": arch,
            "preset": preset_name,
            "outcome": "works",
            "accuracy": report["accuracy"],
            "fused": manifest["fused_operators"],
            "parity": parity.get("parity fp32 optimised", parity.get("parity fp32 export")),
            "agreement": manifest["metrics"]["agreement_with_fp32"],
            "adapted": manifest["metrics"]["architecture"]["adapted"],
        }
    )


@pytest.mark.parametrize("trained", ARCHITECTURES, indirect=True)
def test_architecture_served_answers_as_offline(trained: Path, data: tuple[Path, Path]) -> None:
    """The cpu-fp32 variant behind the real server answers each dev text as `knowacq predict` scores it offline."""
    variant = trained.parent / "served-cpu-fp32"
    _invoke(["optimize", str(trained), "--preset", "cpu-fp32", "--out", str(variant), "--no-progress"])
    scores = trained.parent / "offline.jsonl"
    _invoke(["predict", str(variant), "--data", str(data[1]), "--out", str(scores), "--no-progress"])
    offline = [json.loads(line) for line in scores.read_text().splitlines()]
    texts = [line.split("\t")[0] for line in data[1].read_text().splitlines()[1:]]
    settings = {"model": str(variant), "store_url": f"sqlite:///{trained.parent / 'store.db'}", "threads": 1}
    with ServerProcess(settings, log_file=trained.parent / "server.log", cwd=trained.parent) as server:
        served = []
        for start in range(0, len(texts), 32):
            answer = httpx.post(f"{server.url}/classify", json={"texts": texts[start : start + 32]}, timeout=60)
            assert answer.status_code == 200, answer.text
            served += answer.json()
    assert len(served) == len(offline) == len(texts)
    for got, want in zip(served, offline, strict=True):
        assert got["label"] == want["label"]
        probs = [got["probabilities"][name] for name in want["probabilities"]]
        assert np.allclose(probs, list(want["probabilities"].values()), atol=1e-5), (got, want)
    arch = json.loads((trained / "config.json").read_text())["model_type"]
    _record({"arch": arch, "preset": "cpu-fp32", "outcome": "served", "texts": len(texts)})
