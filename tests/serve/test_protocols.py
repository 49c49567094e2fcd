"""The Open Inference Protocol v2 and text-embeddings-inference shapes, in process: the guard in front of a
core with a real (tiny) model, spoken to over ASGI. The real server and the real `tritonclient` are in
test_serve_e2e.py."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bento import RequestGuard, State
from bento._protocols import OIP_OUTPUTS, V2Route, parse_tei, parse_v2_infer, v2_route
from knowacq.errors import InvalidInputError, PayloadTooLargeError, UnknownModelError
from tests.serve.test_serve import make_core, metric

TEXTS = ["a fine and lovely film", "dull , boring and far too long", "it is a film"]


async def _no_app(scope: dict, receive: Any, send: Any) -> None:
    raise AssertionError(f"the app was reached for {scope['path']}")


@pytest.fixture
def served(fp32_variant: Path, tmp_path: Path) -> Any:
    core, registry = make_core(fp32_variant, tmp_path, max_texts=4, record="all", model_name="sentiment")
    batches: list[int] = []

    async def infer(items: list[Any]) -> list[dict[str, Any]]:
        batches.append(len(items))
        return core.classify_items(items)

    state = State()
    state.core, state.infer = core, infer
    transport = httpx.ASGITransport(app=RequestGuard(_no_app, state=state))
    return core, registry, batches, transport


def call(transport: httpx.ASGITransport, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path, **kw) for method, path, kw in requests]

    return asyncio.run(run())


def v2_body(texts: list[str], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


def serialize(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_v2_routes_are_recognised_and_others_are_not() -> None:
    assert v2_route("/v2") == V2Route("server")
    assert v2_route("/v2/health/live") == V2Route("live")
    assert v2_route("/v2/health/ready/") == V2Route("ready")
    assert v2_route("/v2/models/m") == V2Route("model", "m")
    assert v2_route("/v2/models/m/versions/7/ready") == V2Route("model_ready", "m", "7")
    assert v2_route("/v2/models/m/infer") == V2Route("infer", "m")
    assert v2_route("/v2/models/m/versions/7/infer") == V2Route("infer", "m", "7")
    for other in ("/v2x", "/v2/models", "/v2/models/m/explain", "/v2/health", "/v2/models/m/versions"):
        assert v2_route(other) is None, other


def test_v2_infer_answers_what_classify_answers_and_counts_it(served: Any) -> None:
    core, registry, batches, transport = served
    native, v2 = call(
        transport,
        ("POST", "/classify", {"json": {"texts": TEXTS}}),
        ("POST", "/v2/models/sentiment/infer", {"json": v2_body(TEXTS, id="req-1")}),
    )
    assert native.status_code == 200 and v2.status_code == 200, v2.text
    answers, body = native.json(), v2.json()
    assert body["model_name"] == "sentiment" and body["model_version"] == core.model_version and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == list(OIP_OUTPUTS)
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "label": ("BYTES", [3]),
        "score": ("FP32", [3]),
        "probabilities": ("FP32", [3, 2]),
        "prediction_id": ("BYTES", [3]),
        "low_confidence": ("BOOL", [3]),
        "truncated": ("BOOL", [3]),
    }
    assert outputs["label"]["data"] == [a["label"] for a in answers]
    assert outputs["score"]["data"] == pytest.approx([a["score"] for a in answers], abs=1e-6)
    flat = [p for a in answers for p in a["probabilities"].values()]
    assert outputs["probabilities"]["data"] == pytest.approx(flat, abs=1e-6)
    assert outputs["low_confidence"]["data"] == [a["low_confidence"] for a in answers]
    assert body["parameters"] == {
        "model_version": core.model_version,
        "low_confidence": sum(a["low_confidence"] for a in answers),
    }
    # every prediction went into the store (record=all) under the id the protocol answered
    for pid in outputs["prediction_id"]["data"]:
        assert core.store.get_prediction(pid) is not None
    assert batches == [3, 3]  # through the batching queue, as /classify
    assert metric(registry, "knowacq_request_duration_seconds_count", {"endpoint": "v2_infer"}) == 1
    assert metric(registry, "knowacq_predictions_total", {"label": answers[0]["label"]}) >= 2


def test_v2_binary_tensors_in_and_out(served: Any) -> None:
    """Triton's binary tensor data extension, as tritonclient sends it by default: a JSON header, then the
    BYTES input as 4-byte lengths and bytes; outputs asked in binary come back after the answer's header."""
    from tritonclient.http import InferResult

    core, _, _, transport = served
    texts = ["naïve but lovely ✓", TEXTS[1]]
    blob = serialize(texts)
    header = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(blob)}}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}],
    }
    raw = json.dumps(header).encode()
    (answer,) = call(
        transport,
        (
            "POST",
            "/v2/models/sentiment/versions/" + core.model_version + "/infer",
            {"content": raw + blob, "headers": {"inference-header-content-length": str(len(raw))}},
        ),
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["inference-header-content-length"])
    result = InferResult.from_response_body(answer.content, header_length=length)
    expected = core.classify(texts)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities, [list(a["probabilities"].values()) for a in expected], atol=1e-6)
    assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == [
        a["label"] for a in expected
    ]
    assert result.as_numpy("score") is None  # only what was asked


def test_v2_metadata_health_and_unknown_models(served: Any) -> None:
    core, registry, _, transport = served
    server, live, ready, meta, model_ready, wrong, wrong_version, infer_wrong = call(
        transport,
        ("GET", "/v2", {}),
        ("GET", "/v2/health/live", {}),
        ("GET", "/v2/health/ready", {}),
        ("GET", "/v2/models/sentiment", {}),
        ("GET", f"/v2/models/sentiment/versions/{core.model_version}/ready", {}),
        ("GET", "/v2/models/other", {}),
        ("GET", "/v2/models/sentiment/versions/old/ready", {}),
        ("POST", "/v2/models/other/infer", {"json": v2_body(["a"])}),
    )
    assert server.json()["name"] == "knowacq" and "binary_tensor_data" in server.json()["extensions"]
    assert live.status_code == 200 and ready.status_code == 200 and model_ready.status_code == 200
    metadata = meta.json()
    assert metadata["name"] == "sentiment" and metadata["versions"] == [core.model_version]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]} in metadata["outputs"]
    assert json.loads(metadata["parameters"]["labels"]) == list(core.labels)
    assert wrong.status_code == 404 and "serves 'sentiment'" in wrong.json()["error"]
    assert wrong_version.status_code == 404 and core.model_version in wrong_version.json()["error"]
    assert infer_wrong.status_code == 404 and infer_wrong.json()["reason"] == "unknown_model"
    assert metric(registry, "knowacq_failures_total", {"reason": "unknown_model"}) == 1


def test_v2_ready_says_503_before_the_model_loads_and_while_draining(served: Any) -> None:
    _, _, _, transport = served
    loading = httpx.ASGITransport(app=RequestGuard(_no_app, state=State()))
    live, ready, meta = call(
        loading, ("GET", "/v2/health/live", {}), ("GET", "/v2/health/ready", {}), ("GET", "/v2/models/sentiment", {})
    )
    assert live.status_code == 200 and ready.status_code == 503 and meta.status_code == 503
    transport.app.state.draining = True
    (draining,) = call(transport, ("GET", "/v2/health/ready", {}))
    assert draining.status_code == 503 and draining.json() == {"ready": False}


def test_v2_bad_requests_are_refused_with_an_error_body(served: Any) -> None:
    _, registry, batches, transport = served
    url = "/v2/models/sentiment/infer"
    one = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("not json", {"content": b"{oops"}, 400),
        ("no inputs", {"json": {"outputs": []}}, 422),
        ("two inputs", {"json": {"inputs": [one, one]}}, 422),
        ("wrong name", {"json": {"inputs": [{**one, "name": "INPUT0"}]}}, 422),
        ("wrong datatype", {"json": {"inputs": [{**one, "datatype": "FP32", "data": [1.0]}]}}, 422),
        ("shape says 2", {"json": {"inputs": [{**one, "shape": [2]}]}}, 422),
        ("bad shape", {"json": {"inputs": [{**one, "shape": [1, 2]}]}}, 422),
        ("not strings", {"json": {"inputs": [{**one, "data": [7]}]}}, 422),
        ("empty", {"json": {"inputs": [{**one, "shape": [0], "data": []}]}}, 422),
        ("too many", {"json": v2_body(["a"] * 5)}, 413),
        ("unknown output", {"json": {"inputs": [one], "outputs": [{"name": "logits"}]}}, 422),
        (
            "classification",
            {"json": {"inputs": [one], "outputs": [{"name": "label", "parameters": {"classification": 2}}]}},
            422,
        ),
        ("unknown field", {"json": {"inputs": [one], "model": "x"}}, 422),
        ("header past the body", {"content": b"{}", "headers": {"inference-header-content-length": "99"}}, 400),
        (
            "binary past the body",
            {"json": {"inputs": [{**one, "data": None, "parameters": {"binary_data_size": 9}}]}},
            422,
        ),
        ("text/plain", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415),
        ("gzip", {"content": b"{}", "headers": {"content-encoding": "gzip"}}, 415),
    ]
    got = call(transport, *[("POST", url, kw) for _, kw, _ in cases])
    for (name, _, expected), response in zip(cases, got):
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text}"
        assert response.json()["error"], name
    assert batches == []  # nothing reached the model
    assert metric(registry, "knowacq_request_duration_seconds_count", {"endpoint": "v2_infer"}) == len(cases)


def test_binary_input_elements_are_checked() -> None:
    route = V2Route("infer", "m")

    def parse(blob: bytes, shape: list[int]) -> Any:
        header = {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(blob)}}
            ]
        }
        raw = json.dumps(header).encode()
        return parse_v2_infer(raw + blob, str(len(raw)), route, model_name="m", model_version="v", max_texts=8)

    assert parse(serialize(["one", "two"]), [2]).texts == ["one", "two"]
    for blob in (serialize(["one"])[:-1], b"\x01\x00", struct.pack("<I", 2) + b"\xff\xfe"):
        with pytest.raises(InvalidInputError):
            parse(blob, [1])
    with pytest.raises(UnknownModelError):
        parse_v2_infer(b"{}", None, V2Route("infer", "m", "old"), model_name="m", model_version="v", max_texts=8)


def test_tei_predict_answers_every_label_sorted_by_score(served: Any) -> None:
    core, registry, _, transport = served
    single, one_list, batch, native = call(
        transport,
        ("POST", "/predict", {"json": {"inputs": TEXTS[0]}}),
        ("POST", "/predict", {"json": {"inputs": [TEXTS[0]], "truncate": True}}),
        ("POST", "/predict", {"json": {"inputs": [[t] for t in TEXTS], "raw_scores": False}}),
        ("POST", "/classify", {"json": {"texts": TEXTS}}),
    )
    assert single.status_code == 200 and batch.status_code == 200, batch.text
    expected = [
        sorted(({"score": p, "label": n} for n, p in a["probabilities"].items()), key=lambda d: -d["score"])
        for a in native.json()
    ]

    def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
        return [g["label"] for g in got] == [w["label"] for w in want] and [g["score"] for g in got] == pytest.approx(
            [w["score"] for w in want], abs=1e-6
        )

    assert same(single.json(), expected[0]) and same(one_list.json(), expected[0])
    assert len(batch.json()) == 3 and all(same(g, w) for g, w in zip(batch.json(), expected))
    assert all(len(preds) == 2 and preds[0]["score"] >= preds[1]["score"] for preds in batch.json())
    assert metric(registry, "knowacq_request_duration_seconds_count", {"endpoint": "predict"}) == 3


def test_tei_predict_refuses_what_it_cannot_answer() -> None:
    for body, field in [
        ({"inputs": ["first", "second"]}, "inputs"),  # TEI reads [a, b] as one text pair
        ({"inputs": [["a"], ["b", "c"]]}, "inputs[1]"),
        ({"inputs": "a", "raw_scores": True}, "raw_scores"),
        ({"inputs": "a", "truncate": "yes"}, "truncate"),
        ({"texts": ["a"]}, "texts"),
        ({}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [[1]]}, "inputs[0]"),
        ("a", "inputs"),
    ]:
        with pytest.raises(InvalidInputError) as caught:
            parse_tei(body, max_texts=4)
        assert caught.value.field == field, (body, caught.value)
    with pytest.raises(PayloadTooLargeError):
        parse_tei({"inputs": [["a"]] * 5}, max_texts=4)
