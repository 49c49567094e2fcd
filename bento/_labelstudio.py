"""Label Studio's ML-backend contract, served by knowacq under `/labelstudio`: live pre-annotations and labels.

Label Studio is given `http://HOST:PORT/labelstudio` as the URL of an ML backend (the contract of HumanSignal's
`label-studio-ml-backend`, `label_studio_ml/api.py`); BentoML's own routes are untouched. Every route wants the
service's `KNOWACQ_API_TOKEN`, as `Authorization: Bearer <token>` or as the password of HTTP basic auth (the
user is free): Label Studio sends basic auth to an ML backend (its connection's "Basic Auth" user and
password) and a webhook's own headers to a webhook.

    GET  /labelstudio/health   {"status": "UP", "model_class", "model_version"}
    POST /labelstudio/setup    {"project", "schema": label config, ...} -> {"model_version"}; 422 when the
                               config has no <Choices> or its choices miss one of the model's labels
    POST /labelstudio/predict  {"tasks": [{"data": {...}}], "label_config"} -> {"results": [one prediction
                               per task: {"result": [{from_name, to_name, "type": "choices", "value":
                               {"choices": [label]}}], "score", "model_version"}], "model_version"}
    POST /labelstudio/webhook  {"action", ...}: ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED
                               store the chosen label as POST /feedback does (`ClassifierCore.feedback`,
                               source "label-studio", idempotent); START_TRAINING queues a retrain request
                               (`FeedbackStore.request_retrain`) and answers at once; other actions are ignored.

A label is tied to the prediction whose id the task's data carries (`prediction_id`, as `knowacq feedback
export` writes it); a task without one (or with an id this store does not hold) is matched by the hash of its
redacted text, and when no stored prediction has that text the serving model's prediction of it is recorded
(redacted) so that the label is kept. Pre-annotations are not served traffic: `/predict` runs the model but
records nothing, counts no prediction and feeds neither drift nor shadow. Refusals are answered from the
refusal table (`bento._refusals`) with a JSON body, and counted like the guard's (`bento._http`); request
texts never reach the log.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bento._asgi import Receive, Scope, Send, TooLarge, header, parse_json, read_body, refuse, require_json, send_json
from bento._core import ClassifierCore
from bento._http import State
from bento._refusals import INTERNAL, LOADING, TOO_MANY_IN_FLIGHT, answer
from knowacq.base import MULTI_LABEL_SEPARATOR, PredictionRecord, redact_for_storage
from knowacq.errors import (
    AuthError,
    InvalidInputError,
    KnowacqError,
    RequestError,
    StoreError,
    UnknownLabelError,
    UnknownPredictionError,
)

__all__ = ["PREFIX", "LabelConfig", "LabelStudioBackend", "parse_label_config"]

log = logging.getLogger("knowacq.service")

T = TypeVar("T")

PREFIX = "/labelstudio"
SOURCE = "label-studio"
"""The `source` of the labels this backend stores (POST /feedback stores "api", `feedback import` "import")."""
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
TRAINING_EVENT = "START_TRAINING"
NEW_PREFIX = "labelstudio-"
"""Prediction ids of texts first seen in an annotation: this and the start of the redacted text's hash."""


@dataclass(frozen=True)
class LabelConfig:
    """What knowacq reads of a Label Studio labelling config: the Choices control and the text it labels."""

    from_name: str = "label"
    """The `name` of the <Choices> control (knowacq's export writes "label")."""
    to_name: str = "text"
    """Its `toName`: the object tag holding the text (knowacq's export writes "text")."""
    data_key: str = "text"
    """The key of the task's `data` holding the text (the object tag's `value="$key"`)."""
    choices: tuple[str, ...] = ()
    """The <Choice> values (empty when the config does not list them, e.g. dynamic choices)."""


def parse_label_config(config: Any, field: str = "label_config") -> LabelConfig:
    """The first <Choices> control of a Label Studio config and its text; the defaults for an empty config.
    InvalidInputError naming `field` when the config is not a string, not XML, or has no <Choices>."""
    if config is None or config == "":
        return LabelConfig()
    if not isinstance(config, str):
        raise InvalidInputError(f"'{field}' must be a Label Studio XML config (a string)", field=field)
    try:
        # The config comes from an authenticated Label Studio; expat (>= 2.4) bounds entity expansion.
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as exc:
        raise InvalidInputError(f"'{field}' is not valid XML: {exc}", field=field) from None
    elements = list(root.iter())
    control = next((e for e in elements if e.tag.lower() == "choices"), None)
    if control is None:
        raise InvalidInputError(
            f"'{field}' has no <Choices> control; knowacq pre-annotates text classification "
            '(e.g. <Choices name="label" toName="text">)',
            field=field,
        )
    from_name = control.get("name") or "label"
    to_name = (control.get("toName") or "text").split(",")[0].strip()
    target = next((e for e in elements if e.get("name") == to_name and e is not control), None)
    value = (target.get("value") or "") if target is not None else ""
    data_key = value[1:] if value.startswith("$") and len(value) > 1 else to_name
    choices = tuple(c.get("value") or "" for c in control if c.tag.lower() == "choice")
    return LabelConfig(from_name, to_name, data_key, tuple(c for c in choices if c))


# HTTP -------------------------------------------------------------------------------------------------


def _authorize(core: ClassifierCore, authorization: str | None) -> None:
    """AuthError unless `authorization` carries the service's token: `Bearer <token>`, or HTTP basic auth
    whose password is the token (Label Studio's ML-backend connection sends basic auth)."""
    if not core.settings.api_token:
        raise AuthError("the Label Studio backend is disabled: the service has no API token (set KNOWACQ_API_TOKEN)")
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        core.check_token(authorization)
        return
    try:
        user_password = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed basic auth: send base64 of 'user:password'") from None
    _, colon, password = user_password.partition(":")
    if not colon or not password:
        raise AuthError("basic auth without a password: the password must be the service's API token")
    try:
        core.check_token(f"Bearer {password}")
    except AuthError:
        raise AuthError("wrong basic-auth password: it must be the service's API token (KNOWACQ_API_TOKEN)") from None


class LabelStudioBackend:
    """ASGI middleware answering Label Studio's ML-backend routes under `prefix` (added with
    `add_asgi_middleware(LabelStudioBackend, state=STATE)`); every other request goes on to `app`."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, state: State, prefix: str = PREFIX) -> None:
        self.app = app
        self.state = state
        self.prefix = prefix.rstrip("/")
        self.routes: dict[tuple[str, str], Callable[[ClassifierCore, Any], tuple[int, dict[str, Any]]]] = {
            ("POST", "/setup"): _setup,
            ("POST", "/predict"): _predict,
            ("POST", "/webhook"): _webhook,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        route = path[len(self.prefix) :].rstrip("/") or "/"
        method = scope.get("method", "")
        if method == "GET" and route in ("/", "/health"):
            await self._health(scope, send)
            return
        handler = self.routes.get((method, route))
        if handler is None:
            await self.app(scope, receive, send)
            return
        core = self.state.core
        if core is None:
            await refuse(send, LOADING, LOADING.body())
            return
        state = self.state
        state.last_request = time.monotonic()
        limit = core.settings.max_concurrency
        if state.in_flight >= limit:  # over the limit: 429 at once, as the guard answers
            core.metrics.fail(TOO_MANY_IN_FLIGHT.reason)
            error = f"too many requests in flight (limit {limit}); retry later"
            await refuse(send, TOO_MANY_IN_FLIGHT, TOO_MANY_IN_FLIGHT.body(error))
            return
        state.in_flight += 1
        start = time.perf_counter()
        try:
            await self._handle(scope, receive, send, core, handler, route)
        finally:
            state.in_flight -= 1
            state.last_request = time.monotonic()
            endpoint = "labelstudio_" + route.strip("/")
            core.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)

    async def _health(self, scope: Scope, send: Send) -> None:
        core = self.state.core
        if core is None:
            await refuse(send, LOADING, LOADING.body())
            return
        try:
            _authorize(core, header(scope, b"authorization"))
        except AuthError as exc:
            refusal, body = answer(exc)
            core.metrics.fail(refusal.reason)
            await refuse(send, refusal, body)
            return
        body = {"status": "UP", "model_class": "knowacq", "model_version": core.model_version}
        await send_json(send, 200, body)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        core: ClassifierCore,
        handler: Callable[[ClassifierCore, Any], tuple[int, dict[str, Any]]],
        route: str,
    ) -> None:
        import anyio

        try:
            _authorize(core, header(scope, b"authorization"))
            require_json(scope)
            settings = core.settings
            raw = await read_body(scope, receive, limit=settings.max_body_bytes, discard=settings.max_discard_bytes)
            body = parse_json(raw, field="body")
            # The model and the store block: off the event loop, as the service's own endpoints run them.
            status, answered = await anyio.to_thread.run_sync(handler, core, body)
        except KnowacqError as exc:  # a refusal (RequestError) or the store down (StoreError)
            refusal, refused = answer(exc)
            core.metrics.fail(refusal.reason)
            if route == "/setup" and isinstance(exc, InvalidInputError):  # Label Studio shows only the status
                log.warning("Label Studio's project was refused: %s", exc)
            if route == "/webhook" and isinstance(exc, AuthError):
                core.metrics.feedback.labels(outcome="unauthorized").inc()
            await refuse(send, refusal, refused, close=isinstance(exc, TooLarge) and not exc.drained)
            return
        except Exception as exc:  # never a traceback in the answer; in the log the type and where, never its text
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            place = f"{where.filename}:{where.lineno}" if where else "?"
            log.error("Label Studio %s failed: %s at %s", route, type(exc).__name__, place)
            core.metrics.fail(INTERNAL.reason)
            await refuse(send, INTERNAL, INTERNAL.body("internal error"))
            return
        await send_json(send, status, answered)


# routes -----------------------------------------------------------------------------------------------


def _from_store(what: str, call: Callable[[], T]) -> T:
    """`call()`, a read or write of the feedback store; StoreError (503) when the database fails."""
    try:
        return call()
    except KnowacqError:
        raise
    except Exception as exc:
        raise StoreError(f"could not {what} in the feedback store: {type(exc).__name__}") from exc


def _object(body: Any, field: str, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInputError(f"'{field}' must be a JSON object ({what})", field=field)
    return body


def _single_texts(core: ClassifierCore) -> None:
    """The backend reads one text per task: a sentence-pair model is refused rather than fed half its input."""
    if core.pairs:
        raise InvalidInputError(
            "this model classifies sentence pairs; the Label Studio backend labels single texts. Hand a pair "
            "model's captures off with 'knowacq feedback export' (text and text_pair) and 'knowacq feedback import'",
            field="model",
        )


def _setup(core: ClassifierCore, body: Any) -> tuple[int, dict[str, Any]]:
    """POST /setup: the serving model's version; the project's config must label with the model's labels."""
    _single_texts(core)
    body = _object(body, "body", "Label Studio's setup request")
    config = parse_label_config(body.get("schema"), field="schema")
    missing = [label for label in core.labels if config.choices and label not in config.choices]
    if missing:
        raise InvalidInputError(
            f"the project's choices ({', '.join(config.choices)}) miss the model's label(s) {', '.join(missing)}; "
            f"the <Choices> control must offer {', '.join(core.labels)}",
            field="schema",
        )
    return 200, {"model_version": core.model_version}


def _predict(core: ClassifierCore, body: Any) -> tuple[int, dict[str, Any]]:
    """POST /predict: one pre-annotation per task, from the serving model (nothing is recorded). A task of the
    live sample (its `prediction_id` is a sampled prediction) gets an empty one: an annotator shown the model's
    answer tends to agree with it, which would flatter the model the live evaluation set judges."""
    _single_texts(core)
    body = _object(body, "body", "with a 'tasks' list")
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise InvalidInputError("'tasks' must be a list of Label Studio tasks", field="tasks")
    config = parse_label_config(body.get("label_config"))
    texts = [_task_text(task, config, f"tasks[{i}]") for i, task in enumerate(tasks)]
    hidden = [_in_live_sample(core, task["data"]) for task in tasks]
    shown = [text for text, hide in zip(texts, hidden) if not hide]
    step = core.settings.max_batch_size
    predictions = iter(
        [p for start in range(0, len(shown), step) for p in core.predictor.predict(shown[start : start + step])]
    )
    results: list[dict[str, Any]] = []
    for hide in hidden:
        if hide:
            results.append({"result": [], "model_version": core.model_version})
            continue
        prediction = next(predictions)
        choice = {"choices": list(prediction.labels)}  # a multi-label model's set: every label it predicts
        result = {"from_name": config.from_name, "to_name": config.to_name, "type": "choices", "value": choice}
        results.append({"result": [result], "score": float(prediction.score), "model_version": core.model_version})
    return 200, {"results": results, "model_version": core.model_version}


def _in_live_sample(core: ClassifierCore, data: dict[str, Any]) -> bool:
    given = data.get("prediction_id")
    if not isinstance(given, str) or not given:
        return False
    record = _stored(core, given)
    return record is not None and record.sampled


def _task_text(task: Any, config: LabelConfig, field: str) -> str:
    """The text a task labels (its data's `config.data_key`), or InvalidInputError naming the field."""
    data = _object(task, field, "a Label Studio task").get("data")
    if not isinstance(data, dict):
        raise InvalidInputError(f"'{field}.data' must be a JSON object", field=f"{field}.data")
    text = data.get(config.data_key)
    where = f"{field}.data.{config.data_key}"
    if not isinstance(text, str):
        raise InvalidInputError(
            f"'{where}' must be the text to classify (the key named by the config's $value)", field=where
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"'{where}' contains a lone surrogate (invalid Unicode)", field=where) from None
    return text


def _webhook(core: ClassifierCore, body: Any) -> tuple[int, dict[str, Any]]:
    """POST /webhook: annotation events store labels, START_TRAINING queues a retrain request."""
    body = _object(body, "body", "a Label Studio webhook event")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise InvalidInputError("'action' must name the Label Studio event", field="action")
    if action == TRAINING_EVENT:
        project = body.get("project") if isinstance(body.get("project"), dict) else {}
        detail = f"START_TRAINING from Label Studio project {project.get('id', '?')}"
        # Never trains here: `knowacq retrain --queued` (or the operator) runs the queued requests.
        request = _from_store("queue a retrain request", lambda: core.store.request_retrain(SOURCE, detail))
        log.info("Label Studio asked to retrain: request %d queued", request.id)
        return 201, {"status": "queued", "action": action, "retrain_request": request.id}
    if action not in ANNOTATION_EVENTS:
        return 200, {"status": "ignored", "action": action}
    project = body.get("project") if isinstance(body.get("project"), dict) else {}
    config = parse_label_config(project.get("label_config"), field="project.label_config")
    pairs = _annotated_tasks(body)
    if action != "ANNOTATIONS_CREATED":
        return 201, {"status": "ok", "action": action, **_store_annotation(core, config, *pairs[0], "")}
    results: list[dict[str, Any]] = []
    for i, (annotation, task) in enumerate(pairs):
        try:
            results.append(_store_annotation(core, config, annotation, task, f"annotation[{i}]"))
        except RequestError as exc:  # one bad annotation does not lose the others; the store down stops all
            results.append({"annotation": annotation.get("id"), **answer(exc)[1]})
    return 201, {"status": "ok", "action": action, "results": results}


def _annotated_tasks(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(annotation, its task) pairs of an annotation event: one, or a list for ANNOTATIONS_CREATED."""
    annotations, tasks = body.get("annotation"), body.get("task")
    if isinstance(annotations, dict) and isinstance(tasks, dict):
        return [(annotations, tasks)]
    if isinstance(annotations, list) and isinstance(tasks, list):
        by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
        pairs = []
        for i, annotation in enumerate(annotations):
            annotation = _object(annotation, f"annotation[{i}]", "an annotation")
            task = by_id.get(annotation.get("task"))
            if task is None:
                raise InvalidInputError(f"annotation[{i}] names a task the event does not carry", field="task")
            pairs.append((annotation, task))
        return pairs
    raise InvalidInputError(
        "an annotation event carries 'annotation' and 'task' (send the payload: the webhook's send_payload)",
        field="annotation",
    )


def _store_annotation(
    core: ClassifierCore, config: LabelConfig, annotation: dict[str, Any], task: dict[str, Any], where: str
) -> dict[str, Any]:
    """Store one annotation's choice as the human label of its task's prediction (found or recorded)."""
    field = f"{where}." if where else ""
    label = _chosen_label(annotation, config, several=core.multi_label)
    if label is None:
        return {"annotation": annotation.get("id"), "outcome": "skipped", "reason": "no single choice to store"}
    if label not in core.labels and not core.multi_label:  # refused before anything is recorded, as /feedback does
        core.metrics.feedback.labels(outcome="unknown_label").inc()
        raise UnknownLabelError(
            f"unknown label {label!r}; this model's labels are {', '.join(core.labels)}", field=f"{field}result"
        )
    data: dict[str, Any] = task["data"] if isinstance(task.get("data"), dict) else {}
    prediction_id, matched = _prediction_of(core, config, data, f"{field}task")
    annotator = _annotator(annotation)
    stored = core.feedback(prediction_id, label, annotator, source=SOURCE)
    return {"annotation": annotation.get("id"), "matched": matched, **stored}


def _chosen_label(annotation: dict[str, Any], config: LabelConfig, *, several: bool = False) -> str | None:
    """The one choice of the config's Choices control (its `from_name`; another control's choices are not the
    label) in a completed annotation; None when it was cancelled (skipped) or holds no single choice. With
    `several` (a multi-label model), every choice of the control, joined into one '|' set."""
    if annotation.get("was_cancelled"):
        return None
    results = annotation.get("result") or []
    ours = [r for r in results if isinstance(r, dict) and r.get("from_name") == config.from_name]
    for result in ours:
        value = result.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], str):
            return choices[0]
        if several and isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
            return MULTI_LABEL_SEPARATOR.join(choices)
    return None


def _annotator(annotation: dict[str, Any]) -> str:
    """Label Studio's user id of the annotation ("user-<id>"): never a name or an e-mail address."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id")
    return f"user-{who}" if isinstance(who, (int, str)) and str(who) else ""


def _prediction_of(core: ClassifierCore, config: LabelConfig, data: dict[str, Any], field: str) -> tuple[str, str]:
    """(prediction id, how it was found): the task's `prediction_id` when the store holds it, else the stored
    prediction of the same redacted text, else the serving model's prediction of the text, recorded now."""
    given = data.get("prediction_id")
    if isinstance(given, str) and given and _stored(core, given) is not None:
        return given, "prediction_id"
    _single_texts(core)  # a pair model's task is found by its prediction_id only
    text = data.get(config.data_key)
    if not isinstance(text, str) or not text.strip():
        if isinstance(given, str) and given:  # the id is unknown and there is no text to find it by
            core.metrics.feedback.labels(outcome="unknown_prediction").inc()
            raise UnknownPredictionError(
                f"no prediction with id {given!r} in the feedback store, and the task has no text", field=field
            )
        raise InvalidInputError(
            f"the task carries neither a prediction_id nor its text (data.{config.data_key})", field=f"{field}.data"
        )
    clean, digest = redact_for_storage(text[: core.settings.max_stored_chars])
    found = _from_store("find a text", lambda: core.store.find_by_text_hash(digest))
    if found is not None:
        return found.prediction_id, "text"
    prediction = core.predictor.predict([text])[0]
    ranked = sorted(prediction.probabilities.values(), reverse=True)
    prediction_id = NEW_PREFIX + digest[:32]  # the same text twice: the same id, stored once
    record = PredictionRecord(
        prediction_id=prediction_id,
        model_version=core.model_version,
        text=clean,
        text_sha256=digest,
        label=MULTI_LABEL_SEPARATOR.join(prediction.labels) if core.multi_label else prediction.label,
        score=float(prediction.score),
        margin=float(ranked[0] - ranked[1]) if len(ranked) > 1 else float(ranked[0]),
        probabilities=dict(prediction.probabilities),
        captured=False,
    )
    try:
        core.store.record_predictions([record])
    except StoreError:
        core.metrics.store_failures.labels(kind="predictions").inc()
        raise
    return prediction_id, "new"


def _stored(core: ClassifierCore, prediction_id: str) -> PredictionRecord | None:
    return _from_store("read a prediction", lambda: core.store.get_prediction(prediction_id))
