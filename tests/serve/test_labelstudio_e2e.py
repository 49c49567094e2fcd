"""End to end against a real Label Studio: knowacq's server and Label Studio 1.23.2, both on loopback.

A project is created and the knowacq server connected to it as its ML backend with label-studio-sdk; tasks
are imported (some carrying the `prediction_id` of a POST /classify answer), their pre-annotations are asked
for and come from the serving model; annotations made through Label Studio's API reach the server by the
backend's webhook and are found in its store; "Start training" queues a retrain request. Label Studio is
installed in its own environment when missing (`tests/serve/_labelstudio.py`; .ci/run installs it first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bento import ServerProcess, free_port
from knowacq.base import FeedbackStore, PredictionRecord, redact_for_storage
from tests.serve._labelstudio import VERSION, LabelStudio, install, venv_dir

TOKEN = "ls-e2e-token-7d2a"
PII = "write to carol@example.org or call +44 20 7946 0958: the plot was awful and boring"

# Installing Label Studio (when .ci/run has not) takes minutes: more than the suite's 300 s per test.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def label_studio_venv() -> Path:
    """Label Studio's environment, installed when missing. Under CI (CI=true) a failed install fails."""
    venv = venv_dir()
    try:
        return install(venv, log=lambda line: print(line, file=sys.stderr))
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        why = f"Label Studio {VERSION} is not in {venv} and installing it failed: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(f"{why}; install it with: python3 tests/serve/_labelstudio.py install")


@pytest.fixture
def server(fp32_variant: Path, store_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """The knowacq server on each store (SQLite and Postgres), recording every prediction."""
    settings: dict[str, Any] = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": store_url,
        "threads": 1,
        "record": "all",
    }
    # A BentoML home of its own: BentoML keeps the multiprocess metrics in $BENTOML_HOME/prometheus_multiproc_dir
    # and clears it when a server starts, so any other server on the machine would wipe or add to the counters.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
        with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as proc:
            yield proc


@pytest.fixture(scope="module")
def label_studio(label_studio_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    folder = tmp_path_factory.mktemp("label-studio")
    with LabelStudio(label_studio_venv, folder / "data", free_port(), folder / "label-studio.log") as ls:
        yield ls


def _store(server: ServerProcess) -> FeedbackStore:
    return FeedbackStore(str(server.settings["store_url"]))


def _eventually(check: Any, seconds: float = 20.0) -> Any:
    """`check()` once it returns something true (a webhook is sent after Label Studio's answer is ready)."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_label_studio_pre_annotates_with_the_serving_model_and_its_labels_reach_the_store(
    server: ServerProcess, label_studio: LabelStudio, record_property: Any
) -> None:
    started = time.monotonic()
    record_property("label_studio_start_s", round(label_studio.started_in, 1))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/model").json()
        version, labels = info["model_version"], info["labels"]
        texts = ["great lovely film", "awful boring plot", "the story was really quite fine"]
        answers = client.post("/classify", json={"texts": texts}).json()
    store = _store(server)
    stored = [store.get_prediction(a["prediction_id"]) for a in answers]
    assert all(stored)
    clean, digest = redact_for_storage("a sampled sentence about the film")
    sampled = PredictionRecord("s" * 32, version, clean, digest, labels[0], 0.6, 0.2, {}, False, sampled=True)
    store.record_predictions([sampled])  # one of the live sample: it must get no pre-annotation
    tasks = [
        *({"data": {"text": r.text, "prediction_id": r.prediction_id}} for r in stored if r is not None),
        {"data": {"text": PII}},  # a text the service never saw
        {"data": {"text": sampled.text, "prediction_id": sampled.prediction_id}},
    ]

    connected = label_studio.sdk(
        "connect", backend=f"{server.url}/labelstudio", backend_token=TOKEN, labels=labels, tasks=tasks
    )
    # Label Studio checks the connection: a wrong password (401 to its health check), and a project whose
    # choices are not the model's labels (422 to its setup; Label Studio shows the status, knowacq logs why).
    wrong, other = connected["refused"]["wrong_password"], connected["refused"]["other_labels"]
    assert wrong["status"] == 400 and "authentication parameters" in wrong["body"], wrong
    assert other["status"] == 400 and "422 Client Error" in other["body"] and "/labelstudio/setup" in other["body"]
    assert "miss the model's label(s) positive" in _log(server)
    assert connected["ml_backend"]["state"] == "CO" and connected["ml_backend"]["model_version"] == version

    ls_tasks = connected["tasks"]
    assert [t["data"] for t in ls_tasks] == [t["data"] for t in tasks]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        served = client.post("/classify", json={"texts": [t["data"]["text"] for t in ls_tasks[:4]]}).json()
    for task, answer in zip(ls_tasks[:4], served):
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == version == answer["model_version"]
        assert prediction["result"] == [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [answer["label"]]}}
        ]
        assert prediction["score"] == pytest.approx(answer["score"], abs=1e-5)
    (hidden,) = ls_tasks[4]["predictions"]
    assert hidden["result"] == [] and hidden["model_version"] == version

    first, pii = ls_tasks[0], ls_tasks[3]
    annotated = label_studio.sdk(
        "annotate",
        annotations=[[first["id"], labels[0]], [pii["id"], labels[1]]],
        updates=[[first["id"], labels[1]]],
        train=connected["ml_backend"]["id"],
    )
    assert len(annotated["annotations"]) == 2

    pid = first["data"]["prediction_id"]

    def first_labels() -> list[tuple[str, str]]:
        found = [(lab.label, lab.source) for lab in store.labels_for(pid)]
        return found if found == [(labels[1], "label-studio")] else []

    assert _eventually(first_labels), store.labels_for(pid)
    (label,) = store.labels_for(pid)
    assert label.annotator.startswith("user-") and "@" not in label.annotator
    record = _eventually(lambda: store.find_by_text_hash(redact_for_storage(PII)[1]))
    assert record is not None, "the annotation of a text the service never saw is not in the store"
    assert "carol@example.org" not in record.text and "[EMAIL]" in record.text and "[PHONE]" in record.text
    assert [(lab.label, lab.source) for lab in store.labels_for(record.prediction_id)] == [(labels[1], "label-studio")]
    assert record.status == "labelled" and record.model_version == version
    assert store.labels_for(ls_tasks[1]["data"]["prediction_id"]) == []  # not annotated

    (request,) = _eventually(lambda: store.retrain_requests())
    assert request.source == "label-studio" and request.state == "queued"
    assert f"project {connected['project']}" in request.detail

    with httpx.Client(base_url=server.url, timeout=30) as client:
        metrics = client.get("/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("knowacq_feedback_total{")]
    assert _sample(metrics, 'knowacq_feedback_total{outcome="created"}') == 2, counted
    assert _sample(metrics, 'knowacq_feedback_total{outcome="updated"}') == 1, counted
    assert "carol@example.org" not in metrics and "carol@example.org" not in _log(server)
    record_property("label_studio_flow_s", round(time.monotonic() - started, 1))
    print(
        f"\nLabel Studio started in {label_studio.started_in:.1f} s; the flow took {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


def _sample(metrics: str, name: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


def _log(server: ServerProcess) -> str:
    return server.log_file.read_text(errors="replace") if server.log_file else ""
