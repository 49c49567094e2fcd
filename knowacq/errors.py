"""The one exception tree of knowacq; every error the kit raises on purpose is a KnowacqError.

    KnowacqError                      root: catch this to catch everything the kit raises on purpose
    ├── ConfigError                   an invalid setting or an unknown preset name
    ├── MissingDependencyError        an optional library is not installed (names the extra to install)
    ├── DataError                     a data file that cannot be used
    │   └── MalformedDataError        rows that cannot be parsed; carries every problem with its line number
    ├── ModelError                    a model folder that cannot be loaded or used
    │   └── ProviderError             the requested ONNX Runtime execution provider is not available
    └── GateError                     an optimised variant failed one or more quality gates
        ├── ParityError               ONNX logits differ from PyTorch's by more than the tolerance
        └── QualityError              label agreement or task accuracy below the gate

Messages say what is wrong and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "DataError",
    "KnowacqError",
    "MalformedDataError",
    "MissingDependencyError",
    "GateError",
    "ModelError",
    "ParityError",
    "ProviderError",
    "QualityError",
    "RowProblem",
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


class QualityError(GateError):
    """Reduced precision or pruning changed too many labels or cost too much task accuracy."""
