"""The active-learning loop end to end, on SQLite and Postgres: serve -> capture -> export -> label ->
import -> retrain -> gate -> promote -> the running service switches, with zero failed requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from bento import ServerProcess, service_env
from knowacq.base import FeedbackStore, load_tsv
from knowacq.loop import export_tasks, import_labels

TOKEN = "loop-token"


def test_capture_label_retrain_promote_and_hot_swap(
    fp32_variant: Path, binary_sets, store_url: str, tmp_path: Path
) -> None:
    train_file, dev_file = binary_sets
    dev = load_tsv(dev_file, label_names=("negative", "positive"))
    truth = dict(zip(dev.texts, (dev.label_names[i] for i in dev.labels)))
    bentoml_home = tmp_path / "bentoml"
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": store_url,
        "threads": 1,
        "min_confidence": 1.0,
        "reload_poll_s": 0.5,
        # The retrain below trains on the same 2 cores as this server: its latency bound (503 overloaded,
        # tested in tests/reliability/test_load.py) would shed a few requests of a starved server. Here the
        # swap is under test: a bound far above any starved batch leaves only refusals the swap would cause.
        "max_latency_ms": 60_000,
    }
    os.environ["BENTOML_HOME"] = str(bentoml_home)  # the server (started below) inherits it
    try:
        server = ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path)
        server.start()
    finally:
        os.environ.pop("BENTOML_HOME")
    try:
        # 1. Traffic: every prediction is captured (min_confidence 1.0).
        texts = list(dev.texts[:40])
        r = httpx.post(f"{server.url}/classify", json={"texts": texts}, timeout=60)
        assert r.status_code == 200
        first_version = r.json()[0]["model_version"]

        # 2. Hand-off: export 20 for labelling, "annotate" them with the data set's labels, import.
        store = FeedbackStore(store_url)
        tasks_file = tmp_path / "tasks.json"
        exported = export_tasks(store, tasks_file, n=20, strategy_name="margin")
        assert len(exported) == 20
        tasks = json.loads(tasks_file.read_text())
        for task in tasks:
            task["annotations"] = [
                {
                    "completed_by": 1,
                    "result": [
                        {
                            "type": "choices",
                            "from_name": "label",
                            "to_name": "text",
                            "value": {"choices": [truth[task["data"]["text"]]]},
                        }
                    ],
                }
            ]
        (tmp_path / "annotated.json").write_text(json.dumps(tasks))
        assert import_labels(store, tmp_path / "annotated.json").created == 20

        # 3. Keep traffic flowing while retraining, promotion and the swap happen.
        results: list[tuple[int, str]] = []
        refusals: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    resp = client.post("/classify", json={"texts": ["a great film", "an awful plot"]})
                    version = resp.json()[0]["model_version"] if resp.status_code == 200 else ""
                    results.append((resp.status_code, version))
                    if resp.status_code != 200:
                        refusals.append(resp.text[:200])

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        env = {**service_env({}), "BENTOML_HOME": str(bentoml_home)}
        done = _retrain_cli(
            fp32_variant,
            store_url,
            tmp_path / "runs",
            env,
            "--dev",
            str(dev_file),
            "--train",
            str(train_file),
            "--replay",
            "100",
            "--tolerance",
            "1.0",
            "--lr",
            "1e-3",
            "--no-shadow",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PROMOTED" in done.stdout and "tag knowacq-classifier:" in done.stdout
        assert "published as the serving model" in done.stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v not in ("", first_version) for _, v in results[-8:]):
            time.sleep(0.2)
        time.sleep(1.0)  # a little traffic on the new model too
        stop.set()
        for t in threads:
            t.join(60)

        codes = [c for c, _ in results]
        versions = [v for _, v in results]
        failed = f"{codes.count(200)} of {len(codes)} requests succeeded; refused: {refusals[:3]}"
        assert codes and set(codes) == {200}, failed
        new_versions = set(versions) - {first_version}
        assert len(new_versions) == 1, set(versions)
        # Once switched, every later answer comes from the new model.
        switch = versions.index(next(iter(new_versions)))
        assert first_version not in versions[switch + 8 :]

        # 4. The run record, the labels' status, the published tag.
        record = json.loads(next((tmp_path / "runs").glob("run-*/record.json")).read_text())
        assert record["decision"] == "promoted" and record["labels_used"]["count"] == 20
        assert record["published"] == "serving" and record["decided_by"] == "dev"  # no live sample here
        assert store.promoted_model() == record["tag"] and store.shadow_runs() == []
        assert store.counts().get("status_used") == 20
        info = httpx.get(f"{server.url}/model", timeout=30).json()
        assert info["model_version"] in new_versions
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_admin_reload_needs_the_token_and_refuses_a_bad_model(fp32_variant: Path, tmp_path: Path) -> None:
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "threads": 1,
        "reload_poll_s": 0,
    }
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{server.url}/admin/reload", json={}, timeout=30).status_code == 401
        bad = httpx.post(f"{server.url}/admin/reload", json={"model": str(tmp_path)}, headers=auth, timeout=60)
        assert bad.status_code == 422 and "still serving" in bad.json()["error"]
        same = httpx.post(f"{server.url}/admin/reload", json={"model": str(fp32_variant)}, headers=auth, timeout=60)
        assert same.status_code == 200 and same.json()["model_version"] == same.json()["previous_version"]
        assert httpx.post(f"{server.url}/classify", json={"texts": ["ok"]}, timeout=30).status_code == 200


def test_a_worse_candidate_is_rejected_and_not_published(
    fp32_variant: Path, binary_sets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export as runtime  # retrain takes evaluate_variant from the face when it runs
    from knowacq.base import PredictionRecord
    from knowacq.loop import RetrainConfig, retrain

    store = FeedbackStore(f"sqlite:///{tmp_path / 's.db'}")
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id="p1",
                model_version="v",
                text="a great film",
                text_sha256="h",
                label="negative",
                score=0.6,
                margin=0.2,
                probabilities={"negative": 0.6, "positive": 0.4},
                captured=True,
            )
        ]
    )
    store.add_label("p1", "positive")
    real = runtime.evaluate_variant

    def rigged(path, data_file, **kwargs):  # the candidate scores 10 points below the current model
        report = real(path, data_file, **kwargs)
        if Path(path).name == "variant":
            import dataclasses

            report = dataclasses.replace(report, accuracy=report.accuracy - 0.10)
        return report

    monkeypatch.setattr(runtime, "evaluate_variant", rigged)
    result = retrain(
        fp32_variant,
        store,
        tmp_path / "runs",
        dev_file=binary_sets[1],
        train_file=binary_sets[0],
        config=RetrainConfig(replay=50, tolerance=0.005),
        register_as="never-used",
        progress=False,
        log=lambda _: None,
    )
    assert not result.promoted and result.tag is None
    assert "below the current" in result.reasons[0]
    assert (result.run_dir / "variant" / "model.onnx").is_file()  # kept for inspection
    assert json.loads((result.run_dir / "record.json").read_text())["decision"] == "rejected"
    assert result.reoptimise == "none"  # cpu-fp32 does not prune
    assert json.loads((result.run_dir / "record.json").read_text())["reoptimise"]["path"] == "none"
    assert store.promoted_model() is None


def test_a_candidate_taught_wrong_labels_is_rejected_through_the_cli(
    fp32_variant: Path, binary_sets, tmp_path: Path
) -> None:
    """No rigging: every stored label is the opposite of the truth; the candidate trained on them (no replay, a
    large step) is far worse on dev, and the gate (default tolerance) refuses it; nothing is registered or published."""
    from knowacq.base import PredictionRecord, text_sha256

    train_file, dev_file = binary_sets
    rows = load_tsv(train_file, label_names=("negative", "positive"))
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = FeedbackStore(store_url)
    n = len(rows)  # every training row, flipped: enough steps before the first dev evaluation
    store.record_predictions(
        [
            PredictionRecord(
                prediction_id=f"p{i}",
                model_version="v",
                text=rows.texts[i],
                text_sha256=text_sha256(rows.texts[i]),
                label=rows.label_names[rows.labels[i]],
                score=0.6,
                margin=0.2,
                probabilities={"negative": 0.5, "positive": 0.5},
                captured=True,
            )
            for i in range(n)
        ]
    )
    for i in range(n):
        store.add_label(f"p{i}", rows.label_names[1 - int(rows.labels[i])])  # flipped on purpose
    env = {**service_env({}), "BENTOML_HOME": str(tmp_path / "bentoml")}
    done = _retrain_cli(
        fp32_variant,
        store_url,
        tmp_path / "runs",
        env,
        "--dev",
        str(dev_file),
        "--replay",
        "0",
        "--epochs",
        "1",
        "--lr",
        "1e-2",
    )
    assert done.returncode == 0, done.stdout + done.stderr  # a rejection is a result, not an error
    record = json.loads(next((tmp_path / "runs").glob("run-*/record.json")).read_text())
    current, candidate = record["current"]["dev_accuracy"], record["candidate"]["dev_accuracy"]
    said = " ".join(done.stdout.split())  # rich wraps long lines
    assert said.startswith(f"REJECTED: current dev {current:.4f}, candidate {candidate:.4f}, {n} new label(s)"), said
    assert f"dev accuracy {candidate:.4f} is below the current {current:.4f} by more than the tolerance 0.005" in said
    assert "; tag " not in said
    assert record["decision"] == "rejected" and record["tag"] is None
    assert record["retrain_config"]["tolerance"] == 0.005 and record["replayed_rows"] == 0
    assert record["labels_used"]["count"] == n
    # Clearly worse, not a near miss.
    assert candidate < current - 0.3, record
    assert len(record["reasons"]) == 1 and "is below the current" in record["reasons"][0]
    assert (tmp_path / "runs" / record["run_id"] / "variant" / "model.onnx").is_file()  # kept for inspection
    assert store.promoted_model() is None
    assert store.retrain_counts() == {"promoted": 0, "rejected": 1}
    assert not (tmp_path / "bentoml").exists() or not any((tmp_path / "bentoml").rglob("model.onnx"))


def test_demo_loop_command(fp32_variant: Path, binary_sets, tmp_path: Path) -> None:
    """The demo turn with a live sample (40% of the traffic, all of it labelled: enough to judge on) and the
    candidate through shadow on the running server."""
    env = {**service_env({}), "BENTOML_HOME": str(tmp_path / "bentoml")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "knowacq",
            "al",
            "demo-loop",
            "--variant",
            str(fp32_variant),
            "--traffic",
            str(binary_sets[0]),
            "--out",
            str(tmp_path / "loop"),
            "--n-traffic",
            "80",
            "--labels",
            "20",
            "--replay",
            "40",
            "--min-confidence",
            "1.0",
            "--sample-rate",
            "0.4",
            "--min-live",
            "10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "loop" / "loop.json").read_text())
    assert summary["traffic"] == 80 and summary["labelled"] == 20
    assert summary["captured"] == 80  # min-confidence 1.0: every answer is low-confidence (sampled ones too)
    assert summary["sampled"] >= 10 and summary["live_labelled"] == summary["sampled"]
    assert summary["live"]["n"] == summary["live_labelled"] and summary["live_skipped"] is None
    assert summary["decided_by"] in ("dev", "live", "dev+live")
    said = " ".join(done.stdout.split())
    assert f"loop: 80 texts served, {summary['captured']} captured, {summary['sampled']} sampled" in said
    assert summary["decision"] in ("promoted", "rejected")
    if summary["decision"] == "promoted":  # the candidate went to shadow, and the server decided it
        assert summary["published"] == "shadow"
        shadow = summary["shadow"]
        assert shadow["state"] in ("promoted", "rejected"), shadow
        assert shadow["scored"] >= 200 and f"shadow run {shadow['run']}: {shadow['state']}" in said
        switched = summary["served_after"] != summary["served_before"]
        assert switched == (shadow["state"] == "promoted"), summary
    else:
        assert summary["published"] is None and summary["shadow"] is None


def _retrain_cli(current: Path, store_url: str, out: Path, env: dict[str, str], *options: str):
    """`python -m knowacq retrain` of `current` on the labels in `store_url`, with `options`, without progress."""
    command = [sys.executable, "-m", "knowacq", "retrain", "--current", str(current), "--store", store_url]
    return subprocess.run(
        [*command, "--out", str(out), *options, "--no-progress"], env=env, capture_output=True, text=True, timeout=600
    )
