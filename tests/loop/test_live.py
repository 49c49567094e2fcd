"""Retraining judged on live data: the labelled random sample of traffic (the live evaluation set) is never
trained on, and decides beside dev once it holds --min-live labels; a passing candidate goes to shadow
(or, --no-shadow, serves at once); `retrain --queued` answers queued retrain requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bento
import export as runtime
from knowacq.base import FeedbackStore, PredictionRecord, load_tsv, text_sha256
from knowacq.cli import app
from knowacq.loop import RetrainConfig, RetrainResult, retrain
from tests.conftest import synthetic_rows, write_tsv

LABELS = ("negative", "positive")
runner = CliRunner()


def _store(
    store: FeedbackStore,
    rows: list[tuple[str, int]],
    *,
    prefix: str,
    sampled: bool,
    flip: bool = False,
    version: str = "v-served",
) -> list[str]:
    """Store `rows` (text, label id) as predictions (sampled ones: the live sample) and label each with its true
    label (or the opposite one, `flip`); their ids."""
    ids = [f"{prefix}{i}" for i in range(len(rows))]
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=pid,
                model_version=version,
                text=text,
                text_sha256=text_sha256(text),
                label=LABELS[label],  # what the service answered: right, here
                score=0.6,
                margin=0.2,
                probabilities={"negative": 0.5, "positive": 0.5},
                captured=not sampled,
                sampled=sampled,
            )
            for pid, (text, label) in zip(ids, rows)
        ]
    )
    for pid, (_, label) in zip(ids, rows):
        store.add_label(pid, LABELS[1 - label if flip else label])
    return ids


@pytest.fixture
def no_model_store(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """`bento.import_to_model_store` replaced (retrain takes it from the face when it publishes): no BentoML
    in the test process; returns the folders it was asked to register."""
    calls: list[Path] = []

    def fake(variant: Path, name: str) -> str:
        calls.append(Path(variant))
        return f"{name}:fake{len(calls)}"

    monkeypatch.setattr(bento, "import_to_model_store", fake)
    return calls


def _train_texts(run_dir: Path) -> set[str]:
    return set(load_tsv(run_dir / "train.tsv", label_names=LABELS).texts)


def test_dev_passes_but_live_data_rejects(
    fp32_variant: Path, binary_sets, tmp_path: Path, no_model_store: list[Path]
) -> None:
    """No rigging. The dev file has gone stale: its labels are the opposite of what they mean today (as the
    live traffic's are not). The new labels are flipped too, so the candidate learns the stale meaning: far
    better than the current model on that dev file, far worse on the live evaluation set. Dev alone would
    publish it; the live evidence rejects it, and the record says so."""
    train_file, dev_file = binary_sets
    train = load_tsv(train_file, label_names=LABELS)
    dev = load_tsv(dev_file, label_names=LABELS)
    stale_dev = write_tsv(tmp_path / "stale-dev.tsv", [(t, 1 - int(y)) for t, y in zip(dev.texts, dev.labels)])
    store = FeedbackStore(f"sqlite:///{tmp_path / 's.db'}")
    taught = _store(
        store, [(t, int(y)) for t, y in zip(train.texts, train.labels)], prefix="c", sampled=False, flip=True
    )
    live_rows = synthetic_rows(60, 2, seed=7)
    live_ids = _store(store, live_rows, prefix="s", sampled=True)
    # A captured prediction of a text that is also in the live set: held out of training as well.
    _store(store, [live_rows[0]], prefix="dup", sampled=False)

    result = retrain(
        fp32_variant,
        store,
        tmp_path / "runs",
        dev_file=stale_dev,
        config=RetrainConfig(replay=0, epochs=1, learning_rate=1e-2, min_live=40),
        progress=False,
        log=lambda _: None,
    )

    assert result.dev_passed and result.candidate_accuracy is not None
    assert result.candidate_accuracy > result.current_accuracy + 0.3  # dev alone would have published it
    live = result.live
    assert live is not None and live.current.n == 60 and not live.passed
    assert live.candidate.estimate < live.current.estimate - 0.3
    assert live.difference.high < 0  # the paired interval excludes "no worse"
    assert live.difference.estimate == pytest.approx(live.candidate.estimate - live.current.estimate)
    assert live.current.low <= live.current.estimate <= live.current.high
    assert live.as_served.estimate == 1.0 and live.served_by == {"v-served": 60}
    assert not result.promoted and result.decided_by == "live"
    assert len(result.reasons) == 1 and result.reasons[0].startswith(
        f"live accuracy {live.candidate.estimate:.4f} is below the current {live.current.estimate:.4f}"
    )
    assert result.tag is None and result.published is None and no_model_store == []
    assert store.promoted_model() is None and store.shadow_runs() == []

    record = json.loads((result.run_dir / "record.json").read_text())
    assert record["decision"] == "rejected" and record["decided_by"] == "live" and record["published"] is None
    evidence = record["evidence"]
    assert evidence["dev"] == {
        "file": str(stale_dev),
        "n": len(dev),
        "current": result.current_accuracy,
        "candidate": result.candidate_accuracy,
        "passed": True,
    }
    assert evidence["live"]["n"] == 60 and evidence["live"]["passed"] is False and evidence["live_skipped"] is None
    assert evidence["live"]["difference"]["estimate"] == pytest.approx(live.difference.estimate)
    assert record["labels_used"]["count"] == len(taught) and record["labels_used"]["held_out_as_live_texts"] == 1
    # The live sample never reaches the training file, nor does a text of it labelled elsewhere.
    live_texts = {t for t, _ in live_rows}
    assert not live_texts & _train_texts(result.run_dir)
    assert len(load_tsv(result.run_dir / "live.tsv", label_names=LABELS)) == 60
    assert {store.get_prediction(i).status for i in live_ids} == {"labelled"}  # type: ignore[union-attr]
    assert store.get_prediction("dup0").status == "labelled"  # type: ignore[union-attr]
    assert {store.get_prediction(i).status for i in taught} == {"used"}  # type: ignore[union-attr]


def _passing_run(
    fp32_variant: Path, binary_sets, store_url: str, tmp_path: Path, *, shadow: bool
) -> tuple[FeedbackStore, RetrainResult]:
    """True labels, a small step: candidate and current agree within the tolerance on dev and on live data."""
    train = load_tsv(binary_sets[0], label_names=LABELS)
    store = FeedbackStore(store_url)
    _store(store, [(train.texts[i], int(train.labels[i])) for i in range(40)], prefix="c", sampled=False)
    _store(store, synthetic_rows(45, 2, seed=8), prefix="s", sampled=True, version="v-old")
    result = retrain(
        fp32_variant,
        store,
        tmp_path / "runs",
        dev_file=binary_sets[1],
        config=RetrainConfig(replay=0, tolerance=0.05, min_live=45),
        shadow=shadow,
        progress=False,
        log=lambda _: None,
    )
    return store, result


def test_a_passing_candidate_goes_to_shadow_first(
    fp32_variant: Path, binary_sets, store_url: str, tmp_path: Path, no_model_store: list[Path]
) -> None:
    store, result = _passing_run(fp32_variant, binary_sets, store_url, tmp_path, shadow=True)
    assert result.promoted and result.decided_by == "dev+live", result.reasons
    assert result.live is not None and result.live.passed and result.live.current.n == 45
    assert result.tag == "knowacq-classifier:fake1" and no_model_store == [result.run_dir / "variant"]
    assert result.published == "shadow"
    run = store.active_shadow()
    assert run is not None and run.id == result.shadow_run and run.model == result.tag
    assert run.evidence["run_id"] == result.run_id and run.evidence["decided_by"] == "dev+live"
    assert run.evidence["dev"]["candidate"] == result.candidate_accuracy
    assert run.evidence["live"]["candidate"]["estimate"] == result.live.candidate.estimate
    # Not serving: the services promote it (or not) after its shadow run.
    assert store.promoted_model() is None and store.model_history() == []
    record = json.loads((result.run_dir / "record.json").read_text())
    assert record["published"] == "shadow" and record["shadow_run"] == run.id and record["decision"] == "promoted"
    assert record["evidence"]["live"]["served_by"] == {"v-old": 45}
    assert not {t for t, _ in synthetic_rows(45, 2, seed=8)} & _train_texts(result.run_dir)


def test_no_shadow_publishes_the_candidate_at_once(
    fp32_variant: Path, binary_sets, store_url: str, tmp_path: Path, no_model_store: list[Path]
) -> None:
    store, result = _passing_run(fp32_variant, binary_sets, store_url, tmp_path, shadow=False)
    assert result.promoted and result.published == "serving" and result.shadow_run is None
    assert store.promoted_model() == result.tag and store.shadow_runs() == []
    event = store.model_history()[-1]
    assert event.model == result.tag and event.action == "promote"
    assert event.evidence["run_id"] == result.run_id and event.evidence["live"]["n"] == 45
    assert json.loads((result.run_dir / "record.json").read_text())["published"] == "serving"


def test_dev_rejects_even_when_live_data_would_pass(
    fp32_variant: Path, binary_sets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_store: list[Path]
) -> None:
    """Dev is rigged 10 points down for the candidate; live is real (both models close): dev decides."""
    import dataclasses

    real = runtime.evaluate_variant

    def rigged(path, data_file, **kwargs):
        report = real(path, data_file, **kwargs)
        return dataclasses.replace(report, accuracy=report.accuracy - 0.10) if Path(path).name == "variant" else report

    monkeypatch.setattr(runtime, "evaluate_variant", rigged)
    store = FeedbackStore(f"sqlite:///{tmp_path / 's.db'}")
    _store(store, synthetic_rows(10, 2, seed=3), prefix="c", sampled=False)
    _store(store, synthetic_rows(30, 2, seed=4), prefix="s", sampled=True)
    result = retrain(
        fp32_variant,
        store,
        tmp_path / "runs",
        dev_file=binary_sets[1],
        config=RetrainConfig(replay=0, tolerance=0.05, min_live=30),
        progress=False,
        log=lambda _: None,
    )
    assert not result.promoted and not result.dev_passed and result.decided_by == "dev"
    assert result.live is not None and result.live.passed
    assert len(result.reasons) == 1 and result.reasons[0].startswith("dev accuracy")
    assert no_model_store == [] and store.shadow_runs() == []


def _cli_retrain(fp32_variant: Path, binary_sets, store_url: str, out: Path, *options: str):
    command = ["retrain", "--current", str(fp32_variant), "--store", store_url, "--out", str(out)]
    command += ["--dev", str(binary_sets[1]), "--replay", "0", "--register", "", "--no-progress", *options]
    return runner.invoke(app, command)


def test_retrain_queued_and_too_few_live_labels(
    fp32_variant: Path, binary_sets, store_url: str, tmp_path: Path
) -> None:
    store = FeedbackStore(store_url)
    runs = tmp_path / "runs"

    idle = _cli_retrain(fp32_variant, binary_sets, store_url, runs, "--queued")
    assert idle.exit_code == 0, idle.output
    assert "no queued retrain request" in idle.output and not runs.exists()

    # Queued, but nothing to train on: the request fails, the error is reported.
    first = store.request_retrain("label-studio", "project 3")
    failed = _cli_retrain(fp32_variant, binary_sets, store_url, runs, "--queued")
    assert failed.exit_code == 2 and "0 new label(s) in the store" in failed.output, failed.output
    assert [(r.id, r.state) for r in store.retrain_requests(None)] == [(first.id, "failed")]

    _store(store, synthetic_rows(10, 2, seed=5), prefix="c", sampled=False)
    _store(store, synthetic_rows(12, 2, seed=6), prefix="s", sampled=True)
    second = store.request_retrain("label-studio", "project 3")
    third = store.request_retrain("operator")
    done = _cli_retrain(fp32_variant, binary_sets, store_url, runs, "--queued", "--tolerance", "1.0")
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())  # rich wraps long lines
    record = json.loads(next(runs.glob("run-*/record.json")).read_text())
    assert said.startswith("answering 2 queued retrain request(s): #2 from label-studio (project 3), #3 from operator")
    assert "decided by dev; no live evidence: 12 live label(s) < --min-live 50" in said
    assert f"retrain request(s) #{second.id}, #{third.id} done ({record['run_id']})" in said
    states = {r.id: (r.state, r.run_id) for r in store.retrain_requests(None)}
    assert states == {
        first.id: ("failed", None),
        second.id: ("done", record["run_id"]),
        third.id: ("done", record["run_id"]),
    }
    assert store.retrain_requests("queued") == []
    assert record["decided_by"] == "dev" and record["evidence"]["live"] is None
    assert record["evidence"]["live_skipped"] == "12 live label(s) < --min-live 50"
    assert record["labels_used"]["count"] == 10 and record["published"] is None  # --register '': not published
    assert record["retrain_config"]["min_live"] == 50

    again = _cli_retrain(fp32_variant, binary_sets, store_url, runs, "--queued")
    assert again.exit_code == 0 and "no queued retrain request" in again.output
    assert len(list(runs.glob("run-*"))) == 1
