"""`knowacq rollback`, `knowacq models history` and `knowacq models shadow`, through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from knowacq.base import FeedbackStore
from knowacq.cli import app

runner = CliRunner()


def test_rollback_returns_to_the_previous_model_and_history_shows_it(store_url: str) -> None:
    store = FeedbackStore(store_url)
    store.note_serving("/models/first", "cpu-fp32-aaaaaaaaaaaa")
    store.promote(
        "/models/second",
        model_version="cpu-fp32-bbbbbbbbbbbb",
        reason="retrain run r1",
        evidence={"dev_accuracy": 0.91, "live": {"estimate": 0.88, "low": 0.8, "high": 0.93, "n": 120}},
    )
    run = store.start_shadow("/models/third")
    store.record_shadow(run.id, scored=50, agreed=45)

    result = runner.invoke(app, ["rollback", "--store", store_url, "--reason", "live accuracy fell"])
    assert result.exit_code == 0, result.output
    assert "rolled back from /models/second (cpu-fp32-bbbbbbbbbbbb) to /models/first (cpu-fp32-aaaaaaaaaaaa)" in (
        " ".join(result.stdout.split())
    )
    assert store.promoted_model() == "/models/first"
    assert store.shadow_run(run.id).state == "superseded"  # type: ignore[union-attr]

    result = runner.invoke(app, ["models", "history", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [(e["action"], e["model"]) for e in body["history"]] == [
        ("start", "/models/first"),
        ("promote", "/models/second"),
        ("rollback", "/models/first"),
    ]
    assert body["history"][2]["reason"] == "live accuracy fell"
    assert body["history"][1]["evidence"]["dev_accuracy"] == 0.91
    [shadow] = body["shadow_runs"]
    assert (shadow["state"], shadow["scored"], shadow["agreement"]) == ("superseded", 50, 0.9)

    result = runner.invoke(app, ["models", "history", "--store", store_url])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("model history", "start", "promote", "rollback", "live accuracy fell"):
        assert expected in text
    assert "dev_accuracy=0.91" in text and "live=0.88 (n=120)" in text
    assert "shadow runs" in text and "superseded" in text and "0.9000" in text


def test_rollback_with_no_earlier_model_fails_clearly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = runner.invoke(app, ["rollback", "--store", url])
    assert result.exit_code == 2
    assert "error: the model history is empty" in result.stderr and "Traceback" not in result.output
    FeedbackStore(url).note_serving("/models/only", "v1")
    result = runner.invoke(app, ["rollback", "--store", url])
    assert result.exit_code == 2
    assert "no earlier model to roll back to: /models/only is the only one" in " ".join(result.stderr.split())
    assert FeedbackStore(url).promoted_model() is None

    result = runner.invoke(app, ["models", "history", "--store", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 0 and "no model history" in result.stdout


def test_models_shadow_starts_shows_and_stops_a_run(fp32_variant: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = runner.invoke(app, ["models", "shadow", "--store", url])
    assert result.exit_code == 0 and "no shadow run yet" in result.stdout

    result = runner.invoke(app, ["models", "shadow", "--store", url, "--start", str(tmp_path)])
    assert result.exit_code == 2 and "error:" in result.stderr and "manifest.json" in result.stderr
    assert FeedbackStore(url).active_shadow() is None  # nothing started for a folder that is no variant

    result = runner.invoke(app, ["models", "shadow", "--store", url, "--start", str(fp32_variant), "--json"])
    assert result.exit_code == 0, result.output
    shadow = json.loads(result.stdout)["shadow"]
    assert (shadow["model"], shadow["state"], shadow["scored"]) == (str(fp32_variant), "running", 0)
    assert "shadow run 1 started" in result.stderr

    FeedbackStore(url).record_shadow(shadow["id"], scored=20, agreed=19)
    result = runner.invoke(app, ["models", "shadow", "--store", url])
    assert result.exit_code == 0 and "running" in result.stdout and "0.9500" in result.stdout

    result = runner.invoke(app, ["models", "shadow", "--store", url, "--stop", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shadow"]["state"] == "superseded"
    assert FeedbackStore(url).active_shadow() is None

    result = runner.invoke(app, ["models", "shadow", "--store", url, "--stop", "--start", str(fp32_variant)])
    assert result.exit_code == 2 and "not both" in result.stderr
