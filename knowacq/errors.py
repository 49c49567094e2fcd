"""The one exception tree of knowacq; every error the kit raises on purpose is a KnowacqError.

    KnowacqError                      root: catch this to catch everything the kit raises on purpose
    ├── ConfigError                   an invalid setting or an unknown preset name
    ├── MissingDependencyError        an optional library is not installed (names the extra to install)
    ├── DataError                     a data file that cannot be used
    │   └── MalformedDataError        rows that cannot be parsed; carries every problem with its line number
    ├── ModelError                    a model folder that cannot be loaded or used
    │   └── ProviderError             the requested ONNX Runtime execution provider is not available
    ├── GateError                     an optimised variant failed one or more quality gates
    │   ├── ParityError               ONNX logits differ from PyTorch's by more than the tolerance
    │   │   └── ShapeMismatchError    ONNX logits have another shape than PyTorch's (fatal at once)
    │   └── QualityError              label agreement or task accuracy below the gate
    ├── StoreError                    the feedback store cannot be reached or written
    └── RequestError                  a client's request the service refuses; carries its HTTP status
        ├── BadRequestError       400 the body is not valid JSON (or not UTF-8)
        ├── AuthError             401 missing or wrong bearer token
        ├── UnknownPredictionError 404 feedback for a prediction id the store does not hold
        ├── UnknownModelError     404 an inference-protocol route naming a model the service does not serve
        ├── PayloadTooLargeError  413 body over the size limit
        ├── UnsupportedMediaError 415 a content type other than application/json
        └── InvalidInputError     422 well-formed JSON with the wrong fields, types or values
            └── UnknownLabelError 422 a label the model does not have

Messages say what is wrong and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuthError",
    "BadRequestError",
    "ConfigError",
    "DataError",
    "GateError",
    "InvalidInputError",
    "KnowacqError",
    "MalformedDataError",
    "MissingDependencyError",
    "ModelError",
    "ParityError",
    "PayloadTooLargeError",
    "ProviderError",
    "QualityError",
    "RequestError",
    "RowProblem",
    "ShapeMismatchError",
    "StoreError",
    "UnknownLabelError",
    "UnknownModelError",
    "UnknownPredictionError",
    "UnsupportedMediaError",
]


class KnowacqError(Exception):
    """Root of every error knowacq raises on purpose."""


class ConfigError(KnowacqError, ValueError):
    """An invalid setting, or an unknown preset name."""


class MissingDependencyError(KnowacqError, ImportError):
    """An optional library is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed; "
            f"install it with: pip install 'knowacq[{extra}]'"
        )


class DataError(KnowacqError, ValueError):
    """A data file that cannot be used."""


@dataclass(frozen=True)
class RowProblem:
    """One problem in a data file: the (1-based) line it starts on and what is wrong."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class MalformedDataError(DataError):
    """Rows that cannot be parsed; `problems` lists every one found, with its line number."""

    max_shown = 20

    def __init__(self, path: str, problems: list[RowProblem]) -> None:
        self.path = path
        self.problems = tuple(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[: self.max_shown])
        more = len(self.problems) - self.max_shown
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{path}: {len(self.problems)} malformed row(s):\n{shown}{tail}")


class ModelError(KnowacqError):
    """A model folder that cannot be loaded or used."""


class ProviderError(ModelError):
    """The requested ONNX Runtime execution provider is not available."""


class GateError(KnowacqError):
    """An optimised variant failed its gates; `failures` holds every failed gate with its numbers."""

    def __init__(self, variant: str, failures: list[str]) -> None:
        self.variant = variant
        self.failures = tuple(failures)
        lines = "\n".join(f"  {f}" for f in self.failures)
        super().__init__(f"variant {variant!r} failed {len(self.failures)} gate(s); not written:\n{lines}")


class ParityError(GateError):
    """fp32 ONNX logits differ from the PyTorch model's by more than the tolerance."""


class ShapeMismatchError(ParityError):
    """The ONNX graph's logits have another shape than PyTorch's: the graph does not compute the model's
    outputs. Fatal: raised by the parity gate at once, before any tolerance is judged."""

    def __init__(
        self, variant: str, gate: str, got: tuple[int, ...], expected: tuple[int, ...], num_labels: int
    ) -> None:
        self.got = got
        self.expected = expected
        super().__init__(
            variant,
            [
                f"{gate}: logits of shape {got} from the ONNX graph but {expected} from PyTorch, for "
                f"{num_labels} labels; the graph does not compute the model's outputs (no other gate was measured)"
            ],
        )


class QualityError(GateError):
    """Reduced precision or pruning changed too many labels or cost too much task accuracy."""


class StoreError(KnowacqError):
    """The feedback store cannot be reached or written."""


class RequestError(KnowacqError):
    """A request the service refuses. `status` is its HTTP status; `field` names the offending field."""

    status = 400
    reason = "bad_request"
    """A fixed, low-cardinality name for metrics (never user text)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)

    def to_body(self) -> dict[str, str]:
        body = {"error": str(self), "reason": self.reason}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequestError(RequestError):
    status = 400
    reason = "invalid_json"


class AuthError(RequestError):
    status = 401
    reason = "unauthorized"


class UnknownPredictionError(RequestError):
    status = 404
    reason = "unknown_prediction"


class UnknownModelError(RequestError):
    """An Open Inference Protocol route named a model (or version) the service does not serve."""

    status = 404
    reason = "unknown_model"


class PayloadTooLargeError(RequestError):
    status = 413
    reason = "too_large"


class UnsupportedMediaError(RequestError):
    status = 415
    reason = "unsupported_media_type"


class InvalidInputError(RequestError):
    status = 422
    reason = "invalid_input"


class UnknownLabelError(InvalidInputError):
    reason = "unknown_label"
