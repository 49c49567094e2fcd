"""The Label Studio ML backend in-process: every route of `bento._labelstudio` against a real ClassifierCore."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bento import ClassifierCore, State
from bento._labelstudio import LabelConfig, LabelStudioBackend, parse_label_config
from knowacq.base import PredictionRecord, redact_for_storage
from knowacq.errors import InvalidInputError, StoreError
from tests.serve.test_serve import TOKEN, make_core, metric

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    '<Choice value="negative"/><Choice value="positive"/></Choices></View>'
)
PII = "mail bob@example.com or call +44 20 7946 0958 about this awful boring film"
BEARER = {"authorization": f"Bearer {TOKEN}"}


async def _app(scope: dict, receive: Any, send: Any) -> None:
    """Stands in for BentoML: says which path reached it."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"app": scope["path"]}).encode()})


class Backend:
    """The middleware in front of a stand-in app, with a synchronous client."""

    def __init__(self, core: ClassifierCore | None, registry: CollectorRegistry | None = None) -> None:
        self.state = State()
        self.state.core = core
        self.core = core
        self.registry = registry
        self.app = LabelStudioBackend(_app, state=self.state)

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, headers=headers, **kwargs)

        return asyncio.run(run())

    def post(self, route: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", f"/labelstudio/{route}", json=body, headers=BEARER if headers is None else headers)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        assert self.registry is not None
        return metric(self.registry, name, labels)


@pytest.fixture
def backend(fp32_variant: Path, tmp_path: Path) -> Backend:
    core, registry = make_core(fp32_variant, tmp_path, record="all")
    return Backend(core, registry)


def annotation_event(
    choice: str | list[str], data: dict[str, Any], *, action: str = "ANNOTATION_CREATED", user: Any = 1, **extra: Any
) -> dict[str, Any]:
    """An annotation event as Label Studio 1.23 sends it (the fields knowacq reads, and a few it does not)."""
    choices = choice if isinstance(choice, list) else [choice]
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": choices}}]
    return {
        "action": action,
        "annotation": {"id": 7, "result": result, "was_cancelled": False, "task": 3, "completed_by": user, **extra},
        "task": {"id": 3, "data": data, "project": 1, "is_labeled": True},
        "project": {"id": 1, "title": "knowacq", "label_config": CONFIG},
    }


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# the label config ---------------------------------------------------------------------------------------


def test_the_label_config_names_the_choices_control_and_the_texts_key() -> None:
    assert parse_label_config(None) == parse_label_config("") == LabelConfig("label", "text", "text", ())
    assert parse_label_config(CONFIG) == LabelConfig("label", "text", "text", ("negative", "positive"))
    custom = (
        '<View><Header value="Review"/><Text name="review" value="$review_text"/>'
        '<Choices name="sentiment" toName="review" choice="single"><Choice value="negative"/>'
        '<Choice value="positive"/><Choice value="neutral"/></Choices></View>'
    )
    assert parse_label_config(custom) == LabelConfig(
        "sentiment", "review", "review_text", ("negative", "positive", "neutral")
    )
    for bad, says in [
        ("<View><Text name='t' value='$t'/></View>", "no <Choices>"),
        ("<View><Choices", "not valid XML"),
        (3, "must be a Label Studio XML config"),
    ]:
        with pytest.raises(InvalidInputError, match=says) as info:
            parse_label_config(bad, field="schema")
        assert info.value.field == "schema"


# health, auth and routing ---------------------------------------------------------------------------------


def test_health_answers_up_with_the_serving_model(backend: Backend) -> None:
    assert backend.core is not None
    for path in ("/labelstudio/health", "/labelstudio/", "/labelstudio"):
        r = backend.request("GET", path, headers=BEARER)
        assert r.status_code == 200, path
        assert r.json() == {"status": "UP", "model_class": "knowacq", "model_version": backend.core.model_version}
    # BentoML's own routes, and paths that only start like the prefix, reach the app untouched
    for path in ("/classify", "/labelstudiox/health", "/labelstudio/versions"):
        assert backend.request("GET", path).json() == {"app": path}
    loading = Backend(None).request("GET", "/labelstudio/health", headers=BEARER)
    assert loading.status_code == 503 and loading.json()["reason"] == "not_ready"


def test_every_route_wants_the_token_as_bearer_or_basic_password(backend: Backend) -> None:
    setup = {"project": "1.1700000000", "schema": CONFIG}
    assert backend.post("setup", setup, headers=basic("knowacq", TOKEN)).status_code == 200
    assert backend.post("setup", setup, headers=basic("anyone", TOKEN)).status_code == 200  # the user is free
    assert backend.request("GET", "/labelstudio/health", headers=basic("u", TOKEN)).status_code == 200
    refused = {
        "no header": {},
        "wrong bearer": {"authorization": "Bearer nope"},
        "wrong password": basic("knowacq", "nope"),
        "no password": basic(TOKEN, ""),
        "not base64": {"authorization": "Basic %%%"},
        "other scheme": {"authorization": f"Token {TOKEN}"},
    }
    for name, headers in refused.items():
        for r in (
            backend.post("setup", setup, headers=headers),
            backend.request("GET", "/labelstudio/health", headers=headers),
        ):
            assert r.status_code == 401, name
            assert r.json()["reason"] == "unauthorized" and r.headers["www-authenticate"] == 'Bearer realm="knowacq"'
            assert "nope" not in r.text and TOKEN not in r.text
    assert (
        backend.post("setup", setup, headers=basic("knowacq", "nope"))
        .json()["error"]
        .startswith("wrong basic-auth password")
    )
    assert backend.metric("knowacq_failures_total", {"reason": "unauthorized"}) == 2 * len(refused) + 1
    webhook = backend.post("webhook", {"action": "START_TRAINING"}, headers={})
    assert webhook.status_code == 401 and backend.metric("knowacq_feedback_total", {"outcome": "unauthorized"}) == 1
    assert backend.core is not None and backend.core.store.retrain_requests() == []


def test_without_a_token_the_backend_is_disabled(fp32_variant: Path, tmp_path: Path) -> None:
    core, _ = make_core(fp32_variant, tmp_path, api_token="")
    r = Backend(core).post("setup", {"schema": CONFIG}, headers={"authorization": "Bearer "})
    assert r.status_code == 401 and "KNOWACQ_API_TOKEN" in r.json()["error"]


def test_bad_bodies_are_refused_with_the_field_named(backend: Backend) -> None:
    def raw(route: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
        headers = {**BEARER, "content-type": content_type}
        return backend.request("POST", f"/labelstudio/{route}", content=body, headers=headers)

    cases = [
        (raw("predict", b"{oops"), 400, "body"),
        (raw("predict", b'{"tasks": ["\xff"]}'), 400, "body"),
        (raw("predict", b'{"tasks": []}', "text/plain"), 415, "content-type"),
        (raw("predict", b"[]"), 422, "body"),
        (raw("predict", b'{"tasks": "one"}'), 422, "tasks"),
        (raw("predict", b'{"tasks": [{"data": {"text": "ok"}}, {"data": {"body": "ok"}}]}'), 422, "tasks[1].data.text"),
        (raw("predict", b'{"tasks": [{"id": 1}]}'), 422, "tasks[0].data"),
        (raw("predict", b'{"tasks": [{"data": {"text": "\\ud800"}}]}'), 422, "tasks[0].data.text"),
        (raw("predict", json.dumps({"tasks": [{"data": {"text": "x" * 1_100_000}}]}).encode()), 413, None),
        (raw("setup", b'{"schema": "<View/>"}'), 422, "schema"),
        (raw("webhook", b'{"event": "ANNOTATION_CREATED"}'), 422, "action"),
        (raw("webhook", b'{"action": "ANNOTATION_CREATED", "annotation": {}}'), 422, "annotation"),
    ]
    for i, (r, status, field) in enumerate(cases):
        assert r.status_code == status, (i, r.text)
        body = r.json()
        assert set(body) >= {"error", "reason"} and body.get("field") == field, (i, body)
    assert backend.metric("knowacq_failures_total", {"reason": "invalid_json"}) == 2
    assert backend.metric("knowacq_failures_total", {"reason": "invalid_input"}) == 8
    assert backend.metric("knowacq_request_duration_seconds_count", {"endpoint": "labelstudio_predict"}) == 9


def test_over_the_in_flight_limit_label_studio_gets_429(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, max_concurrency=2)
    backend = Backend(core, registry)
    backend.state.in_flight = 2
    refused = backend.post("predict", {"tasks": [{"data": {"text": "a"}}]})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert backend.metric("knowacq_failures_total", {"reason": "overloaded"}) == 1
    backend.state.in_flight = 1
    assert backend.post("predict", {"tasks": [{"data": {"text": "a"}}]}).status_code == 200
    assert backend.state.in_flight == 1


# setup and predict --------------------------------------------------------------------------------------------


def test_setup_answers_the_model_version_and_checks_the_projects_choices(backend: Backend) -> None:
    assert backend.core is not None
    body = {"project": "1.1700000000", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "s"}
    r = backend.post("setup", body)
    assert r.status_code == 200 and r.json() == {"model_version": backend.core.model_version}
    other = CONFIG.replace('"positive"', '"neutral"')
    refused = backend.post("setup", {**body, "schema": other})
    assert refused.status_code == 422 and refused.json()["field"] == "schema"
    assert "positive" in refused.json()["error"]


def test_predict_pre_annotates_every_task_with_the_serving_model_and_records_nothing(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    texts = ["great lovely film", "awful boring plot", PII, "the story was really quite fine"]
    tasks = [{"id": i + 1, "data": {"text": t}, "annotations": [], "predictions": []} for i, t in enumerate(texts)]
    before = core.store.counts()["predictions"]
    r = backend.post("predict", {"tasks": tasks, "project": "1.1700000000", "label_config": CONFIG, "params": {}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == core.model_version and len(body["results"]) == len(texts)
    served = core.predictor.predict(texts)
    for got, expected in zip(body["results"], served):
        assert got["model_version"] == core.model_version
        assert got["score"] == pytest.approx(expected.score, abs=1e-6)
        assert got["result"] == [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [expected.label]}}
        ]
    assert core.store.counts()["predictions"] == before  # pre-annotations are not served traffic
    assert backend.metric("knowacq_predictions_total", {"label": served[0].label}) == 0

    custom = CONFIG.replace('name="text" value="$text"', 'name="review" value="$body"').replace(
        'name="label" toName="text"', 'name="sentiment" toName="review"'
    )
    r = backend.post("predict", {"tasks": [{"data": {"body": texts[0]}}], "label_config": custom})
    (result,) = r.json()["results"][0]["result"]
    assert (result["from_name"], result["to_name"], result["value"]) == (
        "sentiment",
        "review",
        {"choices": [served[0].label]},
    )
    # no label config (an older Label Studio, or a hand-made call): knowacq's export names
    r = backend.post("predict", {"tasks": [{"data": {"text": texts[1]}}]})
    assert r.json()["results"][0]["result"][0]["from_name"] == "label"


def test_predict_gives_no_pre_annotation_to_a_task_of_the_live_sample(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    clean, digest = redact_for_storage("a sampled sentence about the film")
    core.store.record_predictions(
        [PredictionRecord("s" * 32, core.model_version, clean, digest, "positive", 0.9, 0.8, {}, False, sampled=True)]
    )
    served = core.classify(["a served sentence"])[0]
    tasks = [
        {"data": {"text": clean, "prediction_id": "s" * 32}},
        {"data": {"text": "a served sentence", "prediction_id": served["prediction_id"]}},
        {"data": {"text": "unknown id", "prediction_id": "f" * 32}},
    ]
    results = backend.post("predict", {"tasks": tasks, "label_config": CONFIG}).json()["results"]
    assert results[0] == {"result": [], "model_version": core.model_version}
    assert [len(r["result"]) for r in results[1:]] == [1, 1]


# webhook ------------------------------------------------------------------------------------------------------


def test_annotations_store_labels_tied_to_the_prediction_idempotently(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    answer = core.classify([PII])[0]
    pid = answer["prediction_id"]
    stored = core.store.get_prediction(pid)
    assert stored is not None and answer["recorded"]
    data = {"text": stored.text, "prediction_id": pid}  # what `knowacq feedback export` writes

    first = backend.post("webhook", annotation_event("negative", data))
    assert first.status_code == 201, first.text
    assert first.json() == {
        "status": "ok",
        "action": "ANNOTATION_CREATED",
        "annotation": 7,
        "matched": "prediction_id",
        "prediction_id": pid,
        "label": "negative",
        "outcome": "created",
    }
    again = backend.post("webhook", annotation_event("negative", data))
    assert again.json()["outcome"] == "unchanged"
    updated = backend.post("webhook", annotation_event("positive", data, action="ANNOTATION_UPDATED"))
    assert updated.status_code == 201 and updated.json()["outcome"] == "updated"
    other_user = backend.post("webhook", annotation_event("negative", data, user={"id": 2, "email": "x@y.org"}))
    assert other_user.json()["outcome"] == "created"

    labels = core.store.labels_for(pid)
    assert [(lab.label, lab.source, lab.annotator) for lab in labels] == [
        ("positive", "label-studio", "user-1"),
        ("negative", "label-studio", "user-2"),
    ]
    assert core.store.get_prediction(pid).status == "labelled"  # type: ignore[union-attr]
    assert core.store.counts()["predictions"] == 1  # nothing new recorded
    for outcome, n in (("created", 2), ("unchanged", 1), ("updated", 1)):
        assert backend.metric("knowacq_feedback_total", {"outcome": outcome}) == n, outcome
    # the same label through POST /feedback is a label of another source, beside it
    assert core.feedback(pid, "positive", "user-1")["outcome"] == "created"


def test_a_task_without_prediction_id_is_matched_by_its_redacted_text(fp32_variant: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, record="captured", min_confidence=0.0, min_margin=0.0)
    backend = Backend(core, registry)
    assert core.classify([PII])[0]["recorded"] is False  # nothing stored this text

    first = backend.post("webhook", annotation_event("negative", {"text": PII}))
    assert first.status_code == 201, first.text
    assert first.json()["matched"] == "new" and first.json()["outcome"] == "created"
    pid = first.json()["prediction_id"]
    record = core.store.get_prediction(pid)
    assert record is not None
    assert "bob@example.com" not in record.text and "[EMAIL]" in record.text and "[PHONE]" in record.text
    assert record.text_sha256 == redact_for_storage(PII)[1] and record.model_version == core.model_version
    assert record.label in core.labels and record.probabilities and record.status == "labelled"
    assert "bob@example.com" not in json.dumps(first.json())

    # the same text again (as knowacq exported it, redacted, or as typed): the same prediction, unchanged
    for text in (record.text, PII):
        again = backend.post("webhook", annotation_event("negative", {"text": text}))
        assert (again.json()["matched"], again.json()["prediction_id"], again.json()["outcome"]) == (
            "text",
            pid,
            "unchanged",
        )
    assert core.store.counts()["predictions"] == 1

    # a text the service stored itself is found by its hash and labelled there
    everything, _ = make_core(fp32_variant, tmp_path / "all", record="all")
    served = everything.classify(["call 555-123-4567 about the lovely film"])[0]
    r = Backend(everything).post(
        "webhook", annotation_event("positive", {"text": "call 555-123-4567 about the lovely film"})
    )
    assert (r.json()["matched"], r.json()["prediction_id"]) == ("text", served["prediction_id"])


def test_an_unknown_prediction_id_falls_back_to_the_text_or_answers_404(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    by_text = backend.post("webhook", annotation_event("positive", {"text": "a fine film", "prediction_id": "f" * 32}))
    assert by_text.status_code == 201 and by_text.json()["matched"] == "new"
    unknown = backend.post("webhook", annotation_event("positive", {"prediction_id": "e" * 32}))
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_prediction"
    assert backend.metric("knowacq_feedback_total", {"outcome": "unknown_prediction"}) == 1
    neither = backend.post("webhook", annotation_event("positive", {"other": 1}))
    assert neither.status_code == 422 and neither.json()["field"] == "task.data"


def test_labels_that_cannot_be_stored_are_refused_or_skipped(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    pid = core.classify(["a film"])[0]["prediction_id"]
    data = {"text": "a film", "prediction_id": pid}
    bad = backend.post("webhook", annotation_event("neutral", {"text": "never stored"}))
    assert bad.status_code == 422 and bad.json()["reason"] == "unknown_label" and bad.json()["field"] == "result"
    assert core.store.find_by_text_hash(redact_for_storage("never stored")[1]) is None  # refused before recording
    assert backend.metric("knowacq_feedback_total", {"outcome": "unknown_label"}) == 1
    for event in (
        annotation_event("negative", data, was_cancelled=True),  # skipped in Label Studio
        annotation_event(["negative", "positive"], data),  # not a single choice
        annotation_event([], data),
        {
            **annotation_event("negative", data),
            "project": {"id": 1, "label_config": CONFIG.replace('"label"', '"mood"')},
        },
    ):
        r = backend.post("webhook", event)
        assert r.status_code == 201 and r.json()["outcome"] == "skipped", r.text
    assert core.store.labels_for(pid) == []


def test_bulk_annotations_store_each_and_report_each(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    pids = [a["prediction_id"] for a in core.classify(["one film", "two films"])]
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["negative"]}}]
    bad = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["neutral"]}}]
    event = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [
            {"id": 1, "task": 10, "result": result, "completed_by": 1},
            {"id": 2, "task": 11, "result": bad, "completed_by": 1},
        ],
        "task": [{"id": 10, "data": {"text": "one film", "prediction_id": pids[0]}}, {"id": 11, "data": {"text": "x"}}],
        "project": {"id": 1, "label_config": CONFIG},
    }
    r = backend.post("webhook", event)
    assert r.status_code == 201, r.text
    first, second = r.json()["results"]
    assert (first["outcome"], first["prediction_id"]) == ("created", pids[0])
    assert (second["annotation"], second["reason"], second["field"]) == (2, "unknown_label", "annotation[1].result")
    assert [lab.label for lab in core.store.labels_for(pids[0])] == ["negative"]


def test_start_training_queues_a_retrain_request_and_answers_at_once(backend: Backend) -> None:
    core = backend.core
    assert core is not None
    project = {"id": 4, "title": "reviews", "label_config": CONFIG, "total_annotations_number": 3}
    r = backend.post("webhook", {"action": "START_TRAINING", "project": project}, headers=basic("knowacq", TOKEN))
    assert r.status_code == 201, r.text
    (request,) = core.store.retrain_requests()
    assert r.json() == {"status": "queued", "action": "START_TRAINING", "retrain_request": request.id}
    assert (request.source, request.state, request.detail) == (
        "label-studio",
        "queued",
        "START_TRAINING from Label Studio project 4",
    )
    # every other event (tasks created, project updated, annotations deleted...) is acknowledged and ignored
    for action in ("TASKS_CREATED", "PROJECT_UPDATED", "ANNOTATIONS_DELETED"):
        ignored = backend.post("webhook", {"action": action, "project": project, "tasks": []})
        assert ignored.status_code == 200 and ignored.json() == {"status": "ignored", "action": action}
    assert len(core.store.retrain_requests()) == 1 and core.store.counts()["labels"] == 0


def test_a_store_that_fails_answers_503(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    core = backend.core
    assert core is not None
    pid = core.classify(["a film"])[0]["prediction_id"]

    def down(*_: Any, **__: Any) -> None:
        raise StoreError("could not write a label to the feedback store: OperationalError")

    monkeypatch.setattr(core.store, "add_label", down)
    r = backend.post("webhook", annotation_event("negative", {"prediction_id": pid}))
    assert r.status_code == 503 and r.json()["reason"] == "store_error"
    assert backend.metric("knowacq_feedback_total", {"outcome": "store_error"}) == 1

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("database is locked")  # a driver error the store did not wrap

    monkeypatch.setattr(core.store, "request_retrain", broken)
    r = backend.post("webhook", {"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 503 and r.json()["error"] == "the feedback store is unavailable; retry later"
    assert "locked" not in r.text  # a driver's message may hold internals: never in the answer
    assert backend.metric("knowacq_failures_total", {"reason": "store_error"}) == 2


def test_an_unexpected_failure_answers_500_without_the_text(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    core = backend.core
    assert core is not None

    def fails(texts: list[str]) -> None:
        raise RuntimeError(f"could not run on {texts[0]}")

    monkeypatch.setattr(core.predictor, "predict", fails)
    with caplog.at_level("ERROR", logger="knowacq.service"):
        r = backend.post("predict", {"tasks": [{"data": {"text": PII}}]})
    assert r.status_code == 500 and r.json() == {"error": "internal error", "reason": "internal"}
    assert "RuntimeError" in caplog.text and "bob@example.com" not in caplog.text
    assert backend.metric("knowacq_failures_total", {"reason": "internal"}) == 1
