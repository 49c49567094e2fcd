"""The standard request shapes the service answers beside its own `POST /classify`: the Open Inference
Protocol v2 (KServe, Triton, MLServer; REST, with Triton's binary tensor extension) and
text-embeddings-inference's `POST /predict`.

Pure functions, no I/O: a request's body in, its texts and the way to answer them out (`InferRequest`); the
core's answers in, the protocol's body out (`Rendered`). `bento._http` routes, checks and batches every shape
the same way, so that batching, capture, metrics and refusals are those of `/classify`.

OIP v2 (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/): one input, `text`,
BYTES of shape [N] (or [N, 1]); outputs `label` (BYTES [N]), `score` (FP32 [N]), `probabilities` (FP32
[N, C], in the order of the metadata's `labels`), `prediction_id` (BYTES [N]), `low_confidence` and
`truncated` (BOOL [N]). The response's `parameters` say `model_version` and, as the protocol's parameters
hold scalars only, `low_confidence`: how many of the N texts were captured as low-confidence (the per-text
flags are the output of that name). An input or output is binary (Triton's binary tensor data extension,
what `tritonclient` sends by default) when its `parameters` say so: the JSON header is followed by the raw
tensors and its length is the `Inference-Header-Content-Length` header.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bento._asgi import parse_json
from knowacq.base import Text
from knowacq.errors import BadRequestError, InvalidInputError, PayloadTooLargeError, UnknownModelError

__all__ = [
    "OIP_EXTENSIONS",
    "OIP_INPUT",
    "OIP_OUTPUTS",
    "InferRequest",
    "Rendered",
    "V2Route",
    "model_metadata",
    "parse_native",
    "parse_tei",
    "parse_v2_infer",
    "server_metadata",
    "v2_route",
]

OIP_INPUT = "text"
OIP_OUTPUTS: dict[str, str] = {
    "label": "BYTES",
    "score": "FP32",
    "probabilities": "FP32",
    "prediction_id": "BYTES",
    "low_confidence": "BOOL",
    "truncated": "BOOL",
}
"""The outputs of `POST /v2/models/{name}/infer` and their datatypes, in the order they are answered."""
OIP_EXTENSIONS = ("binary_tensor_data",)
"""What `GET /v2` says the server supports beyond the core protocol."""

JSON = b"application/json"
OCTETS = b"application/octet-stream"


@dataclass(frozen=True)
class Rendered:
    """One answer's bytes: its body, content type and any further headers."""

    payload: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class InferRequest:
    """A checked request of any shape: the texts for the model, and how its answers are written."""

    texts: list[Text]
    """The texts, or the sentence pairs of a pair model."""
    render: Callable[[list[dict[str, Any]]], Rendered]


def _check_texts(texts: Sequence[Any], max_texts: int, field: str) -> list[Any]:
    if not texts:
        raise InvalidInputError(f"'{field}' holds no text; send at least one", field=field)
    if len(texts) > max_texts:
        raise PayloadTooLargeError(
            f"{len(texts)} texts in one request; at most {max_texts} are accepted (split the request)", field=field
        )
    for i, text in enumerate(texts):
        if not isinstance(text, (str, tuple)):  # a tuple is a pair, built (and checked) by the parser
            raise InvalidInputError(f"{field}[{i}] must be a string, got {type(text).__name__}", field=f"{field}[{i}]")
    return list(texts)


# ---------------------------------------------------------------------------------------------- native


def parse_native(texts: list[Text]) -> InferRequest:
    """POST /classify (its body is checked by `bento._core.parse_classify`): the answers as they are."""
    return InferRequest(texts, lambda answers: Rendered(orjson.dumps(answers)))


# ------------------------------------------------------------------------------------ TEI: POST /predict


def parse_tei(body: Any, max_texts: int, *, pairs: bool = False) -> InferRequest:  # long: TEI's input shapes
    """A text-embeddings-inference `POST /predict` body: `{"inputs": ..., "truncate"?, "raw_scores"?}`.

    As TEI reads `inputs`: a string, or `[string]`, is one input, answered with one list of predictions; a
    batch is a list of one-string lists, `[[string], [string], ...]`, answered with a list of lists. A pair of
    strings (`[a, b]`, or `[a, b]` inside a batch) is a text pair: what a sentence-pair model (`pairs`) takes,
    and nothing else does (422 either way).
    Every list of predictions holds every label, sorted by score, highest first. `truncate` is accepted either
    way: the service always truncates to the model's window (as /classify, whose `truncated` says so).
    `raw_scores: true` (logits instead of probabilities) is refused: the service answers calibrated
    probabilities only."""
    if not isinstance(body, dict):
        got = type(body).__name__
        raise InvalidInputError(f"the body must be a JSON object with 'inputs', got {got}", field="inputs")
    unknown = sorted(set(body) - {"inputs", "truncate", "raw_scores", "truncation_direction"})
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; /predict takes 'inputs', 'truncate' and 'raw_scores'",
            field=unknown[0],
        )
    for flag in ("truncate", "raw_scores"):
        if not isinstance(body.get(flag, False), bool):
            raise InvalidInputError(f"'{flag}' must be true or false", field=flag)
    if body.get("raw_scores", False):
        raise InvalidInputError(
            "raw_scores is not supported: the service answers calibrated probabilities (send raw_scores: false)",
            field="raw_scores",
        )
    if body.get("truncation_direction", "right") not in ("right", "Right"):
        raise InvalidInputError("only truncation_direction 'right' is supported", field="truncation_direction")
    inputs = body.get("inputs")
    if pairs:
        found, batch = _tei_pairs(inputs, "inputs" in body)
        return InferRequest(_check_texts(found, max_texts, "inputs"), _tei_render(batch))
    pair = "a pair of texts is one text pair, which this model does not take; send a batch as [[text], [text], ...]"
    batch = False
    if isinstance(inputs, str):
        texts: list[Any] = [inputs]
    elif isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
        if len(inputs) > 1:
            raise InvalidInputError(f"'inputs' is {pair}", field="inputs")
        texts = inputs
    elif isinstance(inputs, list) and inputs and all(isinstance(x, list) for x in inputs):
        batch = True
        texts = []
        for i, item in enumerate(inputs):
            if len(item) != 1:
                why = pair if len(item) == 2 else "each input of a batch is a list of one text"
                raise InvalidInputError(f"inputs[{i}] holds {len(item)} strings: {why}", field=f"inputs[{i}]")
            texts.append(item[0])
    else:
        raise InvalidInputError(
            "'inputs' must be a string or a batch [[text], [text], ...]"
            + ("" if "inputs" in body else " and is missing"),
            field="inputs",
        )
    return InferRequest(_check_texts(texts, max_texts, "inputs"), _tei_render(batch))


def _tei_pairs(inputs: Any, given: bool) -> tuple[list[Any], bool]:
    """A pair model's TEI `inputs`: `[a, b]` (one pair) or `[[a, b], ...]` (a batch), as (pairs, batch)."""
    need = "a pair model takes 'inputs' as [first, second] or a batch [[first, second], ...]"
    if isinstance(inputs, list) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs):
        return [(inputs[0], inputs[1])], False
    if not (isinstance(inputs, list) and inputs and all(isinstance(x, list) for x in inputs)):
        raise InvalidInputError(need + ("" if given else "; 'inputs' is missing"), field="inputs")
    out: list[Any] = []
    for i, item in enumerate(inputs):
        if len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise InvalidInputError(f"inputs[{i}] is not a pair of strings: {need}", field=f"inputs[{i}]")
        out.append((item[0], item[1]))
    return out, True


def _tei_render(batch: bool) -> Callable[[list[dict[str, Any]]], Rendered]:
    """TEI's answer: per input every label with its score, highest first; a list of them for a batch."""

    def render(answers: list[dict[str, Any]]) -> Rendered:
        lists = [
            [{"score": p, "label": label} for label, p in sorted(a["probabilities"].items(), key=lambda kv: -kv[1])]
            for a in answers
        ]
        return Rendered(orjson.dumps(lists if batch else lists[0]))

    return render


# -------------------------------------------------------------------------------------------- OIP v2


@dataclass(frozen=True)
class V2Route:
    """A path under /v2: what it asks (`server`, `live`, `ready`, `model`, `model_ready`, `infer`) and of which
    model name and version."""

    kind: str
    name: str = ""
    version: str = ""

    def check_model(self, model_name: str, model_version: str) -> None:
        """Raise `UnknownModelError` (404) unless this route names the served model (and version, if any)."""
        if self.name != model_name:
            raise UnknownModelError(f"unknown model {self.name!r}; this server serves {model_name!r}", field="name")
        if self.version and self.version != model_version:
            raise UnknownModelError(
                f"model {model_name!r} has no version {self.version!r}; it serves {model_version!r}", field="version"
            )


def v2_route(path: str) -> V2Route | None:
    """The OIP v2 route of `path`, or None when it is not one."""
    parts = path.rstrip("/").split("/")[1:]
    if not parts or parts[0] != "v2":
        return None
    rest = parts[1:]
    if not rest:
        return V2Route("server")
    if rest == ["health", "live"]:
        return V2Route("live")
    if rest == ["health", "ready"]:
        return V2Route("ready")
    if len(rest) >= 2 and rest[0] == "models" and rest[1]:
        name, tail, version = rest[1], rest[2:], ""
        if len(tail) >= 2 and tail[0] == "versions" and tail[1]:
            version, tail = tail[1], tail[2:]
        kinds = {(): "model", ("ready",): "model_ready", ("infer",): "infer"}
        kind = kinds.get(tuple(tail))
        if kind is not None:
            return V2Route(kind, name, version)
    return None


def server_metadata(version: str) -> dict[str, Any]:
    """GET /v2."""
    return {"name": "knowacq", "version": version, "extensions": list(OIP_EXTENSIONS)}


def model_metadata(name: str, model_version: str, labels: Sequence[str]) -> dict[str, Any]:
    """GET /v2/models/{name}: the input, the outputs and their shapes; `parameters.labels` is the JSON list of
    the label names, in the order of the `probabilities` output's columns."""
    shapes = {"probabilities": [-1, len(labels)]}
    return {
        "name": name,
        "versions": [model_version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": OIP_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": n, "datatype": d, "shape": shapes.get(n, [-1])} for n, d in OIP_OUTPUTS.items()],
        "parameters": {"labels": orjson.dumps(list(labels)).decode()},
    }


def _header_length(header_length: str | None, size: int) -> int | None:
    if header_length is None:
        return None
    if not header_length.strip().isdigit() or int(header_length) > size:
        raise BadRequestError(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the body's {size} bytes",
            field="inference-header-content-length",
        )
    return int(header_length)


def _bytes_elements(blob: bytes, field: str) -> list[str]:
    """The strings of a binary BYTES tensor: each a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise InvalidInputError(f"{field}: the binary data ends inside an element's length", field=field)
        (n,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + n > len(blob):
            raise InvalidInputError(f"{field}: an element of {n} bytes runs past the binary data", field=field)
        try:
            out.append(blob[at : at + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"{field}[{len(out)}] is not valid UTF-8", field=f"{field}[{len(out)}]") from None
        at += n
    return out


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and any(isinstance(x, list) for x in data):
        return [y for x in data for y in (x if isinstance(x, list) else [x])]
    return data if isinstance(data, list) else [data]


def _input_texts(tensor: Any, binary: bytes, max_texts: int) -> list[str]:
    field = "inputs[0]"
    if not isinstance(tensor, dict):
        raise InvalidInputError(f"{field} must be an object with name, datatype, shape and data", field=field)
    if tensor.get("name") != OIP_INPUT:
        got = tensor.get("name")
        raise InvalidInputError(f"{field}: the model's input is named {OIP_INPUT!r}, got {got!r}", field=field)
    if tensor.get("datatype") != "BYTES":
        raise InvalidInputError(f"{field}: the input's datatype is BYTES, got {tensor.get('datatype')!r}", field=field)
    shape: Any = tensor.get("shape")
    ok = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    if not ok or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(f"{field}: the shape must be [N] or [N, 1], got {shape!r}", field=f"{field}.shape")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if "data" in tensor:
            raise InvalidInputError(f"{field} has both binary_data_size and data", field=field)
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise InvalidInputError(
                f"{field}: binary_data_size {size!r} does not fit the {len(binary)} bytes after the header", field=field
            )
        texts: list[Any] = _bytes_elements(binary[:size], field)
    elif "data" in tensor:
        texts = _flatten(tensor["data"])
    else:
        raise InvalidInputError(f"{field} has no data", field=f"{field}.data")
    expected = math.prod(shape)
    if len(texts) != expected:
        why = f"{field}: shape {shape} says {expected} texts, the data holds {len(texts)}"
        raise InvalidInputError(why, field=field)
    return _check_texts(texts, max_texts, field)


def _requested_outputs(outputs: Any, binary_default: bool) -> list[tuple[str, bool]]:
    """(name, binary) of each output to answer, in the order asked (all of them when none is named)."""
    if outputs is None:
        return [(name, binary_default) for name in OIP_OUTPUTS]
    if not isinstance(outputs, list):
        raise InvalidInputError("'outputs' must be a list of {name, parameters?}", field="outputs")
    chosen = []
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OIP_OUTPUTS:
            raise InvalidInputError(
                f"outputs[{i}]: unknown output {name!r}; the model has {', '.join(OIP_OUTPUTS)}", field=f"outputs[{i}]"
            )
        params = out.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError(f"outputs[{i}].parameters must be an object", field=f"outputs[{i}]")
        if params.get("classification"):
            raise InvalidInputError(
                "the classification extension is not supported; read the label and probabilities outputs",
                field=f"outputs[{i}]",
            )
        chosen.append((name, bool(params.get("binary_data", binary_default))))
    return chosen


def _column(name: str, answers: list[dict[str, Any]]) -> tuple[list[int], Any]:
    """One output's shape and values (a flat list, or an array for the probabilities)."""
    n = len(answers)
    if name == "probabilities":
        rows = [list(a["probabilities"].values()) for a in answers]
        return [n, len(rows[0]) if rows else 0], rows
    return [n], [a[name] for a in answers]


def _binary(datatype: str, values: Any) -> bytes:
    if datatype == "BYTES":
        encoded = [str(v).encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    return np.asarray(values, dtype=np.bool_).tobytes()


def parse_v2_infer(
    raw: bytes, header_length: str | None, route: V2Route, *, model_name: str, model_version: str, max_texts: int
) -> InferRequest:
    """A `POST /v2/models/{name}[/versions/{v}]/infer` body (JSON, or a JSON header and binary tensors)."""
    route.check_model(model_name, model_version)
    split = _header_length(header_length, len(raw))
    header, binary = (raw, b"") if split is None else (raw[:split], raw[split:])
    body = parse_json(header)
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object with 'inputs'", field="inputs")
    unknown = sorted(set(body) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; an inference request has id, parameters, inputs, "
            "outputs",
            field=unknown[0],
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInputError(f"'inputs' must be a list of one tensor, {OIP_INPUT!r} (BYTES, [N])", field="inputs")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError("'parameters' must be an object", field="parameters")
    texts = _input_texts(inputs[0], binary, max_texts)
    outputs = _requested_outputs(body.get("outputs"), bool(params.get("binary_data_output", False)))
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string", field="id")

    def render(answers: list[dict[str, Any]]) -> Rendered:
        version = answers[0]["model_version"] if answers else model_version
        tensors, blobs = [], []
        for name, binary_out in outputs:
            datatype = OIP_OUTPUTS[name]
            shape, values = _column(name, answers)
            tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
            if binary_out:
                blob = _binary(datatype, values)
                tensor["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                tensor["data"] = [x for row in values for x in row] if name == "probabilities" else values
            tensors.append(tensor)
        head: dict[str, Any] = {"model_name": model_name, "model_version": version}
        if request_id is not None:
            head["id"] = request_id
        head["parameters"] = {
            "model_version": version,
            "low_confidence": sum(bool(a["low_confidence"]) for a in answers),
        }
        head["outputs"] = tensors
        payload = orjson.dumps(head)
        if not blobs:
            return Rendered(payload)
        length = (b"inference-header-content-length", str(len(payload)).encode())
        return Rendered(payload + b"".join(blobs), OCTETS, (length,))

    return InferRequest(list(texts), render)
