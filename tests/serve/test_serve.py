"""The serving stage in-process: settings, the core (classify, capture, feedback), the HTTP guard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bento import (
    FAILURE_REASONS,
    ClassifierCore,
    Item,
    RequestGuard,
    ServiceMetrics,
    Settings,
    State,
    parse_classify,
    parse_feedback,
)
from bento._refusals import ERRORS, INTERNAL, REFUSALS, refusal_of
from export import Predictor
from knowacq import errors
from knowacq.base import FeedbackStore
from knowacq.errors import (
    AuthError,
    ConfigError,
    InvalidInputError,
    PayloadTooLargeError,
    ProviderError,
    RequestError,
    StoreError,
    UnknownLabelError,
    UnknownPredictionError,
)

TOKEN = "s3cret-token"


def make_core(variant: Path, tmp_path: Path, **overrides: Any) -> tuple[ClassifierCore, CollectorRegistry]:
    settings = Settings(model=str(variant), **{"api_token": TOKEN, **overrides})
    registry = CollectorRegistry()
    predictor = Predictor(
        variant, threads=1, max_batch_size=settings.max_batch_size, bucket_tokens=settings.bucket_tokens
    )
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    core = ClassifierCore(predictor, settings, store=store, metrics=ServiceMetrics(predictor.labels, registry=registry))
    return core, registry


def metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# settings -----------------------------------------------------------------------------------------


def test_settings_from_env_parse_and_validate() -> None:
    s = Settings.from_env(
        {
            "KNOWACQ_MODEL": "m",
            "KNOWACQ_MAX_TEXTS": "8",
            "KNOWACQ_ALLOW_FALLBACK": "false",
            "KNOWACQ_MIN_CONFIDENCE": "0.9",
        }
    )
    assert (s.model, s.max_texts, s.allow_fallback, s.min_confidence) == ("m", 8, False, 0.9)
    assert "api_token" not in s.public() and "store_url" not in s.public()
    assert Settings.from_env({}).model == "knowacq-classifier:latest"
    with pytest.raises(ConfigError, match="KNOWACQ_MODEL is empty"):
        Settings(model=" ")
    with pytest.raises(ConfigError, match="KNOWACQ_MAX_TEXTS='many' is not a valid int"):
        Settings.from_env({"KNOWACQ_MODEL": "m", "KNOWACQ_MAX_TEXTS": "many"})
    with pytest.raises(ConfigError, match=r"KNOWACQ_MIN_CONFIDENCE must be in \[0, 1\]"):
        Settings.from_env({"KNOWACQ_MODEL": "m", "KNOWACQ_MIN_CONFIDENCE": "2"})
    with pytest.raises(ConfigError, match="KNOWACQ_PROVIDER must be"):
        Settings(model="m", provider="tpu")


# the refusal table ------------------------------------------------------------------------------------


def test_the_refusal_table_covers_every_request_error() -> None:
    request_errors = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, RequestError) and cls is not RequestError
    ]
    assert len(request_errors) == 8
    for cls in request_errors:
        assert cls in ERRORS, f"{cls.__name__} has no entry in the refusal table"
        assert (ERRORS[cls].status, ERRORS[cls].reason) == (cls.status, cls.reason), cls.__name__
        assert refusal_of(cls("x")) is ERRORS[cls]
        assert ERRORS[cls].counted and ERRORS[cls].reason in FAILURE_REASONS
    assert ERRORS[AuthError].headers() == {"www-authenticate": 'Bearer realm="knowacq"'}
    assert (ERRORS[StoreError].status, ERRORS[StoreError].reason) == (503, "store_error")
    assert refusal_of(ProviderError("x")).status == 422  # the nearest class in the table decides (ModelError)
    assert refusal_of(ValueError("x")) is INTERNAL and (INTERNAL.status, INTERNAL.reason) == (500, "internal")
    body = refusal_of(UnknownLabelError("no such label", field="label")).body("no such label", field="label")
    assert body == UnknownLabelError("no such label", field="label").to_body()


def test_metric_failure_reasons_are_the_refusal_tables_reasons() -> None:
    assert FAILURE_REASONS == tuple(dict.fromkeys(r.reason for r in REFUSALS if r.counted))
    # label values of knowacq_failures_total: dashboards and alert rules in monitoring/ name them
    assert FAILURE_REASONS == (
        "invalid_json",
        "invalid_input",
        "unknown_label",
        "unknown_prediction",
        "unknown_model",
        "unauthorized",
        "too_large",
        "unsupported_media_type",
        "overloaded",
        "store_error",
        "internal",
    )
    registry = CollectorRegistry()
    metrics = ServiceMetrics(("a", "b"), registry=registry)
    for reason in FAILURE_REASONS:  # every series exists from the start
        assert registry.get_sample_value("knowacq_failures_total", {"reason": reason}) == 0
    metrics.fail("bad_request")  # not a reason of the table: counted as internal
    assert registry.get_sample_value("knowacq_failures_total", {"reason": "internal"}) == 1
    assert registry.get_sample_value("knowacq_failures_total", {"reason": "bad_request"}) is None


# request parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ([], InvalidInputError, "texts"),
        ({}, InvalidInputError, "texts"),
        ({"texts": "one"}, InvalidInputError, "texts"),
        ({"texts": []}, InvalidInputError, "texts"),
        ({"texts": ["a", 3]}, InvalidInputError, "texts[1]"),
        ({"texts": ["a"], "extra": 1}, InvalidInputError, "extra"),
        ({"texts": ["a"] * 9}, PayloadTooLargeError, "texts"),
    ],
)
def test_classify_bodies_are_refused_with_the_field_named(body: Any, error: type, field: str) -> None:
    with pytest.raises(error) as info:
        parse_classify(body, max_texts=8)
    assert info.value.field == field


def test_feedback_bodies() -> None:
    assert parse_feedback({"prediction_id": "p", "label": "x"}) == ("p", "x", "")
    for body, field in [
        ({"label": "x"}, "prediction_id"),
        ({"prediction_id": "p", "label": 1}, "label"),
        ({"prediction_id": "p", "label": "x", "annotator": 5}, "annotator"),
    ]:
        with pytest.raises(InvalidInputError) as info:
            parse_feedback(body)
        assert info.value.field == field


# the core -----------------------------------------------------------------------------------------


def test_classify_answers_and_records(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, record="all")
    texts = ["great lovely film", "awful boring plot", "the film was quite " * 40]
    answers = core.classify(texts)
    assert len(answers) == 3
    for a in answers:
        assert a["label"] in ("negative", "positive")
        assert a["score"] == pytest.approx(max(a["probabilities"].values()))
        assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert a["model_version"].startswith("cpu-fp32-") and a["recorded"] is True
    assert len({a["prediction_id"] for a in answers}) == 3
    assert [a["truncated"] for a in answers] == [False, False, True]
    stored = core.store.get_prediction(answers[0]["prediction_id"])
    assert stored is not None and stored.text == texts[0] and stored.label == answers[0]["label"]
    assert metric(registry, "knowacq_predictions_total", {"label": answers[0]["label"]}) >= 1
    assert metric(registry, "knowacq_truncated_texts_total") == 1
    assert metric(registry, "knowacq_batch_size_texts_count") == 1
    assert metric(registry, "knowacq_stage_duration_seconds_count", {"stage": "infer"}) == 1
    assert (
        metric(
            registry, "knowacq_model_info", {"version": core.model_version, "variant": "cpu-fp32", "provider": "cpu"}
        )
        == 1
    )


def test_low_confidence_predictions_are_captured_with_personal_data_redacted(
    fp32_variant: Path, tmp_path: Path
) -> None:
    # Threshold 1.0: every prediction is low-confidence; "captured" mode stores only those.
    core, registry = make_core(fp32_variant, tmp_path, min_confidence=1.0, record="captured")
    answers = core.classify(["mail bob@example.com or call +44 20 7946 0958 about the film"])
    assert answers[0]["low_confidence"] is True
    stored = core.store.get_prediction(answers[0]["prediction_id"])
    assert stored is not None and stored.captured
    assert "bob@example.com" not in stored.text and "[EMAIL]" in stored.text and "[PHONE]" in stored.text
    assert metric(registry, "knowacq_low_confidence_captures_total") == 1

    confident, _ = make_core(fp32_variant, tmp_path / "b", min_confidence=0.0, min_margin=0.0)  # the default
    answer = confident.classify(["great lovely film"])[0]
    assert answer["low_confidence"] is False and answer["recorded"] is False
    assert confident.store.get_prediction(answer["prediction_id"]) is None


def test_batching_never_changes_answers(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path, max_batch_size=4, record="all")
    rng = np.random.default_rng(0)
    words = ["great", "awful", "film", "plot", "the", "quite", "lovely", "boring"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 40, size=23)]
    alone = [core.classify([t])[0] for t in texts]
    requests = [[Item(t, 0.0) for t in texts[i : i + 5]] for i in range(0, len(texts), 5)]
    batched = [a for group in core.classify_batches(requests) for a in group]
    for one, many in zip(alone, batched):
        assert one["label"] == many["label"]
        for name in one["probabilities"]:
            assert one["probabilities"][name] == pytest.approx(many["probabilities"][name], abs=1e-5)


def test_feedback_token_ids_and_labels(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, record="all")
    pid = core.classify(["great film"])[0]["prediction_id"]
    for header in (None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", TOKEN):
        with pytest.raises(AuthError):
            core.check_token(header)
    core.check_token(f"Bearer {TOKEN}")
    assert core.feedback(pid, "negative")["outcome"] == "created"
    assert core.feedback(pid, "negative")["outcome"] == "unchanged"
    with pytest.raises(UnknownLabelError, match="this model's labels are negative, positive"):
        core.feedback(pid, "neutral")
    with pytest.raises(UnknownPredictionError):
        core.feedback("0" * 32, "negative")
    assert metric(registry, "knowacq_feedback_total", {"outcome": "created"}) == 1
    assert metric(registry, "knowacq_feedback_total", {"outcome": "unchanged"}) == 1
    assert metric(registry, "knowacq_feedback_total", {"outcome": "unknown_label"}) == 1
    assert metric(registry, "knowacq_feedback_total", {"outcome": "unknown_prediction"}) == 1
    no_token, _ = make_core(fp32_variant, tmp_path / "b", api_token="")
    with pytest.raises(AuthError, match="KNOWACQ_API_TOKEN"):
        no_token.check_token(f"Bearer {TOKEN}")


def test_store_failure_still_answers_and_is_counted(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, record="all")
    core.store.engine.dispose()
    import sqlalchemy as sa

    with core.store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE knowacq_labels"))
        conn.execute(sa.text("DROP TABLE knowacq_predictions"))
    answer = core.classify(["great film"])[0]
    assert answer["recorded"] is False and answer["label"] in ("negative", "positive")
    assert metric(registry, "knowacq_store_write_failures_total", {"kind": "predictions"}) == 1


def test_model_info_and_readiness(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path)
    info = core.model_info()
    assert info["labels"] == ["negative", "positive"] and info["provider"] == "cpu"
    assert info["thresholds"] == {"min_confidence": 0.75, "min_margin": 0.25}
    assert info["settings"]["record"] == "captured"
    assert TOKEN not in json.dumps(info)
    assert core.readiness() == (200, {"model_version": core.model_version, "provider": "cpu", "status": "ready"})


def test_metric_names_carry_namespace_and_no_user_text(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, record="all")
    core.classify(["a secret sentence about bob@example.com"])
    exposition = generate_latest(registry).decode()
    assert "secret" not in exposition and "bob@" not in exposition
    names = {m.name for m in registry.collect()}
    assert names and all(n.startswith("knowacq_") for n in names)


# the HTTP guard, in front of a stand-in app -----------------------------------------------------------


async def _echo_app(scope: dict, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"echo": len(body)}).encode()})


@pytest.fixture
def guarded(fp32_variant: Path, tmp_path: Path) -> tuple[httpx.AsyncClient, CollectorRegistry]:
    core, registry = make_core(fp32_variant, tmp_path, max_texts=4, max_body_bytes=2048)
    state = State()
    state.core = core
    transport = httpx.ASGITransport(app=RequestGuard(_echo_app, state=state))
    return httpx.AsyncClient(transport=transport, base_url="http://test"), registry


def test_guard_refuses_bad_requests_with_json_errors(guarded) -> None:
    client, registry = guarded
    json_type = {"content-type": "application/json"}

    async def run() -> list[tuple[int, dict]]:
        cases = [
            client.post("/classify", content=b'{"texts": ["ok"]}', headers=json_type),
            client.post("/classify", content=b"{not json", headers=json_type),
            client.post("/classify", content=b'{"texts": ["\xff"]}', headers=json_type),
            client.post("/classify", content=b'{"texts": []}', headers=json_type),
            client.post("/classify", content=b'{"texts": [1]}', headers=json_type),
            client.post("/classify", content=b'{"texts": ["\\ud800"]}', headers=json_type),
            client.post("/classify", content=json.dumps({"texts": ["a"] * 5}).encode(), headers=json_type),
            client.post("/classify", content=json.dumps({"texts": ["a" * 4000]}).encode(), headers=json_type),
            client.post("/classify", content=b"\x80\x04K\x01.", headers={"content-type": "application/python-pickle"}),
            client.post("/classify", content=b'{"texts": ["ok"]}', headers={"content-type": "text/plain"}),
            client.post("/feedback", content=b'{"prediction_id": "p", "label": "x"}', headers=json_type),
            client.post(
                "/feedback",
                content=b'{"prediction_id": "p", "label": "x"}',
                headers={**json_type, "authorization": "Bearer nope"},
            ),
            client.post(
                "/feedback",
                content=b'{"prediction_id": "p"}',
                headers={**json_type, "authorization": f"Bearer {TOKEN}"},
            ),
        ]
        responses = await asyncio.gather(*cases)
        return [(r.status_code, r.json()) for r in responses]

    got = asyncio.run(run())
    assert [code for code, _ in got] == [200, 400, 400, 422, 422, 422, 413, 413, 415, 415, 401, 401, 422]
    for _code, body in got[1:]:
        assert set(body) >= {"error", "reason"}
    assert got[4][1]["field"] == "texts[0]" and got[12][1]["field"] == "label"
    assert "nope" not in json.dumps(got[11][1]) and TOKEN not in json.dumps(got)
    assert metric(registry, "knowacq_failures_total", {"reason": "invalid_json"}) == 2
    assert metric(registry, "knowacq_failures_total", {"reason": "unauthorized"}) == 2
    assert metric(registry, "knowacq_request_duration_seconds_count", {"endpoint": "classify"}) == 10


def test_guard_refusals_carry_their_headers(guarded) -> None:
    client, registry = guarded

    async def run() -> list[httpx.Response]:
        json_type = {"content-type": "application/json"}
        return [
            await client.post("/feedback", content=b'{"prediction_id": "p", "label": "x"}', headers=json_type),
            await client.post("/classify", content=b"{", headers=json_type),
        ]

    unauthorized, invalid = asyncio.run(run())
    assert unauthorized.status_code == 401 and unauthorized.headers["www-authenticate"] == 'Bearer realm="knowacq"'
    assert "retry-after" not in unauthorized.headers
    assert invalid.status_code == 400 and "www-authenticate" not in invalid.headers
    assert metric(registry, "knowacq_feedback_total", {"outcome": "unauthorized"}) == 1


def test_guard_refuses_over_the_in_flight_limit_with_429(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, max_concurrency=3)
    state = State()
    state.core = core
    state.in_flight = 3  # as many as allowed are being answered
    transport = httpx.ASGITransport(app=RequestGuard(_echo_app, state=state))

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/classify", json={"texts": ["a"]})

    refused = asyncio.run(run())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"error": "too many requests in flight (limit 3); retry later", "reason": "overloaded"}
    assert metric(registry, "knowacq_failures_total", {"reason": "overloaded"}) == 1
    assert state.in_flight == 3
    state.in_flight = 2
    assert asyncio.run(run()).status_code == 200


def test_guard_answers_model_and_readiness(guarded) -> None:
    client, _ = guarded

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        return await asyncio.gather(client.get("/model"), client.get("/readyz"), client.get("/livez"))

    model, ready, other = asyncio.run(run())
    assert model.status_code == 200 and model.json()["variant"] == "cpu-fp32"
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert other.status_code == 200  # passed through to the app


def test_a_draining_worker_says_so_but_still_answers(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path)
    state = State()
    state.core = core
    state.draining = True
    transport = httpx.ASGITransport(app=RequestGuard(_echo_app, state=state))

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(client.get("/readyz"), client.post("/classify", json={"texts": ["a"]}))

    ready, classify = asyncio.run(run())
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert classify.status_code == 200
    assert state.in_flight == 0 and 0 <= state.idle_for() < 5


def test_guard_before_the_model_is_loaded() -> None:
    transport = httpx.ASGITransport(app=RequestGuard(_echo_app, state=State()))

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(client.get("/readyz"), client.post("/classify", json={"texts": ["a"]}))

    ready, classify = asyncio.run(run())
    assert ready.status_code == 503 and classify.status_code == 503
    assert ready.json() == {"status": "loading"}
    assert classify.json() == {"error": "the model is still loading", "reason": "not_ready"}
    assert classify.headers["retry-after"] == "1"

    async def model() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/model")

    info = asyncio.run(model())
    assert info.status_code == 503 and info.json() == {"error": "the model is still loading", "reason": "not_ready"}
    assert "retry-after" not in info.headers


def test_cpu_fallback_is_reported_as_degraded(fp32_variant: Path, tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: no fallback to observe")
    settings = Settings(model=str(fp32_variant), api_token=TOKEN, provider="cuda")
    with pytest.warns(RuntimeWarning, match="runs on the CPU provider"):
        predictor = Predictor(fp32_variant, provider="cuda", allow_fallback=True, threads=1)
    registry = CollectorRegistry()
    core = ClassifierCore(
        predictor,
        settings,
        store=FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}"),
        metrics=ServiceMetrics(predictor.labels, registry=registry),
    )
    status, body = core.readiness()
    assert status == 200 and body["status"] == "degraded" and body["provider"] == "cpu"
    info = core.model_info()
    assert info["fallback"] is True and info["requested_provider"] == "cuda" and info["provider"] == "cpu"
    assert metric(registry, "knowacq_provider_fallback") == 1


def test_the_guard_answers_classify_through_the_queue_without_the_app(fp32_variant: Path, tmp_path: Path) -> None:
    """With the worker's batching queue in the state, POST /classify is parsed once and answered by the guard:
    BentoML's endpoint (here an app that fails the test) is never reached; a queue refusal is a 503 with
    Retry-After, a failure inside is a 500 without its text."""
    from bento._refusals import QueueFull

    core, registry = make_core(fp32_variant, tmp_path)
    seen: list[list[str]] = []

    async def infer(items: list[Any]) -> list[dict[str, Any]]:
        texts = [item.text for item in items]
        seen.append(texts)
        if texts == ["refuse me"]:
            raise QueueFull("overloaded: the batching queue is full; retry later")
        if texts == ["break me"]:
            raise RuntimeError("secret internals")
        return core.classify_items(items)

    async def no_app(scope: dict, receive: Any, send: Any) -> None:
        raise AssertionError(f"the app was reached for {scope['path']}")

    state = State()
    state.core, state.infer = core, infer
    transport = httpx.ASGITransport(app=RequestGuard(no_app, state=state))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [
                await client.post("/classify", json={"texts": ["a fine film", "dull"]}),
                await client.post("/classify", json={"texts": ["refuse me"]}),
                await client.post("/classify", json={"texts": ["break me"]}),
            ]

    ok, refused, broken = asyncio.run(run())
    assert ok.status_code == 200 and [a["label"] in ("negative", "positive") for a in ok.json()] == [True, True]
    assert ok.json()[0]["model_version"] == core.model_version
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["reason"] == "overloaded"
    assert broken.status_code == 500 and "secret" not in broken.text
    assert seen == [["a fine film", "dull"], ["refuse me"], ["break me"]]
    assert metric(registry, "knowacq_failures_total", {"reason": "overloaded"}) == 1
    assert metric(registry, "knowacq_failures_total", {"reason": "internal"}) == 1
    assert metric(registry, "knowacq_request_duration_seconds_count", {"endpoint": "classify"}) == 3


def test_the_guard_refuses_classify_at_once_while_the_model_is_busier_than_the_latency_bound(
    fp32_variant: Path, tmp_path: Path
) -> None:
    """The queue estimate (texts waiting x recent seconds per text) decides a 503 before the body is read;
    under the bound the request goes into the queue as usual."""
    core, registry = make_core(fp32_variant, tmp_path, max_latency_ms=2000)
    calls: list[int] = []

    async def infer(items: list[Any]) -> list[dict[str, Any]]:
        calls.append(len(items))
        return core.classify_items(items)

    received: list[str] = []

    async def run(waiting: int) -> httpx.Response:
        state = State()
        state.core, state.infer = core, infer
        state.queue.observe(texts=64, seconds=0.064)  # 1 ms per text
        state.queue.waiting_texts = waiting

        async def app(scope: dict, receive: Any, send: Any) -> None:
            raise AssertionError("not reached")

        guard = RequestGuard(app, state=state)

        async def counting_app(scope: dict, receive: Any, send: Any) -> None:
            async def counted() -> Any:
                received.append(scope["path"])
                return await receive()

            await guard(scope, counted, send)

        transport = httpx.ASGITransport(app=counting_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/classify", json={"texts": ["a fine film"]})

    busy = asyncio.run(run(waiting=1700))  # 1.7 s of texts waiting: over 0.8 x 2 s
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["reason"] == "overloaded" and "1.7 s of texts are waiting" in busy.json()["error"]
    assert calls == [] and received == []  # refused before the body was read or anything queued
    ok = asyncio.run(run(waiting=1500))  # 1.5 s: under the bound
    assert ok.status_code == 200 and calls == [1]
    assert metric(registry, "knowacq_failures_total", {"reason": "overloaded"}) == 1


def test_the_queue_estimate_follows_the_recent_batches() -> None:
    from bento._http import QueueEstimate

    queue = QueueEstimate()
    assert queue.wait_s() == 0.0 and not queue.full(10)
    queue.observe(texts=10, seconds=0.1)  # the first batch sets the rate: 10 ms per text
    queue.waiting_texts = 100
    assert queue.wait_s() == pytest.approx(1.0)
    queue.observe(texts=10, seconds=0.2)  # slower batches move it a fifth of the way each time
    assert queue.seconds_per_text == pytest.approx(0.012)
    assert queue.full(1000) and not queue.full(2000)


def test_spinning_setting_reaches_the_serving_session_and_never_the_shadow(fp32_variant: Path) -> None:
    from bento._models import load_predictor

    def allows_spinning(settings: Settings, shadow: bool = False) -> str:
        predictor, _ = load_predictor(str(fp32_variant), settings, shadow=shadow)
        options = predictor.engine.session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ONNX Runtime's default (spinning)
            return "default"

    spinning = Settings.from_env({"KNOWACQ_MODEL": str(fp32_variant)})
    assert spinning.spinning is True and allows_spinning(spinning) == "default"  # ONNX Runtime's own default
    sleeping = Settings.from_env({"KNOWACQ_MODEL": str(fp32_variant), "KNOWACQ_SPINNING": "false"})
    assert allows_spinning(sleeping) == "0"
    assert allows_spinning(spinning, shadow=True) == "0"  # the shadow candidate never spins
