"""The `knowacq` command line, through typer's test runner: results, and errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowacq.cli import app
from knowacq.errors import ConfigError
from tests.conftest import write_tsv

runner = CliRunner()


@pytest.fixture(scope="module")
def cli_model(tiny_base: Path, binary_sets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    result = runner.invoke(
        app,
        [
            "train",
            "--train",
            str(binary_sets[0]),
            "--dev",
            str(binary_sets[1]),
            "--out",
            str(out),
            "--base",
            str(tiny_base),
            "--epochs",
            "8",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--label-names",
            "negative,positive",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"model:       {out}" in result.output
    assert "confusion matrix" in result.output
    return out


def test_eval_json(cli_model: Path, binary_sets) -> None:
    result = runner.invoke(app, ["eval", str(cli_model), "--data", str(binary_sets[1]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 96
    assert report["labels"] == ["negative", "positive"]
    assert 0.9 <= report["accuracy"] <= 1.0
    assert {"accuracy", "macro_f1", "ece", "ece_uncalibrated", "per_class_recall"} <= set(report)
    stored = json.loads((cli_model / "metrics.json").read_text())["dev"]
    assert report["accuracy"] == pytest.approx(stored["accuracy"])
    assert report["ece"] == pytest.approx(stored["ece"], abs=1e-6)


def test_eval_table_and_reliability(cli_model: Path, binary_sets, tmp_path: Path) -> None:
    png = tmp_path / "rel.png"
    result = runner.invoke(app, ["eval", str(cli_model), "--data", str(binary_sets[1]), "--reliability", str(png)])
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.output and "ECE (15 bins), calibrated" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_accepts_label_names_in_the_data(cli_model: Path, tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "named.tsv", [("a great film", "positive"), ("an awful film", "negative")])
    result = runner.invoke(app, ["eval", str(cli_model), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "fast"], "unknown training preset 'fast'; known presets: demo, full"),
        (["--epochs", "0"], "epochs must be an integer in [1, 1000]"),
        (["--label-names", "only"], "--label-names needs at least two"),
    ],
)
def test_train_errors_are_one_line(binary_sets, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(
        app,
        ["train", "--train", str(binary_sets[0]), "--dev", str(binary_sets[1]), "--out", str(tmp_path / "o"), *args],
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_malformed_data_reports_lines(cli_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\tpositive\nbroken row\n\tnegative\n")
    result = runner.invoke(app, ["eval", str(cli_model), "--data", str(bad)])
    assert result.exit_code == 2
    assert "line 3: expected 2 tab-separated fields, found 1" in result.output
    assert "line 4: empty sentence" in result.output
    assert "Traceback" not in result.output


def test_eval_of_a_folder_that_is_not_a_model(tmp_path: Path, binary_sets) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path), "--data", str(binary_sets[1])])
    assert result.exit_code == 2
    assert "not a Hugging Face model folder" in result.output


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "eval" in result.output


def test_help_keeps_the_defaults_written_in_brackets() -> None:
    # "[default: ...]" in a help text is text: Rich markup would swallow it and leave "store ."
    result = runner.invoke(app, ["feedback", "export", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "[default: ./knowacq-feedback.db]" in result.output


def test_bench_serve_settings_from_a_configmap_are_parsed_as_the_service_parses_its_environment(
    tmp_path: Path,
) -> None:
    configmap = tmp_path / "configmap.yaml"
    body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\ndata:\n"
    configmap.write_text(body + '  KNOWACQ_MODEL: "m:latest"\n  KNOWACQ_DRAIN_S: "10"\n  KNOWACQ_RECORD: "all"\n')
    from knowacq.cli._serve import _configmap_settings

    assert _configmap_settings(configmap) == {"drain_s": 10.0, "record": "all"}  # typed; model left out
    configmap.write_text(body + '  KNOWACQ_DRAIN_SECONDS: "10"\n')
    result = runner.invoke(app, ["bench-serve", "--model", str(tmp_path), "--out", str(tmp_path / "b.json"),
                                 "--settings-from", str(configmap)])  # fmt: skip
    assert result.exit_code != 0 and "KNOWACQ_DRAIN_SECONDS is not a service setting" in result.output
    assert "Traceback" not in result.output
    configmap.write_text(body + '  KNOWACQ_DRAIN_S: "ten"\n')
    with pytest.raises(ConfigError, match="KNOWACQ_DRAIN_S='ten'"):
        _configmap_settings(configmap)
