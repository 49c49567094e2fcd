"""End to end: the real BentoML server as a subprocess, spoken to over HTTP on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bento import ServerProcess

TOKEN = "e2e-token-123"


@pytest.fixture(scope="module")
def server(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("e2e")
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": f"sqlite:///{folder / 'store.db'}",
        "max_texts": 16,
        "threads": 1,
        "record": "all",
    }
    with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as proc:
        proc.log_path = folder / "server.log"  # type: ignore[attr-defined]
        yield proc


def test_classify_feedback_and_model(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/classify", json={"texts": ["great lovely film", "awful boring plot"]})
        assert r.status_code == 200, r.text
        answers = r.json()
        assert [set(a) >= {"label", "score", "probabilities", "prediction_id", "model_version"} for a in answers] == [
            True,
            True,
        ]
        pid = answers[0]["prediction_id"]

        def feedback(headers: dict[str, str], body: dict[str, str]) -> httpx.Response:
            return client.post("/feedback", json=body, headers=headers)

        good = {"authorization": f"Bearer {TOKEN}"}
        assert feedback({}, {"prediction_id": pid, "label": "negative"}).status_code == 401
        assert (
            feedback({"authorization": "Bearer wrong"}, {"prediction_id": pid, "label": "negative"}).status_code == 401
        )
        first = feedback(good, {"prediction_id": pid, "label": "negative"})
        assert first.status_code == 200 and first.json()["outcome"] == "created"
        again = feedback(good, {"prediction_id": pid, "label": "negative"})
        assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
        unknown = feedback(good, {"prediction_id": "f" * 32, "label": "negative"})
        assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_prediction"
        bad_label = feedback(good, {"prediction_id": pid, "label": "neutral"})
        assert bad_label.status_code == 422 and bad_label.json()["field"] == "label"

        model = client.get("/model")
        assert model.status_code == 200
        info = model.json()
        assert info["labels"] == ["negative", "positive"] and info["provider"] == "cpu"
        assert info["model_version"] == answers[0]["model_version"]
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert client.get("/livez").status_code == 200


def test_every_bad_input_gets_a_4xx_with_a_json_body(server: ServerProcess) -> None:
    j = {"content-type": "application/json"}
    cases = [
        ("invalid json", b"{oops", j, 400),
        ("not utf-8", b'{"texts": ["\xff\xfe"]}', j, 400),
        ("empty list", b'{"texts": []}', j, 422),
        ("wrong type", b'{"texts": "one"}', j, 422),
        ("wrong item type", b'{"texts": [1, 2]}', j, 422),
        ("missing field", b"{}", j, 422),
        ("not an object", b"[]", j, 422),
        ("lone surrogate", b'{"texts": ["\\udc00"]}', j, 422),
        ("too many texts", json.dumps({"texts": ["x"] * 17}).encode(), j, 413),
        ("over 1 MB", json.dumps({"texts": ["x" * 1_100_000]}).encode(), j, 413),
        ("pickle", b"\x80\x04\x95", {"content-type": "application/vnd.bentoml+pickle"}, 415),
        ("plain text", b"hello", {"content-type": "text/plain"}, 415),
        ("no content type", b'{"texts": ["a"]}', {}, 415),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, body, headers, expected in cases:
            r = client.post("/classify", content=body, headers=headers)
            assert r.status_code == expected, f"{name}: {r.status_code} {r.text[:200]}"
            payload = r.json()
            assert "error" in payload and "Traceback" not in r.text, name
        # A long text is cut to the model's window and says so.
        r = client.post("/classify", json={"texts": ["film " * 2000]})
        assert r.status_code == 200 and r.json()[0]["truncated"] is True


def test_concurrent_requests_are_batched_and_all_answered(server: ServerProcess) -> None:
    texts = [f"the film was {'great' if i % 2 else 'awful'} " + "quite " * (i % 13) for i in range(96)]

    def one(text: str) -> httpx.Response:
        return httpx.post(f"{server.url}/classify", json={"texts": [text]}, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, texts))
    assert [r.status_code for r in responses] == [200] * len(texts)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        alone = [client.post("/classify", json={"texts": [t]}).json()[0] for t in texts[:12]]
    for r, single in zip(responses[:12], alone):
        assert r.json()[0]["label"] == single["label"]
        assert r.json()[0]["score"] == pytest.approx(single["score"], abs=1e-5)


def test_metrics_are_scraped_without_user_text(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post("/classify", json={"texts": ["a private note from alice@example.com"]})
        text = client.get("/metrics").text
    for name in (
        "knowacq_request_duration_seconds_bucket",
        "knowacq_stage_duration_seconds_bucket",
        "knowacq_batch_size_texts_bucket",
        "knowacq_predictions_total",
        "knowacq_prediction_confidence_ratio_bucket",
        "knowacq_low_confidence_captures_total",
        "knowacq_feedback_total",
        "knowacq_store_write_failures_total",
        "knowacq_failures_total",
        "knowacq_model_info",
        "knowacq_provider_fallback",
    ):
        assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), f"{name} missing from /metrics"
    assert 'stage="queue"' in text and 'stage="tokenize"' in text and 'stage="infer"' in text
    assert re.search(r'knowacq_failures_total\{reason="invalid_json"\} [1-9]', text)
    assert "alice" not in text and "private note" not in text


def test_server_log_holds_no_request_text_or_token(server: ServerProcess) -> None:
    log = server.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert "serving cpu-fp32-" in log
    assert TOKEN not in log and "alice@example.com" not in log and "private note" not in log
    assert "Traceback" not in log
    # BentoML's access log is off by default (KNOWACQ_ACCESS_LOG): no line per request, here or in a bento
    assert "path=/classify" not in log and "path=/feedback" not in log


def test_bentoml_build_packages_a_bento_that_serves(fp32_variant: Path, tmp_path: Path) -> None:
    """`knowacq import-model`, `bentoml build` with the project's bentofile, then `bentoml serve` the bento."""
    import os
    import subprocess
    import sys

    from bento import free_port, service_env

    repo = Path(__file__).resolve().parents[2]
    env = {**service_env({}), "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("KNOWACQ_MODEL", None)
    knowacq = [sys.executable, "-m", "knowacq"]
    stored = subprocess.run(
        [*knowacq, "import-model", str(fp32_variant)], env=env, capture_output=True, text=True, timeout=120
    )
    assert stored.returncode == 0, stored.stderr
    assert "stored as knowacq-classifier:" in stored.stdout
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    bentos = list((tmp_path / "bentoml" / "bentos" / "knowacq").glob("*/bento.yaml"))
    assert len(bentos) == 1
    cpu_tag = f"knowacq:{bentos[0].parent.name}"
    src = bentos[0].parent / "src"
    assert (src / "bento" / "service.py").is_file() and not (src / "tests").exists()
    # The image BentoML would build: non-root, settings from the environment, no download at start,
    # and only the runtime packages (no torch).
    dockerfile = (bentos[0].parent / "env" / "docker" / "Dockerfile").read_text()
    assert "USER bentoml" in dockerfile and "ENV KNOWACQ_MODEL=" in dockerfile and "HF_HUB_OFFLINE" in dockerfile
    requirements = (bentos[0].parent / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime==" in requirements and "torch" not in requirements and "transformers" not in requirements
    # The CUDA bento: same service, a CUDA base image and onnxruntime-gpu.
    gpu = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(repo / "bentofile.gpu.yaml"), str(repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
    )
    assert gpu.returncode == 0, gpu.stdout[-2000:] + gpu.stderr[-2000:]
    gpu_bento = max(
        (tmp_path / "bentoml" / "bentos" / "knowacq").glob("*/bento.yaml"), key=lambda p: p.stat().st_mtime
    ).parent
    assert "nvidia/cuda" in (gpu_bento / "env" / "docker" / "Dockerfile").read_text()
    assert "onnxruntime-gpu==" in (gpu_bento / "env" / "python" / "requirements.txt").read_text()
    port = free_port()
    log = tmp_path / "bento.log"
    env.update({"KNOWACQ_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}", "KNOWACQ_THREADS": "1"})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", cpu_tag, "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        import time

        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/classify", json={"texts": ["great film"]}, timeout=5)
                if r.status_code == 200:
                    answer = r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert answer is not None, log.read_text()[-3000:]
        assert answer[0]["model_version"].startswith("cpu-fp32-")
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_two_workers_share_the_store_and_add_up_their_metrics(fp32_variant: Path, tmp_path: Path) -> None:
    """Two BentoML worker processes write one SQLite file; /metrics sums both; nothing is lost."""
    store = tmp_path / "store.db"
    settings = {
        "model": str(fp32_variant),
        "api_token": TOKEN,
        "store_url": f"sqlite:///{store}",
        "workers": 2,
        "threads": 1,
        "record": "all",
    }
    texts = [f"text {i} was {'great' if i % 3 else 'dull'}" for i in range(120)]
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:

        def one(text: str) -> httpx.Response:
            return httpx.post(f"{server.url}/classify", json={"texts": [text]}, timeout=60)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, texts))
        assert [r.status_code for r in responses] == [200] * len(texts)
        ids = [r.json()[0]["prediction_id"] for r in responses]
        # Feedback for every id goes to whichever worker answers: all must find the prediction.
        with ThreadPoolExecutor(12) as pool:
            fed = list(
                pool.map(
                    lambda pid: httpx.post(
                        f"{server.url}/feedback",
                        json={"prediction_id": pid, "label": "positive"},
                        headers={"authorization": f"Bearer {TOKEN}"},
                        timeout=60,
                    ),
                    ids[:40],
                )
            )
        assert [r.status_code for r in fed] == [200] * 40
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = sum(
        float(m.group(1)) for m in re.finditer(r"^knowacq_predictions_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE)
    )
    assert total == len(texts)
    from knowacq.base import FeedbackStore

    counts = FeedbackStore(f"sqlite:///{store}").counts()
    assert counts["predictions"] == len(texts) and counts["labels"] == 40


def _one(server: ServerProcess, texts_per_request: int) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", json={"texts": ["a long film " * 20] * texts_per_request}, timeout=60)


def _burst(server: ServerProcess, texts_per_request: int) -> list[httpx.Response]:
    """96 requests of long texts from 24 threads at once."""

    with ThreadPoolExecutor(24) as pool:
        return list(pool.map(lambda _: _one(server, texts_per_request), range(96)))


def _overloaded(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    refused = re.search(r'^knowacq_failures_total\{reason="overloaded"\} (\S+)$', metrics, re.MULTILINE)
    assert refused, "knowacq_failures_total{reason=overloaded} missing from /metrics"
    return float(refused.group(1))


def test_overload_is_refused_with_503_not_queued(fp32_variant: Path, tmp_path: Path) -> None:
    """The batching queue refuses (503) a request that would wait longer than max_latency_ms. The in-flight
    limit is far above the 24 concurrent requests, so no 429 can stand in for the 503."""
    settings = {
        "model": str(fp32_variant),
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "threads": 1,
        "max_concurrency": 1000,
        "max_latency_ms": 10,
        "max_batch_size": 4,
        "max_texts": 4,
    }
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        responses = _burst(server, 4)
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and 503 in codes, codes
        assert codes.count(200) > 0, codes
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.json()["reason"] == "overloaded" and refused.headers["retry-after"] == "1"
        # Once the burst is over, the server answers normally again.
        assert _one(server, 4).status_code == 200
        assert _overloaded(server) == codes.count(503)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_too_many_requests_in_flight_are_refused_with_429(fp32_variant: Path, tmp_path: Path) -> None:
    """More requests in flight than max_concurrency: 429 at once. The batching queue may keep a request a
    minute, so no 503 can stand in for the 429."""
    settings = {
        "model": str(fp32_variant),
        "store_url": f"sqlite:///{tmp_path / 's.db'}",
        "threads": 1,
        "max_concurrency": 2,
        "max_latency_ms": 60_000,
    }
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:
        responses = _burst(server, 8)
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and 429 in codes, codes
        assert codes.count(200) > 0, codes
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json() == {"error": "too many requests in flight (limit 2); retry later", "reason": "overloaded"}
        assert refused.headers["retry-after"] == "1"
        # Once the burst is over, the server answers normally again.
        assert _one(server, 8).status_code == 200
        assert _overloaded(server) == codes.count(429)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def _readme_curl_calls() -> list[str]:
    """The `curl` calls README's stage 3 shows (the ones `make serve` prints), continuation lines joined."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    stage = readme[readme.index("### 3. Serve") :]
    block = stage[stage.index("```bash", stage.index("The calls `make serve` prints")) + len("```bash") :]
    lines = block[: block.index("```")].replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("curl ")]


def test_the_readme_curl_calls_work(fp32_variant: Path, tmp_path: Path) -> None:
    """README's calls, run with curl as written (only the address changes): classify, model, a
    low-confidence classify that is recorded, feedback on it with the bearer token, the metrics."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    calls = _readme_curl_calls()
    assert [("/classify" in c, "/model" in c, "/feedback" in c, "/metrics" in c) for c in calls] == [
        (True, False, False, False),
        (False, True, False, False),
        (True, False, False, False),
        (False, False, True, False),
        (False, False, False, True),
    ], calls
    settings = {
        "model": str(fp32_variant),
        "api_token": "demo-token",  # what `make serve` sets
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "threads": 1,
        "min_confidence": 1.0,  # the tiny test model is no demo model: make every answer low-confidence
    }
    with ServerProcess(settings, log_file=tmp_path / "server.log", cwd=tmp_path) as server:

        def run(call: str) -> str:
            command, _, pipe = call.partition(" | ")
            argv = shlex.split(command.replace("http://127.0.0.1:3000", server.url))
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
            if pipe.strip() == "grep ^knowacq_":
                return "\n".join(line for line in out.splitlines() if line.startswith("knowacq_"))
            assert not pipe, f"unexpected pipe in README: {pipe}"
            return out

        two = json.loads(run(calls[0]))
        assert [a["label"] in ("negative", "positive") for a in two] == [True, True]
        model = json.loads(run(calls[1]))
        assert model["labels"] == ["negative", "positive"] and model["model_version"] == two[0]["model_version"]
        (so_so,) = json.loads(run(calls[2]))
        assert so_so["low_confidence"] is True and so_so["recorded"] is True
        assert "<id from classify>" in calls[3]
        fed = json.loads(run(calls[3].replace("<id from classify>", so_so["prediction_id"])))
        assert fed == {"prediction_id": so_so["prediction_id"], "label": "negative", "outcome": "created"}
        metrics = run(calls[4])
        assert 'knowacq_feedback_total{outcome="created"} 1.0' in metrics.splitlines()
        assert "knowacq_low_confidence_captures_total 3.0" in metrics.splitlines()  # 2 + 1 texts


def test_tritonclient_speaks_the_open_inference_protocol_to_the_server(server: ServerProcess) -> None:
    """The real `tritonclient[http]` (what KServe and Triton users call a model with) against the real server:
    health, metadata, and inference with binary tensors (its default) and with JSON ones."""
    import numpy as np
    import tritonclient.http as triton

    texts = ["great lovely film", "awful boring plot", "naïve ✓ but fine"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        native = client.post("/classify", json={"texts": texts}).json()
    url = server.url.removeprefix("http://")
    client = triton.InferenceServerClient(url=url, network_timeout=30)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("knowacq")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata("knowacq")
        assert metadata["versions"] == [native[0]["model_version"]]
        assert [o["name"] for o in metadata["outputs"]][:4] == ["label", "score", "probabilities", "prediction_id"]
        for binary in (True, False):
            text = triton.InferInput("text", [len(texts)], "BYTES")
            text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
            outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score", "probabilities")]
            result = client.infer("knowacq", [text], outputs=outputs)
            labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
            assert labels == [a["label"] for a in native], binary
            np.testing.assert_allclose(result.as_numpy("score"), [a["score"] for a in native], atol=1e-5)
            probabilities = [list(a["probabilities"].values()) for a in native]
            np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-5)
            assert result.get_response()["parameters"]["model_version"] == native[0]["model_version"]
        every = client.infer("knowacq", [text])  # no outputs named: all of them, binary (binary_data_output)
        assert len(every.as_numpy("prediction_id")) == 3 and every.as_numpy("low_confidence").dtype == np.bool_
        with pytest.raises(triton.InferenceServerException, match="unknown model 'other'"):
            client.infer("other", [text])
    finally:
        client.close()


def test_tei_predict_shape_against_the_server(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        one = client.post("/predict", json={"inputs": "great lovely film"})
        batch = client.post("/predict", json={"inputs": [["great lovely film"], ["awful boring plot"]]})
        pair = client.post("/predict", json={"inputs": ["great lovely film", "awful boring plot"]})
        native = client.post("/classify", json={"texts": ["great lovely film", "awful boring plot"]}).json()
    assert one.status_code == 200 and batch.status_code == 200
    assert [set(p) for p in one.json()] == [{"label", "score"}] * 2
    for preds, answer in zip(batch.json(), native):
        assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
        assert preds[0]["label"] == answer["label"] and preds[0]["score"] == pytest.approx(answer["score"], abs=1e-5)
    assert one.json() == batch.json()[0]
    assert pair.status_code == 422 and "text pair" in pair.json()["error"]
